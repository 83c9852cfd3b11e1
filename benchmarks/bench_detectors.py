"""Benchmark the thin numpy detectors against a torch / scikit-learn reference (prints figures).

One run builds a temporary registry with realistic small models (TCN: hidden 32, dilations
1-2-4, kernel 3, seq_len 10, three epochs; Isolation Forest: 100 trees, 256 samples per tree)
trained on a simulated fleet (12 endpoints, 48 h, 5 s probes = 414,720 samples), then measures
in two *fresh* subprocesses, each on one thread (OMP/OpenBLAS/MKL/torch threads = 1):

* ``thin``: ``ocad_detectors`` as deployed (numpy TCN and Isolation Forest runtimes);
* ``reference``: the very same pipeline code with the TCN forward pass done by the torch
  module and the forest scored by the fitted ``sklearn.ensemble.IsolationForest``.

Figures: import + model load time, process RSS after loading all models, per-sample streaming
latency p50/p95/p99 for one endpoint with all signals and all detectors, batch throughput
(``score_frame`` over the whole fleet recording). The reference streams fewer samples because
scikit-learn's per-call overhead makes it slow. Not a test: numbers depend on the machine.

Usage::

    .venv/bin/python benchmarks/bench_detectors.py [--stream N] [--ref-stream N] [--hours H]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"p99_us": 150.0, "batch_per_s": 300_000.0, "rss_mib": 40.0, "startup_s": 0.2}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}
STREAM_ENDPOINT = "o-du-001"  # capabilities ecpri+lbm+udp_echo: every signal, every detector
COLUMNS = ["timestamp_ms", "endpoint_id", "udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms", "lbm_success"]


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


# ----------------------------------------------------------------------------- build


def build(work: Path, hours: float) -> None:
    """Registry + reference originals + data files (in this process: torch/sklearn allowed)."""
    import pickle

    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from model_fixtures import build_model_registry
    from reference_models import fit_forest_sklearn, fit_tcn_torch

    from ocad_pipeline.simulator import SimulatorConfig

    t = time.perf_counter()
    built = build_model_registry(
        work / "models", SimulatorConfig(duration_hours=hours, seed=42), hidden=32, dilations=(1, 2, 4),
        kernel_size=3, seq_len=10, epochs=3, n_trees=100, max_samples=256, max_windows=60_000,
        tcn_fitter=fit_tcn_torch, forest_fitter=fit_forest_sklearn,
    )
    ref = work / "reference"
    ref.mkdir()
    for metric, model in built.tcn_originals.items():
        torch.save({"state_dict": model.state_dict(), "seq_len": model.seq_len, "hidden": model.hidden_channels,
                    "dilations": model.dilations, "kernel_size": model.kernel_size}, ref / f"tcn_{metric}.pt")
    for group, forest in built.forest_originals.items():
        (ref / f"forest_{group}.pkl").write_bytes(pickle.dumps(forest))
    samples = built.sim.samples[COLUMNS].copy()
    samples["lbm_success"] = samples["lbm_success"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    samples.to_parquet(work / "batch.parquet")
    one = samples[samples["endpoint_id"] == STREAM_ENDPOINT]
    np.savez(work / "stream.npz", ts=one["timestamp_ms"].to_numpy(), **{c: one[c].to_numpy(float) for c in COLUMNS[2:]})
    print(f"built models and data in {time.perf_counter() - t:.1f} s ({len(samples):,} samples, "
          f"{len(one):,} for the streaming endpoint)", file=sys.stderr)


# ----------------------------------------------------------------------------- workers


def _reference_pipeline(work: Path):
    """The same DetectionPipeline, but every TCN / forest call goes to torch / scikit-learn."""
    import dataclasses
    import pickle

    import numpy as np
    import torch

    from ocad_detectors.modelset import ModelLoader, ModelSet
    from ocad_detectors.pipeline import DetectionPipeline
    from ocad_pipeline.models.tcn_torch import TCNForecaster

    torch.set_num_threads(1)

    class TorchTCN:
        def __init__(self, model: TCNForecaster) -> None:
            self.model = model.eval()
            self.seq_len = model.seq_len

        def predict(self, x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, self.seq_len))
                return self.model(t).numpy().astype(np.float64)

    class SklearnForest:
        def __init__(self, forest) -> None:
            self.forest = forest
            self.n_features = forest.n_features_in_

        def score_samples(self, X: np.ndarray) -> np.ndarray:
            return self.forest.score_samples(np.asarray(X).reshape(-1, self.n_features))

    ref = work / "reference"
    thin = ModelLoader(work / "models", work / "models").load()  # metadata: scalers, thresholds, reference stats
    tcn = {}
    for metric, m in thin.tcn.items():
        ck = torch.load(ref / f"tcn_{metric}.pt", weights_only=False)
        net = TCNForecaster(ck["seq_len"], ck["hidden"], tuple(ck["dilations"]), ck["kernel_size"])
        net.load_state_dict(ck["state_dict"])
        tcn[metric] = dataclasses.replace(m, net=TorchTCN(net), weights={})  # no fused numpy path
    assert thin.iforest is not None
    groups = {g: dataclasses.replace(grp, forest=SklearnForest(pickle.loads((ref / f"forest_{g}.pkl").read_bytes())))
              for g, grp in thin.iforest.groups.items()}
    models = ModelSet(tcn=tcn, iforest=dataclasses.replace(thin.iforest, groups=groups))
    return DetectionPipeline(models=models)


def worker(kind: str, work: Path, n_stream: int) -> dict:
    t0 = time.perf_counter()
    if kind == "thin":
        from ocad_detectors.pipeline import DetectionPipeline

        pipe = DetectionPipeline(model_dir=work / "models")
    else:
        pipe = _reference_pipeline(work)
    startup = time.perf_counter() - t0
    rss_load = _rss_mib()
    assert all(v is not None for v in pipe.model_versions.values()), pipe.model_versions

    import numpy as np

    from ocad_detectors.samples import Sample

    d = np.load(work / "stream.npz")
    cols = [d["ts"].tolist(), d["udp_echo_rtt_ms"].tolist(), d["ecpri_ow_us"].tolist(), d["lbm_rtt_ms"].tolist(), d["lbm_success"].tolist()]
    samples = [Sample(t, STREAM_ENDPOINT, u, c, lb, None if s != s else bool(s)) for t, u, c, lb, s in zip(*cols)]
    warm = min(1000, len(samples) // 4)
    n = min(n_stream, len(samples) - warm)
    for s in samples[:warm]:
        pipe.process(s)
    lat = np.empty(n)
    clock = time.perf_counter
    for i, s in enumerate(samples[warm : warm + n]):
        a = clock()
        pipe.process(s)
        lat[i] = clock() - a
    lat *= 1e6
    p50, p95, p99 = np.percentile(lat, [50, 95, 99]).tolist()

    import pandas as pd

    frame = pd.read_parquet(work / "batch.parquet")
    best = float("inf")
    for _ in range(2 if kind == "thin" else 1):
        a = clock()
        res = pipe.score_frame(frame)
        best = min(best, clock() - a)
    return {
        "startup_s": startup, "rss_mib": rss_load, "p50_us": p50, "p95_us": p95, "p99_us": p99, "stream_n": int(n),
        "batch_per_s": len(frame) / best, "batch_n": len(frame), "alerts": len(res.alerts), "rss_end_mib": _rss_mib(),
    }


def run_worker(kind: str, work: Path, n_stream: int) -> dict:
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--work", str(work), "--stream", str(n_stream)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(thin: dict, ref: dict) -> str:
    rows = [
        ("import + model load", "s", thin["startup_s"], ref["startup_s"], TARGETS["startup_s"], "<="),
        ("RSS after loading models", "MiB", thin["rss_mib"], ref["rss_mib"], TARGETS["rss_mib"], "<="),
        ("stream latency p50", "µs", thin["p50_us"], ref["p50_us"], None, ""),
        ("stream latency p95", "µs", thin["p95_us"], ref["p95_us"], None, ""),
        ("stream latency p99", "µs", thin["p99_us"], ref["p99_us"], TARGETS["p99_us"], "<="),
        ("batch throughput", "samples/s", thin["batch_per_s"], ref["batch_per_s"], TARGETS["batch_per_s"], ">="),
    ]
    head = f"{'figure':<26}{'unit':>10}{'target':>12}{'thin':>13}{'ok':>5}{'torch+sklearn':>16}{'ratio':>9}"
    lines = [head, "-" * len(head)]
    for name, unit, t, r, target, op in rows:
        ok = "" if target is None else ("yes" if (t <= target if op == "<=" else t >= target) else "NO")
        tgt = "" if target is None else f"{op}{target:,.6g}"
        better = r / t if op != ">=" else t / r  # how many times better the thin package is
        lines.append(f"{name:<26}{unit:>10}{tgt:>12}{t:>13,.4g}{ok:>5}{r:>16,.4g}{better:>8.1f}x")
    lines.append("")
    lines.append(f"ratio = how many times better the thin package is. Streaming: {thin['stream_n']:,} samples "
                 f"(reference {ref['stream_n']:,}) of {STREAM_ENDPOINT} (all signals, all detectors); batch: "
                 f"{thin['batch_n']:,} samples, {thin['alerts']} alerts (reference {ref['alerts']}); one thread each.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stream", type=int, default=20_000, help="streamed samples timed (thin)")
    ap.add_argument("--ref-stream", type=int, default=1_500, help="streamed samples timed (reference)")
    ap.add_argument("--hours", type=float, default=48.0, help="simulated hours (12 endpoints, 5 s probes)")
    ap.add_argument("--worker", choices=("thin", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.work, args.stream)))
        return 0
    with tempfile.TemporaryDirectory(prefix="ocad-bench-") as tmp:
        work = Path(tmp)
        build(work, args.hours)
        thin = run_worker("thin", work, args.stream)
        ref = run_worker("reference", work, args.ref_stream)
    print(report(thin, ref))
    if args.json:
        args.json.write_text(json.dumps({"thin": thin, "reference": ref, "targets": TARGETS}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
