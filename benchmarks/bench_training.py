"""Wall time to train every model at the default config on the default data.

    .venv/bin/python benchmarks/bench_training.py [--data-dir DIR] [--threads N]

Reads ``DIR/processed/{timeseries,multivariate}_*.parquet`` and ``reference_stats.parquet``
(default ``$OCAD_DATA_DIR`` or ``data/``). When they are missing, the data assets are first
materialized with the default simulator config into a temporary directory (about 30 s, not
counted). Then the three TCN forecasters and the Isolation Forest are trained exactly as the
``tcn_models`` / ``isolation_forest_model`` assets do with their default config (no registry
writes), and a table of wall times is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPLITS = ("train", "val", "test")


def _have_data(d: Path) -> bool:
    files = [d / "processed" / f"{k}_{s}.parquet" for k in ("timeseries", "multivariate") for s in SPLITS]
    return all(f.exists() for f in files) and (d / "processed" / "reference_stats.parquet").exists()


def _materialize_data(d: Path) -> None:
    import dagster as dg

    from ocad_pipeline.definitions import ALL_ASSETS, build_resources

    print(f"no datasets in {d}: materializing the data assets (default simulator config) ...", flush=True)
    t0 = time.perf_counter()
    result = dg.materialize(
        ALL_ASSETS,
        selection=["*timeseries_splits", "*multivariate_splits"],
        resources=build_resources(str(d)),
        instance=dg.DagsterInstance.ephemeral(),
    )
    if not result.success:
        raise SystemExit("materializing the data assets failed")
    print(f"  done in {time.perf_counter() - t0:.1f} s (not counted below)\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("OCAD_DATA_DIR", str(ROOT / "data")))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's num_threads)")
    args = ap.parse_args(argv)

    from ocad_pipeline.defs.assets.models import IsolationForestConfig, TCNTrainingConfig
    from ocad_pipeline.training.iforest import train_isolation_forest
    from ocad_pipeline.training.tcn import TCNParams, evaluate_forecasts, prepare_metric_windows, train_tcn

    data_dir = Path(args.data_dir)
    tmp = None
    if not _have_data(data_dir):
        tmp = tempfile.TemporaryDirectory(prefix="ocad-bench-")
        data_dir = Path(tmp.name)
        _materialize_data(data_dir)
    proc = data_dir / "processed"
    ts = {s: pd.read_parquet(proc / f"timeseries_{s}.parquet") for s in SPLITS}
    mv = {s: pd.read_parquet(proc / f"multivariate_{s}.parquet") for s in SPLITS}

    params = TCNTrainingConfig().to_params()
    if args.threads:
        params = TCNParams(**{**params.to_dict(), "num_threads": args.threads})
    if_params = IsolationForestConfig().to_params()
    print(f"data: {data_dir}")
    print(f"TCN config: {params.to_dict()}")
    print(f"Isolation Forest config: {if_params.to_dict()}\n", flush=True)

    rows = []
    for metric in ("udp_echo", "ecpri", "lbm"):
        t0 = time.perf_counter()
        w = prepare_metric_windows(ts, metric, params.sequence_length)
        r = train_tcn(w, params)
        wall = time.perf_counter() - t0
        rep = evaluate_forecasts(r, w)
        rows.append(
            {
                "model": f"tcn_{metric}",
                "training data": f"{r.n_train_windows} windows",
                "epochs run": r.epochs_run,
                "best epoch": r.best_epoch,
                "wall time [s]": round(wall, 1),
                "s / epoch": round(r.train_seconds / r.epochs_run, 2),
                "test MSE / last value": round(rep["tcn"]["mse"] / rep["last_value"]["mse"], 4),
                "test MSE / window mean": round(rep["tcn"]["mse"] / rep["window_mean"]["mse"], 4),
            }
        )
        print(f"  tcn_{metric}: {wall:.1f} s", flush=True)
    t0 = time.perf_counter()
    res = train_isolation_forest(mv, if_params)
    wall = time.perf_counter() - t0
    rows.append(
        {
            "model": "isolation_forest",
            "training data": f"{sum(m.n_train for m in res.groups.values())} rows, {len(res.groups)} groups",
            "epochs run": "",
            "best epoch": "",
            "wall time [s]": round(wall, 1),
            "s / epoch": "",
            "test MSE / last value": "",
            "test MSE / window mean": "",
        }
    )
    print(f"  isolation_forest: {wall:.1f} s (incl. {if_params.cv_folds}-fold CV)\n", flush=True)
    table = pd.DataFrame(rows)
    total = float(table["wall time [s]"].sum())
    print(table.to_markdown(index=False))
    print(f"\ntotal: {total:.1f} s on {os.cpu_count()} CPU cores (torch threads: {params.num_threads})")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
