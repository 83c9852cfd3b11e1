"""Small numpy metrics for the trainers: forecast errors and the anomaly decision.

Forecast metrics (``forecast_metrics``) are computed in the signal's own unit (ms or µs), never
on scaled values, so the numbers in model metadata can be compared with the signal itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = [
    "forecast_metrics",
    "classification_metrics",
    "roc_auc",
    "best_f1_threshold",
    "forecast_table_markdown",
]

FORECAST_METRICS: tuple[str, ...] = ("r2", "mse", "mae", "rmse")


def forecast_metrics(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
    """MSE, MAE, RMSE and R² (``1 - SSE / SST`` around the mean of ``y_true``) plus ``n``.

    With ``groups`` (e.g. endpoint ids) also ``r2_within_endpoint``: ``1 - SSE / Σ_g SST_g``
    with each group's own mean, i.e. how much of the variation *around each endpoint's level*
    the forecast explains (pooled R² is dominated by the differences between endpoint baselines).
    R² is NaN when ``y_true`` is constant; all metrics are NaN for empty input.
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y.shape} vs {p.shape}")
    n = int(y.size)
    if n == 0:
        return {"r2": math.nan, "mse": math.nan, "mae": math.nan, "rmse": math.nan, "n": 0}
    err = y - p
    mse = float(np.mean(err * err))
    sst = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err * err)) / sst if sst > 0 else math.nan
    out = {"r2": r2, "mse": mse, "mae": float(np.mean(np.abs(err))), "rmse": math.sqrt(mse), "n": n}
    if groups is not None:
        g = np.asarray(groups).ravel()
        if g.shape != y.shape:
            raise ValueError(f"groups must have one entry per value: {g.shape} vs {y.shape}")
        _, inv = np.unique(g, return_inverse=True)
        means = np.bincount(inv, weights=y) / np.bincount(inv)
        sst_g = float(np.sum((y - means[inv]) ** 2))
        out["r2_within_endpoint"] = 1.0 - float(np.sum(err * err)) / sst_g if sst_g > 0 else math.nan
    return out


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN with one class."""
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # average ranks (1-based) over ties
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [s.size]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Point-wise precision, recall, F1, false-alarm rate and ROC-AUC of ``score > threshold``."""
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    pred = s > threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(np.sum(~pred & ~y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * precision * recall / (precision + recall) if (tp and precision + recall > 0) else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_alarm_rate": fp / (fp + tn) if fp + tn else math.nan,
        "roc_auc": roc_auc(y, s),
        "n": int(y.size),
        "n_anomalous": int(y.sum()),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximizing point-wise F1 of ``score > threshold`` (choose it on
    validation data only).

    Candidates cut between two distinct consecutive scores (sorted descending), so ties are
    never split; the threshold is the midpoint of the cut. Without any anomalous label the
    99th percentile of the scores is returned, with F1 0.
    """
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    if n_pos == 0:
        return float(np.quantile(s, 0.99)), 0.0
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    tp = np.cumsum(y[order])
    k = np.arange(1, s.size + 1)  # flag the top k
    # only cut where the next score is strictly smaller (or after the last one)
    valid = np.ones(s.size, dtype=bool)
    valid[:-1] = s_sorted[:-1] > s_sorted[1:]
    f1 = np.where(valid, 2.0 * tp / (k + n_pos), -1.0)
    best = int(np.argmax(f1))
    if best + 1 < s.size:
        thr = 0.5 * (s_sorted[best] + s_sorted[best + 1])
    else:  # flag everything
        thr = float(np.nextafter(s_sorted[-1], -np.inf))
    return float(thr), float(f1[best])


def forecast_table_markdown(reports: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown table: one row per (metric type, predictor) with R², MSE, MAE, RMSE, n.

    ``reports``: ``{metric_type: {predictor: forecast_metrics(...)}}``.
    """
    rows = [
        "| metric type | predictor | R² | R² within endpoint | MSE | MAE | RMSE | MSE / last value | n |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for metric, preds in reports.items():
        last_mse = preds.get("last_value", {}).get("mse", math.nan)
        for name, m in preds.items():
            ratio = m["mse"] / last_mse if last_mse and math.isfinite(last_mse) else math.nan
            rows.append(
                f"| {metric} | {name} | {m['r2']:.4f} | {m.get('r2_within_endpoint', math.nan):.4f} | {m['mse']:.5g} | "
                f"{m['mae']:.5g} | {m['rmse']:.5g} | {ratio:.3f} | {m['n']} |"
            )
    return "\n".join(rows)
