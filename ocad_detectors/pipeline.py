"""The combined engine: streaming ``process(sample)`` and batch ``score_frame(frame)``.

Usage::

    from ocad_detectors.pipeline import DetectionPipeline
    from ocad_detectors.samples import Sample

    det = DetectionPipeline.from_yaml("config/detection.yaml")    # or DetectionPipeline()
    r = det.process(Sample(1767225600000, "o-ru-001", udp_echo_rtt_ms=4.2, ecpri_ow_us=120.0,
                           lbm_rtt_ms=7.9, lbm_success=True))
    r.scores, r.composite, r.alert        # per-detector scores, fused score, Alert or None

    batch = det.score_frame(frame)         # a recorded wide DataFrame; same results, vectorized

Both paths run the same detectors with the same floating-point operations in the same order,
so scoring a recorded frame gives exactly the results of streaming its rows one by one
(TCN forecasts may differ in the last bit between a single-window and a batched matrix product;
everything else is bit-identical).

Per sample, in this order: validate -> order check -> capabilities -> rules -> level shifts
(change records; a re-baselined level becomes the rules' baseline) -> TCN residual -> Isolation
Forest -> fusion -> alert manager (persistence, episodes, resolutions). The stateful steps
(rules, level shifts, alerts) run the very same per-sample code in batch mode; the TCN and the
forest are vectorized. Treatments (documented contract):

* **invalid** sample (see :mod:`ocad_detectors.samples`): ``status="invalid"``, ``error``
  names every bad field, scores 0; no state changes.
* **duplicate** (timestamp equal to the endpoint's newest accepted one) and **out-of-order**
  (older): ``status="duplicate"`` / ``"out_of_order"``, scores 0, no state change; the first
  sample seen for a timestamp wins.
* **unknown endpoint** (not in ``config.endpoints`` and not in the models' training data):
  pooled reference statistics and pooled residual scale; its capabilities are the union of
  the probe types it has returned a value for so far (a capability appears with its first
  value; missing values of a known capability then count as loss).
* values of signals an endpoint does not support (per config or training data) are ignored.
* **future** timestamp (later than the wall clock plus ``limits.future_tolerance_ms``, e.g. a
  clock glitch): ``status="future"``, no state change, so it cannot make every later sample of
  its endpoint out-of-order.
* **refused** endpoint: a new endpoint when ``limits.max_endpoints`` endpoints hold state and
  none has been idle (sample time) for ``limits.endpoint_idle_ms`` (those are evicted first):
  ``status="refused"``, no state. Batch scoring starts from a fresh state and is not capped.
* an unexpected internal error yields ``status="error"`` and is logged once per message;
  the stream goes on. Every input sample yields exactly one result, whatever it is (hostile
  mappings and objects included).

Hot reload: every ``reload.check_every_samples`` samples, ``process`` compares the
``index.json`` files of the models (one ``stat`` each); when one changed, or on an explicit
:meth:`DetectionPipeline.reload`, the production versions are loaded and swapped in between two
samples. A reload is all-or-nothing: every changed model is verified and built (bounded sizes)
before anything is swapped; if one is refused the whole set in service stays, the reason is
logged and kept in :attr:`DetectionPipeline.last_reload_error`, and
:attr:`DetectionPipeline.reload_failures` counts it. Buffers, level-shift states and alert episodes are kept; a TCN with a new ``seq_len`` gets its
buffer trimmed or extended, a longer feature window waits until it is full again. Loading
(reading + sha256) then happens on the sample that noticed the change; to keep it off the hot
path set ``check_every_samples: 0`` and call ``reload()`` from another thread (thread-safe:
the swap waits for the sample in progress). One pipeline serialises ``process`` calls with a
lock; ``score_frame`` does not take it (it works on its own state), it only holds model swaps
off until it is done, so a long batch never stalls the stream.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ocad_detectors._util import EV_MULTIVARIATE, EVIDENCE_NAMES, WarnOnce
from ocad_detectors.alerts import Alert, AlertManager, Resolution, SampleDetails, build_explanation, make_alert
from ocad_detectors.changepoint import ChangePointDetector
from ocad_detectors.config import DETECTORS, DetectionConfig, load_config
from ocad_detectors.fusion import ScoreFusion
from ocad_detectors.modelset import ModelLoader, ModelSet
from ocad_detectors.multivariate import MultivariateDetector, if_score_to_unit_array, score_jobs, top_feature
from ocad_detectors.residual import ResidualDetector
from ocad_detectors.rules import RuleDetector
from ocad_detectors.samples import (
    MAX_TIMESTAMP_MS,
    check_endpoint,
    check_timestamp,
    safe_repr,
    validate_frame,
    validate_sample,
)
from ocad_detectors.signals import METRIC_TYPES

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["STATUSES", "BatchResult", "DetectionPipeline", "DetectionResult"]

logger = logging.getLogger("ocad_detectors")

#: result statuses; only ``ok`` samples change detector state
STATUSES: tuple[str, ...] = ("ok", "invalid", "duplicate", "out_of_order", "future", "refused", "error")
_CAP_BITS = {"udp_echo": 1, "ecpri": 2, "lbm": 4}
_CAPS_BY_BITS: tuple[frozenset[str], ...] = tuple(
    frozenset(c for c, b in _CAP_BITS.items() if m & b) for m in range(8)
)
_ZERO_SCORES = (0.0, 0.0, 0.0, 0.0)
_NAN = float("nan")
_BATCH_CHUNK = 65_536  # samples per group of endpoints in batch mode (bounds memory)


def _caps_bits(caps: Iterable[str]) -> int:
    b = 0
    for c in caps:
        b |= _CAP_BITS[c]
    return b


@dataclass(slots=True)
class DetectionResult:
    """What the detectors say about one input sample (exactly one per sample)."""

    timestamp_ms: int | None
    endpoint_id: str | None
    status: str
    scores: dict[str, float]
    composite: float
    evidence: tuple[str, ...] = ()
    alert: Alert | None = None
    error: str | None = None
    #: the endpoint's alert episode that ended at this sample
    resolved: Resolution | None = None
    #: level changes confirmed at this sample (both directions)
    changes: tuple[Any, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "timestamp_ms": self.timestamp_ms,
            "endpoint_id": self.endpoint_id,
            "status": self.status,
            "error": self.error,
            **{f"score_{k}": v for k, v in self.scores.items()},
            "composite": self.composite,
            "evidence": ",".join(self.evidence),
            "alert": self.alert is not None,
            "severity": self.alert.severity if self.alert is not None else None,
            "resolved": self.resolved is not None,
            "changes": len(self.changes),
        }


class _Endpoint:
    __slots__ = ("alert", "caps", "cp", "fixed", "id", "last_ts", "mv", "res", "rule")
    # the detectors' own state objects, set by DetectionPipeline._new_endpoint
    alert: Any
    cp: Any
    mv: Any
    res: Any
    rule: Any

    def __init__(self, endpoint_id: str, caps: frozenset[str], fixed: bool) -> None:
        self.id = endpoint_id
        self.last_ts: int | None = None
        self.caps = caps
        self.fixed = fixed


@dataclass
class BatchResult:
    """Columnar results of :meth:`DetectionPipeline.score_frame`, in input row order."""

    timestamp_ms: list[int | None]
    endpoint_id: list[str | None]
    status: np.ndarray
    error: list[str | None]
    scores: dict[str, np.ndarray]
    composite: np.ndarray
    evidence: np.ndarray  # int bit masks
    alert_index: np.ndarray  # index into ``alerts`` or -1
    alerts: list[Alert] = field(default_factory=list)
    resolution_index: np.ndarray | None = None  # index into ``resolutions`` or -1
    resolutions: list[Resolution] = field(default_factory=list)
    #: input row -> the level changes confirmed at that sample
    changes: dict[int, tuple[Any, ...]] = field(default_factory=dict)

    @property
    def change_records(self) -> list[Any]:
        """Every level change, in input row order."""
        return [r for i in sorted(self.changes) for r in self.changes[i]]

    def __len__(self) -> int:
        return len(self.status)

    def results(self) -> list[DetectionResult]:
        """The same objects streaming would have returned (handy for comparisons; slower)."""
        out = []
        sc = [self.scores[d].tolist() for d in DETECTORS]
        comp = self.composite.tolist()
        ev = self.evidence.tolist()
        ai = self.alert_index.tolist()
        ri = self.resolution_index.tolist() if self.resolution_index is not None else [-1] * len(ai)
        for i in range(len(self.status)):
            out.append(
                DetectionResult(
                    self.timestamp_ms[i], self.endpoint_id[i], str(self.status[i]),
                    {d: sc[j][i] for j, d in enumerate(DETECTORS)}, comp[i], EVIDENCE_NAMES[ev[i]],
                    self.alerts[ai[i]] if ai[i] >= 0 else None, self.error[i],
                    self.resolutions[ri[i]] if ri[i] >= 0 else None, self.changes.get(i, ()),
                )
            )
        return out

    def to_frame(self) -> pd.DataFrame:
        """Per-sample scores as a DataFrame (what ``ocad-detect --scores`` writes)."""
        import pandas as pd

        sev = np.full(len(self.status), None, dtype=object)
        esc = np.zeros(len(self.status), dtype=bool)
        for i in np.flatnonzero(self.alert_index >= 0).tolist():
            a = self.alerts[int(self.alert_index[i])]
            sev[i] = a.severity
            esc[i] = a.escalation
        resolved = self.resolution_index >= 0 if self.resolution_index is not None else np.zeros(len(self.status), dtype=bool)
        change = np.full(len(self.status), None, dtype=object)
        for i, recs in self.changes.items():
            change[i] = ";".join(f"{r.signal}:{r.direction}" for r in recs)
        df = pd.DataFrame(
            {
                "timestamp_ms": pd.array(self.timestamp_ms, dtype="Int64"),
                "endpoint_id": pd.array(self.endpoint_id, dtype="string"),
                "status": pd.array(self.status.astype(str), dtype="string"),
                "error": pd.array(self.error, dtype="string"),
                **{f"score_{d}": self.scores[d] for d in DETECTORS},
                "composite": self.composite,
                "evidence": pd.array([",".join(EVIDENCE_NAMES[e]) for e in self.evidence.tolist()], dtype="string"),
                "alert": self.alert_index >= 0,
                "severity": pd.array(sev, dtype="string"),
                "escalation": esc,
                "resolved": resolved,
                "change": pd.array(change, dtype="string"),
            }
        )
        return df


class DetectionPipeline:
    """All detectors behind one streaming / batch interface.

    ``config``: a :class:`DetectionConfig` (default values if None). ``model_dir``: registry
    root, overriding config and ``$OCAD_MODEL_DIR``. ``models``: a ready :class:`ModelSet`
    instead of the registry (tests, embedding); then :meth:`reload` has nothing to read.
    ``versions``: model name -> registry version to serve instead of production (e.g.
    ``{"tcn_ecpri": "1.1.0"}``) for evaluation and shadow scoring; pinned models ignore
    promotions. ``clock``: wall clock in seconds for the future-timestamp bound
    (``limits.future_tolerance_ms``); tests and replays of synthetic future data pass their own.
    """

    def __init__(
        self,
        config: DetectionConfig | None = None,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        models: ModelSet | None = None,
        versions: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = cfg = config or DetectionConfig()
        self.rules = RuleDetector(cfg.rules)
        self.changepoint = ChangePointDetector(cfg.changepoint)
        self.residual = ResidualDetector(cfg.residual)
        self.multivariate = MultivariateDetector(cfg.multivariate)
        self.fusion = ScoreFusion(cfg.fusion)
        self.alerts = AlertManager(cfg.alerts)
        self._endpoints: dict[str, _Endpoint] = {}
        self._lock = threading.RLock()
        self._swap_lock = threading.RLock()  # held by score_frame and by a model swap
        self._clock = clock  # wall clock (s) for the future-timestamp bound
        self._newest_ts = -1  # newest accepted sample time, for idle eviction
        self._next_evict_scan = -1
        #: failed reloads (a refused model keeps the whole set in service) and the last reason
        self.reload_failures = 0
        self.last_reload_error: str | None = None
        #: models refused at construction (verification or validation failed), one line each
        self.model_errors: list[str] = []
        self._errors = WarnOnce()
        self._n = 0
        self._every = cfg.reload.check_every_samples
        self._config_reference = cfg.changepoint.reference_stats()
        if models is None:
            tcn_root = cfg.resolve_model_path(model_dir, "residual") if cfg.residual.active else None
            if_root = cfg.resolve_model_path(model_dir, "multivariate") if cfg.multivariate.active else None
            trust = cfg.trust
            self.loader: ModelLoader | None = ModelLoader(
                tcn_root, if_root, pinned=versions, public_key=trust.public_key, require_signed=trust.require_signed
            )
            self._fingerprint = self.loader.fingerprint()
            models = self.loader.load()
            self.model_errors = list(self.loader.errors)
        else:
            self.loader = None
            self._fingerprint = ()
        self.models = ModelSet()
        self._apply_models(models)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], model_dir: str | os.PathLike[str] | None = None) -> DetectionPipeline:
        return cls(load_config(path), model_dir)

    # ------------------------------------------------------------------ models

    @property
    def model_versions(self) -> dict[str, str | None]:
        """Registry versions in use (None: not loaded)."""
        return self.models.versions

    def _apply_models(self, models: ModelSet) -> None:
        """Swap models into the detectors (caller holds the lock or is the constructor); if the
        swap fails half-way the previous set is put back and the error re-raised."""
        old = self.models if hasattr(self, "models") else None
        try:
            self._apply_models_unchecked(models)
        except BaseException:
            if old is not None and old is not models:
                self._apply_models_unchecked(old)
            raise

    def _apply_models_unchecked(self, models: ModelSet) -> None:
        self.models = models
        self.residual.set_models(models.tcn if self.config.residual.active else {})
        self.multivariate.set_model(models.iforest if self.config.multivariate.active else None)
        ref = models.reference()
        if self._config_reference is not None:  # the operator's statistics win
            ref.per_endpoint.update(self._config_reference.per_endpoint)
            ref.pooled.update(self._config_reference.pooled)
        self.changepoint.set_reference(ref)
        self.rules.set_reference(ref)
        self._known = models.known_capabilities()
        active = ["rule", "changepoint"]
        if self.residual.active:
            active.append("residual")
        if self.multivariate.active:
            active.append("multivariate")
        active = [d for d in active if getattr(self.config, {"rule": "rules"}.get(d, d)).enabled]
        self.fusion.set_active(active)
        for e in self._endpoints.values():
            self.rules.refresh_state(e.rule)
            self.changepoint.refresh_state(e.cp)
            self.residual.refresh_state(e.res)
            self.multivariate.refresh_state(e.mv)

    def reload(self) -> dict[str, str | None]:
        """Load the registry's production versions now and swap them in between two samples.

        A version that cannot be loaded (missing, fails verification) is reported and the
        model in service stays. Returns the versions in use afterwards.
        """
        if self.loader is None:
            return self.model_versions
        with self._swap_lock:
            return self._reload()

    def _reload(self) -> dict[str, str | None]:
        assert self.loader is not None
        fp = self.loader.fingerprint()
        known = set(self.model_errors)
        try:
            new = self.loader.load(self.models)  # file I/O and hashing outside the lock
            # a model that fails exactly as before is not part of the new set; anything else blocks
            errors = [e for e in self.loader.errors if e not in known]
        except Exception as exc:  # pragma: no cover - the loader reports per model
            new, errors = self.models, [f"{type(exc).__name__}: {exc}"]
        if not errors:
            try:
                with self._lock:
                    if new.versions != self.models.versions:
                        self._apply_models(new)
            except Exception as exc:
                errors = [f"swapping models in failed: {type(exc).__name__}: {exc}"]
        self._fingerprint = fp
        if errors:
            self.reload_failures += 1
            self.last_reload_error = "; ".join(errors)
            logger.warning(
                "model reload refused, the models in service stay (%s): %s",
                ", ".join(f"{k} {v}" for k, v in self.model_versions.items() if v), self.last_reload_error,
            )
        else:
            self.model_errors = list(self.loader.errors)
        return self.model_versions

    def _maybe_reload(self) -> None:
        if self.loader is not None and self.loader.fingerprint() != self._fingerprint:
            # a batch in progress holds swaps off: try again at the next check, do not wait
            if self._swap_lock.acquire(blocking=False):
                try:
                    self._reload()
                finally:
                    self._swap_lock.release()

    # ------------------------------------------------------------------ streaming

    def _endpoint(self, endpoint_id: str) -> _Endpoint:
        caps_key = self.config.endpoints.get(endpoint_id)
        if caps_key is not None:
            e = _Endpoint(endpoint_id, _CAPS_BY_BITS[_caps_bits(caps_key.split("+"))], True)
        elif endpoint_id in self._known:
            e = _Endpoint(endpoint_id, _CAPS_BY_BITS[_caps_bits(self._known[endpoint_id])], True)
        else:
            e = _Endpoint(endpoint_id, _CAPS_BY_BITS[0], False)
        e.rule = self.rules.new_state(endpoint_id)
        e.cp = self.changepoint.new_state(endpoint_id)
        e.res = self.residual.new_state(endpoint_id)
        e.mv = self.multivariate.new_state(endpoint_id)
        e.alert = self.alerts.new_state()
        self._endpoints[endpoint_id] = e
        return e

    def process(self, sample: Any) -> DetectionResult:
        """Score one sample (a :class:`~ocad_detectors.samples.Sample` or a mapping)."""
        self._n += 1
        if self._every and self._n % self._every == 0:
            try:
                self._maybe_reload()
            except Exception as exc:
                self._errors(("reload", str(exc)), "model reload failed: %s", exc)
        with self._lock:
            try:
                return self._process(sample)
            except Exception as exc:
                msg = f"internal error: {type(exc).__name__}: {safe_repr(exc, str)}"
                self._errors(msg, "%s (sample %s)", msg, safe_repr(sample))
                try:
                    ts = getattr(sample, "timestamp_ms", None) if not isinstance(sample, Mapping) else sample.get("timestamp_ms")
                    ep = getattr(sample, "endpoint_id", None) if not isinstance(sample, Mapping) else sample.get("endpoint_id")
                    t, _ = check_timestamp(ts)
                    eid, _ = check_endpoint(ep)
                except Exception:  # a hostile sample: nothing of it is readable
                    t, eid = None, None
                return DetectionResult(t, eid, "error", dict(zip(DETECTORS, _ZERO_SCORES)), 0.0, (), None, msg)

    def process_many(self, samples: Iterable[Any]) -> list[DetectionResult]:
        return [self.process(s) for s in samples]

    def _process(self, sample: Any) -> DetectionResult:
        vals, ts, ep, err = validate_sample(sample)
        if vals is None:
            return DetectionResult(ts, ep, "invalid", dict(zip(DETECTORS, _ZERO_SCORES)), 0.0, (), None, err)
        ts, ep, u, c, lb, s = vals
        limit = self._future_limit()
        if ts > limit:
            return DetectionResult(ts, ep, "future", dict(zip(DETECTORS, _ZERO_SCORES)), 0.0, (), None, _future_msg(ts, limit))
        e = self._endpoints.get(ep)
        if e is None:
            if len(self._endpoints) >= self.config.limits.max_endpoints and not self._evict_for_room():
                msg = (f"endpoint limit reached: {len(self._endpoints)} endpoints hold state (limits.max_endpoints) "
                       f"and none has been idle for limits.endpoint_idle_ms; {ep!r} not tracked")
                return DetectionResult(ts, ep, "refused", dict(zip(DETECTORS, _ZERO_SCORES)), 0.0, (), None, msg)
            e = self._endpoint(ep)
        last = e.last_ts
        if last is not None and ts <= last:
            status = "duplicate" if ts == last else "out_of_order"
            msg = f"timestamp {ts} {'equals' if ts == last else 'is older than'} the newest accepted {last} of {ep}; not used"
            return DetectionResult(ts, ep, status, dict(zip(DETECTORS, _ZERO_SCORES)), 0.0, (), None, msg)
        e.last_ts = ts
        if ts > self._newest_ts:
            self._newest_ts = ts
        caps = e.caps
        if not e.fixed:
            bits = _caps_bits(caps)
            nb = bits | (1 if u == u else 0) | (2 if c == c else 0) | (4 if (lb == lb or s == s) else 0)
            if nb != bits:
                caps = e.caps = _CAPS_BY_BITS[nb]
        if "udp_echo" not in caps:
            u = float("nan")
        if "ecpri" not in caps:
            c = float("nan")
        if "lbm" not in caps:
            lb = s = float("nan")
        s0, ev = self.rules.update(e.rule, caps, ts, u, c, lb, s)
        s1, ev1, changes, rebase = self.changepoint.update(e.cp, ts, u, c, lb)
        for i, level, rebaselined in rebase:
            self.rules.rebaseline(e.rule, i, level)
            if rebaselined:
                self.alerts.note_rebaseline(e.alert)
        s2, ev2 = self.residual.update(e.res, u, c, lb)
        s3, ev3 = self.multivariate.update(e.mv, caps, ts, u, c, lb, s)
        ev |= ev1 | ev2 | ev3
        composite = self.fusion.combine(s0, s1, s2, s3)
        scores = {"rule": s0, "changepoint": s1, "residual": s2, "multivariate": s3}
        emit, esc, sev, resolution = self.alerts.step(e.alert, ep, ts, ev, composite, s0 >= 1.0)
        alert = None
        if emit:
            d = SampleDetails(
                (u, c, lb), e.cp.refs, self.rules.details(e.rule), self.changepoint.details(e.cp),
                [(e.res.pred[i], e.res.r[i], e.res.thr[METRIC_TYPES[i]]) if e.res.r[i] == e.res.r[i] else None for i in range(3)],
                self.multivariate.explain(e.mv), list(e.rule.levels),
            )
            alert = make_alert(ep, ts, sev, composite, ev, scores, build_explanation(ev, d, self.config), e.alert.episode_start, esc,
                               e.alert.run_start)
        return DetectionResult(ts, ep, "ok", scores, composite, EVIDENCE_NAMES[ev], alert, None, resolution, changes)

    def _future_limit(self) -> int:
        """Latest acceptable sample time (ms): wall clock plus ``limits.future_tolerance_ms``."""
        tol = self.config.limits.future_tolerance_ms
        return MAX_TIMESTAMP_MS if tol is None else int(self._clock() * 1000.0) + tol

    def _evict_for_room(self) -> bool:
        """At the endpoint cap: drop endpoints idle for ``limits.endpoint_idle_ms`` (sample
        time); whether there is room now. Scans at most once per tenth of the idle time."""
        idle_ms = self.config.limits.endpoint_idle_ms
        if self._newest_ts < self._next_evict_scan:
            return False
        self._next_evict_scan = self._newest_ts + max(idle_ms // 10, 1)
        cutoff = self._newest_ts - idle_ms
        gone = [k for k, e in self._endpoints.items() if e.last_ts is None or e.last_ts < cutoff]
        for k in gone:
            del self._endpoints[k]
        if gone:
            logger.info("endpoint limit: evicted %d endpoints idle for more than %d ms", len(gone), idle_ms)
        return len(self._endpoints) < self.config.limits.max_endpoints

    def reset(self) -> None:
        """Forget every endpoint's state (buffers, sums, episodes); models stay."""
        with self._lock:
            self._endpoints.clear()

    def forget(self, endpoint_id: str) -> bool:
        """Drop one endpoint's state (e.g. decommissioned); its next sample starts afresh, with
        the usual warm-up. Returns whether the endpoint was known."""
        with self._lock:
            return self._endpoints.pop(endpoint_id, None) is not None

    def evict_idle(self, before_ts_ms: int) -> list[str]:
        """Drop the state of every endpoint whose newest accepted sample is older than
        ``before_ts_ms`` (sample time, like everything else here); returns their ids.

        A long-running service whose fleet changes calls this now and then, e.g. with
        ``newest_timestamp - 24 h``, so that endpoints that went away do not keep their buffers
        forever (each holds a few kB). The pipeline never evicts on its own: one sample with a
        bogus future timestamp must not wipe the fleet's state.
        """
        if isinstance(before_ts_ms, bool) or not isinstance(before_ts_ms, (int, np.integer)):
            raise TypeError(f"before_ts_ms must be an integer timestamp in ms, got {before_ts_ms!r}")
        with self._lock:
            idle = [k for k, e in self._endpoints.items() if e.last_ts is None or e.last_ts < before_ts_ms]
            for k in idle:
                del self._endpoints[k]
            return idle

    @property
    def last_seen(self) -> dict[str, int | None]:
        """Endpoint id -> timestamp (ms) of its newest accepted sample."""
        with self._lock:
            return {k: e.last_ts for k, e in self._endpoints.items()}

    def export_state(self) -> dict[str, Any]:
        """Per-endpoint state as JSON-able data (see :mod:`ocad_detectors.state`)."""
        from ocad_detectors.state import export_state

        return export_state(self)

    def import_state(self, data: dict[str, Any], keep: Callable[[str], bool] | None = None) -> list[str]:
        """Restore what :meth:`export_state` returned; ``ValueError`` (no change) if malformed."""
        from ocad_detectors.state import import_state

        return import_state(self, data, keep)

    @property
    def endpoints(self) -> dict[str, frozenset[str]]:
        """Endpoints seen so far and their capability sets."""
        return {k: e.caps for k, e in self._endpoints.items()}

    # ------------------------------------------------------------------ batch

    def score_frame(self, frame: pd.DataFrame, progress: Callable[[int], None] | None = None) -> BatchResult:
        """Score a recorded wide frame (``timestamp_ms``, ``endpoint_id``, signal columns) from a
        fresh state, vectorized; the streaming state of this pipeline is not touched.

        Rows are taken in frame order (that is the arrival order for duplicates and out-of-order
        checks). Missing signal columns mean "no value"; other columns are ignored. Raises
        ``ValueError`` when ``timestamp_ms`` or ``endpoint_id`` is missing or no signal column
        exists. ``progress(n)`` is called with the number of samples finished so far.
        """
        with self._swap_lock:  # models stay put for the whole run; process() is not blocked
            return _BatchRun(self, frame, progress).run()


class _BatchRun:
    """One vectorized pass over a frame; mirrors ``DetectionPipeline._process`` exactly."""

    def __init__(self, pipe: DetectionPipeline, frame: pd.DataFrame, progress: Callable[[int], None] | None) -> None:
        self.p = pipe
        self.frame = frame
        self.progress = progress

    # -------------------------------------------------------------- validation

    def _validate(self) -> None:
        chk = validate_frame(self.frame)  # the one vectorized validator (the reader's too)
        self.n = chk.n
        self.status = np.where(chk.valid, "ok", "invalid").astype(object)
        self.error: list[str | None] = chk.error
        self.ts_out: list[int | None] = chk.ts_out
        self.ep_out: list[str | None] = chk.ep_out
        ts = chk.ts
        limit = self.p._future_limit()
        for i in np.flatnonzero((self.status == "ok") & (ts > limit)).tolist():
            self.status[i] = "future"
            self.error[i] = _future_msg(int(ts[i]), limit)
        self.valid = self.status == "ok"
        self.ts = ts
        self.eps = chk.eps
        self.u, self.c, self.lb, self.s = chk.values

    # -------------------------------------------------------------- ordering

    def _order(self) -> list[tuple[str, np.ndarray]]:
        """Accepted rows per endpoint (input order); marks duplicates and out-of-order rows."""
        import pandas as pd

        idx = np.flatnonzero(self.valid)
        codes, _ = pd.factorize(self.eps[idx])
        groups: list[tuple[str, np.ndarray]] = []
        if len(idx) == 0:
            return groups
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        for part in np.split(order, bounds):
            rows = idx[part]
            t = self.ts[rows]
            prev = np.empty(len(t), dtype=np.int64)
            prev[0] = -1
            if len(t) > 1:
                prev[1:] = np.maximum.accumulate(t)[:-1]
            acc = t > prev
            if not acc.all():
                ep = str(self.eps[rows[0]])
                for j in np.flatnonzero(~acc).tolist():
                    dup = t[j] == prev[j]
                    self.status[rows[j]] = "duplicate" if dup else "out_of_order"
                    self.error[rows[j]] = (
                        f"timestamp {int(t[j])} {'equals' if dup else 'is older than'} the newest accepted {int(prev[j])} of {ep}; not used"
                    )
            groups.append((str(self.eps[rows[0]]), rows[acc]))
        return groups

    # -------------------------------------------------------------- scoring

    def run(self) -> BatchResult:
        self._validate()
        n = self.n
        self.S = [np.zeros(n) for _ in DETECTORS]
        self.composite = np.zeros(n)
        self.ev = np.zeros(n, dtype=np.int64)
        self.alert_index = np.full(n, -1, dtype=np.int64)
        self.alerts: list[Alert] = []
        self.resolution_index = np.full(n, -1, dtype=np.int64)
        self.resolutions: list[Resolution] = []
        self.change_rows: list[tuple[int, tuple[Any, ...]]] = []
        groups = self._order()
        done = int((~self.valid).sum())
        chunk: list[tuple[str, np.ndarray]] = []
        size = 0
        for g in groups:
            chunk.append(g)
            size += len(g[1])
            if size >= _BATCH_CHUNK:
                self._score_chunk(chunk)
                done += size
                if self.progress:
                    self.progress(done)
                chunk, size = [], 0
        if chunk:
            self._score_chunk(chunk)
            done += size
        # rows that were valid but not accepted are finished too
        if self.progress:
            self.progress(n)
        return BatchResult(
            self.ts_out, self.ep_out, self.status, self.error, dict(zip(DETECTORS, self.S)),
            self.composite, self.ev, self.alert_index, self.alerts, self.resolution_index, self.resolutions,
            dict(self.change_rows),
        )

    def _caps(self, ep: str, u: np.ndarray, c: np.ndarray, lb: np.ndarray, s: np.ndarray) -> np.ndarray:
        p = self.p
        key = p.config.endpoints.get(ep)
        if key is not None:
            return np.full(len(u), _caps_bits(key.split("+")), dtype=np.int64)
        if ep in p._known:
            return np.full(len(u), _caps_bits(p._known[ep]), dtype=np.int64)
        seen = (np.isfinite(u) * 1) | (np.isfinite(c) * 2) | ((np.isfinite(lb) | np.isfinite(s)) * 4)
        return np.bitwise_or.accumulate(seen.astype(np.int64)) if len(seen) else seen.astype(np.int64)

    def _score_chunk(self, groups: list[tuple[str, np.ndarray]]) -> None:
        p = self.p
        prepared = []
        res_jobs: list[tuple[int, Any, np.ndarray, np.ndarray, float, float]] = []
        mv_jobs: list[Any] = []
        for ep, rows in groups:
            caps = self._caps(ep, self.u[rows], self.c[rows], self.lb[rows], self.s[rows])
            has = {cap: (caps & b) != 0 for cap, b in _CAP_BITS.items()}
            u = np.where(has["udp_echo"], self.u[rows], np.nan)
            c = np.where(has["ecpri"], self.c[rows], np.nan)
            lb = np.where(has["lbm"], self.lb[rows], np.nan)
            s = np.where(has["lbm"], self.s[rows], np.nan)
            ts_l = self.ts[rows].tolist()
            c_score, c_ev, ch_by, rb_by, cp_det = p.changepoint.score_series(ep, ts_l, u, c, lb)
            r_score, r_ev, runs, levels = p.rules.score_series(
                ep, [_CAPS_BY_BITS[b] for b in caps.tolist()], ts_l, u, c, lb, s, rb_by
            )
            for j, recs in ch_by.items():
                self.change_rows.append((int(rows[j]), recs))
            rj = p.residual.prepare_series(ep, (u, c, lb))
            caps_list = list(_CAPS_BY_BITS)
            mj = p.multivariate.prepare_series(
                ep, self.ts[rows] / 1000.0, dict(zip(METRIC_TYPES, (u, c, lb))), s, caps, caps_list
            )
            prepared.append((ep, rows, (u, c, lb, s), r_score, r_ev, (runs, levels), c_score, c_ev, (rb_by, cp_det), None, len(res_jobs), len(rj), len(mv_jobs), len(mj)))
            res_jobs += rj
            mv_jobs += mj
        preds = _predict_all(res_jobs)
        if_scores = score_jobs(mv_jobs)
        for ep, rows, vals, r_score, r_ev, rule_runs, c_score, c_ev, Ss, zs, r0, rn, m0, mn in prepared:
            n = len(rows)
            u, c, lb, s = vals
            res_score, res_ev, P, R = p.residual.finish_series(n, (u, c, lb), res_jobs[r0 : r0 + rn], preds[r0 : r0 + rn])
            mv_score = np.zeros(n)
            mv_ev = np.zeros(n, dtype=np.int64)
            mv_job = np.full(n, -1, dtype=np.int64)  # which job scored the sample (for explanations)
            mv_pos = np.zeros(n, dtype=np.int64)
            for jid in range(m0, m0 + mn):
                row, sel, _ = mv_jobs[jid]
                a = if_scores[jid]
                mv_score[sel] = if_score_to_unit_array(a, row.threshold)
                mv_ev[sel] = np.where(a > row.threshold, EV_MULTIVARIATE, 0)
                mv_job[sel] = jid
                mv_pos[sel] = np.arange(len(sel))
            mv_at = (mv_jobs, if_scores, mv_job, mv_pos)
            scores = (r_score, c_score, res_score, mv_score)
            comp = p.fusion.combine_arrays(scores)
            ev = r_ev | c_ev | res_ev | mv_ev
            for j in range(4):
                self.S[j][rows] = scores[j]
            self.composite[rows] = comp
            self.ev[rows] = ev
            T = {job[0]: job[5] for job in res_jobs[r0 : r0 + rn]}
            self._alerts(ep, rows, ev, comp, scores, vals, rule_runs, Ss, (P, R, T), mv_at)

    def _alerts(self, ep, rows, ev, comp, scores, vals, runs, cp, res, mv_at) -> None:
        """The alert state machine over the endpoint's accepted samples: the very step the
        streaming path takes, sample by sample, so both give the same alerts and resolutions."""
        p = self.p
        am = p.alerts
        st = am.new_state()
        ts_l = self.ts[rows].tolist()
        ev_l = ev.tolist()
        comp_l = comp.tolist()
        crit_l = (scores[0] >= 1.0).tolist()
        refs = p.changepoint._refs(ep)
        step = am.step
        P, R, T = res
        rb_by, cp_det = cp
        for j in range(len(ts_l)):
            t = ts_l[j]
            rb = rb_by.get(j)
            if rb is not None and any(x[2] for x in rb):
                am.note_rebaseline(st)
            emit, esc, sev, res = step(st, ep, t, ev_l[j], comp_l[j], crit_l[j])
            if res is not None:
                self.resolution_index[rows[j]] = len(self.resolutions)
                self.resolutions.append(res)
            if not emit:
                continue
            u, c, lb, _ = vals
            jid = int(mv_at[2][j])
            mv = None
            if jid >= 0:
                row, _, Xs = mv_at[0][jid]
                k = int(mv_at[3][j])
                mv = (row, Xs[k], float(mv_at[1][jid][k]))
            runs_, lv_all = runs
            lvl = lv_all[j]
            d = SampleDetails(
                (float(u[j]), float(c[j]), float(lb[j])), refs, {k: int(v[j]) for k, v in runs_.items()},
                cp_det[j] or [(False, _NAN, None, 0.0)] * 3,
                [(float(P[i][j]), float(R[i][j]), T[i]) if R[i][j] == R[i][j] else None for i in range(3)],
                top_feature(mv[0], mv[1], mv[2]) if mv is not None else None,
                [None if lvl[i, 0] != lvl[i, 0] else (float(lvl[i, 0]), float(lvl[i, 1])) for i in range(3)],
            )
            e = int(ev_l[j])
            sc = {d_: float(scores[k][j]) for k, d_ in enumerate(DETECTORS)}
            alert = make_alert(ep, t, sev, comp_l[j], e, sc, build_explanation(e, d, p.config), st.episode_start, esc, st.run_start)
            self.alert_index[rows[j]] = len(self.alerts)
            self.alerts.append(alert)


def _future_msg(ts: int, limit: int) -> str:
    return (f"timestamp {ts} is more than limits.future_tolerance_ms ahead of the wall clock "
            f"(latest accepted now: {limit}); clock glitch? not used")


def _predict_all(jobs: list[tuple[int, Any, np.ndarray, np.ndarray, float, float]]) -> list[np.ndarray]:
    """The TCN forecasts of every job (one call each; the network chunks its input itself)."""
    return [job[1].net.predict(job[3]) for job in jobs]
