"""The service core: one scoring worker that owns the pipeline, plus its helpers.

HTTP handlers and the Prometheus puller only parse, validate and enqueue
(:meth:`DetectorService.ingest`); a single worker thread drains the queue in micro-batches
(up to ``serve.batch_max`` samples) and calls ``DetectionPipeline.process`` for each sample in
arrival order, so results are exactly those of streaming. A control thread polls the model
registry (hot reload off the hot path), applies SIGHUP configuration reloads, evicts idle
endpoints and writes periodic snapshots.

Shutdown (:meth:`DetectorService.shutdown`, after the HTTP server stopped accepting): stop
the puller, score everything accepted, deliver (or write) the alerts, snapshot the state.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ocad_detectors.artifacts import IFOREST_MODEL_NAME, TCN_MODEL_NAMES
from ocad_detectors.config import DetectionConfig
from ocad_detectors.pipeline import DetectionPipeline
from ocad_detectors.serve.config import ServeConfig, load_service_config
from ocad_detectors.serve.delivery import AlertRouter
from ocad_detectors.serve.ingest import Parsed, SampleQueue, validate_items
from ocad_detectors.serve.metrics import ServiceMetrics
from ocad_detectors.serve.pull import PrometheusPuller
from ocad_detectors.serve.shard import ShardRing
from ocad_detectors.serve.snapshot import read_snapshot, write_snapshot

__all__ = ["DetectorService"]

logger = logging.getLogger("ocad_detectors.serve")


class DetectorService:
    """Pipeline + queue + worker + alert router + metrics of one instance."""

    def __init__(
        self,
        detection: DetectionConfig,
        serve: ServeConfig,
        *,
        config_path: str | Path | None = None,
        model_dir: str | Path | None = None,
        pipeline: DetectionPipeline | None = None,
        base_url: str | None = None,
    ) -> None:
        self.detection = detection
        self.cfg = serve
        self.config_path = config_path
        self.model_dir = model_dir
        self.pipeline = pipeline or DetectionPipeline(detection, model_dir)
        self.queue = SampleQueue(serve.queue_size)
        self.metrics = ServiceMetrics(lambda: len(self.queue), serve.max_endpoints_metrics)
        self.ring = ShardRing(serve.shard.count, serve.shard.index)
        self.base_url = base_url or f"http://{serve.listen}"
        self.router = AlertRouter(serve.alerts, self.metrics, serve.endpoint_roles, self.base_url + "/v1/status")
        self.draining = False
        self.started_at = time.time()
        self._pipe_lock = threading.Lock()  # held by the worker per batch; a SIGHUP swap waits for it
        self._stop = threading.Event()
        self._hup = threading.Event()
        self._worker: threading.Thread | None = None
        self._control: threading.Thread | None = None
        self.puller: PrometheusPuller | None = None
        self._warned_failures = self._loader_failures()
        if self.pipeline.model_errors:  # models refused at start (missing, failed verification)
            self.metrics.load_failures.inc(len(self.pipeline.model_errors))
        self.newest_ts = 0
        self.restored_endpoints = 0
        self.metrics.set_versions(self.pipeline.model_versions)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._restore()
        self._worker = threading.Thread(target=self._work, name="ocad-score", daemon=True)
        self._worker.start()
        self._control = threading.Thread(target=self._control_loop, name="ocad-control", daemon=True)
        self._control.start()
        self._start_puller()

    def _start_puller(self) -> None:
        if self.cfg.pull.url and self.cfg.pull.queries:
            self.puller = PrometheusPuller(self.cfg.pull, self._submit_pulled, self.metrics)

    def _submit_pulled(self, samples: list[dict[str, Any]]) -> None:
        res = self.ingest(samples)
        if res[0] != 200 and res[0] != 422:
            logger.warning("pull: round of %d samples not accepted (%s)", len(samples), res[1].get("error"))

    def shutdown(self) -> dict[str, Any]:
        """Drain: every accepted sample scored, alerts delivered or written, state saved."""
        t0 = time.monotonic()
        self.draining = True
        if self.puller is not None:
            self.puller.close()
        budget = self.cfg.drain_timeout_s
        drained = self.queue.wait_drained(budget)
        self.queue.close()
        self._stop.set()
        if self._worker is not None:
            self._worker.join(max(1.0, budget - (time.monotonic() - t0)))
        if self._control is not None:
            self._control.join(2.0)
        delivered = self.router.close(max(1.0, budget - (time.monotonic() - t0)))
        snap = self.save_snapshot()
        out = {
            "accepted": self.queue.accepted, "scored": self.queue.done, "drained": drained,
            "alerts_delivered": delivered, "undelivered": self.router.pending(), "snapshot": snap,
            "seconds": round(time.monotonic() - t0, 3),
        }
        logger.info("drained: %s", out)
        return out

    # ------------------------------------------------------------------ ingest

    def _owner(self, endpoint_id: str) -> int | None:
        if self.ring.count == 1:
            return None
        o = self.ring.owner(endpoint_id)
        return None if o == self.ring.index else o

    def ingest(self, items: list[Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Validate and enqueue: (HTTP status, answer, extra headers)."""
        p: Parsed = validate_items(items, self._owner, self.cfg.shard.url_of)
        rej = Counter(r["status"] for r in p.rejected)
        for k, v in rej.items():
            self.metrics.count(f"rejected_{k}", v)
        answer: dict[str, Any] = {"received": p.total, "accepted": 0, "rejected": len(p.rejected),
                                  "errors": p.rejected[:1000]}
        if self.draining:
            self.metrics.count("rejected_draining", len(p.samples))
            answer["error"] = "shutting down; retry on another instance or after the restart"
            answer["rejected"] = p.total
            return 503, answer, {"Retry-After": "5"}
        if p.samples:
            if not self.queue.put_many(p.samples):
                self.metrics.count("rejected_queue_full", len(p.samples))
                answer["error"] = (f"queue full ({len(self.queue)} of {self.queue.capacity} samples waiting); "
                                   f"nothing of this request was accepted, retry it")
                answer["rejected"] = p.total
                return 429, answer, {"Retry-After": "1"}
            answer["accepted"] = len(p.samples)
            return 200, answer, {}
        if p.rejected and all(r["status"] == "wrong_shard" for r in p.rejected):
            answer["error"] = f"no sample belongs to this instance (shard {self.ring.index} of {self.ring.count})"
            return 421, answer, {}
        answer["error"] = "no valid sample in the request"
        return 422, answer, {}

    # ------------------------------------------------------------------ scoring worker

    def _work(self) -> None:
        q = self.queue
        bmax = self.cfg.batch_max
        m = self.metrics
        lat = m.latency
        while True:
            batch = q.get_batch(bmax, 0.2)
            if not batch:
                if self._stop.is_set() and len(q) == 0:
                    return
                continue
            counts: dict[str, int] = {}
            seen: dict[str, tuple[float, int]] = {}
            events: list[tuple[int, Any]] = []  # per sample as ocad-detect orders them: resolved, alert, change
            newest = self.newest_ts
            router = self.router  # a SIGHUP may have replaced it
            try:
                with self._pipe_lock:
                    pipe = self.pipeline
                    proc = pipe.process
                    perf = time.perf_counter
                    for sample, t0 in batch:
                        r = proc(sample)
                        st = r.status
                        counts[st] = counts.get(st, 0) + 1
                        if st == "ok":
                            ts = r.timestamp_ms
                            assert ts is not None and r.endpoint_id is not None  # set on every "ok" result
                            seen[r.endpoint_id] = (r.composite, ts)
                            if ts > newest:
                                newest = ts
                            if r.resolved is not None:
                                events.append((0, r.resolved))
                            if r.alert is not None:
                                events.append((1, r.alert))
                            if r.changes:
                                events += [(2, ch) for ch in r.changes]
                        lat.observe(perf() - t0)
                self.newest_ts = newest
                with m.lock:
                    for k, v in counts.items():
                        m.samples[k] = m.samples.get(k, 0) + v
                    m.endpoints.update(seen)
                for kind, ev in events:
                    if kind == 0:
                        router.on_resolved(ev.endpoint_id, ev.episode_start_ms, ev.end_ms, ev.to_dict())
                    elif kind == 1:
                        router.on_alert(ev)
                    else:
                        router.on_change(ev.to_dict())
            except Exception as exc:  # the worker must survive anything
                logger.exception("scoring batch failed: %s", exc)
                m.count("error", len(batch) - sum(counts.values()))
            finally:
                q.mark_done(len(batch))

    # ------------------------------------------------------------------ control thread

    def _loader_failures(self) -> int:
        """Reloads the pipeline refused (a model failed verification or validation)."""
        return self.pipeline.reload_failures

    def reload_models(self) -> dict[str, str | None]:
        before = dict(self.pipeline.model_versions)
        after = self.pipeline.reload()
        if after != before:
            self.metrics.reloads.inc()
            logger.info("models reloaded: %s", after)
        f = self._loader_failures()
        if f > self._warned_failures:
            self.metrics.load_failures.inc(f - self._warned_failures)
            logger.warning("model reload refused: %s", self.pipeline.last_reload_error)
        self._warned_failures = f
        self.metrics.set_versions(after)
        return after

    def request_config_reload(self) -> None:
        """Called from the SIGHUP handler; the control thread does the work."""
        self._hup.set()

    def reload_config(self) -> bool:
        """Re-read the YAML: new detection settings (state carried over), new alert sinks."""
        if self.config_path is None:
            return False
        try:
            det, srv = load_service_config(self.config_path)
        except ValueError as exc:
            logger.error("SIGHUP: configuration not reloaded: %s", exc)
            self.metrics.config_reloads.labels("error").inc()
            return False
        for k in ("listen", "shard", "queue_size"):
            if getattr(srv, k) != getattr(self.cfg, k):
                logger.warning("SIGHUP: serve.%s changed; that takes a restart (kept %r)", k, getattr(self.cfg, k))
        if det != self.detection:
            try:
                new = DetectionPipeline(det, self.model_dir)
            except Exception as exc:
                logger.error("SIGHUP: new detection settings not applied: %s", exc)
                self.metrics.config_reloads.labels("error").inc()
                return False
            with self._pipe_lock:
                new.import_state(self.pipeline.export_state())
                self.pipeline = new
                self.detection = det
            self._warned_failures = self._loader_failures()
        if srv.alerts != self.cfg.alerts or srv.endpoint_roles != self.cfg.endpoint_roles:
            old = self.router
            router = AlertRouter(srv.alerts, self.metrics, srv.endpoint_roles, self.base_url + "/v1/status")
            router.restore(old.export(), lambda _e: True)
            self.router = router
            old.close(5.0)
        if srv.pull != self.cfg.pull:
            if self.puller is not None:
                self.puller.close()
                self.puller = None
            self.cfg = _replace(self.cfg, pull=srv.pull)
            self._start_puller()
        keep = {k: getattr(self.cfg, k) for k in ("listen", "shard", "queue_size")}
        self.cfg = _replace(srv, **keep)
        self.metrics.max_endpoints = srv.max_endpoints_metrics
        self.metrics.set_versions(self.pipeline.model_versions)
        self.metrics.config_reloads.labels("ok").inc()
        logger.info("SIGHUP: configuration reloaded from %s", self.config_path)
        return True

    def _control_loop(self) -> None:
        last_reload = last_snap = last_evict = time.monotonic()
        while not self._stop.wait(0.2):
            try:
                now = time.monotonic()
                if self._hup.is_set():
                    self._hup.clear()
                    self.reload_config()
                rc = self.cfg.reload_check_s
                if rc > 0 and now - last_reload >= rc and self.pipeline.loader is not None:
                    last_reload = now
                    if self.pipeline.loader.fingerprint() != self.pipeline._fingerprint:
                        self.reload_models()
                se = self.cfg.snapshot_every_s
                if se > 0 and now - last_snap >= se:
                    last_snap = now
                    self.save_snapshot()
                ev = self.cfg.evict_idle_after_s
                if ev > 0 and now - last_evict >= 10 and self.newest_ts:
                    last_evict = now
                    with self._pipe_lock:
                        gone = self.pipeline.evict_idle(int(self.newest_ts - ev * 1000))
                    if gone:
                        with self.metrics.lock:
                            for g in gone:
                                self.metrics.endpoints.pop(g, None)
            except Exception as exc:
                logger.exception("control loop: %s", exc)

    # ------------------------------------------------------------------ snapshot

    def save_snapshot(self) -> str | None:
        path = self.cfg.snapshot_path
        if not path:
            return None
        with self._pipe_lock:
            state = self.pipeline.export_state()
            scores = dict(self.metrics.endpoints)
        alerts = self.router.export()
        payload = {
            "pipeline": state,
            "alerts": alerts,
            "scores": {k: list(v) for k, v in scores.items()},
            "shard": {"count": self.ring.count, "index": self.ring.index},
            "newest_ts": self.newest_ts,
        }
        try:
            n = write_snapshot(path, payload)
        except OSError as exc:
            logger.error("snapshot not written to %s: %s", path, exc)
            return None
        logger.info("snapshot: %d endpoints, %d open alerts, %d bytes -> %s", len(state["endpoints"]), len(alerts), n, path)
        return str(path)

    def _restore(self) -> None:
        path = self.cfg.snapshot_path
        if not path or not Path(path).exists():
            return
        try:
            payload = read_snapshot(path)
            keep = self.ring.mine
            restored = self.pipeline.import_state(payload["pipeline"], keep)
            n_alerts = self.router.restore(list(payload.get("alerts") or []), keep)
            with self.metrics.lock:
                for k, v in (payload.get("scores") or {}).items():
                    if k in restored:
                        self.metrics.endpoints[k] = (float(v[0]), int(v[1]))
            self.newest_ts = int(payload.get("newest_ts") or 0)
        except (ValueError, KeyError, TypeError) as exc:
            logger.error("snapshot %s refused, starting fresh: %s", path, exc)
            self.pipeline.reset()
            return
        self.restored_endpoints = len(restored)
        logger.info("snapshot %s restored: %d endpoints, %d open alerts", path, len(restored), n_alerts)

    # ------------------------------------------------------------------ status

    def models_ready(self) -> tuple[bool, str]:
        if not self.cfg.require_models:
            return True, "rules-only allowed (serve.require_models: false)"
        d = self.detection
        v = self.pipeline.model_versions
        missing = []
        if d.residual.active and not any(v.get(k) for k in TCN_MODEL_NAMES.values()):
            missing.append("TCN (detection.residual)")
        if d.multivariate.active and not v.get(IFOREST_MODEL_NAME):
            missing.append("Isolation Forest (detection.multivariate)")
        if missing:
            return False, f"models not loaded: {', '.join(missing)} (or disable those detectors, or serve.require_models: false)"
        return True, "models loaded" if any(v.values()) else "rules-only by configuration"

    def ready(self) -> tuple[bool, list[str]]:
        reasons = []
        ok, why = self.models_ready()
        if not ok:
            reasons.append(why)
        if len(self.queue) >= 0.9 * self.queue.capacity:
            reasons.append(f"queue saturated ({len(self.queue)} of {self.queue.capacity})")
        if self.draining:
            reasons.append("shutting down")
        if self._worker is None or not self._worker.is_alive():
            reasons.append("scoring worker not running")
        return not reasons, reasons

    def status(self, limit: int = 1000) -> dict[str, Any]:
        with self.metrics.lock:
            eps = sorted(self.metrics.endpoints.items())
            counts = dict(self.metrics.samples)
        caps = self.pipeline.endpoints
        return {
            "versions": self.pipeline.model_versions,
            "ready": self.ready()[0],
            "shard": {"index": self.ring.index, "count": self.ring.count},
            "queue": {"depth": len(self.queue), "capacity": self.queue.capacity, "accepted": self.queue.accepted, "scored": self.queue.done},
            "samples": counts,
            "endpoints_total": len(caps),
            "endpoints": {
                k: {"composite": c, "last_seen_ms": ts, "capabilities": sorted(caps.get(k, ()))} for k, (c, ts) in eps[:limit]
            },
            "firing": [{"endpoint_id": a["endpoint_id"], "episode_start_ms": a["episode_start_ms"],
                        "severity": a["alert"]["labels"]["severity"]} for a in self.router.export()],
            "uptime_s": round(time.time() - self.started_at, 1),
        }


def _replace(cfg: ServeConfig, **kw: Any) -> ServeConfig:
    return dataclasses.replace(cfg, **kw)
