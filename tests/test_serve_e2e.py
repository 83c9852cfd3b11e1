"""ocad-serve end to end with the REAL Prometheus and Alertmanager on loopback.

A recorded incident (data/fixtures/recorded_wide.csv, o-ru-001: drift -> loss -> recovery,
shifted to end now) is pushed into the service; its alert shows up in Alertmanager's API with
the right labels, escalates, and is resolved (Alertmanager's own webhook notification says
``resolved``). Prometheus scrapes /metrics and answers a PromQL query with the endpoint's
score. The pull reader reads probe series that Prometheus scraped from a tiny exporter.
"""

from __future__ import annotations

import time

import httpx
import orjson
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from serve_harness import Receiver, ThreadedService, alertmanager, free_port, prometheus, recorded_incident, wait_until

from ocad_detectors.config import DetectionConfig
from ocad_detectors.pipeline import DetectionPipeline
from ocad_detectors.serve.config import AlertSinkConfig, PullConfig, ServeConfig
from ocad_detectors.serve.delivery import iso


def _am_alerts(am: str, endpoint: str) -> list[dict]:
    r = httpx.get(am + "/api/v2/alerts", params={"filter": f'endpoint_id="{endpoint}"'})
    r.raise_for_status()
    return r.json()


def _active(am: str, endpoint: str) -> list[dict]:
    now = time.time()
    out = []
    for a in _am_alerts(am, endpoint):
        ends = a["endsAt"].replace("Z", "+00:00")
        from datetime import datetime

        if a["status"]["state"] == "active" and datetime.fromisoformat(ends).timestamp() > now:
            out.append(a)
    return out


def test_incident_to_alertmanager_scores_in_prometheus_and_pull_from_prometheus(tmp_path):
    t_start = time.monotonic()
    hook = Receiver()
    reg = CollectorRegistry()
    probe = Gauge("probe_duration_seconds", "blackbox-style probe duration", ["endpoint"], registry=reg)
    probe.labels("o-ru-777").set(0.0042)
    exp_port = free_port()
    exporter, _ = start_http_server(exp_port, addr="127.0.0.1", registry=reg)
    prom_port = free_port()
    with alertmanager(tmp_path, hook.url) as am:
        # o-ru-777 (pulled) is under an absolute SLA: 50 ms critical from the first sample on
        det = DetectionConfig.from_dict({"model_path": str(tmp_path / "no-models"), "rules": {"absolute_groups": {
            "o-ru-7*": {"udp_echo_rtt_ms": {"warning": 15.0, "critical": 50.0}}}}})
        cfg = ServeConfig(
            require_models=False,
            alerts=AlertSinkConfig(alertmanager_url=am, resend_interval_s=1.0, ends_at_grace_s=120, jsonl_path=str(tmp_path / "alerts.jsonl")),
            pull=PullConfig(url=f"http://127.0.0.1:{prom_port}", interval_s=1.0, endpoint_label="endpoint",
                            queries={"udp_echo_rtt_ms": {"query": 'probe_duration_seconds{job="probes"}', "scale": 1000.0}}),
        )
        s = ThreadedService(cfg, det)
        try:
            with prometheus(tmp_path, {"ocad": [f"127.0.0.1:{s.port}"], "probes": [f"127.0.0.1:{exp_port}"]}, port=prom_port) as prom:
                samples = recorded_incident("o-ru-001", 45.0)
                ref = DetectionPipeline(det)  # what the service must do: the same pipeline, streaming
                results = [ref.process(x) for x in samples]
                first = next(i for i, r in enumerate(results) if r.alert is not None)
                alert = results[first].alert
                assert [r.resolved is not None for r in results].count(True) == 1
                # --- part 1: up to just after the first alert
                cut = first + 3
                assert all(r.alert is None for r in results[first + 1 : cut])
                body = b"\n".join(orjson.dumps(x) for x in samples[:cut])
                r = httpx.post(s.url + "/v1/samples", content=body, headers={"Content-Type": "application/x-ndjson"})
                assert r.status_code == 200 and r.json()["accepted"] == cut
                firing = wait_until(lambda: _active(am, "o-ru-001"), what="alert in Alertmanager")
                a = firing[0]
                assert a["labels"] == {"alertname": "OCADEndpointAnomaly", "endpoint_id": "o-ru-001", "severity": alert.severity,
                                       "evidence": ",".join(alert.evidence), "role": "o-ru"}
                start_iso = iso(alert.episode_start_ms)
                assert a["startsAt"].startswith(start_iso[:19])
                assert start_iso in a["annotations"]["summary"] and f"{alert.severity} anomaly on o-ru-001" in a["annotations"]["summary"]
                assert iso(alert.timestamp_ms) in a["annotations"]["summary"]
                assert alert.explanation[0].text in a["annotations"]["description"]
                assert a["generatorURL"].startswith(s.url + "/v1/status")

                # --- part 2: escalation to critical (loss), recovery, episode end
                r = httpx.post(s.url + "/v1/samples", content=orjson.dumps(samples[cut:]))
                assert r.status_code == 200 and r.json()["accepted"] == len(samples) - cut
                wait_until(lambda: s.svc.queue.done == s.svc.queue.accepted, what="scored")
                wait_until(lambda: not _active(am, "o-ru-001"), what="alert resolved in Alertmanager")

                def notified(status: str, severity: str) -> bool:
                    return any(x["status"] == status and x["labels"]["endpoint_id"] == "o-ru-001" and x["labels"]["severity"] == severity
                               for b in hook.bodies for x in b["alerts"])

                last = [r.alert for r in results if r.alert is not None][-1]
                wait_until(lambda: notified("firing", alert.severity), what="Alertmanager notified the first alert")
                wait_until(lambda: notified("resolved", last.severity), what="Alertmanager notified the resolution")
                events = [orjson.loads(line) for line in (tmp_path / "alerts.jsonl").read_bytes().splitlines()]
                mine = [e for e in events if e.get("endpoint_id") == "o-ru-001" and e["event"] != "change"]
                want = [r.alert.to_dict() for r in results if r.alert is not None] + [r.resolved.to_dict() for r in results if r.resolved]
                assert len(want) >= 3 and mine == orjson.loads(orjson.dumps(want))  # what ocad-detect writes

                # --- Prometheus scraped /metrics: PromQL gives the endpoint's score
                want = httpx.get(s.url + "/v1/status").json()["endpoints"]["o-ru-001"]["composite"]

                def promql() -> list:
                    r = httpx.get(prom + "/api/v1/query", params={"query": 'ocad_endpoint_composite_score{endpoint_id="o-ru-001"}'})
                    res = r.json()["data"]["result"]
                    return res if res and float(res[0]["value"][1]) == want else []

                res = wait_until(promql, what="score in Prometheus")
                assert res[0]["metric"]["job"] == "ocad"
                r = httpx.get(prom + "/api/v1/query", params={"query": 'sum(ocad_alerts_total{severity="critical"})'})
                assert float(r.json()["data"]["result"][0]["value"][1]) == 1.0

                # --- pull: Prometheus scraped the probe exporter, the reader queries it
                def pulled() -> dict | None:
                    return httpx.get(s.url + "/v1/status").json()["endpoints"].get("o-ru-777")

                ep = wait_until(pulled, what="pulled endpoint")
                assert ep["capabilities"] == ["udp_echo"] and ep["composite"] == 0.0
                probe.labels("o-ru-777").set(0.060)  # 60 ms: above the 50 ms critical threshold
                fired = wait_until(lambda: _active(am, "o-ru-777"), what="alert from pulled samples")
                assert fired[0]["labels"]["severity"] == "critical" and fired[0]["labels"]["role"] == "o-ru"
                m = httpx.get(s.url + "/metrics").text
                assert "ocad_pull_samples_total" in m and "ocad_pull_errors_total" in m
        finally:
            out = s.close()
            exporter.shutdown()
            hook.close()
    assert out["accepted"] == out["scored"]
    assert time.monotonic() - t_start < 60
