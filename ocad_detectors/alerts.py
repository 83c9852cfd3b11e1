"""Alerts: evidence gating, severity buckets, hold-down and dedup on sample timestamps.

Per endpoint, a sample is *alert-worthy* when it carries at least ``min_evidence`` distinct
evidence types or any ``standalone_evidence`` type. Then:

* **hold-down**: the alert-worthy condition must have lasted ``hold_down_ms`` of sample time
  (first worthy sample of the current unbroken run -> now) before it may alert;
* **dedup**: the first alert opens an *episode*; later worthy samples of the endpoint within
  ``dedup_ms`` of the episode's previous worthy sample are absorbed (counted, no alert) unless
  the severity rises, which emits an escalation alert. After ``dedup_ms`` without a worthy
  sample the episode is over and the next worthy sample alerts again.

Only sample timestamps are used, never the wall clock, so a replay or a backfill produces
exactly the alerts of the live run. Severity comes from the composite score:
``warning`` < ``alerts.severity.major`` <= ``major`` < ``alerts.severity.critical`` <= ``critical``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

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
from ocad_detectors.signals import METRIC_SIGNAL, SIGNALS, VALUE_SIGNALS

__all__ = ["Alert", "AlertManager", "Explanation", "build_explanation"]

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN/inf become None)."""
        d = asdict(self)
        d["evidence"] = list(self.evidence)
        d["scores"] = dict(self.scores)
        d["explanation"] = [asdict(e) for e in self.explanation]
        return _json_safe(d)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


class _AlertState:
    __slots__ = ("episode_start", "last_ts", "open", "run_start", "severity", "suppressed")

    def __init__(self) -> None:
        self.run_start: int | None = None
        self.open = False
        self.last_ts = 0
        self.severity = SEVERITIES[0]
        self.episode_start = 0
        self.suppressed = 0


class AlertManager:
    """Evidence -> alerts, per endpoint; see the module docstring for the rules."""

    def __init__(self, config: AlertConfig | None = None) -> None:
        self.config = config or AlertConfig()
        self._min = self.config.min_evidence
        self._standalone = evidence_mask(self.config.standalone_evidence)
        self._major = self.config.severity["major"]
        self._critical = self.config.severity["critical"]
        self._hold = self.config.hold_down_ms
        self._dedup = self.config.dedup_ms
        self._states: dict[str, _AlertState] = {}

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

    def decide(self, st: _AlertState, ts: int, run_start: int, severity: str) -> tuple[bool, bool]:
        """Core state machine for one alert-worthy sample: (emit, escalation)."""
        if ts - run_start < self._hold:
            return False, False
        if st.open and ts - st.last_ts <= self._dedup:
            st.last_ts = ts
            if _RANK[severity] > _RANK[st.severity]:
                st.severity = severity
                return True, True
            st.suppressed += 1
            return False, False
        st.open = True
        st.episode_start = ts
        st.last_ts = ts
        st.severity = severity
        return True, False

    def step(self, st: _AlertState, ts: int, ev: int, composite: float) -> tuple[bool, bool, str]:
        """Streaming step for one accepted sample: (emit, escalation, severity)."""
        if not (ev & self._standalone or ev.bit_count() >= self._min):
            st.run_start = None
            return False, False, ""
        if st.run_start is None:
            st.run_start = ts
        sev = self.severity(composite)
        emit, esc = self.decide(st, ts, st.run_start, sev)
        return emit, esc, sev

    def observe(
        self,
        endpoint_id: str,
        timestamp_ms: int,
        evidence: Iterable[str],
        composite: float,
        scores: Mapping[str, float] | None = None,
        explanation: Sequence[Explanation] = (),
    ) -> Alert | None:
        """Standalone use: feed one scored sample of an endpoint (in timestamp order)."""
        ev = evidence_mask(tuple(evidence))
        st = self._states.setdefault(endpoint_id, self.new_state())
        emit, esc, sev = self.step(st, int(timestamp_ms), ev, float(composite))
        if not emit:
            return None
        return make_alert(endpoint_id, int(timestamp_ms), sev, float(composite), ev, dict(scores or {}), tuple(explanation), st.episode_start, esc)


def make_alert(
    endpoint_id: str, ts: int, severity: str, composite: float, ev: int, scores: Mapping[str, float],
    explanation: tuple[Explanation, ...], episode_start: int, escalation: bool,
) -> Alert:
    """Assemble an :class:`Alert` (one place for both the streaming and the batch path)."""
    head = f"{severity.upper()} {endpoint_id} at {ts} ms" + (" (escalated)" if escalation else "")
    body = "; ".join(e.text for e in explanation) if explanation else ", ".join(EVIDENCE_NAMES[ev])
    return Alert(endpoint_id, ts, severity, composite, EVIDENCE_NAMES[ev], dict(scores), explanation, episode_start, escalation, f"{head}: {body}")


@dataclass
class SampleDetails:
    """The numbers behind one sample's scores, for the explanation (same in both paths)."""

    values: tuple[float, float, float]
    reference: Sequence[tuple[float, float] | None]
    loss_runs: Mapping[str, int]
    cusum: Sequence[tuple[float, float]]
    residual: Sequence[tuple[float, float] | None]
    multivariate: tuple[float, float, str, float] | None = None


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def build_explanation(ev: int, d: SampleDetails, config: DetectionConfig) -> tuple[Explanation, ...]:
    """One :class:`Explanation` per signal behind each evidence type present in ``ev``."""
    out: list[Explanation] = []
    if ev & EV_THRESHOLD:
        for i, sig in enumerate(VALUE_SIGNALS):
            th = config.rules.thresholds.get(sig)
            v = d.values[i]
            if th is None or not v > th.warning:
                continue
            unit = SIGNALS[sig].unit
            ref = d.reference[i]
            sigma = (v - ref[0]) / ref[1] if ref is not None else None
            extra = f" ({sigma:+.1f} σ from the healthy {_fmt(ref[0])} {unit})" if ref is not None and sigma is not None else ""
            out.append(Explanation("threshold", sig, unit, th.warning, v, sigma,
                                   f"{sig} = {_fmt(v)} {unit} above the {th.warning:g} {unit} threshold{extra}"))
    if ev & EV_LOSS:
        lw = config.rules.loss_run_warning
        for cap in ("udp_echo", "ecpri", "lbm"):
            r = d.loss_runs.get(cap, 0)
            if r >= lw:
                sig = "lbm_success" if cap == "lbm" else METRIC_SIGNAL[cap]
                out.append(Explanation("loss", sig, "samples", 0.0, float(r), None,
                                       f"{sig}: {r} consecutive probes without a reply (loss evidence from {lw})"))
    if ev & EV_CHANGEPOINT:
        h = config.changepoint.h
        for i, sig in enumerate(VALUE_SIGNALS):
            S, z = d.cusum[i]
            ref = d.reference[i]
            if not h < S or ref is None:
                continue
            unit = SIGNALS[sig].unit
            v = d.values[i]
            now = f"; now {_fmt(v)} {unit} ({z:+.1f} σ)" if v == v else "; no value this sample"
            out.append(Explanation("changepoint", sig, unit, ref[0], v if v == v else None, z if v == v else None,
                                   f"{sig}: sustained shift above the healthy {_fmt(ref[0])} {unit}, "
                                   f"CUSUM {S:.1f} σ > h = {h:g} σ{now}"))
    if ev & EV_RESIDUAL:
        thr = config.residual.threshold
        for i, sig in enumerate(VALUE_SIGNALS):
            res = d.residual[i]
            if res is None or not res[1] > thr:
                continue
            pred, r = res
            unit = SIGNALS[sig].unit
            v = d.values[i]
            out.append(Explanation("residual", sig, unit, pred, v, r,
                                   f"{sig}: forecast {_fmt(pred)} {unit}, observed {_fmt(v)} {unit} "
                                   f"({r:.1f} σ of the training forecast error > {thr:g} σ)"))
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
