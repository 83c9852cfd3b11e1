"""Alerts: evidence gating, persistence, severity, episodes that open and resolve, on sample time.

Per endpoint, a sample is *alert-worthy* when it carries at least ``min_evidence`` distinct
evidence types or any ``standalone_evidence`` type (see :class:`~ocad_detectors.config.AlertConfig`).
Then, all in seconds of sample time and independent of the probe interval:

* **persistence**: worthy samples form a run (gaps up to ``gap_s`` allowed); the run must span
  ``persist_s``, hold ``persist_min_samples`` worthy samples and a ``persist_fraction`` share
  of its samples before it may alert. A benign one-sample jump never alerts; only a sample at a
  *critical* level (rule score 1) alerts on its own;
* **episodes**: the first alert opens an episode; further worthy samples are absorbed (counted)
  unless the severity rises, which emits an escalation alert. After ``dedup_s`` without a worthy
  sample the episode is **resolved**: a :class:`Resolution` with its start and end;
* the probe interval is inferred per endpoint (median of the last inter-arrival times) and
  stretches ``gap_s`` to at least 2.5 and ``dedup_s`` to at least 2 intervals, so a 240 s probe
  is not "quiet" between two of its own samples.

Only sample timestamps are used, never the wall clock, so a replay or a backfill produces
exactly the alerts of the live run. Severity comes from the composite score:
``warning`` < ``alerts.severity.major`` <= ``major`` < ``alerts.severity.critical`` <= ``critical``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ocad_detectors._io import json_safe as _json_safe
from ocad_detectors._util import (
    EV_CHANGEPOINT,
    EV_LOSS,
    EV_MULTIVARIATE,
    EV_RESIDUAL,
    EV_THRESHOLD,
    EVIDENCE_NAMES,
    evidence_mask,
)
from ocad_detectors.config import SEVERITIES, AlertConfig, DetectionConfig
from ocad_detectors.isotime import iso_ms
from ocad_detectors.signals import METRIC_SIGNAL, SIGNALS, VALUE_SIGNALS

__all__ = ["Alert", "AlertManager", "Explanation", "Resolution", "build_explanation", "iso_ms"]

_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Explanation:
    """Why one piece of evidence fired: the signal, what was expected, what was observed, how
    many σ apart (None when σ does not apply, e.g. a loss run)."""

    evidence: str
    signal: str
    unit: str
    expected: float | None
    observed: float | None
    sigma: float | None
    text: str


@dataclass(frozen=True)
class Alert:
    """One alert of one endpoint at one sample."""

    endpoint_id: str
    timestamp_ms: int
    severity: str
    composite: float
    evidence: tuple[str, ...]
    scores: Mapping[str, float]
    explanation: tuple[Explanation, ...]
    episode_start_ms: int
    escalation: bool = False
    message: str = ""
    #: first sample of the run of evidence behind the alert (== timestamp_ms: a single-sample
    #: spike at a critical level; earlier: the evidence has been sustained since then)
    evidence_since_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN/inf become None)."""
        d = asdict(self)
        d["evidence"] = list(self.evidence)
        d["scores"] = dict(self.scores)
        d["explanation"] = [asdict(e) for e in self.explanation]
        d["event"] = "alert"
        d["time"] = iso_ms(self.timestamp_ms)
        return _json_safe(d)


@dataclass(frozen=True)
class Resolution:
    """An alert episode that ended: the signal is back (``recovered``) or its new level became
    the baseline (``rebaselined``). ``end_ms`` is the last alert-worthy sample, ``resolved_ms``
    the sample at which the quiet period was complete."""

    endpoint_id: str
    episode_start_ms: int
    end_ms: int
    resolved_ms: int
    reason: str
    severity: str
    alerts: int
    suppressed: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["event"] = "resolved"
        d["episode_start"] = iso_ms(self.episode_start_ms)
        d["end"] = iso_ms(self.end_ms)
        return d


_N_DT = 8  # inter-arrival times kept for the interval estimate


class _AlertState:
    __slots__ = (
        "alerts", "dts", "episode_start", "interval", "last_seen", "last_worthy", "open", "rebaselined",
        "run_count", "run_last", "run_start", "run_total", "severity", "suppressed",
    )

    def __init__(self) -> None:
        self.last_seen: int | None = None
        self.dts: list[int] = []
        self.interval = 0.0
        self.run_start: int | None = None
        self.run_last = 0
        self.run_count = 0
        self.run_total = 0
        self.open = False
        self.last_worthy = 0
        self.severity = SEVERITIES[0]
        self.episode_start = 0
        self.alerts = 0
        self.suppressed = 0
        self.rebaselined = False


class AlertManager:
    """Evidence -> alerts and resolutions, per endpoint; see the module docstring for the rules."""

    def __init__(self, config: AlertConfig | None = None) -> None:
        self.config = cfg = config or AlertConfig()
        self._min = cfg.min_evidence
        self._standalone = evidence_mask(cfg.standalone_evidence)
        self._immediate = evidence_mask(cfg.immediate_evidence)
        self._major = cfg.severity["major"]
        self._critical = cfg.severity["critical"]
        self._persist = cfg.persist_s * 1000.0
        self._frac = cfg.persist_fraction
        self._min_n = cfg.persist_min_samples
        self._gap = cfg.gap_s * 1000.0
        self._hold = cfg.hold_down_s * 1000.0
        self._dedup = cfg.dedup_s * 1000.0
        self._states: dict[str, _AlertState] = {}
        #: episodes ended so far (standalone use through :meth:`observe`)
        self.resolutions: list[Resolution] = []

    def new_state(self) -> _AlertState:
        return _AlertState()

    def worthy(self, ev: int) -> bool:
        """Enough distinct evidence (bit mask) for an alert?"""
        return bool(ev & self._standalone) or ev.bit_count() >= self._min

    def severity(self, composite: float) -> str:
        if composite >= self._critical:
            return "critical"
        if composite >= self._major:
            return "major"
        return "warning"

    @staticmethod
    def note_rebaseline(st: _AlertState) -> None:
        """The change detector adopted a new level during the open episode (its resolution
        will say ``rebaselined``)."""
        if st.open:
            st.rebaselined = True

    def step(
        self, st: _AlertState, endpoint_id: str, ts: int, ev: int, composite: float, critical: bool = False
    ) -> tuple[bool, bool, str, Resolution | None]:
        """One accepted sample of the endpoint, in timestamp order:
        (emit an alert, is it an escalation, severity, resolution of the previous episode)."""
        last = st.last_seen
        if last is not None:
            dts = st.dts
            dts.append(ts - last)
            if len(dts) > _N_DT:
                del dts[0]
            st.interval = float(sorted(dts)[len(dts) // 2])
        st.last_seen = ts
        iv = st.interval
        worthy = bool(ev & self._standalone) or ev.bit_count() >= self._min
        resolution = None
        if st.open and not worthy and ts - st.last_worthy > max(self._dedup, 2.0 * iv):
            resolution = Resolution(
                endpoint_id, st.episode_start, st.last_worthy, ts, "rebaselined" if st.rebaselined else "recovered",
                st.severity, st.alerts, st.suppressed,
            )
            st.open = False
        gap = max(self._gap, 2.5 * iv)
        if not worthy:
            if st.run_start is not None:
                if ts - st.run_last > gap:
                    st.run_start = None
                else:
                    st.run_total += 1
            return False, False, "", resolution
        if st.run_start is None or ts - st.run_last > gap:
            st.run_start = ts
            st.run_count = 0
            st.run_total = 0
        st.run_count += 1
        st.run_total += 1
        st.run_last = ts
        sev = self.severity(composite)
        if st.open:
            st.last_worthy = ts
            if _RANK[sev] > _RANK[st.severity]:
                st.severity = sev
                st.alerts += 1
                return True, True, sev, resolution
            st.suppressed += 1
            return False, False, sev, resolution
        span = ts - st.run_start
        if span < self._hold:
            return False, False, sev, resolution
        if not (critical or ev & self._immediate) and (
            st.run_count < self._min_n or span < self._persist or st.run_count < self._frac * st.run_total
        ):
            return False, False, sev, resolution
        st.open = True
        st.rebaselined = False
        st.episode_start = ts
        st.last_worthy = ts
        st.severity = sev
        st.alerts = 1
        st.suppressed = 0
        return True, False, sev, resolution

    def observe(
        self,
        endpoint_id: str,
        timestamp_ms: int,
        evidence: Iterable[str],
        composite: float,
        scores: Mapping[str, float] | None = None,
        explanation: Sequence[Explanation] = (),
        critical: bool = False,
    ) -> Alert | None:
        """Standalone use: feed one scored sample of an endpoint (in timestamp order).
        Resolutions are appended to :attr:`resolutions`."""
        ev = evidence_mask(tuple(evidence))
        st = self._states.setdefault(endpoint_id, self.new_state())
        emit, esc, sev, res = self.step(st, endpoint_id, int(timestamp_ms), ev, float(composite), critical)
        if res is not None:
            self.resolutions.append(res)
        if not emit:
            return None
        return make_alert(endpoint_id, int(timestamp_ms), sev, float(composite), ev, dict(scores or {}), tuple(explanation),
                          st.episode_start, esc, st.run_start)


def make_alert(
    endpoint_id: str, ts: int, severity: str, composite: float, ev: int, scores: Mapping[str, float],
    explanation: tuple[Explanation, ...], episode_start: int, escalation: bool, since: int | None = None,
) -> Alert:
    """Assemble an :class:`Alert` (one place for both the streaming and the batch path); the
    message says in plain words whether this is a one-sample spike or sustained evidence."""
    head = f"{severity.upper()} {endpoint_id} at {iso_ms(ts)}" + (" (escalated)" if escalation else "")
    if since is not None:
        if since >= ts and ev & EV_CHANGEPOINT and not ev & (EV_THRESHOLD | EV_LOSS):
            head += ": sustained (a CUSUM summed the deviation over the last samples)"
        elif since >= ts:
            head += ": spike (a single sample at a critical level)"
        else:
            head += f": sustained for {(ts - since) / 1000.0:g} s since {iso_ms(since)}"
    body = "; ".join(e.text for e in explanation) if explanation else ", ".join(EVIDENCE_NAMES[ev])
    return Alert(endpoint_id, ts, severity, composite, EVIDENCE_NAMES[ev], dict(scores), explanation, episode_start, escalation,
                 f"{head}: {body}", since)


@dataclass
class SampleDetails:
    """The numbers behind one sample's scores, for the explanation (same in both paths)."""

    values: tuple[float, float, float]
    reference: Sequence[tuple[float, float] | None]
    loss_runs: Mapping[str, int]
    #: per delay signal: (shift evidence, current level, last upward change (ms, before, after),
    #: short-horizon CUSUM past its threshold or 0)
    changepoint: Sequence[tuple[bool, float, tuple[int, float, float] | None, float, float]]
    residual: Sequence[tuple[float, float, float] | None]  # (forecast, r in σ, threshold in σ)
    multivariate: tuple[float, float, str, float] | None = None
    #: (warning, critical) rule levels per delay signal (None: no rule)
    rule_levels: Sequence[tuple[float, float] | None] = (None, None, None)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def build_explanation(ev: int, d: SampleDetails, config: DetectionConfig) -> tuple[Explanation, ...]:
    """One :class:`Explanation` per signal behind each evidence type present in ``ev``."""
    out: list[Explanation] = []
    if ev & EV_THRESHOLD:
        for i, sig in enumerate(VALUE_SIGNALS):
            lv = d.rule_levels[i]
            v = d.values[i]
            if lv is None or not v > lv[0]:
                continue
            unit = SIGNALS[sig].unit
            ref = d.reference[i]
            sigma = (v - ref[0]) / ref[1] if ref is not None else None
            extra = f" ({sigma:+.1f} σ from the healthy {_fmt(ref[0])} {unit})" if ref is not None and sigma is not None else ""
            lvl_name, at = ("critical", lv[1]) if v >= lv[1] else ("warning", lv[0])
            out.append(Explanation("threshold", sig, unit, lv[0], v, sigma,
                                   f"{sig} = {_fmt(v)} {unit} above the {_fmt(at)} {unit} {lvl_name} threshold{extra}"))
    if ev & EV_LOSS:
        lw = config.rules.loss_min_samples
        for cap in ("udp_echo", "ecpri", "lbm"):
            r = d.loss_runs.get(cap, 0)
            sig = "lbm_success" if cap == "lbm" else METRIC_SIGNAL[cap]
            if r >= lw:
                out.append(Explanation("loss", sig, "samples", 0.0, float(r), None,
                                       f"{sig}: {r} consecutive probes without a reply "
                                       f"(loss evidence from {config.rules.loss_warning_s:g} s without a reply)"))
                continue
            lost, n = d.loss_runs.get(cap + ":lost_recent", 0), d.loss_runs.get(cap + ":probes_recent", 0)
            if config.rules.loss_rate_hit(lost, n):
                rate = config.rules.loss_rate
                out.append(Explanation("loss", sig, "share", rate, lost / n, None,
                                       f"{sig}: {lost} of the last {n} probes without a reply ({lost / n:.0%}; "
                                       f"loss evidence from {rate:.0%})"))
    if ev & EV_CHANGEPOINT:
        for i, sig in enumerate(VALUE_SIGNALS):
            evidence, level, up, fast, jit = d.changepoint[i]
            unit = SIGNALS[sig].unit
            v = d.values[i]
            now = f"; now {_fmt(v)} {unit}" if v == v else "; no value this sample"
            if evidence and up is not None:
                since, before, after = up
                out.append(Explanation("changepoint", sig, unit, before, v if v == v else None, None,
                                       f"{sig}: sustained shift from {_fmt(before)} to {_fmt(after)} {unit} "
                                       f"since {iso_ms(since)}{now}"))
            elif fast > 0.0:
                h = config.changepoint.levels.fast_h
                out.append(Explanation("changepoint", sig, unit, level, v if v == v else None, None,
                                       f"{sig}: sustained rise above its level of {_fmt(level)} {unit} "
                                       f"(short-horizon CUSUM {fast:.0f} > {h:g} robust σ-samples){now}"))
            if jit > 0.0:
                hj = config.changepoint.levels.jitter_h
                out.append(Explanation("changepoint", sig, unit, level, v if v == v else None, None,
                                       f"{sig}: jitter grew around its level of {_fmt(level)} {unit} "
                                       f"(deviations above and below it each summed past {hj:g} robust σ-samples){now}"))
    if ev & EV_RESIDUAL:
        for i, sig in enumerate(VALUE_SIGNALS):
            res = d.residual[i]
            if res is None or not res[1] > res[2]:
                continue
            pred, rz, thr = res
            unit = SIGNALS[sig].unit
            v = d.values[i]
            out.append(Explanation("residual", sig, unit, pred, v, rz,
                                   f"{sig}: forecast {_fmt(pred)} {unit}, observed {_fmt(v)} {unit} "
                                   f"({rz:.1f} σ of the training forecast error > {thr:.1f} σ)"))
    if ev & EV_MULTIVARIATE and d.multivariate is not None:
        a, thr_if, feat, sig_v = d.multivariate
        sig = _feature_signal(feat)
        out.append(Explanation("multivariate", sig, "score", thr_if, a, sig_v,
                               f"Isolation Forest score {a:.3f} > {thr_if:.3f}; most unusual feature "
                               f"{feat} at {sig_v:+.1f} σ of training"))
    return tuple(out)


def _feature_signal(feature: str) -> str:
    if feature.startswith("lbm_fail"):
        return "lbm_success"
    if feature.startswith("ecpri_udp_gap"):
        return "ecpri_ow_us"
    for m, sig in METRIC_SIGNAL.items():
        if feature.startswith(m + "_"):
            return sig
    return feature
