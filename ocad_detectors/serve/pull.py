"""Pull ingest: read the signals from a Prometheus server every ``interval_s``.

Each signal has a PromQL instant query (``serve.pull.queries``), evaluated at the same
timestamp for all signals of one round; the series' ``endpoint_label`` (e.g. ``instance`` of a
blackbox-exporter probe) names the endpoint. ``scale`` converts units, e.g.
``probe_duration_seconds`` → ms with ``scale: 1000``. ``lbm_success`` takes 0/1 values
(``probe_success``). The samples of one round go through the same validation, shard filter
and queue as pushed ones; a failed query is logged and counted, the round goes on with the
signals that answered (a missing signal is a missing reply).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from ocad_detectors.serve.config import PullConfig
from ocad_detectors.serve.metrics import ServiceMetrics

__all__ = ["PrometheusPuller", "query_round"]

logger = logging.getLogger("ocad_detectors.serve")


def query_round(client: httpx.Client, cfg: PullConfig, eval_s: float, metrics: ServiceMetrics | None = None) -> list[dict[str, Any]]:
    """One round: every signal's query at ``eval_s`` -> samples (one per endpoint)."""
    if not cfg.url:
        raise ValueError("pull.url is not set: name the Prometheus server to query")
    by_ep: dict[str, dict[str, Any]] = {}
    ts_ms = int(round(eval_s * 1000))
    for sig, (q, scale) in cfg.signal_queries().items():
        try:
            r = client.get(cfg.url.rstrip("/") + "/api/v1/query", params={"query": q, "time": f"{eval_s:.3f}"})
            body = r.json()
            if r.status_code != 200 or body.get("status") != "success":
                raise RuntimeError(f"HTTP {r.status_code}: {body.get('error', r.text[:200])}")
            data = body["data"]
            if data.get("resultType") != "vector":
                raise RuntimeError(f"query must return an instant vector, got {data.get('resultType')}")
        except Exception as exc:
            if metrics is not None:
                metrics.pull_errors.inc()
            logger.warning("pull: query for %s failed: %s", sig, exc)
            continue
        for series in data["result"]:
            ep = series.get("metric", {}).get(cfg.endpoint_label)
            if not ep:
                continue
            try:
                v = float(series["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if not math.isfinite(v):
                continue  # NaN: no reply
            s = by_ep.setdefault(ep, {"timestamp_ms": ts_ms, "endpoint_id": ep})
            s[sig] = bool(v >= 0.5) if sig == "lbm_success" else v * scale
    return list(by_ep.values())


class PrometheusPuller:
    """Background thread: a query round every ``interval_s`` (aligned to the interval)."""

    def __init__(self, cfg: PullConfig, submit: Callable[[list[dict[str, Any]]], None], metrics: ServiceMetrics) -> None:
        self.cfg = cfg
        self.submit = submit
        self.metrics = metrics
        self._stop = threading.Event()
        self.client = httpx.Client(timeout=cfg.timeout_s)
        self.rounds = 0
        self._thread = threading.Thread(target=self._run, name="ocad-pull", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        iv = self.cfg.interval_s
        while not self._stop.is_set():
            now = time.time()
            t = math.floor(now / iv) * iv
            try:
                samples = query_round(self.client, self.cfg, t, self.metrics)
                if samples:
                    self.metrics.pull_samples.inc(len(samples))
                    self.submit(samples)
                self.rounds += 1
            except Exception as exc:  # never let the thread die
                self.metrics.pull_errors.inc()
                logger.warning("pull round failed: %s", exc)
            self._stop.wait(max(0.05, t + iv - time.time()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(self.cfg.timeout_s + 1)
        self.client.close()
