"""Detection configuration: dataclasses with defaults, loaded from YAML (``detection:`` section).

Every threshold carries its unit in the key or the docstring: relative rule levels are multiples
of the endpoint's baseline and absolute ones in the signal's own unit (ms or µs); the
level-shift detector's ``k``/``h`` are in units of its smallest shift of interest; the residual
threshold is in σ of the training forecast error; loss runs, persistence and every other time
are seconds of sample time. Unknown keys are errors (a typo must not silently fall back to a
default).

The seed's keys are honoured: ``detection.residual.use_pretrained_models`` and
``detection.residual.model_path`` (``false`` disables the TCN residual detector: this package
never trains online). See ``config/detection.example.yaml`` for every key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ocad_detectors.features import ReferenceStats, capability_key
from ocad_detectors.levels import LevelShiftConfig
from ocad_detectors.signals import SIGNALS, VALUE_SIGNALS

__all__ = [
    "DETECTORS",
    "EVIDENCE_TYPES",
    "SEVERITIES",
    "AlertConfig",
    "ChangePointConfig",
    "DetectionConfig",
    "FusionConfig",
    "MultivariateConfig",
    "ReloadConfig",
    "ResidualConfig",
    "RuleConfig",
    "SignalThreshold",
    "load_config",
]

#: detector names, in the fixed order used for scores and fusion
DETECTORS: tuple[str, ...] = ("rule", "changepoint", "residual", "multivariate")
#: evidence types an alert can cite (the rule detector yields two: threshold and loss)
EVIDENCE_TYPES: tuple[str, ...] = ("threshold", "loss", "changepoint", "residual", "multivariate")
#: alert severities, lowest first
SEVERITIES: tuple[str, ...] = ("warning", "major", "critical")

ENV_MODEL_DIR = "OCAD_MODEL_DIR"
DEFAULT_MODEL_DIR = "data/models"


def _check_keys(section: str, d: Mapping[str, Any], allowed: list[str]) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"{section}: expected a mapping, got {type(d).__name__}")
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise ValueError(f"{section}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _num(section: str, key: str, v: Any, *, lo: float | None = None, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{section}.{key}: expected a number, got {v!r}")
    f = float(v)
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError(f"{section}.{key}: must be finite, got {v!r}")
    if positive and f <= 0:
        raise ValueError(f"{section}.{key}: must be > 0, got {v!r}")
    if lo is not None and f < lo:
        raise ValueError(f"{section}.{key}: must be >= {lo}, got {v!r}")
    return f


def _int(section: str, key: str, v: Any, *, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{section}.{key}: expected an integer >= {lo}, got {v!r}")
    return int(v)


def _bool(section: str, key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{section}.{key}: expected true or false, got {v!r}")
    return v


def _from(cls: type, section: str, d: Mapping[str, Any] | None) -> Any:
    """Build a flat dataclass from a mapping; values are checked in ``__post_init__``."""
    if d is None:
        return cls()
    names = [f.name for f in fields(cls)]
    _check_keys(section, d, names)
    return cls(**dict(d))


@dataclass(frozen=True)
class SignalThreshold:
    """Rule levels for one delay signal, in that signal's own unit."""

    warning: float
    critical: float

    def __post_init__(self) -> None:
        _num("threshold", "warning", self.warning, positive=True)
        _num("threshold", "critical", self.critical, positive=True)
        if self.critical <= self.warning:
            raise ValueError(f"threshold: critical ({self.critical}) must be above warning ({self.warning})")


def _default_thresholds() -> dict[str, SignalThreshold]:
    # healthy fronthaul: UDP echo 2-8 ms, eCPRI one-way 50-200 µs, LBM 1.5-15 ms (DOMAIN.md)
    return {
        "udp_echo_rtt_ms": SignalThreshold(15.0, 50.0),
        "ecpri_ow_us": SignalThreshold(400.0, 1000.0),
        "lbm_rtt_ms": SignalThreshold(25.0, 100.0),
    }


def _parse_thresholds(section: str, th: Any, base: Mapping[str, SignalThreshold]) -> dict[str, SignalThreshold]:
    _check_keys(section, th, list(VALUE_SIGNALS))
    merged = dict(base)
    for sig, v in th.items():
        if v is None:  # explicit null: no rule for this signal
            merged.pop(sig, None)
            continue
        _check_keys(f"{section}.{sig}", v, ["warning", "critical"])
        try:
            merged[sig] = SignalThreshold(float(v["warning"]), float(v["critical"]))
        except KeyError as e:
            raise ValueError(f"{section}.{sig}: missing {e.args[0]!r} ({SIGNALS[sig].unit})") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"{section}.{sig}: {e}") from None
    return merged


@dataclass(frozen=True)
class RuleConfig:
    """Threshold and loss rules.

    ``mode: relative`` (default): a delay is a violation above ``warning_ratio`` x the
    endpoint's baseline and critical above ``critical_ratio`` x it. The baseline is the
    healthy training mean of the endpoint (from the models or ``changepoint.reference``); for an
    endpoint without one it is the median of its first ``baseline_samples`` values. The same
    defaults then serve a 1 ms fronthaul link and a 300 ms Internet path. ``mode: absolute``
    uses ``thresholds`` (in each signal's own unit) for every endpoint; ``absolute_groups``
    maps endpoint-id glob patterns (``o-ru-*``) to absolute SLA thresholds for those endpoints
    only (first match wins; unlisted signals fall back to ``thresholds``).

    Loss runs are measured in seconds since the last reply: evidence from ``loss_warning_s``
    with at least ``loss_min_samples`` consecutive lost probes, critical (rule score 1) from
    ``loss_critical_s`` with at least ``loss_critical_samples``; so one lost 240 s probe is
    not an outage, and 5 s probes behave as before (3 lost = warning, 12 lost = critical).

    Intermittent loss (replies missing here and there, never many in a row) is evidence once at
    least ``loss_rate`` of one probe type's probes are lost in its recent window: the last
    ``loss_rate_window_s`` seconds, but at least the last ``loss_rate_min_probes`` probes (so
    a 240 s probe is judged over as many probes as a 5 s one), with at least 3 lost.
    ``loss_rate: 0`` turns this off.
    """

    enabled: bool = True
    mode: str = "relative"
    warning_ratio: float = 2.0
    critical_ratio: float = 5.0
    baseline_samples: int = 12
    thresholds: Mapping[str, SignalThreshold] = field(default_factory=_default_thresholds)
    absolute_groups: Mapping[str, Mapping[str, SignalThreshold]] = field(default_factory=dict)
    loss_warning_s: float = 15.0
    loss_critical_s: float = 60.0
    loss_min_samples: int = 2
    loss_critical_samples: int = 3
    #: fraction of one probe type's probes lost in its recent window that is loss evidence
    loss_rate: float = 0.25
    #: the recent window: this many seconds of sample time ...
    loss_rate_window_s: float = 60.0
    #: ... but at least this many probes
    loss_rate_min_probes: int = 12

    def __post_init__(self) -> None:
        _bool("rules", "enabled", self.enabled)
        if self.mode not in ("relative", "absolute"):
            raise ValueError(f"rules.mode: expected relative or absolute, got {self.mode!r}")
        w = _num("rules", "warning_ratio", self.warning_ratio, positive=True)
        c = _num("rules", "critical_ratio", self.critical_ratio, positive=True)
        if w <= 1.0 or c <= w:
            raise ValueError(f"rules: need 1 < warning_ratio < critical_ratio, got {w} and {c}")
        _int("rules", "baseline_samples", self.baseline_samples, lo=1)
        for name, th in [("thresholds", self.thresholds), *((f"absolute_groups.{g}", t) for g, t in self.absolute_groups.items())]:
            bad = [sig for sig in th if sig not in VALUE_SIGNALS]
            if bad:
                raise ValueError(f"rules.{name}: unknown signal(s) {bad}; known: {list(VALUE_SIGNALS)}")
        lw = _num("rules", "loss_warning_s", self.loss_warning_s, lo=0.0)
        lc = _num("rules", "loss_critical_s", self.loss_critical_s, positive=True)
        if lc <= lw:
            raise ValueError("rules.loss_critical_s must be above rules.loss_warning_s")
        _int("rules", "loss_min_samples", self.loss_min_samples, lo=1)
        _int("rules", "loss_critical_samples", self.loss_critical_samples, lo=1)
        r = _num("rules", "loss_rate", self.loss_rate, lo=0.0)
        if r > 1.0:
            raise ValueError(f"rules.loss_rate: a fraction of probes in [0, 1], got {r}")
        _num("rules", "loss_rate_window_s", self.loss_rate_window_s, lo=0.0)
        _int("rules", "loss_rate_min_probes", self.loss_rate_min_probes, lo=1)

    def loss_rate_hit(self, lost: int, probes: int) -> bool:
        """Whether ``lost`` of the last ``probes`` probes (the loss-rate window) is loss evidence."""
        return self.loss_rate > 0.0 and probes >= self.loss_rate_min_probes and lost >= 3 and lost >= self.loss_rate * probes

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RuleConfig:
        if d is None:
            return cls()
        allowed = [f.name for f in fields(cls)]
        _check_keys("rules", d, allowed + ["loss_run_warning", "loss_run_critical"])
        kw = dict(d)
        for old in ("loss_run_warning", "loss_run_critical"):
            if old in kw:
                raise ValueError(
                    f"rules.{old}: loss runs are now set in seconds (loss_warning_s / loss_critical_s), "
                    "so that 5 s and 240 s probes behave alike"
                )
        if "thresholds" in kw:
            kw["thresholds"] = _parse_thresholds("rules.thresholds", kw["thresholds"], _default_thresholds())
        if "absolute_groups" in kw:
            groups = kw["absolute_groups"] or {}
            if not isinstance(groups, Mapping):
                raise ValueError("rules.absolute_groups: expected a mapping of endpoint pattern -> thresholds")
            base = kw.get("thresholds", _default_thresholds())
            kw["absolute_groups"] = {str(g): _parse_thresholds(f"rules.absolute_groups.{g}", t, base) for g, t in groups.items()}
        return cls(**kw)

    def absolute_for(self, endpoint_id: str) -> Mapping[str, SignalThreshold] | None:
        """The absolute thresholds that apply to this endpoint, or None (relative rules)."""
        from fnmatch import fnmatchcase

        for pattern, th in self.absolute_groups.items():
            if fnmatchcase(endpoint_id, pattern):
                return th
        return self.thresholds if self.mode == "absolute" else None


@dataclass(frozen=True)
class ChangePointConfig:
    """Two-sided level-shift detection that re-anchors on a new level (see
    :mod:`ocad_detectors.levels`), and the reference statistics the other detectors use.

    Every key but ``reference`` configures :class:`~ocad_detectors.levels.LevelShiftConfig`
    (shift sizes in robust σ of the endpoint's current level or relative to it, durations in
    seconds). A lasting upward shift is ``changepoint`` evidence until the new level has held
    ``rebaseline_s`` (then it is the baseline, also for the relative rules); changes in both
    directions are reported as change records.
    """

    #: the level-shift detector's settings (built from the section's other keys)
    levels: LevelShiftConfig = field(default_factory=LevelShiftConfig)
    #: operator-provided reference statistics (they win over the models'): a list of records
    #: ``{endpoint_id ('*' = pooled), signal, mean, std}`` or the path of a JSON file holding one.
    #: They give the rules a baseline and the Isolation Forest its standardization when no model
    #: provides them.
    reference: str | tuple[Mapping[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.levels, LevelShiftConfig):
            raise ValueError(f"changepoint.levels: expected LevelShiftConfig, got {self.levels!r}")
        if isinstance(self.reference, list):
            object.__setattr__(self, "reference", tuple(self.reference))
        if self.reference is not None and not isinstance(self.reference, (str, tuple)):
            raise ValueError(f"changepoint.reference: expected a list of records or a JSON path, got {self.reference!r}")
        self.reference_stats()  # fail early on bad records

    @property
    def enabled(self) -> bool:
        return self.levels.enabled

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ChangePointConfig:
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ValueError(f"changepoint: expected a mapping, got {type(d).__name__}")
        kw = {k: v for k, v in d.items() if k != "reference"}
        for old in ("clamp",):
            if old in kw:
                raise ValueError(f"changepoint.{old}: the fixed-reference CUSUM is gone; see levels settings "
                                 f"{sorted(LevelShiftConfig.__dataclass_fields__)}")
        try:
            levels = LevelShiftConfig.from_dict(kw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"changepoint: {str(e).removeprefix('levels: ')}".replace("levels.", "changepoint.")) from None
        return cls(levels=levels, reference=d.get("reference"))

    def reference_stats(self) -> ReferenceStats | None:
        """The configured reference statistics, or None."""
        if self.reference is None:
            return None
        rows: Any = self.reference
        if isinstance(rows, str):
            import json

            try:
                rows = json.loads(Path(rows).read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ValueError(f"changepoint.reference: cannot read {rows}: {e}") from None
        try:
            return ReferenceStats.from_records(rows)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"changepoint.reference: bad record ({e}); need endpoint_id, signal, mean, std") from None


@dataclass(frozen=True)
class ResidualConfig:
    """TCN forecast residuals (x - x̂) / residual scale (σ of the training residual), one-sided:
    a delay below its forecast is no degradation (and recovery edges must not alert)."""

    enabled: bool = True
    use_pretrained_models: bool = True
    #: registry root for the TCNs only (seed key); default: ``DetectionConfig.model_path``
    model_path: str | None = None
    #: evidence when (x - forecast) / residual scale exceeds this (σ); None = the model's
    #: budget-calibrated threshold (per endpoint where calibrated), else ``default_threshold``
    threshold: float | None = None
    default_threshold: float = 5.0
    #: ``per_endpoint`` (fall back to pooled for unknown endpoints) or ``pooled``
    scale: str = "per_endpoint"

    def __post_init__(self) -> None:
        _bool("residual", "enabled", self.enabled)
        _bool("residual", "use_pretrained_models", self.use_pretrained_models)
        if self.model_path is not None and not isinstance(self.model_path, (str, os.PathLike)):
            raise ValueError(f"residual.model_path: expected a path, got {self.model_path!r}")
        if self.threshold is not None:
            _num("residual", "threshold", self.threshold, positive=True)
        _num("residual", "default_threshold", self.default_threshold, positive=True)
        if self.scale not in ("per_endpoint", "pooled"):
            raise ValueError(f"residual.scale: expected per_endpoint or pooled, got {self.scale!r}")

    @property
    def active(self) -> bool:
        return self.enabled and self.use_pretrained_models


@dataclass(frozen=True)
class MultivariateConfig:
    """Isolation Forest on the shared features; the threshold defaults to the model's own."""

    enabled: bool = True
    use_pretrained_models: bool = True
    model_path: str | None = None
    #: anomaly score (-score_samples) above which the sample is evidence; None = from the model
    threshold: float | None = None

    def __post_init__(self) -> None:
        _bool("multivariate", "enabled", self.enabled)
        _bool("multivariate", "use_pretrained_models", self.use_pretrained_models)
        if self.model_path is not None and not isinstance(self.model_path, (str, os.PathLike)):
            raise ValueError(f"multivariate.model_path: expected a path, got {self.model_path!r}")
        if self.threshold is not None:
            _num("multivariate", "threshold", self.threshold, positive=True)

    @property
    def active(self) -> bool:
        return self.enabled and self.use_pretrained_models


def _default_weights() -> dict[str, float]:
    return {"rule": 1.0, "changepoint": 0.6, "residual": 0.5, "multivariate": 0.6}


@dataclass(frozen=True)
class FusionConfig:
    """How per-detector scores (each in [0, 1]) become the composite in [0, 1].

    ``noisy_or`` (default): ``1 - Π(1 - w_i s_i)`` with weights in [0, 1]; one strong detector
    can carry the composite alone and agreeing detectors add up. ``weighted_mean``:
    ``Σ w_i s_i / Σ w_i`` over the detectors that are running (a missing model does not drag
    the composite down).
    """

    method: str = "noisy_or"
    weights: Mapping[str, float] = field(default_factory=_default_weights)

    def __post_init__(self) -> None:
        if self.method not in ("noisy_or", "weighted_mean"):
            raise ValueError(f"fusion.method: expected noisy_or or weighted_mean, got {self.method!r}")
        _check_keys("fusion.weights", self.weights, list(DETECTORS))
        for k, v in self.weights.items():
            _num("fusion.weights", k, v, lo=0.0)
            if self.method == "noisy_or" and v > 1.0:
                raise ValueError(f"fusion.weights.{k}: noisy_or weights must be in [0, 1], got {v}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> FusionConfig:
        if d is None:
            return cls()
        _check_keys("fusion", d, ["method", "weights"])
        kw = dict(d)
        if "weights" in kw:
            _check_keys("fusion.weights", kw["weights"], list(DETECTORS))
            kw["weights"] = {**_default_weights(), **{k: float(v) for k, v in kw["weights"].items()}}
        return cls(**kw)

    def weight(self, detector: str) -> float:
        return float(self.weights.get(detector, 0.0))


def _default_severity() -> dict[str, float]:
    return {"major": 0.6, "critical": 0.85}


@dataclass(frozen=True)
class AlertConfig:
    """When evidence becomes an alert, and when an alert episode ends. Times are seconds of
    *sample* time (never the wall clock), so 5 s and 240 s probes behave alike.

    A sample is *alert-worthy* with at least ``min_evidence`` distinct evidence types, or one
    of the ``standalone_evidence`` types. Worthy samples form a *run* that survives gaps of up
    to ``gap_s`` (at least 2.5 probe intervals, inferred per endpoint). The run is *confirmed*
    (an alert may open) once it spans ``persist_s``, holds ``persist_min_samples`` worthy
    samples and at least ``persist_fraction`` of its samples are worthy: one late reply never
    pages anyone. Worthy evidence of an ``immediate_evidence`` type (a loss run, already timed;
    a CUSUM past its threshold, which has accumulated evidence over samples by construction)
    and a sample at a *critical* level (rule score 1: past the critical threshold or a
    critical loss run) alerts at once. An open episode absorbs later evidence (escalating when
    the severity rises) and is *resolved* after ``dedup_s`` (at least 2 intervals) without a
    worthy sample.
    """

    #: distinct evidence types a sample needs to be alert-worthy (1: any one type, once it
    #: persists; persistence, not agreement, keeps single-detector noise out of the pager)
    min_evidence: int = 1
    standalone_evidence: tuple[str, ...] = ("threshold", "loss")
    #: composite at or above which the alert is major / critical (below: warning)
    severity: Mapping[str, float] = field(default_factory=_default_severity)
    #: evidence types that carry their own duration (a loss run is timed from the last reply;
    #: the change-point CUSUMs sum evidence over many samples before they cross) and so alert
    #: without further persistence
    immediate_evidence: tuple[str, ...] = ("loss", "changepoint")
    #: statistical evidence must persist this long (sample time) before it counts
    persist_s: float = 60.0
    #: ... in at least this share of the run's samples ...
    persist_fraction: float = 0.5
    #: ... and in at least this many samples (so a single sample never alerts below critical)
    persist_min_samples: int = 2
    #: a run of evidence breaks after this long without a worthy sample
    gap_s: float = 60.0
    #: extra hold-down: the run must have lasted this long before the first alert
    hold_down_s: float = 0.0
    #: an open episode is resolved after this long without a worthy sample
    dedup_s: float = 300.0

    def __post_init__(self) -> None:
        _int("alerts", "min_evidence", self.min_evidence, lo=1)
        object.__setattr__(self, "standalone_evidence", tuple(self.standalone_evidence))
        object.__setattr__(self, "immediate_evidence", tuple(self.immediate_evidence))
        for key in ("standalone_evidence", "immediate_evidence"):
            bad = [e for e in getattr(self, key) if e not in EVIDENCE_TYPES]
            if bad:
                raise ValueError(f"alerts.{key}: unknown evidence type(s) {bad}; known: {list(EVIDENCE_TYPES)}")
        _check_keys("alerts.severity", self.severity, ["major", "critical"])
        sev = {**_default_severity(), **dict(self.severity)}
        for k, v in sev.items():
            _num("alerts.severity", k, v, lo=0.0)
        if not 0.0 <= sev["major"] <= sev["critical"] <= 1.0:
            raise ValueError(f"alerts.severity: need 0 <= major <= critical <= 1, got {sev}")
        object.__setattr__(self, "severity", sev)
        for key in ("persist_s", "gap_s", "hold_down_s", "dedup_s"):
            object.__setattr__(self, key, _num("alerts", key, getattr(self, key), lo=0.0))
        f = _num("alerts", "persist_fraction", self.persist_fraction, lo=0.0)
        if f > 1.0:
            raise ValueError(f"alerts.persist_fraction: must be in [0, 1], got {f}")
        object.__setattr__(self, "persist_fraction", f)
        _int("alerts", "persist_min_samples", self.persist_min_samples, lo=1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AlertConfig:
        """From YAML; the older millisecond keys ``hold_down_ms`` / ``dedup_ms`` still work."""
        if d is None:
            return cls()
        kw = dict(d)
        for old, new in (("hold_down_ms", "hold_down_s"), ("dedup_ms", "dedup_s")):
            if old in kw:
                if new in kw:
                    raise ValueError(f"alerts: give {new} or {old}, not both")
                kw[new] = _num("alerts", old, kw.pop(old), lo=0.0) / 1000.0
        for key in ("standalone_evidence", "immediate_evidence"):
            if key in kw and kw[key] is None:
                kw[key] = ()
        return _from(cls, "alerts", kw)


@dataclass(frozen=True)
class ReloadConfig:
    """Hot reload: look for a newly promoted model version every N processed samples (0 = never)."""

    check_every_samples: int = 1000

    def __post_init__(self) -> None:
        _int("reload", "check_every_samples", self.check_every_samples)


@dataclass(frozen=True)
class TrustConfig:
    """Model signatures: ``public_key`` (PEM Ed25519) verifies signed manifests; with
    ``require_signed`` an unsigned or wrongly signed version is refused."""

    public_key: str | None = None
    require_signed: bool = False

    def __post_init__(self) -> None:
        if self.public_key is not None and not isinstance(self.public_key, (str, os.PathLike)):
            raise ValueError(f"trust.public_key: expected a path, got {self.public_key!r}")
        _bool("trust", "require_signed", self.require_signed)
        if self.require_signed and self.public_key is None:
            raise ValueError("trust.require_signed: needs trust.public_key")


@dataclass(frozen=True)
class LimitsConfig:
    """Input bounds of a long-running detector.

    ``future_tolerance_ms``: a sample stamped later than the wall clock plus this is
    ``status="future"`` (a clock glitch must not make every later sample of its endpoint
    out-of-order); ``null`` turns the bound off (a host whose clock cannot be trusted).
    ``max_endpoints``: endpoints with state at most; a new one beyond it first
    evicts endpoints idle (sample time) for ``endpoint_idle_ms``, else is ``status="refused"``.
    """

    future_tolerance_ms: int | None = 3_600_000
    max_endpoints: int = 100_000
    endpoint_idle_ms: int = 86_400_000

    def __post_init__(self) -> None:
        if self.future_tolerance_ms is not None:  # None: no wall-clock bound (host clock untrusted)
            _int("limits", "future_tolerance_ms", self.future_tolerance_ms)
        _int("limits", "max_endpoints", self.max_endpoints, lo=1)
        _int("limits", "endpoint_idle_ms", self.endpoint_idle_ms)


@dataclass(frozen=True)
class DetectionConfig:
    """Everything the online detectors need besides the models themselves."""

    #: registry root; see :meth:`resolve_model_path` for the precedence
    model_path: str | None = None
    rules: RuleConfig = field(default_factory=RuleConfig)
    changepoint: ChangePointConfig = field(default_factory=ChangePointConfig)
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    multivariate: MultivariateConfig = field(default_factory=MultivariateConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    reload: ReloadConfig = field(default_factory=ReloadConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    #: endpoint_id -> capability key ("ecpri+lbm+udp_echo") for endpoints the models do not know
    endpoints: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        eps = {}
        for ep, caps in dict(self.endpoints).items():
            names: Any = caps.replace(",", "+").split("+") if isinstance(caps, str) else caps
            try:
                eps[str(ep)] = capability_key(c.strip() for c in names)
            except (TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"endpoints.{ep}: {e}") from None
        object.__setattr__(self, "endpoints", eps)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> DetectionConfig:
        """From the ``detection`` mapping (or a whole file's mapping that holds ``detection:``)."""
        if d is None:
            return cls()
        if "detection" in d:
            _check_keys("(top level)", d, ["detection", "serve"])  # serve: is ocad-serve's (ocad_detectors.serve.config)
            d = d["detection"] or {}
        sections = ["model_path", "rules", "changepoint", "residual", "multivariate", "fusion", "alerts", "reload", "trust", "limits", "endpoints"]
        _check_keys("detection", d, sections)
        mp = d.get("model_path")
        if mp is not None and not isinstance(mp, (str, os.PathLike)):
            raise ValueError(f"detection.model_path: expected a path, got {mp!r}")
        return cls(
            model_path=None if mp is None else str(mp),
            rules=RuleConfig.from_dict(d.get("rules")),
            changepoint=ChangePointConfig.from_dict(d.get("changepoint")),
            residual=_from(ResidualConfig, "residual", d.get("residual")),
            multivariate=_from(MultivariateConfig, "multivariate", d.get("multivariate")),
            fusion=FusionConfig.from_dict(d.get("fusion")),
            alerts=AlertConfig.from_dict(d.get("alerts")),
            reload=_from(ReloadConfig, "reload", d.get("reload")),
            trust=_from(TrustConfig, "trust", d.get("trust")),
            limits=_from(LimitsConfig, "limits", d.get("limits")),
            endpoints=dict(d.get("endpoints") or {}),
        )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> DetectionConfig:
        return load_config(path)

    def resolve_model_path(self, override: str | os.PathLike[str] | None = None, detector: str | None = None) -> Path:
        """Registry root: explicit argument > detector's own ``model_path`` (seed key) >
        ``$OCAD_MODEL_DIR`` > ``detection.model_path`` > ``data/models``.

        The environment beats the file so that one config can serve several deployments.
        """
        if override is not None:
            return Path(override)
        own = {"residual": self.residual.model_path, "multivariate": self.multivariate.model_path}.get(detector or "")
        if own:
            return Path(own)
        env = os.environ.get(ENV_MODEL_DIR)
        if env:
            return Path(env)
        return Path(self.model_path or DEFAULT_MODEL_DIR)


def load_config(path: str | os.PathLike[str]) -> DetectionConfig:
    """Read a YAML file; errors name the file and the offending key."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"config file {p} not found") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: invalid YAML: {e}") from None
    try:
        return DetectionConfig.from_dict(data or {})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{p}: {e}") from None
