"""Alert delivery: retries with backoff, failures counted, a dead sink never blocks scoring."""

from __future__ import annotations

import http.server
import json
import threading
import time

import httpx
import orjson
from serve_harness import ThreadedService, free_port, wait_until

from ocad_detectors.config import DetectionConfig
from ocad_detectors.serve.config import AlertSinkConfig, ServeConfig

T0 = 1_767_571_200_000


class FlakyHook:
    """Answers 500 to the first ``fail`` POSTs, then 200; records what it accepted."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.calls = 0
        self.bodies: list = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.calls += 1
                if outer.calls <= outer.fail:
                    self.send_response(500)
                else:
                    outer.bodies.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _incident(ep: str) -> list[dict]:
    """12 healthy samples (the endpoint learns its 4 ms baseline), then 60 ms: critical at once."""
    return [{"timestamp_ms": T0 + 5000 * i, "endpoint_id": ep, "udp_echo_rtt_ms": 60.0 if i == 12 else 4.0} for i in range(13)]


def test_webhook_retries_with_backoff_and_dead_alertmanager_does_not_block(tmp_path):
    hook = FlakyHook(fail=2)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = ServeConfig(require_models=False, drain_timeout_s=2.0, alerts=AlertSinkConfig(
        webhook_url=hook.url, alertmanager_url=dead, max_attempts=3, backoff_initial_s=0.05, backoff_max_s=0.2, timeout_s=1.0))
    s = ThreadedService(cfg, DetectionConfig.from_dict({"model_path": str(tmp_path / "none")}))
    try:
        t = time.perf_counter()
        r = httpx.post(s.url + "/v1/samples", content=orjson.dumps(_incident("o-ru-001")))
        assert r.status_code == 200
        wait_until(lambda: hook.bodies, timeout=10, what="webhook delivery after retries")
        ev = hook.bodies[0]
        assert ev["event"] == "alert" and ev["endpoint_id"] == "o-ru-001" and ev["severity"] == "critical"
        assert hook.calls == 3
        # scoring went on while Alertmanager was unreachable
        r = httpx.post(s.url + "/v1/samples", content=orjson.dumps([x for i in range(20) for x in _incident(f"o-du-{i}")]))
        wait_until(lambda: s.svc.queue.done == s.svc.queue.accepted == 13 * 21, what="scored")
        assert httpx.get(s.url + "/v1/status").json()["samples"]["ok"] == 13 * 21
        assert time.perf_counter() - t < 5
        m = wait_until(lambda: (t := httpx.get(s.url + "/metrics").text) and 'ocad_alert_delivery_dropped_total{sink="alertmanager"}' in t and t,
                       what="alertmanager drop counted")
        assert 'ocad_alert_delivery_failures_total{sink="webhook"} 2.0' in m
        assert 'ocad_alert_deliveries_total{sink="webhook"}' in m
        line = [x for x in m.splitlines() if x.startswith('ocad_alert_delivery_failures_total{sink="alertmanager"}')][0]
        assert float(line.split()[-1]) >= 3
    finally:
        out = s.close()
        hook.close()
    assert out["accepted"] == out["scored"] == 13 * 21
