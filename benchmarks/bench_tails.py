"""How heavy are healthy tails? Real RIPE Atlas RTT traces against the realistic simulator.

    .venv/bin/python benchmarks/bench_tails.py [--traces DIR] [--hours 48]

Why: the simulator's healthy noise decides how far short incidents can be told apart from
healthy queueing. If its healthy tails were heavier than real probes show, the recall it
allows would be too pessimistic; if lighter, too optimistic. Both sources are measured with
the same statistic: the robust z-score of each sample against the median and 1.4826·MAD of
the previous 60 samples of the same series, on healthy data only (real traces: within each
human-labelled level segment; simulator: outside every incident, labelled benign events
included, as a detector sees them). Printed: the share of samples beyond 4, 6 and 10 robust σ
(upward), beyond 4 σ downward, and runs of 3 or more consecutive samples above 4 σ per 1,000
samples (what a short burst looks like).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ocad_pipeline.change_eval import DEFAULT_TRACES, load_traces  # noqa: E402
from ocad_pipeline.simulator import SimulatorConfig, simulate  # noqa: E402

WINDOW = 60


def robust_z(v: np.ndarray) -> np.ndarray:
    """z of each sample against the trailing window's median and MAD (finite values only)."""
    s = pd.Series(v[np.isfinite(v)])
    med = s.rolling(WINDOW, min_periods=20).median().shift(1)
    mad = (s - med).abs().rolling(WINDOW, min_periods=20).median().shift(1) * 1.4826
    z = ((s - med) / mad).to_numpy()
    return z[np.isfinite(z)]


def runs_above(z: np.ndarray, thr: float = 4.0, min_len: int = 3) -> int:
    on = np.concatenate([[False], z > thr, [False]]).astype(np.int8)
    d = np.diff(on)
    lengths = np.flatnonzero(d == -1) - np.flatnonzero(d == 1)
    return int(np.sum(lengths >= min_len))


def summary(name: str, series: list[np.ndarray]) -> dict:
    zs = [robust_z(v) for v in series if np.isfinite(v).sum() >= 100]
    z = np.concatenate(zs) if zs else np.empty(0)
    runs = sum(runs_above(x) for x in zs)
    out = {
        "source": name, "series": len(zs), "samples": int(z.size),
        "P(z>4)": float(np.mean(z > 4)), "P(z>6)": float(np.mean(z > 6)), "P(z>10)": float(np.mean(z > 10)),
        "P(z<-4)": float(np.mean(z < -4)), "runs>=3 above 4σ per 1k": 1000.0 * runs / max(z.size, 1),
    }
    return out


def real_series(folder: Path) -> list[np.ndarray]:
    out = []
    for tr in load_traces(folder):
        bounds = [0, *tr.cp.tolist(), tr.n]
        out += [tr.rtt_ms[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return out


def simulated_series(hours: float, seed: int) -> dict[str, list[np.ndarray]]:
    sim = simulate(SimulatorConfig(n_oru=4, n_odu=4, n_transport=4, n_wan=4, duration_hours=hours, seed=seed))
    s = sim.samples
    wan = set(sim.endpoints.loc[sim.endpoints["group"] == "wan", "endpoint_id"].astype(str))
    out: dict[str, list[np.ndarray]] = {"simulator, fronthaul (5 s)": [], "simulator, wan (240 s)": []}
    for ep, g in s.groupby("endpoint_id"):
        key = "simulator, wan (240 s)" if str(ep) in wan else "simulator, fronthaul (5 s)"
        healthy = ~g["is_anomaly"].to_numpy(dtype=bool)
        for sig in ("udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms"):
            v = g[sig].to_numpy(dtype=float, na_value=np.nan).copy()
            if np.isfinite(v).sum() == 0:
                continue
            v[~healthy] = np.nan
            out[key].append(v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES, help="folder of labelled epoch;rtt;cp traces")
    ap.add_argument("--hours", type=float, default=48.0, help="simulated hours (default 48; WAN endpoints need days)")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args(argv)
    rows = []
    if args.traces.is_dir():
        rows.append(summary("RIPE Atlas traces (240 s, real)", real_series(args.traces)))
    else:
        print(f"(no traces at {args.traces}: real-data row skipped)")
    for name, series in simulated_series(args.hours, args.seed).items():
        rows.append(summary(name, series))
    df = pd.DataFrame(rows)
    for c in ("P(z>4)", "P(z>6)", "P(z>10)", "P(z<-4)"):
        df[c] = df[c].map(lambda x: f"{x:.4f}")
    df["runs>=3 above 4σ per 1k"] = df["runs>=3 above 4σ per 1k"].map(lambda x: f"{x:.2f}")
    print(df.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
