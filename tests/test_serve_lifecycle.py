"""ocad-serve as a process: SIGTERM under load drains (accepted = scored), the snapshot lets a
restart go on without re-warming or re-alerting, a bad snapshot is refused, SIGHUP reloads the
configuration, a promotion is picked up without a restart."""

from __future__ import annotations

import ast
import dataclasses
import os
import signal
import threading
import time

import httpx
import orjson
import pytest
from serve_harness import ThreadedService, free_port, recorded_incident, service_process, wait_until, write_config

from ocad_detectors.config import DetectionConfig
from ocad_detectors.pipeline import DetectionPipeline
from ocad_detectors.serve.config import ServeConfig
from ocad_detectors.serve.snapshot import read_snapshot

T0 = 1_767_571_200_000


def _drained(log) -> dict:
    line = [x for x in log.read_text().splitlines() if "drained: " in x][-1]
    return ast.literal_eval(line.split("drained: ", 1)[1])


def test_sigterm_under_load_scores_every_accepted_sample(tmp_path):
    snap = tmp_path / "state.snap"
    cfg = write_config(tmp_path / "c.yaml", {"require_models": False, "snapshot_path": str(snap), "queue_size": 5000,
                                             "alerts": {"jsonl_path": str(tmp_path / "alerts.jsonl")}},
                       {"model_path": str(tmp_path / "none")})
    port = free_port()
    log = tmp_path / "serve.log"
    accepted: dict[str, int] = {}  # endpoint -> newest accepted timestamp
    total = [0]
    stop = threading.Event()

    def client(k: int) -> None:
        eps = [f"o-ru-{k}{j:02d}" for j in range(10)]
        i = 0
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                batch = [{"timestamp_ms": T0 + 5000 * i, "endpoint_id": e, "udp_echo_rtt_ms": 4.0 + (i % 5) * 0.1 + (40 if i % 97 == 50 else 0),
                          "lbm_success": True} for e in eps]
                try:
                    r = c.post(f"http://127.0.0.1:{port}/v1/samples", content=orjson.dumps(batch))
                except httpx.HTTPError:
                    break  # the server is gone: this request was not accepted
                if r.status_code == 200:
                    total[0] += r.json()["accepted"]
                    for e in eps:
                        accepted[e] = T0 + 5000 * i
                    i += 1
                elif r.status_code in (429, 503):
                    time.sleep(0.01)
                else:
                    raise AssertionError(r.text)

    with service_process(cfg, port, log) as p:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        assert total[0] > 500
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
        stop.set()
        for t in threads:
            t.join(10)
    d = _drained(log)
    assert d["accepted"] == d["scored"] == total[0]
    assert d["drained"] and d["undelivered"] == 0
    state = read_snapshot(snap)["pipeline"]["endpoints"]
    assert {e: v["last_ts"] for e, v in state.items()} == accepted


def test_restart_from_the_snapshot_neither_rewarms_nor_realerts(tmp_path):
    """The incident is cut in two by a restart; the alert stream equals one uninterrupted run."""
    snap = tmp_path / "state.snap"
    jsonl = tmp_path / "alerts.jsonl"
    cfg = write_config(tmp_path / "c.yaml", {"require_models": False, "snapshot_path": str(snap), "alerts": {"jsonl_path": str(jsonl)}},
                       {"model_path": str(tmp_path / "none")})
    samples = recorded_incident("o-ru-001", 45.0)
    ref = DetectionPipeline(DetectionConfig.from_dict({"model_path": str(tmp_path / "none")}))
    results = [ref.process(x) for x in samples]
    at = [i for i, r in enumerate(results) if r.alert]
    expected = [(results[i].alert.timestamp_ms, results[i].alert.severity, results[i].alert.escalation) for i in at]
    assert len(expected) == 3 and [e[2] for e in expected] == [False, True, True]  # an alert, two escalations
    cut = (at[1] + at[2]) // 2  # after the first escalation, before the second
    port = free_port()
    log = tmp_path / "serve.log"
    for part in (samples[:cut], samples[cut:]):
        with service_process(cfg, port, log) as p:
            r = httpx.post(f"http://127.0.0.1:{port}/v1/samples", content=orjson.dumps(part))
            assert r.status_code == 200 and r.json()["accepted"] == len(part)
            p.send_signal(signal.SIGTERM)
            assert p.wait(30) == 0
    assert "snapshot" in log.read_text() and "restored: 1 endpoints, 1 open alerts" in log.read_text()
    events = [orjson.loads(x) for x in jsonl.read_bytes().splitlines()]
    got = [(e["timestamp_ms"], e["severity"], e["escalation"]) for e in events if e["event"] == "alert"]
    assert got == expected
    assert [e["event"] for e in events if e["event"] != "change"][-1] == "resolved"

    # a tampered snapshot is refused with a log line; the service starts fresh
    raw = snap.read_bytes()
    snap.write_bytes(raw[:-10] + b"0" * 10)
    with service_process(cfg, port, log) as p:
        st = httpx.get(f"http://127.0.0.1:{port}/v1/status").json()
        assert st["endpoints_total"] == 0
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    assert "refused, starting fresh" in log.read_text() and "sha256 mismatch" in log.read_text()


def test_sighup_reloads_the_configuration_and_keeps_state(tmp_path):
    jsonl = tmp_path / "alerts.jsonl"
    serve = {"require_models": False}
    det = {"model_path": str(tmp_path / "none")}
    cfg = write_config(tmp_path / "c.yaml", serve, det)
    port = free_port()
    log = tmp_path / "serve.log"
    u = f"http://127.0.0.1:{port}"
    with service_process(cfg, port, log) as p:
        s = [{"timestamp_ms": T0 + 5000 * i, "endpoint_id": "o-du-001", "udp_echo_rtt_ms": 12.0} for i in range(10)]
        assert httpx.post(u + "/v1/samples", content=orjson.dumps(s)).json()["accepted"] == 10
        # an absolute SLA below the 12 ms the endpoint runs at, and a JSON lines sink
        write_config(cfg, {**serve, "alerts": {"jsonl_path": str(jsonl)}},
                     {**det, "rules": {"mode": "absolute", "thresholds": {"udp_echo_rtt_ms": {"warning": 10.0, "critical": 30.0}}}})
        os.kill(p.pid, signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in log.read_text(), what="SIGHUP handled")
        s2 = [{"timestamp_ms": T0 + 5000 * (10 + i), "endpoint_id": "o-du-001", "udp_echo_rtt_ms": 12.0} for i in range(24)]
        assert httpx.post(u + "/v1/samples", content=orjson.dumps(s2 + s[5:6])).json()["accepted"] == 25
        wait_until(lambda: jsonl.exists() and jsonl.read_text(), what="alert with the new threshold")
        st = httpx.get(u + "/v1/status").json()
        assert st["samples"]["out_of_order"] == 1  # the state (newest timestamp) survived the swap
        write_config(cfg, {"queue_size": "big"}, det)
        os.kill(p.pid, signal.SIGHUP)
        wait_until(lambda: "configuration not reloaded" in log.read_text(), what="bad config refused")
        assert httpx.get(u + "/healthz").status_code == 200
        m = httpx.get(u + "/metrics").text
        assert 'ocad_config_reloads_total{result="ok"} 1.0' in m and 'ocad_config_reloads_total{result="error"} 1.0' in m
    ev = orjson.loads(jsonl.read_text().splitlines()[0])
    assert ev["event"] == "alert" and not ev["escalation"] and T0 + 5000 * 10 < ev["timestamp_ms"] <= T0 + 5000 * 33 and ev["severity"] == "warning"


@pytest.fixture(scope="module")
def built():
    from model_fixtures import cached_model_registry

    return cached_model_registry()


def test_promotion_is_picked_up_without_a_restart(built, tmp_path):
    from model_fixtures import copy_registry

    from ocad_detectors.registry import ModelRegistry

    root = copy_registry(built, tmp_path / "reg")
    reg = ModelRegistry(root)
    s = ThreadedService(ServeConfig(reload_check_s=0.2), DetectionConfig(), model_dir=root)
    try:
        assert httpx.get(s.url + "/readyz").status_code == 200
        assert httpx.get(s.url + "/v1/status").json()["versions"]["tcn_ecpri"] == "1.0.0"
        # a second version of tcn_ecpri, then promoted (what the quality gate does)
        cur = reg.load_version("tcn_ecpri")
        meta = {k: v for k, v in cur.metadata.items() if k not in ("model_name", "version", "created_at", "files")}
        new = reg.write_version("tcn_ecpri", {"weights.safetensors": cur.files["weights.safetensors"]}, meta).version
        time.sleep(0.5)
        assert httpx.get(s.url + "/v1/status").json()["versions"]["tcn_ecpri"] == "1.0.0"  # a candidate is not served
        reg.promote("tcn_ecpri", new, reason="test")
        wait_until(lambda: httpx.get(s.url + "/v1/status").json()["versions"]["tcn_ecpri"] == new, timeout=10, what="hot reload")
        m = httpx.get(s.url + "/metrics").text
        assert "ocad_model_reloads_total 1.0" in m and f'tcn_ecpri="{new}"' in m
        assert "ocad_model_load_failures_total 0.0" in m
        # a promoted version whose file is then corrupted is refused; the version in service stays
        s.svc.cfg = dataclasses.replace(s.svc.cfg, reload_check_s=3600.0)
        bad = reg.write_version("tcn_ecpri", {"weights.safetensors": cur.files["weights.safetensors"]}, meta).version
        reg.promote("tcn_ecpri", bad, reason="test")
        wf = root / "tcn_ecpri" / bad / "weights.safetensors"
        data = bytearray(wf.read_bytes())
        data[len(data) // 2] ^= 0xFF
        wf.write_bytes(bytes(data))
        assert httpx.post(s.url + "/v1/reload").json()["versions"]["tcn_ecpri"] == new
        m = httpx.get(s.url + "/metrics").text
        assert "ocad_model_load_failures_total 1.0" in m and "ocad_model_reloads_total 1.0" in m
    finally:
        s.close()
    # no models where they are required: not ready
    s = ThreadedService(ServeConfig(), DetectionConfig.from_dict({"model_path": str(tmp_path / "empty")}))
    try:
        r = httpx.get(s.url + "/readyz")
        assert r.status_code == 503 and "models not loaded" in r.json()["reasons"][0]
        assert "ocad_model_load_failures_total 0.0" in httpx.get(s.url + "/metrics").text  # absent is not loaded, not failed
    finally:
        s.close()
