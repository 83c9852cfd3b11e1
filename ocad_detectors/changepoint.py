"""Change-point detector: a two-sided level-shift detector per (endpoint, delay signal) that
re-anchors on the new level (:mod:`ocad_detectors.levels`).

Evidence (``changepoint``) is a short-horizon upward CUSUM of the robust z-score against the
endpoint's current level above its threshold (small sustained rises, within minutes), or an
*upward* sustained shift confirmed and not yet re-baselined, on samples that still sit at the
new level (above the midpoint between the two levels):
after ``rebaseline_s`` at the new level it is the normal level, the evidence ends and the
relative rules adopt it as their baseline, so a lasting shift gives one alert and one change
record, not days of alarm. A downward change (recovery, re-route) is a change record, never
evidence. Change records name the first sample of the new level, the levels before and after
and the detection time. The same ``update`` runs per sample in both the streaming and the batch
path, so they agree exactly. The reference statistics (healthy mean/std from training) are
kept here for the explanations and the other detectors; the level detector learns each
endpoint's level from its own samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ocad_detectors._util import EV_CHANGEPOINT, EVIDENCE_NAMES, mask_values, present_capabilities
from ocad_detectors.config import ChangePointConfig
from ocad_detectors.features import ReferenceStats
from ocad_detectors.levels import ChangeRecord, LevelShiftDetector, LevelShiftState
from ocad_detectors.rules import DetectorOutput
from ocad_detectors.signals import SIGNALS, VALUE_SIGNALS

__all__ = ["ChangePointDetector", "ChangeRecord"]

_NAN = float("nan")


class _CPState:
    __slots__ = ("endpoint_id", "last_up", "lv", "refs")

    def __init__(self, endpoint_id: str, refs: list[tuple[float, float] | None], lv: list[LevelShiftState]) -> None:
        self.endpoint_id = endpoint_id
        self.refs = refs
        self.lv = lv
        #: per signal: the last confirmed upward change (change_ms, level before, level after)
        self.last_up: list[tuple[int, float, float] | None] = [None, None, None]


class ChangePointDetector:
    """Level shifts per (endpoint, delay signal); ``reference``: healthy mean/std from training."""

    name = "changepoint"

    def __init__(self, config: ChangePointConfig | None = None, reference: ReferenceStats | None = None) -> None:
        self.config = config or ChangePointConfig()
        self.levels = LevelShiftDetector(self.config.levels)
        self._fast_h = self.config.levels.fast_h
        self._jit_h = self.config.levels.jitter_h
        self._states: dict[str, _CPState] = {}
        self.reference = reference or ReferenceStats()

    @property
    def active(self) -> bool:
        return self.config.enabled

    def set_reference(self, reference: ReferenceStats | None) -> None:
        """New reference statistics (after a model reload); the learned levels are kept."""
        self.reference = reference or ReferenceStats()

    def _refs(self, endpoint_id: str) -> list[tuple[float, float] | None]:
        out: list[tuple[float, float] | None] = []
        for sig in VALUE_SIGNALS:
            r = self.reference.get(endpoint_id, sig)
            out.append(None if r is None else (float(r[0]), float(r[1])))
        return out

    def new_state(self, endpoint_id: str) -> _CPState:
        lv = [self.levels.new_state(endpoint_id, sig, SIGNALS[sig].unit) for sig in VALUE_SIGNALS]
        return _CPState(endpoint_id, self._refs(endpoint_id), lv)

    def refresh_state(self, st: _CPState) -> None:
        st.refs = self._refs(st.endpoint_id)

    def update(
        self, st: _CPState, ts: int, u: float, c: float, lb: float
    ) -> tuple[float, int, tuple[ChangeRecord, ...], tuple[tuple[int, float, bool], ...]]:
        """One accepted sample (values masked to the capabilities) -> (score, evidence bits,
        change records confirmed now, new baselines now as (signal index, level, re-baselined):
        re-baselined is True when an upward level held ``rebaseline_s`` and False for a
        downward change (recovery or re-route))."""
        if not self.config.enabled:
            return 0.0, 0, (), ()
        upd = self.levels.update
        score = 0.0
        ev = 0
        changes: tuple[ChangeRecord, ...] = ()
        rebase: tuple[tuple[int, float, bool], ...] = ()
        for i, v in enumerate((u, c, lb)):
            lst = st.lv[i]
            was = lst.evidence
            sc, e, rec = upd(lst, ts, v)
            if rec is not None:
                changes += (rec,)
                if rec.direction == "up":
                    st.last_up[i] = (rec.change_ms, rec.level_before, rec.level_after)
                else:
                    rebase += ((i, rec.level_after, False),)
            if e:
                # evidence while the sample still sits at the new level: once the signal is
                # back, the episode may resolve before the detector has confirmed the drop
                up = st.last_up[i]
                if up is not None and v > 0.5 * (up[1] + up[2]):
                    ev = EV_CHANGEPOINT
                    if sc > score:
                        score = sc
            elif sc > score:
                score = sc
            if self._fast_h > 0.0 and lst.fast > self._fast_h:
                ev = EV_CHANGEPOINT
                fs = 1.0 - 0.5 * self._fast_h / lst.fast
                if fs > score:
                    score = fs
            elif was and not e:  # the new level held long enough: it is the baseline now
                rebase += ((i, lst.mu, True),)
            jit = lst.jit if lst.jit < lst.jitd else lst.jitd
            if self._jit_h > 0.0 and jit > self._jit_h:
                ev = EV_CHANGEPOINT
                js = 1.0 - 0.5 * self._jit_h / jit
                if js > score:
                    score = js
        return score, ev, changes, rebase

    def details(self, st: _CPState) -> list[tuple[bool, float, tuple[int, float, float] | None, float, float]]:
        """Per delay signal: (confirmed-shift evidence, current level, last upward change, the
        short-horizon CUSUM when it is past its threshold else 0, the same for the jitter
        CUSUM) for explanations."""
        h = self._fast_h
        hj = self._jit_h
        return [(st.lv[i].evidence, st.lv[i].mu, st.last_up[i], st.lv[i].fast if h > 0.0 and st.lv[i].fast > h else 0.0,
                 min(st.lv[i].jit, st.lv[i].jitd) if hj > 0.0 and min(st.lv[i].jit, st.lv[i].jitd) > hj else 0.0)
                for i in range(3)]

    def score_one(self, sample: Any) -> DetectorOutput:
        """Standalone use: validate (``ValueError`` if invalid), then update and score."""
        from ocad_detectors.samples import require_valid

        ts, ep, u, c, lb, s = require_valid(sample)
        st = self._states.get(ep)
        if st is None:
            st = self._states[ep] = self.new_state(ep)
        mu, mc, ml, _ = mask_values(present_capabilities(u, c, lb, s), u, c, lb, s)
        score, ev, changes, _ = self.update(st, ts, mu, mc, ml)
        return DetectorOutput(score, EVIDENCE_NAMES[ev], {
            "level": dict(zip(VALUE_SIGNALS, (x.mu for x in st.lv))), "changes": [r.to_dict() for r in changes],
        })

    def score_series(
        self, endpoint_id: str, ts: list[int], u: np.ndarray, c: np.ndarray, lb: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[ChangeRecord, ...]], dict[int, tuple[tuple[int, float, bool], ...]], list[Any]]:
        """Batch over one endpoint's accepted, masked series: the streaming :meth:`update` per
        sample. Returns (score, evidence bits, change records by sample index, re-baselinings
        by sample index, per-sample explanation details)."""
        n = len(ts)
        score = np.zeros(n)
        ev = np.zeros(n, dtype=np.int64)
        changes: dict[int, tuple[ChangeRecord, ...]] = {}
        rebase: dict[int, tuple[tuple[int, float, bool], ...]] = {}
        details: list[Any] = [None] * n
        st = self.new_state(endpoint_id)
        ul, cl, lbl = u.tolist(), c.tolist(), lb.tolist()
        upd = self.update
        for j in range(n):
            sc, e, ch, rb = upd(st, ts[j], ul[j], cl[j], lbl[j])
            score[j] = sc
            ev[j] = e
            if ch:
                changes[j] = ch
            if rb:
                rebase[j] = rb
            if e:
                details[j] = self.details(st)
        return score, ev, changes, rebase, details
