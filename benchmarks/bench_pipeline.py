"""Wall time and peak memory per asset of the default materialization, at 1x, 2x and 4x the data.

    .venv/bin/python benchmarks/bench_pipeline.py [--scales 1,2,4] [--keep DIR]

Each scale runs the main job's assets (data -> models -> reports -> gate -> promotion, what
``make run`` materializes) in a fresh process, in process (what ``OCAD_EXECUTOR=auto`` picks
below 4 cores; with more cores ``make run`` uses the multiprocess executor instead), into a
temporary data directory and a temporary Dagster instance. The data
grows as endpoints x days of the simulator's default fleet: 2x = twice the endpoints, 4x =
twice the endpoints for twice as long (8x = 4x endpoints, 2x days). Per asset the table shows
the wall time of its steps and the peak RSS of the process while they ran (sampled every 20
ms; the in-process executor runs everything in one process, so a peak includes what earlier
steps left behind), and the scaling exponent ``log(t_max / t_1) / log(max scale)`` (1.0 =
linear, below 1 = sublinear). The machine is shared: compare figures from one invocation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def scale_factors(scale: int) -> tuple[int, int]:
    """(endpoint factor, day factor) with their product = ``scale`` (a power of two)."""
    k = int(round(math.log2(scale)))
    if scale < 1 or 2**k != scale:
        raise ValueError(f"scales must be powers of two, got {scale}")
    return 2 ** ((k + 1) // 2), 2 ** (k // 2)


def simulator_config(scale: int) -> dict:
    from ocad_pipeline.defs.assets.data import SimulatorSettings

    d = SimulatorSettings()
    e, days = scale_factors(scale)
    return {"n_oru": d.n_oru * e, "n_odu": d.n_odu * e, "n_transport": d.n_transport * e, "duration_hours": d.duration_hours * days}


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(scale: int, data_dir: str) -> dict:
    """Materialize the main job's assets once in this process; per-asset seconds and peak RSS."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.time(), _rss_mb()))
            stop.wait(0.02)

    import dagster as dg

    from ocad_pipeline.definitions import ALL_ASSETS, NATIVE_THREADS, build_resources
    from ocad_pipeline.defs import jobs

    selection = dg.AssetSelection.all() - dg.AssetSelection.groups(*jobs.TUNING_GROUPS) - dg.AssetSelection.assets(*jobs.MIGRATION_STUDY_ASSETS)
    job = dg.define_asset_job("bench_pipeline_job", selection=selection, executor_def=dg.in_process_executor)
    defs = dg.Definitions(assets=ALL_ASSETS, jobs=[job], resources=build_resources(data_dir))
    run_config = {"ops": {"raw_metrics": {"config": {"simulator": simulator_config(scale)}}}}
    thread = threading.Thread(target=sample, daemon=True)
    with tempfile.TemporaryDirectory(prefix="ocad-bench-home-") as home:
        with dg.instance_for_test(temp_dir=home) as instance:
            thread.start()
            cpu0, t0 = os.times(), time.time()
            result = defs.resolve_job_def("bench_pipeline_job").execute_in_process(run_config=run_config, instance=instance)
            wall, cpu1 = time.time() - t0, os.times()
            stop.set()
            thread.join()
            if not result.success:
                raise SystemExit(f"scale {scale}: the run failed")
            steps: dict[str, list[float]] = {}
            for rec in instance.all_logs(result.run_id):
                ev = rec.dagster_event
                if ev is None or ev.step_key is None:
                    continue
                if ev.event_type_value in ("STEP_START", "STEP_SUCCESS"):
                    steps.setdefault(ev.step_key, []).append(rec.timestamp)
    assets: dict[str, dict] = {}
    for key, stamps in steps.items():
        asset = key.split(".")[0]  # tcn_models.train_tcn_udp_echo -> tcn_models
        start, end = min(stamps), max(stamps)
        a = assets.setdefault(asset, {"seconds": 0.0, "start": start, "end": end})
        a["seconds"] += end - start
        a["start"], a["end"] = min(a["start"], start), max(a["end"], end)
    for a in assets.values():
        inside = [r for t, r in samples if a["start"] - 0.02 <= t <= a["end"] + 0.02]
        a["peak_rss_mb"] = max(inside) if inside else float("nan")
    rows = {}
    import pandas as pd

    rows_raw = len(pd.read_parquet(Path(data_dir) / "raw" / "samples.parquet", columns=["timestamp_ms"]))
    for name, a in sorted(assets.items(), key=lambda kv: kv[1]["start"]):
        rows[name] = {"seconds": round(a["seconds"], 2), "peak_rss_mb": round(a["peak_rss_mb"], 1)}
    return {
        "scale": scale,
        "simulator": simulator_config(scale),
        "raw_samples": rows_raw,
        "executor": "in_process",
        "native_threads": NATIVE_THREADS,
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
                             + (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system), 2),
        "peak_rss_mb": round(max(r for _, r in samples), 1) if samples else float("nan"),
        "load_average": os.getloadavg()[0],
        "assets": rows,
    }


def exponent(t1: float, tn: float, n: int) -> float:
    return math.log(tn / t1) / math.log(n) if t1 > 0 and tn > 0 and n > 1 else float("nan")


def table(results: list[dict]) -> str:
    scales = [r["scale"] for r in results]
    assets = list(results[0]["assets"])
    head = "| asset | " + " | ".join(f"{s}x s | {s}x MB" for s in scales) + f" | exponent (1x->{scales[-1]}x) |"
    lines = [head, "|---|" + "---:|---:|" * len(scales) + "---:|"]
    for a in assets:
        cells = []
        for r in results:
            v = r["assets"].get(a, {})
            cells += [f"{v.get('seconds', float('nan')):.1f}", f"{v.get('peak_rss_mb', float('nan')):.0f}"]
        t1 = results[0]["assets"].get(a, {}).get("seconds", 0)
        tn = results[-1]["assets"].get(a, {}).get("seconds", 0)
        lines.append(f"| {a} | " + " | ".join(cells) + f" | {exponent(t1, tn, scales[-1] // scales[0]):.2f} |")
    cells = []
    for r in results:
        cells += [f"**{r['wall_seconds']:.1f}**", f"**{r['peak_rss_mb']:.0f}**"]
    lines.append("| **total (materialization)** | " + " | ".join(cells)
                 + f" | **{exponent(results[0]['wall_seconds'], results[-1]['wall_seconds'], scales[-1] // scales[0]):.2f}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,2,4", help="comma-separated powers of two (default 1,2,4)")
    ap.add_argument("--keep", default=None, help="keep the data directories under this folder")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--run-one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run_one is not None:  # child process: one scale
        print("BENCH_RESULT " + json.dumps(run_one(args.run_one, args.data_dir)), flush=True)
        return 0
    scales = [int(s) for s in args.scales.split(",")]
    for s in scales:
        scale_factors(s)
    results = []
    for s in scales:
        with tempfile.TemporaryDirectory(prefix=f"ocad-bench-{s}x-") as tmp:
            data_dir = str(Path(args.keep) / f"{s}x") if args.keep else tmp
            sim = simulator_config(s)
            print(f"{s}x: {sim['n_oru']}+{sim['n_odu']}+{sim['n_transport']} endpoints, {sim['duration_hours']:.0f} h ...", flush=True)
            out = subprocess.run(
                [sys.executable, __file__, "--run-one", str(s), "--data-dir", data_dir],
                capture_output=True, text=True,
            )
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
            if out.returncode != 0 or line is None:
                print(out.stdout[-3000:], out.stderr[-5000:], sep="\n")
                raise SystemExit(f"scale {s}x failed (exit {out.returncode})")
            r = json.loads(line.removeprefix("BENCH_RESULT "))
            results.append(r)
            print(f"  {r['raw_samples']} raw samples: {r['wall_seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB (executor {r['executor']}, load average {r['load_average']:.1f})", flush=True)
    print()
    print(table(results))
    if len(results) > 1:
        t = [r["wall_seconds"] for r in results]
        print("\n" + ", ".join(f"{r['scale']}x / 1x = {r['wall_seconds'] / t[0]:.2f}" for r in results[1:]) + " (wall time of the materialization)")
    print(f"{os.cpu_count()} CPU cores; executor {results[0]['executor']}; native threads {results[0]['native_threads']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
