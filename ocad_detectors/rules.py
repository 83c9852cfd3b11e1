"""Rule detector: delay thresholds relative to each endpoint's baseline (or absolute SLA
levels), and loss runs measured in seconds.

It needs no model: without reference statistics an endpoint's baseline is learned from its
first samples. Loss is counted per probe type the endpoint supports, as consecutive samples
without a reply, and timed from the last reply:

* ``udp_echo`` / ``ecpri``: the delay value is missing (None / NaN / absent);
* ``lbm``: ``lbm_success`` is false, or there is neither a success flag nor an RTT.

Intermittent loss never makes a long run, so the share of probes lost in each probe type's
recent window (``loss_rate_window_s``, at least ``loss_rate_min_probes`` probes) is loss
evidence too from ``loss_rate`` on: 40 % of replies missing over two minutes is an incident even
when no two are missing in a row, while a healthy probe's rare lost reply never reaches it.

Score: 0 below the warning level; above it ``0.5 + 0.5 * excess / (critical - warning)`` for
a delay, and the same in seconds for a loss run; 1 at the critical level, so 0.5 means "just
over" and 1 "critical" (a loss run shorter than ``loss_critical_samples`` stays below 1). A
loss rate scores ``0.5 + 0.5 * (rate - loss_rate) / (1 - loss_rate)``, below 1.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ocad_detectors._util import EV_LOSS, EV_THRESHOLD, EVIDENCE_NAMES, mask_values, present_capabilities
from ocad_detectors.config import RuleConfig
from ocad_detectors.signals import VALUE_SIGNALS

__all__ = ["DetectorOutput", "RuleDetector", "loss_runs"]


@dataclass(frozen=True)
class DetectorOutput:
    """What one detector says about one sample when it is used on its own."""

    score: float
    evidence: tuple[str, ...]
    details: Mapping[str, Any]


class _RuleState:
    __slots__ = ("base", "endpoint_id", "levels", "lost_since", "recent", "runs", "warm", "window")

    def __init__(self, endpoint_id: str, levels: list[tuple[float, float] | None], base: list[float | None]) -> None:
        self.endpoint_id = endpoint_id
        #: (warning, critical) per delay signal, in its unit; None = no rule (yet)
        self.levels = levels
        #: learned baseline per delay signal (None = still warming up / absolute rules)
        self.base = base
        #: first values of signals without a reference baseline (until baseline_samples)
        self.warm: list[list[float]] = [[], [], []]
        self.runs = {"udp_echo": 0, "ecpri": 0, "lbm": 0}
        #: sample time of the last reply per probe type (None = none seen yet)
        self.lost_since: dict[str, int | None] = {"udp_echo": None, "ecpri": None, "lbm": None}
        #: per probe type: (sample time, lost) of its recent probes (the loss-rate window)
        self.recent: dict[str, deque[tuple[int, bool]]] = {"udp_echo": deque(), "ecpri": deque(), "lbm": deque()}
        #: per probe type: [lost, probes] in that window
        self.window: dict[str, list[int]] = {"udp_echo": [0, 0], "ecpri": [0, 0], "lbm": [0, 0]}


def loss_runs(lost: np.ndarray) -> np.ndarray:
    """Consecutive True values up to and including each position (0 where False)."""
    lost = np.asarray(lost, dtype=bool)
    n = len(lost)
    idx = np.arange(n)
    last_ok = np.maximum.accumulate(np.where(~lost, idx, -1)) if n else idx
    return np.where(lost, idx - last_ok, 0)


class RuleDetector:
    """Threshold and loss rules per endpoint (see :class:`~ocad_detectors.config.RuleConfig`).

    ``update`` is the streaming step; ``score_series`` runs the very same step over a series,
    so batch and streaming agree by construction. A rule score is 0.5 just over the warning
    level and 1 at the critical level (a critical sample alerts on its own).
    """

    name = "rule"

    def __init__(self, config: RuleConfig | None = None) -> None:
        self.config = cfg = config or RuleConfig()
        self._lw = cfg.loss_warning_s * 1000.0
        self._lc = cfg.loss_critical_s * 1000.0
        self._lspan = self._lc - self._lw
        self._lmin = cfg.loss_min_samples
        self._lcrit = cfg.loss_critical_samples
        self._rate = cfg.loss_rate
        self._rwin = cfg.loss_rate_window_s * 1000.0
        self._rmin = cfg.loss_rate_min_probes
        self._states: dict[str, _RuleState] = {}
        self.reference: Any = None

    @property
    def active(self) -> bool:
        return self.config.enabled

    def set_reference(self, reference: Any) -> None:
        """Healthy baselines per endpoint (a :class:`~ocad_detectors.features.ReferenceStats`)."""
        self.reference = reference

    def _levels(self, endpoint_id: str) -> tuple[list[tuple[float, float] | None], list[float | None]]:
        cfg = self.config
        absolute = cfg.absolute_for(endpoint_id)
        levels: list[tuple[float, float] | None] = []
        base: list[float | None] = []
        for sig in VALUE_SIGNALS:
            if absolute is not None:
                th = absolute.get(sig)
                levels.append(None if th is None else (th.warning, th.critical))
                base.append(None)
                continue
            ref = self.reference.per_endpoint.get((endpoint_id, sig)) if self.reference is not None else None
            if ref is not None and ref[0] > 0.0:
                levels.append((ref[0] * cfg.warning_ratio, ref[0] * cfg.critical_ratio))
                base.append(float(ref[0]))
            else:
                levels.append(None)
                base.append(None)
        return levels, base

    def new_state(self, endpoint_id: str = "") -> _RuleState:
        levels, base = self._levels(endpoint_id)
        return _RuleState(endpoint_id, levels, base)

    def refresh_state(self, st: _RuleState) -> None:
        """New models: baselines from the new reference; learned ones are kept."""
        levels, base = self._levels(st.endpoint_id)
        for i in range(3):
            if base[i] is not None or self.config.absolute_for(st.endpoint_id) is not None or st.base[i] is None:
                st.levels[i], st.base[i] = levels[i], base[i]

    def rebaseline(self, st: _RuleState, i: int, level: float) -> None:
        """The change detector confirmed a lasting new level of signal ``i``: relative rules now
        compare against it (absolute SLA thresholds never move)."""
        if self.config.absolute_for(st.endpoint_id) is None and level > 0.0 and level == level:
            st.base[i] = level
            st.levels[i] = (level * self.config.warning_ratio, level * self.config.critical_ratio)

    def update(self, st: _RuleState, caps: frozenset[str], ts: int, u: float, c: float, lb: float, s: float) -> tuple[float, int]:
        """One accepted sample (values masked to the endpoint's capabilities) -> (score, evidence bits)."""
        score = 0.0
        ev = 0
        runs = st.runs
        since = st.lost_since
        durations = []
        rates = []
        rwin, rmin = self._rwin, self._rmin
        hit = self.config.loss_rate_hit
        for cap, lost in (
            ("udp_echo", u != u), ("ecpri", c != c), ("lbm", s == 0.0 or (s != s and lb != lb))
        ):
            if cap not in caps:
                continue
            dq = st.recent[cap]
            win = st.window[cap]
            dq.append((ts, lost))
            win[0] += lost
            while len(dq) > rmin and ts - dq[0][0] >= rwin:
                win[0] -= dq.popleft()[1]
            win[1] = len(dq)
            if lost and hit(win[0], win[1]):  # on lost probes only: a reply is no loss evidence
                rates.append(win[0] / win[1])
            if lost:
                runs[cap] += 1
                t0 = since[cap]
                if t0 is None:
                    t0 = since[cap] = ts
                durations.append((ts - t0, runs[cap]))
            else:
                runs[cap] = 0
                since[cap] = ts
        if not self.config.enabled:
            return 0.0, 0
        vals = (u, c, lb)
        levels = st.levels
        for i in range(3):
            v = vals[i]
            if v != v:
                continue
            lv = levels[i]
            if lv is None:
                if st.base[i] is None and self.config.absolute_for(st.endpoint_id) is None:
                    w = st.warm[i]
                    w.append(v)
                    if len(w) >= self.config.baseline_samples:
                        self.rebaseline(st, i, float(np.median(w)))
                        st.warm[i] = []
                continue
            warn, crit = lv
            if v > warn:
                ev = EV_THRESHOLD
                sc = 1.0 if v >= crit else 0.5 + 0.5 * (v - warn) / (crit - warn)
                if sc > score:
                    score = sc
        lw = self._lw
        for dur, n in durations:
            if dur >= lw and n >= self._lmin:
                ev |= EV_LOSS
                if dur >= self._lc and n >= self._lcrit:
                    sc = 1.0
                else:
                    sc = min(0.99, 0.5 + 0.5 * (dur - lw) / self._lspan)
                if sc > score:
                    score = sc
        rate = self._rate
        for r in rates:
            ev |= EV_LOSS
            sc = min(0.99, 0.5 + 0.5 * (r - rate) / (1.0 - rate)) if rate < 1.0 else 0.99
            if sc > score:
                score = sc
        return score, ev

    def details(self, st: _RuleState) -> dict[str, int]:
        """Loss runs per probe type, and ``{cap}:lost_recent`` / ``{cap}:probes_recent`` (the
        loss-rate window), for explanations."""
        d = dict(st.runs)
        for cap, (lost, n) in st.window.items():
            d[f"{cap}:lost_recent"] = lost
            d[f"{cap}:probes_recent"] = n
        return d

    def score_one(self, sample: Any, capabilities: Any = None) -> DetectorOutput:
        """Standalone use: validate one sample (``ValueError`` if invalid) and score it.

        ``capabilities`` (e.g. ``{"udp_echo", "lbm"}``) decides which missing values are loss;
        default: every signal that has a value in this sample.
        """
        from ocad_detectors.samples import require_valid

        ts, ep, u, c, lb, s = require_valid(sample)
        caps = frozenset(capabilities) if capabilities is not None else present_capabilities(u, c, lb, s)
        st = self._states.get(ep)
        if st is None:
            st = self._states[ep] = self.new_state(ep)
        score, ev = self.update(st, caps, ts, *mask_values(caps, u, c, lb, s))
        return DetectorOutput(score, EVIDENCE_NAMES[ev], {"loss_runs": self.details(st)})

    def score_series(
        self, endpoint_id: str, caps_seq: list[frozenset[str]], ts: list[int], u: np.ndarray, c: np.ndarray,
        lb: np.ndarray, s: np.ndarray, rebaselines: Mapping[int, tuple[tuple[int, float, bool], ...]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """Batch over one endpoint's accepted, masked series: (score, evidence bits, loss runs
        and loss-rate windows as in :meth:`details`,
        rule levels: an ``(n, 3, 2)`` array of (warning, critical) per delay signal, NaN = none).

        The streaming :meth:`update` runs sample by sample (the rules are cheap, and this way
        both paths agree exactly); ``rebaselines`` maps a sample index to the ``(signal index,
        level, re-baselined)`` new baselines the change detector set at that sample, applied after it
        as streaming does (see :meth:`ChangePointDetector.update`)."""
        n = len(ts)
        score = np.zeros(n)
        ev = np.zeros(n, dtype=np.int64)
        st = self.new_state(endpoint_id)
        runs = {k: np.zeros(n, dtype=np.int64) for k in self.details(st)}
        levels = np.full((n, 3, 2), np.nan)
        ul, cl, lbl, sl = u.tolist(), c.tolist(), lb.tolist(), s.tolist()
        rb = rebaselines or {}
        upd = self.update
        r = st.runs
        win = st.window
        for j in range(n):
            score[j], ev[j] = upd(st, caps_seq[j], ts[j], ul[j], cl[j], lbl[j], sl[j])
            runs["udp_echo"][j] = r["udp_echo"]
            runs["ecpri"][j] = r["ecpri"]
            runs["lbm"][j] = r["lbm"]
            for cap, (lost, nw) in win.items():
                runs[cap + ":lost_recent"][j] = lost
                runs[cap + ":probes_recent"][j] = nw
            for i, lv in enumerate(st.levels):
                if lv is not None:
                    levels[j, i] = lv
            for i, level, _ in rb.get(j, ()):
                self.rebaseline(st, i, level)
        return score, ev, runs, levels
