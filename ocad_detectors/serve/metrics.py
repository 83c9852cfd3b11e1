"""Prometheus metrics of one service instance (its own registry, exposed on ``/metrics``).

Hot-path counts (samples by status, per-endpoint scores) are plain Python numbers the scoring
worker updates; a custom collector turns them into metric families at scrape time, so scoring
a sample costs a dict update, not a labelled-metric lookup. Per-endpoint series are capped
(``serve.metrics.max_endpoints``): the highest composite scores are exported first, the rest
are counted in ``ocad_endpoints_not_exported``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ServiceMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _LiveCollector(Collector):
    def __init__(self, m: ServiceMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        with m.lock:
            status = dict(m.samples)
            eps = list(m.endpoints.items())
        c = CounterMetricFamily("ocad_samples", "Samples by status (ingest rejections and scoring results)", labels=["status"])
        for k, v in sorted(status.items()):
            c.add_metric([k], v)
        yield c
        g = GaugeMetricFamily("ocad_active_endpoints", "Endpoints with detector state in this instance")
        g.add_metric([], len(eps))
        yield g
        eps.sort(key=lambda kv: (-kv[1][0], kv[0]))
        cap = m.max_endpoints
        shown, rest = eps[:cap], len(eps) - min(cap, len(eps))
        comp = GaugeMetricFamily("ocad_endpoint_composite_score", "Fused anomaly score of the endpoint's newest sample (0..1)", labels=["endpoint_id"])
        seen = GaugeMetricFamily("ocad_endpoint_last_seen_timestamp_seconds", "Sample time of the endpoint's newest scored sample", labels=["endpoint_id"])
        for eid, (score, ts_ms) in shown:
            comp.add_metric([eid], score)
            seen.add_metric([eid], ts_ms / 1000.0)
        yield comp
        yield seen
        n = GaugeMetricFamily("ocad_endpoints_not_exported", "Endpoints left out of the per-endpoint series (serve.metrics.max_endpoints)")
        n.add_metric([], rest)
        yield n


class ServiceMetrics:
    """Everything ``/metrics`` shows; ``queue_depth`` is a callable read at scrape time."""

    def __init__(self, queue_depth: Callable[[], float], max_endpoints: int = 1000) -> None:
        self.registry = r = CollectorRegistry()
        self.lock = threading.Lock()
        self.samples: dict[str, int] = {}
        self.endpoints: dict[str, tuple[float, int]] = {}
        self.max_endpoints = max_endpoints
        r.register(_LiveCollector(self))
        self.alerts = Counter("ocad_alerts", "Alerts emitted by severity (escalations included)", ["severity"], registry=r)
        self.resolved = Counter("ocad_alerts_resolved", "Alert episodes that ended", registry=r)
        self.latency = Histogram(
            "ocad_ingest_to_scored_seconds", "Time from a sample's arrival to its score (queueing included)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.queue = Gauge("ocad_queue_depth", "Samples accepted and waiting to be scored", registry=r)
        self.queue.set_function(queue_depth)
        self.versions = Info("ocad_model", "Model versions in service (none: not loaded)", registry=r)
        self.reloads = Counter("ocad_model_reloads", "Model reloads that changed a version in service", registry=r)
        self.load_failures = Counter("ocad_model_load_failures", "Models refused at start plus reloads refused (a model missing or failing verification)", registry=r)
        self.config_reloads = Counter("ocad_config_reloads", "SIGHUP configuration reloads by result", ["result"], registry=r)
        self.deliveries = Counter("ocad_alert_deliveries", "Alert events delivered per sink", ["sink"], registry=r)
        self.delivery_failures = Counter("ocad_alert_delivery_failures", "Failed delivery attempts per sink", ["sink"], registry=r)
        self.delivery_dropped = Counter("ocad_alert_delivery_dropped", "Alert events given up (retries exhausted or queue full)", ["sink"], registry=r)
        self.pull_errors = Counter("ocad_pull_errors", "Failed Prometheus pull queries", registry=r)
        self.pull_samples = Counter("ocad_pull_samples", "Samples read from Prometheus", registry=r)

    def count(self, status: str, n: int = 1) -> None:
        with self.lock:
            self.samples[status] = self.samples.get(status, 0) + n

    def set_versions(self, versions: dict[str, Any]) -> None:
        self.versions.info({k: str(v) if v is not None else "none" for k, v in versions.items()})
