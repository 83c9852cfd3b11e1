"""Read throughput of the sample reader: ocad-detect's lenient read + frame validation, and the
pipeline's strict read, on a large generated CSV.

    .venv/bin/python benchmarks/bench_reader.py --rows 1000000 --reps 3

Writes the CSV once under /tmp (``--path``), then times, best of ``--reps``:
``lenient``: ``ocad_detectors.samples.read_samples`` (what ``ocad-detect`` reads), ``validate``:
the vectorized frame validation ``score_frame`` starts with, and ``strict``:
``ocad_detectors.recorded.read_samples`` (what the training pipeline reads).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

T0 = 1_767_225_600_000


def write_csv(path: Path, rows: int, iso: bool, words: bool = False, seed: int = 7) -> None:
    """Wide CSV: 200 endpoints, 1 s apart, about 1 % missing cells, true/false (or ok/fail) success."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_ep = 200
    i = np.arange(rows)
    ts = T0 + (i // n_ep) * 1000
    df = pd.DataFrame(
        {
            "timestamp" if iso else "timestamp_ms": pd.to_datetime(ts, unit="ms", utc=True).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if iso else ts,
            "endpoint_id": np.array([f"o-ru-{k:03d}" for k in range(n_ep)], dtype=object)[i % n_ep],
            "udp_echo_rtt_ms": np.round(rng.gamma(9.0, 0.5, rows), 4),
            "ecpri_ow_us": np.round(rng.gamma(9.0, 15.0, rows), 2),
            "lbm_rtt_ms": np.round(rng.gamma(9.0, 1.0, rows), 4),
            "lbm_success": np.where(rng.random(rows) < 0.995, "ok" if words else "true", "fail" if words else "false"),
        }
    )
    for c in ("udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms"):
        df.loc[rng.random(rows) < 0.01, c] = np.nan
    df.to_csv(path, index=False)


def best(fn, reps: int) -> tuple[float, object]:
    out, t_best = None, float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        t_best = min(t_best, time.perf_counter() - t0)
    return t_best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--iso", action="store_true", help="ISO 8601 text timestamps instead of epoch ms")
    ap.add_argument("--words", action="store_true", help="lbm_success as ok/fail (a text column)")
    ap.add_argument("--path", type=Path, default=None)
    ap.add_argument("--skip-strict", action="store_true")
    args = ap.parse_args()
    path = args.path or Path(f"/tmp/ocad_bench_{args.rows}{'_iso' if args.iso else ''}{'_words' if args.words else ''}.csv")
    if not path.exists():
        write_csv(path, args.rows, args.iso, args.words)
    from ocad_detectors import recorded
    from ocad_detectors.modelset import ModelSet
    from ocad_detectors.pipeline import DetectionPipeline, _BatchRun
    from ocad_detectors.samples import read_samples

    t_read, frame = best(lambda: read_samples(path), args.reps)
    pipe = DetectionPipeline(models=ModelSet())

    def validate():
        run = _BatchRun(pipe, frame, None)
        run._validate()
        return run

    t_val, run = best(validate, args.reps)
    print(f"file {path} ({path.stat().st_size / 1e6:.0f} MB, {args.rows:,} rows)")
    print(f"lenient read      {t_read:7.2f} s  {args.rows / t_read / 1e6:6.2f} M rows/s")
    print(f"frame validation  {t_val:7.2f} s  {args.rows / t_val / 1e6:6.2f} M rows/s  ({int(run.valid.sum()):,} valid)")
    print(f"read + validate   {t_read + t_val:7.2f} s  {args.rows / (t_read + t_val) / 1e6:6.2f} M rows/s")
    if not args.skip_strict:
        t_strict, (df, _) = best(lambda: recorded.read_samples(path), args.reps)
        print(f"strict read       {t_strict:7.2f} s  {args.rows / t_strict / 1e6:6.2f} M rows/s  ({len(df):,} rows)")


if __name__ == "__main__":
    main()
