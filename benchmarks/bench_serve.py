"""Benchmark ocad-serve under a fixed-rate load (prints figures; not a test).

``ocad-serve`` runs as a subprocess pinned to one core (``--cpu``); a load generator in a
second process (pinned to another core when there is one) POSTs JSON arrays of ``--batch``
samples over one keep-alive loopback connection at each fixed rate of ``--rates`` for
``--duration`` seconds. The sample stream is deterministic: ``--endpoints`` endpoints probed
every 5 s of sample time, healthy values with occasional threshold spikes and lost probes.

Per rate: samples/s scored (from the service's own counters), ingest-to-scored latency p50 /
p99 (the service's histogram over that interval, interpolated within buckets like PromQL's
``histogram_quantile``), queue depth at the end, server RSS. At the end the service gets
SIGTERM and must report accepted = scored (``lost`` = accepted - scored must be 0; samples the
generator sent and the service refused with 429 are counted as ``refused``). Then
``ocad-detect`` scores the very same samples from a Parquet file in the same run (wall time ->
samples/s) and the service's alerts are compared with ocad-detect's (they must be equal).

``--models fixture`` builds the numpy model fixtures (tests/model_fixtures.py, fitted in
numpy) and scores with every detector; the default is rules + CUSUM
only (``--models none``), the light deployment.

Usage::

    .venv/bin/python benchmarks/bench_serve.py                       # 60 s per rate
    .venv/bin/python benchmarks/bench_serve.py --duration 5 --rates 5000,10000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_767_571_200_000
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def make_batch(k: int, batch: int, n_endpoints: int, endpoints: list[str] | None = None) -> list[dict[str, Any]]:
    """The k-th request of the stream (deterministic): endpoints in turn, 5 s per round."""
    import numpy as np

    rng = np.random.default_rng(k)
    out = []
    u = rng.normal(4.0, 0.15, batch)
    c = rng.normal(120.0, 3.0, batch)
    lb = rng.normal(8.0, 0.3, batch)
    r = rng.random(batch)
    for j in range(batch):
        i = k * batch + j
        e = i % n_endpoints
        rnd = i // n_endpoints
        spike = r[j] < 0.002
        lost = 0.002 <= r[j] < 0.004
        out.append({
            "timestamp_ms": T0 + 5000 * rnd,
            "endpoint_id": endpoints[e] if endpoints else f"o-ru-{e:04d}",
            "udp_echo_rtt_ms": None if lost else float(abs(u[j]) + (40.0 if spike else 0.0)),
            "ecpri_ow_us": float(abs(c[j])),
            "lbm_rtt_ms": None if lost else float(abs(lb[j])),
            "lbm_success": not lost,
        })
    return out


def _load(url: str, rates: list[float], duration: float, batch: int, n_endpoints: int, endpoints: list[str] | None,
          cpu: int | None, conn) -> None:
    """Load generator process: one keep-alive connection, requests scheduled at the rate."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    import httpx
    import orjson

    k = 0
    results = []
    with httpx.Client(timeout=30) as c:
        for rate in rates:
            conn.send(("start", rate, k))
            conn.recv()  # parent took its "before" scrape
            every = batch / rate
            t0 = time.perf_counter()
            sent = refused = 0
            n = int(duration * rate / batch)
            for q in range(n):
                body = orjson.dumps(make_batch(k, batch, n_endpoints, endpoints))
                wait = t0 + q * every - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                while True:
                    r = c.post(url + "/v1/samples", content=body, headers={"Content-Type": "application/json"})
                    if r.status_code == 429:  # backpressure: retry the same request shortly
                        refused += batch
                        time.sleep(0.005)
                        continue
                    if r.status_code != 200:
                        raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
                    break
                sent += batch
                k += 1
            results.append({"rate": rate, "sent": sent, "refused_429": refused, "send_s": time.perf_counter() - t0})
            conn.send(("done", results[-1], k))
            conn.recv()
    conn.send(("finished", results, k))


def _metrics(url: str) -> dict[str, Any]:
    import httpx

    text = httpx.get(url + "/metrics").text
    buckets = {}
    scored = 0.0
    for line in text.splitlines():
        m = re.match(r'ocad_ingest_to_scored_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            buckets[float(m.group(1))] = float(m.group(2))
        m = re.match(r'ocad_samples_total\{status="(ok|duplicate|out_of_order|invalid|error)"\} (\S+)', line)
        if m:
            scored += float(m.group(2))
    depth = float(re.search(r"^ocad_queue_depth (\S+)", text, re.M).group(1))
    return {"buckets": buckets, "scored": scored, "depth": depth}


def _quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """histogram_quantile over the interval (linear within the bucket)."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    total = counts[-1]
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, cnt in zip(les, counts):
        if cnt >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(cnt - prev_c, 1e-12)
        prev_le, prev_c = le, cnt
    return les[-2]


def _rss_mib(pid: int) -> tuple[float, float]:
    d = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        d[k] = v
    return int(d["VmRSS"].split()[0]) / 1024, int(d["VmHWM"].split()[0]) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per rate (default 60)")
    ap.add_argument("--rates", default="5000,10000,15000", help="samples/s, comma separated")
    ap.add_argument("--batch", type=int, default=100, help="samples per request")
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--models", choices=("none", "fixture"), default="none")
    ap.add_argument("--cpu", type=int, default=0, help="core for ocad-serve (the generator takes the next one)")
    ap.add_argument("--batch-max", type=int, default=2048, help="serve.batch_max: samples the worker drains at once")
    args = ap.parse_args()
    rates = [float(x) for x in args.rates.split(",")]
    ncpu = os.cpu_count() or 1
    cpu_srv = args.cpu % ncpu
    cpu_gen = (cpu_srv + 1) % ncpu if ncpu > 1 else None

    import httpx
    import yaml

    tmp = Path(tempfile.mkdtemp(prefix="ocad-bench-serve-"))
    endpoints = None
    model_dir = tmp / "no-models"
    det: dict[str, Any] = {"model_path": str(model_dir), "reload": {"check_every_samples": 0}}
    if args.models == "fixture":
        sys.path.insert(0, str(ROOT / "tests"))
        from model_fixtures import cached_model_registry

        built = cached_model_registry()
        model_dir = built.root
        det["model_path"] = str(model_dir)
        endpoints = sorted(built.test["endpoint_id"].unique())
        args.endpoints = len(endpoints)
    cfg = tmp / "serve.yaml"
    cfg.write_text(yaml.safe_dump({"detection": det, "serve": {
        "require_models": args.models != "none", "queue_size": 1_000_000, "max_samples_per_request": 100_000,
        "batch_max": args.batch_max, "alerts": {"jsonl_path": str(tmp / "serve_alerts.jsonl")}, "drain_timeout_s": 300}}))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "serve.log", "wb")
    srv = subprocess.Popen(
        [sys.executable, "-m", "ocad_detectors.serve", "--config", str(cfg), "--listen", f"127.0.0.1:{port}", "--log-level", "info"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ONE_THREAD}, preexec_fn=lambda: os.sched_setaffinity(0, {cpu_srv}),
    )
    for _ in range(300):
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    print(f"ocad-serve pid {srv.pid} on core {cpu_srv}; generator on core {cpu_gen}; {args.endpoints} endpoints, "
          f"{args.batch} samples/request, models: {args.models}, {args.duration:g} s per rate")
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    gen = ctx.Process(target=_load, args=(url, rates, args.duration, args.batch, args.endpoints, endpoints, cpu_gen, b))
    gen.start()
    rows = []
    while True:
        msg = a.recv()
        if msg[0] == "start":
            before = _metrics(url)
            t_before = time.perf_counter()
            a.send("go")
        elif msg[0] == "done":
            info = msg[1]
            # let the queue drain what this rate put in, then read the counters
            for _ in range(600):
                m = _metrics(url)
                if m["depth"] == 0:
                    break
                time.sleep(0.05)
            after = _metrics(url)
            dt = time.perf_counter() - t_before
            rss, hwm = _rss_mib(srv.pid)
            scored = after["scored"] - before["scored"]
            rows.append({
                "rate": info["rate"], "sent": info["sent"], "refused_429": info["refused_429"],
                "scored_per_s": scored / dt, "send_per_s": info["sent"] / info["send_s"],
                "p50_ms": 1000 * _quantile(0.5, before["buckets"], after["buckets"]),
                "p99_ms": 1000 * _quantile(0.99, before["buckets"], after["buckets"]),
                "rss_mib": rss, "peak_rss_mib": hwm,
            })
            a.send("ok")
        elif msg[0] == "finished":
            total_batches = msg[2]
            break
    gen.join()
    srv.send_signal(signal.SIGTERM)
    srv.wait(600)
    log.close()
    text = (tmp / "serve.log").read_text()
    drained = _drain_info(text)

    print(f"\n{'rate/s':>8} {'sent':>9} {'scored/s':>9} {'sent/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'429s':>6} {'RSS MiB':>8} {'peak':>6}")
    for r in rows:
        print(f"{r['rate']:8.0f} {r['sent']:9d} {r['scored_per_s']:9.0f} {r['send_per_s']:9.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
              f"{r['refused_429']:6d} {r['rss_mib']:8.1f} {r['peak_rss_mib']:6.1f}")
    lost = drained.get("accepted", -1) - drained.get("scored", -2)
    print(f"\nSIGTERM drain: accepted {drained.get('accepted')}, scored {drained.get('scored')}, lost {lost}, "
          f"drain {drained.get('seconds')} s")

    # ocad-detect on the very same samples, same run
    import orjson
    import pandas as pd

    samples = [s for k in range(total_batches) for s in make_batch(k, args.batch, args.endpoints, endpoints)]
    frame = pd.DataFrame(samples)
    frame["lbm_success"] = frame["lbm_success"].astype("boolean")
    pq = tmp / "samples.parquet"
    frame.to_parquet(pq)
    t = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "ocad-detect"), str(pq), "--config", str(cfg_detect(tmp, det)), "--alerts",
         str(tmp / "detect_alerts.jsonl"), "-q", "--no-progress"],
        check=True, env={**os.environ, **ONE_THREAD}, preexec_fn=lambda: os.sched_setaffinity(0, {cpu_srv}),
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t
    print(f"ocad-detect on the same {len(samples)} samples (one core, process start + read + score + write): "
          f"{wall:.1f} s = {len(samples) / wall:,.0f} samples/s")
    def lines(path: Path) -> list[bytes]:  # every event, canonical JSON, order-free
        if not path.exists():
            return []
        return sorted(orjson.dumps(json.loads(x), option=orjson.OPT_SORT_KEYS) for x in path.read_text().splitlines())

    served = lines(tmp / "serve_alerts.jsonl")
    detected = lines(tmp / "detect_alerts.jsonl")
    n_alerts = sum(b'"event":"alert"' in x for x in served)
    print(f"events (alerts, resolutions, level changes): service {len(served)} ({n_alerts} alerts), "
          f"ocad-detect {len(detected)}, equal: {served == detected}")
    ok = lost == 0 and served == detected
    print(f"files in {tmp}")
    return 0 if ok else 1


def cfg_detect(tmp: Path, det: dict[str, Any]) -> Path:
    import yaml

    p = tmp / "detect.yaml"
    p.write_text(yaml.safe_dump({"detection": det}))
    return p


def _drain_info(text: str) -> dict[str, Any]:
    import ast

    m = re.findall(r"drained: (\{.*\})", text)
    return ast.literal_eval(m[-1]) if m else {}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
