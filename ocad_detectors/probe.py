"""Measure the thin package as a service would run it: import, load, stream, time, RSS.

Run as ``python -m ocad_detectors.probe MODEL_DIR SAMPLES.npz [VERSIONS_JSON]``; prints one JSON
object. The evaluation pipeline starts it in a fresh process so the figures are not inflated
by torch, scikit-learn or pandas living in the training process. The samples file is a plain
``.npz`` (loaded with ``allow_pickle=False``) with ``timestamp_ms, endpoint_id`` and the signal
columns (``lbm_success`` as 1.0 / 0.0 / NaN).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:  # not Linux: peak RSS instead
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(model_dir: str, samples_path: str, versions: dict[str, str] | None = None) -> dict:
    t0 = time.perf_counter()
    from ocad_detectors.pipeline import DetectionPipeline

    pipe = DetectionPipeline(model_dir=model_dir, versions=versions or None)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mib()
    data = np.load(samples_path, allow_pickle=False)
    cols = [c for c in ("udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms") if c in data.files]
    ts = data["timestamp_ms"].tolist()
    eps = data["endpoint_id"].tolist()
    vals = {c: data[c].tolist() for c in cols}
    succ = data["lbm_success"].tolist() if "lbm_success" in data.files else None
    lat = np.empty(len(ts))
    for i in range(len(ts)):
        s = {"timestamp_ms": ts[i], "endpoint_id": eps[i]}
        for c in cols:
            v = vals[c][i]
            if v == v:  # not NaN
                s[c] = v
        if succ is not None and succ[i] == succ[i]:
            s["lbm_success"] = bool(succ[i])
        t = time.perf_counter_ns()
        pipe.process(s)
        lat[i] = time.perf_counter_ns() - t
    lat_ms = lat / 1e6
    return {
        "samples": len(ts),
        "import_and_load_s": load_s,
        "rss_after_load_mib": rss_loaded,
        "rss_after_stream_mib": _rss_mib(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "latency_p50_ms": float(np.percentile(lat_ms, 50)) if len(lat_ms) else None,
        "latency_p95_ms": float(np.percentile(lat_ms, 95)) if len(lat_ms) else None,
        "latency_p99_ms": float(np.percentile(lat_ms, 99)) if len(lat_ms) else None,
        "latency_max_ms": float(lat_ms.max()) if len(lat_ms) else None,
        "model_versions": pipe.model_versions,
        "heavy_modules_loaded": sorted(m for m in ("torch", "sklearn", "dagster", "pandas") if m in sys.modules),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m ocad_detectors.probe MODEL_DIR SAMPLES.npz [VERSIONS_JSON]", file=sys.stderr)
        return 2
    versions = json.loads(args[2]) if len(args) == 3 else None
    print(json.dumps(run(args[0], args[1], versions)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
