"""ocad-serve request handling over real HTTP: bad requests get clear 4xx, nothing accepted is
lost, backpressure, auth, shards, config errors."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
from serve_harness import ThreadedService, wait_until

from ocad_detectors.config import DetectionConfig
from ocad_detectors.serve.cli import main as serve_main
from ocad_detectors.serve.config import ServeConfig, ShardConfig, load_service_config
from ocad_detectors.serve.shard import ShardRing

T0 = 1_767_571_200_000


def _s(i: int, ep: str = "o-ru-001", **kw) -> dict:
    return {"timestamp_ms": T0 + 5000 * i, "endpoint_id": ep, "udp_echo_rtt_ms": 4.0 + 0.01 * (i % 7), "lbm_success": True, **kw}


@pytest.fixture()
def service(tmp_path):
    det = DetectionConfig.from_dict({"model_path": str(tmp_path / "no-models")})
    s = ThreadedService(ServeConfig(queue_size=64, max_body_bytes=20_000, max_samples_per_request=100, require_models=False), det)
    yield s
    s.close()


def _post(url: str, content: bytes, ctype: str = "application/json", **kw) -> httpx.Response:
    return httpx.post(url + "/v1/samples", content=content, headers={"Content-Type": ctype, **kw.pop("headers", {})}, **kw)


def test_bad_requests_are_refused_clearly_and_nothing_accepted_is_lost(service):
    u = service.url
    r = _post(u, orjson.dumps(_s(0)))
    assert r.status_code == 200 and r.json()["accepted"] == 1
    r = _post(u, orjson.dumps([_s(1), _s(2)]))
    assert r.json() == {"received": 2, "accepted": 2, "rejected": 0, "errors": []}

    r = _post(u, b'{"timestamp_ms": 1, "endpoint_id": ')
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = _post(u, b"42")
    assert r.status_code == 400 and "got a JSON int" in r.json()["error"]
    r = _post(u, b"")
    assert r.status_code == 400 and "empty body" in r.json()["error"]
    r = _post(u, b"{}", ctype="application/xml")
    assert r.status_code == 415

    # wrong types and unknown fields: per-sample errors naming the field, nothing accepted
    r = _post(u, orjson.dumps([_s(3, udp_echo_rtt_ms="4.2"), _s(4, udp_echo_rtt=4.2), {**_s(5), "timestamp_ms": 1.5}, [1, 2],
                               _s(6, lbm_success="yes"), _s(7, input_error="x")]))
    assert r.status_code == 422
    errs = r.json()["errors"]
    assert [e["index"] for e in errs] == [0, 1, 2, 3, 4, 5] and {e["status"] for e in errs} == {"invalid"}
    assert "udp_echo_rtt_ms: expected a number in ms, got str" in errs[0]["error"]
    assert "unknown field(s) 'udp_echo_rtt'" in errs[1]["error"]
    assert "timestamp_ms" in errs[2]["error"] and "expected a JSON object" in errs[3]["error"]
    assert "lbm_success" in errs[4]["error"] and "input_error" in errs[5]["error"]

    # a mixed batch: the good ones are accepted, the bad one is named by its index
    r = _post(u, orjson.dumps([_s(8), _s(9, ecpri_ow_us=-3.0), _s(10)]))
    assert r.status_code == 200
    assert r.json()["accepted"] == 2 and r.json()["errors"][0]["index"] == 1 and "negative" in r.json()["errors"][0]["error"]

    # NDJSON, one malformed line
    body = b"\n".join([orjson.dumps(_s(11)), b"{oops", orjson.dumps(_s(12)), b""])
    r = _post(u, body, ctype="application/x-ndjson")
    assert r.status_code == 200 and r.json()["accepted"] == 2
    assert r.json()["errors"][0]["index"] == 1 and "line 2: malformed JSON" in r.json()["errors"][0]["error"]

    # oversize bodies: by Content-Length and chunked (no length); too many samples
    r = _post(u, b"[" + b",".join([orjson.dumps(_s(100 + i)) for i in range(400)]) + b"]")
    assert r.status_code == 413 and "20000 bytes" in r.json()["error"]

    def chunks():
        for _ in range(100):
            yield b" " * 1000

    r = httpx.post(u + "/v1/samples", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    r = _post(u, orjson.dumps([{"timestamp_ms": T0, "endpoint_id": "x"}] * 101))
    assert r.status_code == 413 and "limit is 100" in r.json()["error"]

    # duplicates / out-of-order are accepted and scored with that status (the pipeline decides)
    r = _post(u, orjson.dumps([_s(12), _s(2)]))
    assert r.status_code == 200
    svc = service.svc
    wait_until(lambda: svc.queue.done == svc.queue.accepted, what="all scored")
    assert svc.queue.accepted == 1 + 2 + 2 + 2 + 2 == 9
    st = httpx.get(u + "/v1/status").json()
    assert st["samples"]["ok"] == 7 and st["samples"]["duplicate"] == 1 and st["samples"]["out_of_order"] == 1
    assert st["endpoints"]["o-ru-001"]["last_seen_ms"] == T0 + 5000 * 12
    assert httpx.get(u + "/healthz").status_code == 200
    m = httpx.get(u + "/metrics").text
    assert 'ocad_samples_total{status="ok"} 7.0' in m
    assert 'ocad_samples_total{status="rejected_invalid"} 8.0' in m  # 6 + 1 + 1 samples
    assert 'ocad_samples_total{status="rejected_bad_request"} 7.0' in m  # 3 x 400, 415, 3 x 413


def test_flood_gets_429_with_retry_after_and_every_accepted_sample_is_scored(service):
    u = service.url
    svc = service.svc
    accepted = 0
    with svc._pipe_lock:  # the worker stalls with one batch in hand: the queue fills up
        codes = []
        for k in range(8):
            r = _post(u, orjson.dumps([_s(20 * k + i, ep=f"o-du-{k % 2}") for i in range(20)]))
            codes.append(r.status_code)
            if r.status_code == 200:
                accepted += r.json()["accepted"]
            else:
                assert r.status_code == 429 and r.headers["Retry-After"] == "1"
                assert r.json()["accepted"] == 0 and "queue full" in r.json()["error"]
        assert 429 in codes and codes[0] == 200
        ready = httpx.get(u + "/readyz")
        assert ready.status_code == 503 and any("queue saturated" in x for x in ready.json()["reasons"])
        assert httpx.get(u + "/healthz").status_code == 200  # alive, just busy
    wait_until(lambda: svc.queue.done == svc.queue.accepted, what="drained")
    assert svc.queue.accepted == accepted
    st = httpx.get(u + "/v1/status").json()
    assert sum(v for k, v in st["samples"].items() if not k.startswith("rejected")) == accepted
    assert httpx.get(u + "/readyz").status_code == 200


def test_bearer_token_and_loopback_rule(tmp_path, capsys):
    det = DetectionConfig.from_dict({"model_path": str(tmp_path / "none")})
    s = ThreadedService(ServeConfig(require_models=False), det, token="s3cret")
    try:
        assert _post(s.url, orjson.dumps(_s(0))).status_code == 401
        assert _post(s.url, orjson.dumps(_s(0)), headers={"Authorization": "Bearer nope"}).status_code == 401
        assert _post(s.url, orjson.dumps(_s(0)), headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(s.url + "/v1/status").status_code == 401
        assert httpx.get(s.url + "/metrics").status_code == 200  # Prometheus scrapes without the token
    finally:
        s.close()
    assert serve_main(["--listen", "0.0.0.0:18999"]) == 2
    assert "needs a bearer token" in capsys.readouterr().err


def test_a_sample_of_another_shard_is_refused_naming_the_owner(tmp_path):
    det = DetectionConfig.from_dict({"model_path": str(tmp_path / "none")})
    s = ThreadedService(ServeConfig(require_models=False, shard=ShardConfig(3, 1, "http://ocad-serve-{index}.ocad-serve:8080")), det)
    try:
        ring = ShardRing(3, 1)
        mine = next(f"ep-{i}" for i in range(100) if ring.owner(f"ep-{i}") == 1)
        other = next(f"ep-{i}" for i in range(100) if ring.owner(f"ep-{i}") != 1)
        r = _post(s.url, orjson.dumps([_s(0, ep=other)]))
        assert r.status_code == 421
        e = r.json()["errors"][0]
        assert e["status"] == "wrong_shard" and e["shard"] == ring.owner(other) and f"shard {ring.owner(other)}" in e["error"]
        assert e["owner_url"] == f"http://ocad-serve-{ring.owner(other)}.ocad-serve:8080"
        r = _post(s.url, orjson.dumps([_s(0, ep=other), _s(0, ep=mine)]))
        assert r.status_code == 200 and r.json()["accepted"] == 1
    finally:
        s.close()


def test_config_errors_name_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("detection: {}\nserve:\n  queue_sise: 3\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['queue_sise'\]"):
        load_service_config(p)
    p.write_text("detection: {}\nserve:\n  alerts: {resend_interval_s: fast}\n")
    with pytest.raises(ValueError, match="serve.alerts.resend_interval_s"):
        load_service_config(p)
    p.write_text("detection: {}\nserve:\n  pull: {url: 'http://x', queries: {rtt: up}}\n")
    with pytest.raises(ValueError, match="unknown signal 'rtt'"):
        load_service_config(p)
    p.write_text("detection: {rules: {enabled: maybe}}\nserve: {}\n")
    with pytest.raises(ValueError):
        load_service_config(p)
    p.write_text("detection: {}\nserve: {shard: {count: 2, index: 2}}\n")
    with pytest.raises(ValueError, match="shard.index"):
        load_service_config(p)
    p.write_text("detection: {}\nserve: {listen: '127.0.0.1:9', shard: {count: 3, index: 1}, alerts: {resend_interval_s: 2}}\n")
    det, srv = load_service_config(p)
    assert srv.shard == ShardConfig(3, 1, None) and srv.alerts.resend_interval_s == 2 and srv.listen == "127.0.0.1:9"
    time.sleep(0)


def test_the_example_file_shows_the_defaults_and_ocad_detect_reads_it_too():
    from pathlib import Path

    from ocad_detectors.config import load_config

    p = Path(__file__).resolve().parents[1] / "config" / "serve.example.yaml"
    det, srv = load_service_config(p)
    assert srv == ServeConfig()
    assert load_config(p) == det  # the same file works for ocad-detect --config


def test_the_service_stays_on_the_light_install():
    import subprocess
    import sys

    code = ("import sys, ocad_detectors.serve.cli, ocad_detectors.serve.app, ocad_detectors.serve.service; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sklearn', 'dagster', 'ocad_pipeline'}); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
