"""Score level-change records on labelled real RTT traces (RIPE Atlas, issue 11).

``python -m ocad_pipeline.change_eval [--traces DIR] [--tolerance 2 5] [--split dev|holdout|all]
[--methods ocad cusum kernel] [--output FILE.json]`` (console script ``ocad-change-eval``).

Three methods run on the same traces, scored the same way:

- ``ocad``: the change records of :class:`ocad_detectors.pipeline.DetectionPipeline` with its
  default configuration and no trained models (its change-point detector is
  :class:`ocad_detectors.levels.LevelShiftDetector`), real timestamps; a change is a record's
  ``change_ms``.
- ``cusum``: a textbook two-sided robust CUSUM (:func:`robust_cusum`): reference = median and
  1.4826·MAD of the first 10 samples of each segment, z clipped to ±3, ``k = 2``, ``h = 20``
  robust σ (the best of a small grid on ``dev``); the change reported is the classic estimate
  (the sample after the alarming sum last left 0), where the next segment starts.
- ``kernel``: ruptures ``KernelCPD(kernel="rbf", min_size=2).fit(x).predict(pen=2·log(n)·var)``
  (PELT, offline: it sees the whole trace) with ``var`` that of the standardised signal (see
  :func:`detect_kernel`) and gamma from the median heuristic (:func:`rbf_gamma`); needs the
  optional extra ``eval`` (``pip install 'ocad[eval]'``), skipped with a message without it.

Trace format (the folder's README): ``epoch;rtt;cp`` with a header, ``epoch`` either
``YYYY-mm-dd HH:MM:SS`` or ``dd/mm/yyyy HH:MM`` (UTC), ``rtt`` in ms with ``-3`` (timeout) and
``-4`` (error) meaning a missing reply, ``cp = 1`` on the first sample of a new level. Rows are
kept in FILE order (the labels are per row): backward time steps and duplicate stamps are not
re-sorted; the detector gets timestamps made strictly increasing (``t_i = max(t_i, t_{i-1} + 1 ms)``)
so that each change time maps back to exactly one row. Missing replies stay in the row sequence
as NaN for the streaming detectors (skipped there); the offline kernel method and the CUSUM
baseline see the trace with the missing rows removed and their indices mapped back to rows.

Scoring (the publication's convention): every detected change and every labelled change is a
row index; they match one-to-one by minimum-cost bipartite matching (cost = index distance)
when at most ``tolerance`` rows apart; TP, FP, FN are summed over traces (micro precision,
recall, F1). Per direction: a labelled change is "up" when the median of the (up to) 5 valid
samples from it onwards is above the median of the 5 valid samples before it; a detection's
direction is its own (ocad, cusum) or computed the same way (kernel). Per-direction scores match
only detections and labels of that direction.

Hold-out discipline: the traces sorted by file name are split deterministically, every third
file (positions 2, 5, 8, ... counting from 0) is ``holdout``, the rest ``dev``. The detector's
defaults were tuned on ``dev`` only; ``holdout`` numbers are the honest estimate for traces
nobody tuned on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ocad_detectors.levels import LevelShiftConfig

__all__ = [
    "DEFAULT_TRACES",
    "METHODS",
    "Trace",
    "detect_kernel",
    "detect_ocad",
    "evaluate",
    "label_directions",
    "load_trace",
    "load_traces",
    "main",
    "match_changes",
    "robust_cusum",
    "split_traces",
]

#: where the labelled traces live: beside the repository root (``../shared/data/...``)
DEFAULT_TRACES = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ripe_atlas_rtt" / "traces").resolve()
METHODS: tuple[str, ...] = ("ocad", "cusum", "kernel")
MISSING_CODES = (-3.0, -4.0)
_DIR_WINDOW = 5


class TraceFormatError(ValueError):
    """A trace file that does not follow the ``epoch;rtt;cp`` format (names file and line)."""


@dataclass(frozen=True)
class Trace:
    """One labelled trace: rows in file order."""

    name: str
    ts_ms: np.ndarray  # int64, strictly increasing (see module docstring)
    rtt_ms: np.ndarray  # float64, NaN = missing reply
    cp: np.ndarray  # int64 row indices of labelled changes (first sample of the new level)

    @property
    def n(self) -> int:
        return int(self.rtt_ms.size)


def _parse_epoch(s: str) -> int:
    """``YYYY-mm-dd HH:MM[:SS]`` or ``dd/mm/yyyy HH:MM`` (UTC) -> epoch ms."""
    s = s.strip()
    try:
        date, _, clock = s.partition(" ")
        hms = clock.split(":")
        if "-" in date:
            y, mo, d = date.split("-")
        elif "/" in date:
            d, mo, y = date.split("/")
        else:
            raise ValueError
        if len(y) != 4 or len(hms) not in (2, 3):
            raise ValueError
        dt = datetime(int(y), int(mo), int(d), int(hms[0]), int(hms[1]), int(hms[2]) if len(hms) == 3 else 0,
                      tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"unrecognised time stamp {s!r} (expected 'YYYY-mm-dd HH:MM:SS' or 'dd/mm/yyyy HH:MM')") from None
    return int(dt.timestamp()) * 1000


def load_trace(path: str | Path) -> Trace:
    """Read one ``epoch;rtt;cp`` file (CRLF or LF). Bad lines raise :class:`TraceFormatError`."""
    path = Path(path)
    ts: list[int] = []
    vals: list[float] = []
    cps: list[int] = []
    with path.open("r", encoding="utf-8", newline=None) as fh:
        header = fh.readline().strip().lower().replace(" ", "")
        if header != "epoch;rtt;cp":
            raise TraceFormatError(f"{path}: line 1: expected header 'epoch;rtt;cp', got {header!r}")
        for lineno, line in enumerate(fh, start=2):
            line = line.strip()
            if not line:
                continue
            parts = line.split(";")
            if len(parts) != 3:
                raise TraceFormatError(f"{path}: line {lineno}: expected 3 ';'-separated fields, got {len(parts)}")
            try:
                t = _parse_epoch(parts[0])
                v = float(parts[1])
                c = int(parts[2])
            except ValueError as e:
                raise TraceFormatError(f"{path}: line {lineno}: {e}") from None
            if c not in (0, 1):
                raise TraceFormatError(f"{path}: line {lineno}: cp must be 0 or 1, got {c}")
            if v in MISSING_CODES or not math.isfinite(v) or v <= 0:
                v = math.nan
            if c:
                cps.append(len(vals))
            ts.append(t)
            vals.append(v)
    if not vals:
        raise TraceFormatError(f"{path}: no data rows")
    t_arr = np.asarray(ts, dtype=np.int64)
    # strictly increasing stamps in file order: backward steps / duplicates move 1 ms past the previous
    for i in range(1, t_arr.size):
        if t_arr[i] <= t_arr[i - 1]:
            t_arr[i] = t_arr[i - 1] + 1
    return Trace(path.stem, t_arr, np.asarray(vals, dtype=np.float64), np.asarray(cps, dtype=np.int64))


def split_traces(names: list[str]) -> dict[str, list[str]]:
    """Deterministic split: sorted names, every third (positions 2, 5, 8, ...) is holdout."""
    s = sorted(names)
    holdout = [n for i, n in enumerate(s) if i % 3 == 2]
    dev = [n for i, n in enumerate(s) if i % 3 != 2]
    return {"dev": dev, "holdout": holdout, "all": s}


def load_traces(folder: str | Path, split: str = "all") -> list[Trace]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"traces folder {folder} does not exist")
    files = {p.stem: p for p in folder.glob("*.csv")}
    if not files:
        raise FileNotFoundError(f"no *.csv traces in {folder}")
    parts = split_traces(list(files))
    if split not in parts:
        raise ValueError(f"split must be one of {sorted(parts)}, got {split!r}")
    return [load_trace(files[n]) for n in parts[split]]


# ----------------------------------------------------------------------------------- directions


def _side_median(x: np.ndarray, i: int, forward: bool, w: int = _DIR_WINDOW) -> float:
    out: list[float] = []
    j = i if forward else i - 1
    step = 1 if forward else -1
    while 0 <= j < x.size and len(out) < w:
        if x[j] == x[j]:
            out.append(float(x[j]))
        j += step
    return float(np.median(out)) if out else math.nan


def label_directions(x: np.ndarray, idx: np.ndarray) -> list[str]:
    """'up'/'down' for each change row: median of up to 5 valid samples after vs before."""
    dirs = []
    for i in idx:
        a = _side_median(x, int(i), False)
        b = _side_median(x, int(i), True)
        dirs.append("up" if (b > a) else "down")
    return dirs


# ----------------------------------------------------------------------------------- methods


def detect_ocad(tr: Trace, config: LevelShiftConfig | None = None) -> tuple[np.ndarray, list[str]]:
    """OCAD as an operator runs it: the whole :class:`~ocad_detectors.pipeline.DetectionPipeline`
    (default detection config, no trained models) over the trace as one endpoint's UDP echo RTT;
    its change records -> (row indices of change starts, directions)."""
    import pandas as pd

    from ocad_detectors.config import ChangePointConfig, DetectionConfig
    from ocad_detectors.modelset import ModelSet
    from ocad_detectors.pipeline import DetectionPipeline

    cfg = DetectionConfig(changepoint=ChangePointConfig(levels=config)) if config is not None else DetectionConfig()
    pipe = DetectionPipeline(cfg, models=ModelSet())
    frame = pd.DataFrame({"timestamp_ms": tr.ts_ms, "endpoint_id": tr.name, "udp_echo_rtt_ms": tr.rtt_ms})
    recs = pipe.score_frame(frame).change_records
    if not recs:
        return np.zeros(0, dtype=np.int64), []
    idx = np.searchsorted(tr.ts_ms, np.asarray([r.change_ms for r in recs], dtype=np.int64))
    return idx.astype(np.int64), [r.direction for r in recs]


def robust_cusum(x: np.ndarray, k: float = 0.5, h: float = 5.0, window: int = 20) -> tuple[np.ndarray, list[str]]:
    """Textbook two-sided robust CUSUM on valid samples -> (valid-sample indices, directions).

    Reference = median and 1.4826·MAD of the first ``window`` samples of the current segment
    (its learning period, no alarms; σ floored at 1e-4·|median|); ``z`` clipped to ±3 (Huber-style);
    ``S+ = max(0, S+ + z - k)``, ``S- = max(0, S- - z - k)``; an alarm when either exceeds ``h``.
    The change time reported is the classic estimate, the sample after the sum last left 0, and
    the next segment starts there.
    """
    alarms: list[int] = []
    dirs: list[str] = []
    n = x.size
    seg = 0
    while seg + window < n:
        w = x[seg : seg + window]
        mu = float(np.median(w))
        sd = max(1.4826 * float(np.median(np.abs(w - mu))), 1e-4 * abs(mu), 1e-9)
        z = np.clip((x[seg + window :] - mu) / sd, -3.0, 3.0).tolist()
        sp = sm = 0.0
        up0 = dn0 = seg + window
        nxt = -1
        for off, zi in enumerate(z):
            i = seg + window + off
            if sp == 0.0:
                up0 = i
            if sm == 0.0:
                dn0 = i
            sp = max(0.0, sp + zi - k)
            sm = max(0.0, sm - zi - k)
            if sp > h or sm > h:
                start = up0 if sp > h else dn0
                alarms.append(start)
                dirs.append("up" if sp > h else "down")
                nxt = start
                break
        if nxt < 0:
            break
        seg = nxt
    return np.asarray(alarms, dtype=np.int64), dirs


def _valid(tr: Trace) -> tuple[np.ndarray, np.ndarray]:
    ok = np.flatnonzero(~np.isnan(tr.rtt_ms))
    return ok, tr.rtt_ms[ok]


def detect_cusum(tr: Trace) -> tuple[np.ndarray, list[str]]:
    """The textbook baseline with k = 2, h = 20 (robust σ), 10-sample learning window: the best
    of a small grid (k 0.5-3, h 3-40, window 5-50) on the dev split."""
    rows, x = _valid(tr)
    idx, dirs = robust_cusum(x, k=2.0, h=20.0, window=10)
    return rows[idx], dirs


def rbf_gamma(x: np.ndarray, max_points: int = 2000) -> float:
    """ruptures' median heuristic for the rbf kernel, 1 / median of squared pairwise distances,
    on at most ``max_points`` evenly spaced samples: ruptures would build the full n x n Gram
    matrix for it (800 MB and ~8 s for a 10,000-sample trace), the subsample gives the same
    scale in milliseconds."""
    s = x[:: max(1, x.size // max_points)]
    i, j = np.triu_indices(s.size, 1)
    med = float(np.median((s[i] - s[j]) ** 2))
    return 1.0 / med if med > 0 else 1.0


def detect_kernel(tr: Trace) -> tuple[np.ndarray, list[str]]:
    """ruptures KernelCPD (rbf, PELT) on the valid samples; breakpoints are change starts.

    Penalty ``2·log(n)·var`` with ``var`` the variance of the standardised signal (= 1): the rbf
    cost is scale-free (gamma from the median heuristic), so the variance of the raw values in
    ms² would be in the wrong unit (it gives F1 0.24 at 2 samples on the dev split, against 0.61).
    """
    import ruptures as rpt  # optional extra 'eval'

    rows, x = _valid(tr)
    n = x.size
    if n < 4:
        return np.zeros(0, dtype=np.int64), []
    algo = rpt.KernelCPD(kernel="rbf", min_size=2, params={"gamma": rbf_gamma(x)}).fit(x.reshape(-1, 1))
    bkps = algo.predict(pen=2.0 * math.log(n))
    starts = np.asarray([b for b in bkps if b < n], dtype=np.int64)
    idx = rows[starts] if starts.size else np.zeros(0, dtype=np.int64)
    return idx, label_directions(tr.rtt_ms, idx)


_DETECTORS = {"ocad": detect_ocad, "cusum": detect_cusum, "kernel": detect_kernel}


# ----------------------------------------------------------------------------------- scoring


def match_changes(detected: np.ndarray, labelled: np.ndarray, tolerance: int) -> int:
    """Number of one-to-one matches (minimum-cost bipartite matching) within ``tolerance`` rows."""
    if detected.size == 0 or labelled.size == 0:
        return 0
    from scipy.optimize import linear_sum_assignment  # training stack (scikit-learn's dependency)

    d = np.abs(detected.astype(np.float64)[:, None] - labelled.astype(np.float64)[None, :])
    big = 1e9
    cost = np.where(d <= tolerance, d, big)
    r, c = linear_sum_assignment(cost)
    return int(np.sum(cost[r, c] < big))


def _prf(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r, "f1": f}


def evaluate(
    traces: list[Trace],
    methods: tuple[str, ...] | list[str] = METHODS,
    tolerances: tuple[int, ...] | list[int] = (2, 5),
    config: LevelShiftConfig | None = None,
) -> dict[str, Any]:
    """Run each method on each trace and score it -> nested dict (method -> tolerance -> scores)."""
    out: dict[str, Any] = {"traces": [t.name for t in traces], "methods": {}}
    for m in methods:
        if m not in _DETECTORS:
            raise ValueError(f"unknown method {m!r}; known: {list(_DETECTORS)}")
        fn = _DETECTORS[m]
        t0 = time.perf_counter()
        per_trace = []
        for tr in traces:
            idx, dirs = fn(tr, config) if m == "ocad" else fn(tr)
            per_trace.append((tr, idx, dirs))
        secs = time.perf_counter() - t0
        res: dict[str, Any] = {"seconds": secs}
        res["per_trace"] = {tr.name: {"labelled": int(tr.cp.size), "detected": int(idx.size),
                                      **{f"tp@{tol}": match_changes(idx, tr.cp, tol) for tol in tolerances}}
                            for tr, idx, _ in per_trace}
        for tol in tolerances:
            cnt = {"all": [0, 0, 0], "up": [0, 0, 0], "down": [0, 0, 0]}
            for tr, idx, dirs in per_trace:
                ldirs = label_directions(tr.rtt_ms, tr.cp)
                for key in cnt:
                    if key == "all":
                        d_sel, l_sel = idx, tr.cp
                    else:
                        d_sel = idx[[d == key for d in dirs]] if len(dirs) else idx[:0]
                        l_sel = tr.cp[[d == key for d in ldirs]] if len(ldirs) else tr.cp[:0]
                    tp = match_changes(d_sel, l_sel, tol)
                    cnt[key][0] += tp
                    cnt[key][1] += int(d_sel.size) - tp
                    cnt[key][2] += int(l_sel.size) - tp
            res[str(tol)] = {k: _prf(*v) for k, v in cnt.items()}
        out["methods"][m] = res
    return out


def format_table(result: dict[str, Any], split: str) -> str:
    lines = [f"split={split} traces={len(result['traces'])}",
             f"{'method':8} {'tol':>3} {'P':>6} {'R':>6} {'F1':>6} {'TP':>5} {'FP':>5} {'FN':>5} {'F1 up':>6} {'F1 dn':>6} {'secs':>6}"]
    for m, res in result["methods"].items():
        for tol, sc in res.items():
            if tol in ("seconds", "per_trace"):
                continue
            a = sc["all"]
            lines.append(f"{m:8} {tol:>3} {a['precision']:6.3f} {a['recall']:6.3f} {a['f1']:6.3f} {a['tp']:5d} {a['fp']:5d} "
                         f"{a['fn']:5d} {sc['up']['f1']:6.3f} {sc['down']['f1']:6.3f} {res['seconds']:6.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ocad-change-eval", description=__doc__.split("\n")[0])
    ap.add_argument("--traces", default=str(DEFAULT_TRACES), help="folder of labelled epoch;rtt;cp traces")
    ap.add_argument("--tolerance", type=int, nargs="+", default=[2, 5], help="match tolerance(s) in samples")
    ap.add_argument("--split", default="all", choices=["dev", "holdout", "all"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--output", help="write the scores as JSON here")
    args = ap.parse_args(argv)
    if any(t < 0 for t in args.tolerance):
        ap.error(f"--tolerance must be >= 0 samples, got {args.tolerance}")
    try:
        traces = load_traces(args.traces, args.split)
    except (FileNotFoundError, TraceFormatError) as e:
        print(f"ocad-change-eval: {e}", file=sys.stderr)
        return 2
    methods = list(args.methods)
    if "kernel" in methods:
        try:
            import ruptures  # noqa: F401
        except ImportError:
            print("ocad-change-eval: ruptures is not installed (pip install 'ocad[eval]'); skipping 'kernel'", file=sys.stderr)
            methods.remove("kernel")
    result = evaluate(traces, methods, args.tolerance)
    result["split"] = args.split
    print(format_table(result, args.split))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
