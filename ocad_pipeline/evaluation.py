"""Detection metrics, point-wise and event-wise, and the operational ones (MTTD, lead time).

Definitions (the report states them next to the numbers):

* **point-wise**: every sample is one decision. precision, recall, F1; false-alarm rate
  ``FAR = FP / (FP + TN)`` (share of healthy samples flagged); ROC-AUC from the scores.
* **event-wise**: an incident counts once, detected if any sample inside ``[start, end)`` of its
  endpoint is flagged; a *predicted event* is a run of consecutive flagged samples of one
  endpoint and is a false alarm if it touches no incident. Event precision = predicted events
  touching an incident / all predicted events; event recall = detected incidents / incidents.
  This is *not* point-adjust (which would credit every sample of a detected segment and let a
  random score reach F1 ≈ 0.8).
* **MTTD**: mean over detected incidents of (first flagged sample in the incident − start), s.
* **lead time**: for incidents that end in an outage, outage start − first flagged sample
  before it, minutes; incidents not flagged before the outage are counted, not averaged.
"""

from __future__ import annotations

import math

import numpy as np

from ocad_detectors.events import EventResult, _safe_div, episode_flags, eventwise, f1_from
from ocad_pipeline.training.metrics import best_f1_threshold, roc_auc

__all__ = ["EventResult", "best_f1_threshold", "episode_flags", "eventwise", "f1_from", "pointwise", "pr_curve", "roc_auc", "roc_curve"]


def roc_curve(y_true: np.ndarray, scores: np.ndarray, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at ``points`` score quantiles, for plotting."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=float)
    th = np.unique(np.quantile(s, np.linspace(0, 1, points)))[::-1]
    tpr = np.array([(s[y] >= t).mean() if y.any() else 0.0 for t in th])
    fpr = np.array([(s[~y] >= t).mean() if (~y).any() else 0.0 for t in th])
    return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], tpr, [1.0]])


def pr_curve(y_true: np.ndarray, scores: np.ndarray, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at ``points`` score quantiles, for plotting."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=float)
    th = np.unique(np.quantile(s, np.linspace(0, 1, points)))[::-1]
    rec, prec = [], []
    for t in th:
        pred = s >= t
        tp = (pred & y).sum()
        rec.append(_safe_div(tp, y.sum()))
        prec.append(_safe_div(tp, pred.sum()) if pred.any() else 1.0)
    return np.array(rec), np.array(prec)


def pointwise(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray | None = None) -> dict:
    """Point-wise precision, recall, F1, FAR, ROC-AUC and the confusion matrix."""
    y = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)
    tp, fp = int((p & y).sum()), int((p & ~y).sum())
    fn, tn = int((~p & y).sum()), int((~p & ~y).sum())
    prec, rec = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)
    return {
        "precision": prec,
        "recall": rec,
        "f1_score": f1_from(prec, rec),
        "false_alarm_rate": _safe_div(fp, fp + tn),
        "roc_auc": _finite_or_none(roc_auc(y, scores)) if scores is not None else None,
        "confusion_matrix": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def _finite_or_none(v: float) -> float | None:
    """Reports are strict JSON: an undefined metric (NaN, e.g. ROC-AUC of one class) is None."""
    return None if math.isnan(v) else v
