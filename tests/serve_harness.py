"""Helpers for the ocad-serve tests: free ports, the service in a thread or a subprocess, and
the real Prometheus / Alertmanager binaries on loopback with temporary directories."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from ocad_detectors.config import DetectionConfig
from ocad_detectors.serve.app import build_app
from ocad_detectors.serve.config import ServeConfig
from ocad_detectors.serve.service import DetectorService

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(fn: Any, timeout: float = 20.0, every: float = 0.1, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except (httpx.HTTPError, OSError, KeyError, ValueError):
            pass
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class ThreadedService:
    """DetectorService + uvicorn in a background thread (for request-level tests)."""

    def __init__(self, serve: ServeConfig, detection: DetectionConfig | None = None, token: str | None = None, model_dir: Any = None) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.svc = DetectorService(detection or DetectionConfig(), serve, model_dir=model_dir, base_url=self.url)
        self.svc.start()
        cfg = uvicorn.Config(build_app(self.svc, token), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(cfg)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: httpx.get(self.url + "/healthz").status_code == 200, what="service up")

    def close(self) -> dict[str, Any]:
        self.server.should_exit = True
        self.thread.join(10)
        return self.svc.shutdown()


def write_config(path: Path, serve: dict[str, Any], detection: dict[str, Any] | None = None) -> Path:
    path.write_text(yaml.safe_dump({"detection": detection or {}, "serve": serve}), encoding="utf-8")
    return path


@contextlib.contextmanager
def service_process(config: Path, port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """``python -m ocad_detectors.serve`` as a subprocess; SIGTERM'd on exit if still running."""
    with open(log, "ab") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", "ocad_detectors.serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
    try:
        wait_until(lambda: p.poll() is None and httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200,
                   timeout=30, what=f"ocad-serve on {port} (log {log}: {log.read_text()[-500:] if log.exists() else ''})")
        yield p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


@contextlib.contextmanager
def _server(cmd: list[str], log_path: Path, port: int, what: str) -> Iterator[str]:
    """Run a real server binary on a loopback port until it is ready; stop it afterwards."""
    log = open(log_path, "wb")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(url + "/-/ready").status_code == 200, timeout=30, what=f"{what} ready")
        yield url
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()


@contextlib.contextmanager
def prometheus(tmp: Path, scrape: dict[str, list[str]], interval: str = "1s", port: int | None = None) -> Iterator[str]:
    """The real Prometheus on a loopback port scraping ``job -> [host:port, ...]``."""
    assert PROMETHEUS, "prometheus binary missing (make test installs it: scripts/ensure-prometheus.sh)"
    port = port or free_port()
    cfg = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": job, "scrape_interval": interval, "static_configs": [{"targets": t}]} for job, t in scrape.items()],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    with _server([PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                  f"--web.listen-address=127.0.0.1:{port}"], tmp / "prometheus.log", port, "prometheus") as url:
        yield url


@contextlib.contextmanager
def alertmanager(tmp: Path, webhook_url: str) -> Iterator[str]:
    """The real Alertmanager (no gossip) routing everything to ``webhook_url`` with resolved notices."""
    assert ALERTMANAGER, "alertmanager binary missing (make test installs it: scripts/ensure-prometheus.sh)"
    port = free_port()
    cfg = {
        "route": {"receiver": "hook", "group_by": ["alertname", "endpoint_id"], "group_wait": "1s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "hook", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
    }
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(cfg))
    with _server([ALERTMANAGER, f"--config.file={tmp / 'alertmanager.yml'}", f"--storage.path={tmp / 'am'}",
                  f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="], tmp / "alertmanager.log", port,
                 "alertmanager") as url:
        yield url


class Receiver:
    """A tiny HTTP server on loopback that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        import http.server
        import json

        self.bodies: list[Any] = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("content-length", 0))
                outer.bodies.append(json.loads(self.rfile.read(n) or b"null"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def recorded_incident(endpoint: str = "o-ru-001", minutes: float = 45.0, end_ms: int | None = None) -> list[dict[str, Any]]:
    """The first ``minutes`` of ``endpoint`` in data/fixtures/recorded_wide.csv (a drift that
    escalates to a loss, then recovery), shifted so the last sample is ``end_ms`` (default: now)."""
    from ocad_detectors.samples import iter_samples, read_samples

    frame = read_samples(Path(__file__).resolve().parents[1] / "data" / "fixtures" / "recorded_wide.csv")
    f = frame[frame["endpoint_id"] == endpoint].sort_values("timestamp_ms")
    t0 = int(f["timestamp_ms"].iloc[0])
    f = f[f["timestamp_ms"] < t0 + minutes * 60_000]
    end = end_ms if end_ms is not None else int(time.time() * 1000) - 1000
    shift = end - int(f["timestamp_ms"].iloc[-1])
    out = []
    for s in iter_samples(f):
        d = {k: getattr(s, k) for k in ("timestamp_ms", "endpoint_id", "udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms", "lbm_success")}
        d["timestamp_ms"] = int(d["timestamp_ms"]) + shift
        d = {k: (v.item() if hasattr(v, "item") else v) for k, v in d.items()}  # numpy -> JSON types
        out.append({k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()})
    return out
