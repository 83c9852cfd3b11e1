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
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ocad_pipeline.training.metrics import best_f1_threshold as _exact_best_f1
from ocad_pipeline.training.metrics import roc_auc as _roc_auc


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def f1_from(p: float, r: float) -> float:
    return _safe_div(2 * p * r, p + r)


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC-AUC (ties averaged); None when only one class is present (JSON-friendly)."""
    v = _roc_auc(y_true, scores)
    return None if math.isnan(v) else v


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
        "roc_auc": roc_auc(y, scores) if scores is not None else None,
        "confusion_matrix": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


@dataclass(frozen=True)
class EventResult:
    metrics: dict
    per_incident: pd.DataFrame  # incident_id, detected, first_alert_ms, ttd_s, lead_time_min


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of every run of True."""
    f = np.asarray(flags, dtype=bool)
    if not f.any():
        return []
    d = np.diff(np.concatenate([[0], f.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1))


def eventwise(stream: pd.DataFrame, flagged: np.ndarray, incidents: pd.DataFrame) -> EventResult:
    """Event-wise metrics, MTTD and lead time.

    ``stream``: endpoint_id, timestamp_ms (the replayed samples, any order); ``flagged``: one
    bool per row of ``stream`` (e.g. "an alert is active/raised at this sample"); ``incidents``:
    endpoint_id, incident_id, start, end, outage_start (epoch ms, end exclusive) — only those
    inside the stream's time range per endpoint are scored.
    """
    df = pd.DataFrame(
        {"endpoint_id": stream["endpoint_id"].astype(str).to_numpy(), "t": stream["timestamp_ms"].to_numpy(np.int64), "f": np.asarray(flagged, bool)}
    ).sort_values(["endpoint_id", "t"], kind="stable")
    rows = []
    pred_events = 0
    pred_true = 0
    span_ms = 0.0
    for ep, g in df.groupby("endpoint_id", sort=True):
        t = g["t"].to_numpy()
        f = g["f"].to_numpy()
        span_ms += float(t[-1] - t[0]) if len(t) > 1 else 0.0
        inc = incidents[(incidents["endpoint_id"].astype(str) == ep) & (incidents["end"] > t[0]) & (incidents["start"] <= t[-1])]
        starts = inc["start"].to_numpy(np.int64)
        ends = inc["end"].to_numpy(np.int64)
        for a, b in _runs(f):
            pred_events += 1
            if ((starts <= t[b]) & (ends > t[a])).any():
                pred_true += 1
        for r in inc.itertuples():
            inside = (t >= r.start) & (t < r.end)
            hit = np.flatnonzero(inside & f)
            first = int(t[hit[0]]) if len(hit) else None
            lead = None
            lead_hit = None
            if pd.notna(r.outage_start):
                before = np.flatnonzero((t >= r.start) & (t < r.outage_start) & f)
                lead_hit = bool(len(before))
                lead = (float(r.outage_start) - float(t[before[0]])) / 60_000.0 if len(before) else None
            rows.append(
                {
                    "incident_id": r.incident_id,
                    "endpoint_id": ep,
                    "type": getattr(r, "type", None),
                    "detected": first is not None,
                    "first_alert_ms": first,
                    "ttd_s": (first - int(r.start)) / 1000.0 if first is not None else None,
                    "ends_in_outage": pd.notna(r.outage_start),
                    "warned_before_outage": lead_hit,
                    "lead_time_min": lead,
                }
            )
    per = pd.DataFrame(
        rows,
        columns=["incident_id", "endpoint_id", "type", "detected", "first_alert_ms", "ttd_s", "ends_in_outage", "warned_before_outage", "lead_time_min"],
    )
    per = per.astype({"detected": bool, "ends_in_outage": bool})  # empty frames come back as object columns
    n_inc = len(per)
    detected = int(per["detected"].sum()) if n_inc else 0
    prec = _safe_div(pred_true, pred_events)
    rec = _safe_div(detected, n_inc)
    ttd = per.loc[per["detected"], "ttd_s"].astype(float)
    outage = per[per["ends_in_outage"]]
    leads = outage["lead_time_min"].dropna().astype(float)
    days = span_ms / 86_400_000.0
    metrics = {
        "incidents": n_inc,
        "detected": detected,
        "predicted_events": pred_events,
        "false_alarm_events": pred_events - pred_true,
        "precision": prec,
        "recall": rec,
        "f1_score": f1_from(prec, rec),
        "false_alarms_per_endpoint_day": _safe_div(pred_events - pred_true, days) if days else None,
        "mttd_seconds": float(ttd.mean()) if len(ttd) else None,
        "outage_incidents": len(outage),
        "warned_before_outage": int(outage["warned_before_outage"].eq(True).sum()) if len(outage) else 0,
        "lead_time_p50_minutes": float(leads.median()) if len(leads) else None,
    }
    return EventResult(metrics=metrics, per_incident=per)


def best_f1_threshold(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Threshold (on validation data only!) maximizing point-wise F1 of ``score > threshold``,
    and that F1. Without any anomaly the 99th percentile of the scores is used (F1 0)."""
    y = np.asarray(y_true, dtype=bool)
    if not y.any():
        return float(np.quantile(np.asarray(scores, dtype=float), 0.99)), 0.0
    return _exact_best_f1(y, scores)
