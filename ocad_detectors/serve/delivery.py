"""Alerts out: Alertmanager (API v2), a generic JSON webhook and JSON lines.

The scoring worker hands events to :class:`AlertRouter` (never blocking: each sink has its
own bounded queue and thread, a full queue drops the oldest event and counts it). Each sink
retries a failed delivery with exponential backoff (``backoff_initial_s`` doubling up to
``backoff_max_s``, ``max_attempts`` tries), counting every failed attempt.

Alertmanager identity is the label set, so an episode keeps its labels while it fires
(``alertname, endpoint_id, severity, evidence, role``); an escalation resolves the old label
set and fires the new severity. While firing, ``endsAt`` is *now + ends_at_grace_s* and the
alert is re-sent every ``resend_interval_s``: if OCAD dies, Alertmanager resolves it by
itself after the grace. When the pipeline says the episode ended (``DetectionResult.resolved``)
the alert is sent once more with ``endsAt`` = the end's sample time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson

from ocad_detectors.serve.config import AlertSinkConfig
from ocad_detectors.serve.metrics import ServiceMetrics

__all__ = ["AlertRouter", "iso", "role_of"]

logger = logging.getLogger("ocad_detectors.serve")
ALERTNAME = "OCADEndpointAnomaly"


def iso(ms: float) -> str:
    """Epoch ms -> RFC 3339 UTC with milliseconds (what Alertmanager expects)."""
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def role_of(endpoint_id: str, roles: dict[str, str]) -> str:
    """o-ru / o-du / transport: configured, else from the name, else transport."""
    r = roles.get(endpoint_id)
    if r:
        return r
    low = endpoint_id.lower().replace("_", "-")
    if low.startswith(("o-ru", "oru", "ru-")):
        return "o-ru"
    if low.startswith(("o-du", "odu", "du-")):
        return "o-du"
    return "transport"


class _Sink:
    """One destination: a queue and a thread that delivers with retry and backoff."""

    name = "sink"

    def __init__(self, cfg: AlertSinkConfig, metrics: ServiceMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._q: deque[Any] = deque()
        self._cv = threading.Condition()
        self._busy = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"ocad-sink-{self.name}", daemon=True)
        self._thread.start()

    def submit(self, payload: Any) -> None:
        with self._cv:
            if len(self._q) >= self.cfg.queue_size:
                self._q.popleft()
                self.metrics.delivery_dropped.labels(self.name).inc()
            self._q.append(payload)
            self._cv.notify()

    def deliver(self, payload: Any) -> None:  # raises on failure
        raise NotImplementedError

    def tick(self) -> None:
        """Periodic work in the sink's thread (Alertmanager: re-send firing alerts)."""

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._q:
                    self._busy = False
                    self._cv.notify_all()
                    if self._stop:
                        return
                    self._cv.wait(0.5)
                item = self._q.popleft() if self._q else None
                self._busy = item is not None
            if item is not None:
                self._send(item)
            self._safe_tick()

    def _safe_tick(self) -> None:
        try:
            self.tick()
        except Exception as exc:  # a sink must never die
            logger.warning("%s: periodic task failed: %s", self.name, exc)

    def _send(self, item: Any) -> bool:
        delay = self.cfg.backoff_initial_s
        for attempt in range(1, self.cfg.max_attempts + 1):
            try:
                self.deliver(item)
                self.metrics.deliveries.labels(self.name).inc()
                return True
            except Exception as exc:
                self.metrics.delivery_failures.labels(self.name).inc()
                if attempt == self.cfg.max_attempts or self._stop_now():
                    logger.warning("%s: giving up on an alert event after %d attempts: %s", self.name, attempt, exc)
                    self.metrics.delivery_dropped.labels(self.name).inc()
                    return False
                logger.info("%s: delivery failed (%s), retry %d in %.1f s", self.name, exc, attempt, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.cfg.backoff_max_s)
        return False

    def _stop_now(self) -> bool:
        return self._stop and time.monotonic() > getattr(self, "_deadline", float("inf"))

    def pending(self) -> int:
        with self._cv:
            return len(self._q) + (1 if self._busy else 0)

    def close(self, deadline: float) -> bool:
        """Deliver what is queued until the monotonic ``deadline``; True when all went out."""
        self._deadline = deadline
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return self.pending() == 0


class _HttpSink(_Sink):
    def __init__(self, url: str, cfg: AlertSinkConfig, metrics: ServiceMetrics) -> None:
        self.url = url
        self.client = httpx.Client(timeout=cfg.timeout_s)
        super().__init__(cfg, metrics)

    def deliver(self, payload: Any) -> None:
        r = self.client.post(self.url, content=orjson.dumps(payload), headers={"Content-Type": "application/json"})
        if r.status_code >= 300:
            raise RuntimeError(f"HTTP {r.status_code} from {self.url}: {r.text[:200]}")


class AlertmanagerSink(_HttpSink):
    name = "alertmanager"

    def __init__(self, base_url: str, cfg: AlertSinkConfig, metrics: ServiceMetrics, firing: Callable[[], list[dict[str, Any]]]) -> None:
        self._firing = firing
        self._last_resend = time.monotonic()
        super().__init__(base_url.rstrip("/") + "/api/v2/alerts", cfg, metrics)

    def tick(self) -> None:
        if time.monotonic() - self._last_resend < self.cfg.resend_interval_s:
            return
        self._last_resend = time.monotonic()
        alerts = self._firing()
        if alerts:
            self._send(alerts)


class WebhookSink(_HttpSink):
    name = "webhook"


class JsonlSink(_Sink):
    name = "jsonl"

    def __init__(self, path: str, cfg: AlertSinkConfig, metrics: ServiceMetrics) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(cfg, metrics)

    def deliver(self, payload: Any) -> None:
        with open(self.path, "ab") as f:
            f.write(orjson.dumps(payload) + b"\n")


class AlertRouter:
    """Tracks firing episodes and fans events out to the configured sinks."""

    def __init__(self, cfg: AlertSinkConfig, metrics: ServiceMetrics, roles: dict[str, str], generator_url: str) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.roles = roles
        self.generator_url = cfg.generator_url or generator_url
        self._lock = threading.Lock()
        #: (endpoint_id, episode_start_ms) -> Alertmanager alert (labels, annotations, startsAt)
        self.firing: dict[tuple[str, int], dict[str, Any]] = {}
        self.sinks: list[_Sink] = []
        self._am: AlertmanagerSink | None = None
        if cfg.alertmanager_url:
            self._am = AlertmanagerSink(cfg.alertmanager_url, cfg, metrics, self.firing_payload)
            self.sinks.append(self._am)
        if cfg.webhook_url:
            self.sinks.append(WebhookSink(cfg.webhook_url, cfg, metrics))
        if cfg.jsonl_path:
            self.sinks.append(JsonlSink(cfg.jsonl_path, cfg, metrics))

    # ------------------------------------------------------------ payloads

    def _am_alert(self, a: Any) -> dict[str, Any]:
        expl = "; ".join(e.text for e in a.explanation) or ", ".join(a.evidence)
        summary = (
            f"{a.severity} anomaly on {a.endpoint_id} ({role_of(a.endpoint_id, self.roles)}) since {iso(a.episode_start_ms)}, "
            f"latest at {iso(a.timestamp_ms)}: composite score {a.composite:.2f} from {', '.join(a.evidence)}"
        )
        return {
            "labels": {
                "alertname": ALERTNAME,
                "endpoint_id": a.endpoint_id,
                "severity": a.severity,
                "evidence": ",".join(a.evidence),
                "role": role_of(a.endpoint_id, self.roles),
            },
            "annotations": {"summary": summary, "description": expl, "composite": f"{a.composite:.3f}"},
            "startsAt": iso(a.episode_start_ms),
            "generatorURL": f"{self.generator_url}?endpoint_id={a.endpoint_id}",
        }

    def _with_ends(self, alert: dict[str, Any], ends_ms: float) -> dict[str, Any]:
        return {**alert, "endsAt": iso(ends_ms)}

    def firing_payload(self) -> list[dict[str, Any]]:
        ends = time.time() * 1000.0 + self.cfg.ends_at_grace_s * 1000.0
        with self._lock:
            return [self._with_ends(a, ends) for a in self.firing.values()]

    def _fanout(self, event: str, alert_dict: dict[str, Any], am: list[dict[str, Any]]) -> None:
        for s in self.sinks:
            if s is self._am:
                if am:
                    s.submit(am)
            else:
                s.submit({"event": event, **alert_dict})  # the pipeline's own "event" name wins

    # ------------------------------------------------------------ events from the worker

    def on_alert(self, a: Any) -> None:
        """An alert of the pipeline (new episode or escalation)."""
        self.metrics.alerts.labels(a.severity).inc()
        key = (a.endpoint_id, a.episode_start_ms)
        new = self._am_alert(a)
        now_ms = time.time() * 1000.0
        am: list[dict[str, Any]] = []
        with self._lock:
            old = self.firing.get(key)
            if old is not None and old["labels"] != new["labels"]:
                # escalation: same episode, new severity -> resolve the old label set
                am.append(self._with_ends(old, max(now_ms, a.timestamp_ms)))
            self.firing[key] = new
        am.append(self._with_ends(new, now_ms + self.cfg.ends_at_grace_s * 1000.0))
        self._fanout("alert", a.to_dict(), am)

    def on_resolved(self, endpoint_id: str, episode_start_ms: int, end_ms: int, info: dict[str, Any]) -> None:
        """The episode ended (sample time ``end_ms``)."""
        with self._lock:
            old = self.firing.pop((endpoint_id, episode_start_ms), None)
        if old is None:
            return
        self.metrics.resolved.inc()
        ends: float = max(end_ms, episode_start_ms)
        # Alertmanager treats endsAt <= now as resolved; a replay's sample time may lie in the
        # future of the wall clock, so never claim a resolution later than now
        ends = min(ends, time.time() * 1000.0)
        self._fanout("resolved", info or {"endpoint_id": endpoint_id, "episode_start_ms": episode_start_ms, "end_ms": end_ms},
                     [self._with_ends(old, ends)])

    def on_change(self, info: dict[str, Any]) -> None:
        """A confirmed level change (webhook and JSON lines only; Alertmanager gets alerts)."""
        self._fanout("change", info, [])

    def open_episodes(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self.firing)

    # ------------------------------------------------------------ snapshot / lifecycle

    def export(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"endpoint_id": k[0], "episode_start_ms": k[1], "alert": v} for k, v in self.firing.items()]

    def restore(self, items: list[dict[str, Any]], keep: Callable[[str], bool]) -> int:
        n = 0
        with self._lock:
            for it in items:
                eid, start, al = it["endpoint_id"], int(it["episode_start_ms"]), it["alert"]
                if not isinstance(al, dict) or not isinstance(al.get("labels"), dict) or not keep(eid):
                    continue
                self.firing[(eid, start)] = al
                n += 1
        if n and self._am is not None:
            self._am.submit(self.firing_payload())  # Alertmanager hears at once that they still fire
        return n

    def pending(self) -> int:
        return sum(s.pending() for s in self.sinks)

    def close(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        ok = True
        for s in self.sinks:
            ok = s.close(deadline) and ok
        return ok
