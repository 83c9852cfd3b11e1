"""Event-wise detection metrics for labelled replays: incidents found, false alerts per
endpoint-day, time to detect, lead time before outages, per incident type.

Light (numpy + pandas), so ``ocad-detect --labels`` and the training pipeline's reports share
one implementation. Definitions:

* an incident counts once, *detected* if any flagged sample of its endpoint lies inside
  ``[start, end)``; a *predicted event* is a run of consecutive flagged samples of one endpoint
  (for alerts: an alert episode, from its first alert to its resolution) and a *false alert* if
  it touches no incident;
* **false alerts per endpoint-day** = false alerts / (sum over endpoints of the replayed time
  span in days): the figure an operator's pager feels;
* **MTTD**: mean (and median) over detected incidents of first flagged sample − start, s;
* **lead time**: for incidents that end in an outage, outage start − first flagged sample
  before it, minutes (P50 reported).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["EventResult", "episode_flags", "eventwise", "f1_from", "read_incidents"]


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def f1_from(p: float, r: float) -> float:
    return _safe_div(2 * p * r, p + r)


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
    per_type = {}
    if n_inc:  # whatever types the labels use (the simulator's or an operator's own)
        types = per["type"].astype(object).where(per["type"].notna(), "unknown").astype(str)
        for typ, g in per.groupby(types, sort=True):
            det = g["detected"].astype(bool)
            gt = g.loc[det, "ttd_s"].astype(float)
            lead = g.loc[g["ends_in_outage"].astype(bool), "lead_time_min"].dropna().astype(float)
            per_type[str(typ)] = {
                "incidents": int(len(g)),
                "detected": int(det.sum()),
                "recall": float(det.mean()),
                "mttd_seconds": float(gt.mean()) if len(gt) else None,
                "mttd_median_seconds": float(gt.median()) if len(gt) else None,
                "outage_incidents": int(g["ends_in_outage"].astype(bool).sum()),
                "lead_time_p50_minutes": float(lead.median()) if len(lead) else None,
            }
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
        "mttd_median_seconds": float(ttd.median()) if len(ttd) else None,
        "endpoint_days": days,
        "outage_incidents": len(outage),
        "warned_before_outage": int(outage["warned_before_outage"].eq(True).sum()) if len(outage) else 0,
        "lead_time_p50_minutes": float(leads.median()) if len(leads) else None,
        "per_type": per_type,
    }
    return EventResult(metrics=metrics, per_incident=per)


def episode_flags(stream: pd.DataFrame) -> np.ndarray:
    """Per row of a scored stream (``endpoint_id``, ``timestamp_ms``, ``alert``, ``escalation``,
    ``resolved``): is an alert episode open at this sample? An episode runs from its first
    alert to the sample that resolved it (or the end of the stream), so one episode is one
    predicted event however many escalations it had."""
    order = np.lexsort((stream["timestamp_ms"].to_numpy(np.int64), stream["endpoint_id"].astype(str).to_numpy()))
    eps = stream["endpoint_id"].astype(str).to_numpy()[order]
    alert = stream["alert"].to_numpy(bool)[order]
    resolved = stream["resolved"].to_numpy(bool)[order] if "resolved" in stream else np.zeros(len(order), bool)
    out = np.zeros(len(order), bool)
    open_ = False
    prev = None
    for i in range(len(order)):
        if eps[i] != prev:
            open_, prev = False, eps[i]
        if resolved[i]:
            open_ = False
        if alert[i]:
            open_ = True
        out[i] = open_
    res = np.zeros(len(order), bool)
    res[order] = out
    return res


def read_incidents(path: str | Path) -> pd.DataFrame:
    """An operator's labels as an incident table (endpoint_id, incident_id, start, end, type,
    outage_start; epoch ms, end exclusive).

    Windows: ``endpoint_id, start, end`` plus optional ``anomaly_type`` (or ``type``) and
    ``outage_start``. Per-sample labels: ``endpoint_id, timestamp`` (or ``timestamp_ms``),
    ``is_anomaly`` and optional ``anomaly_type``; each run of consecutive anomalous samples of an
    endpoint is one incident ending one sample after its last. Times as the sample reader takes
    them (epoch s or ms, ISO 8601). Any non-empty type is kept; a missing one is ``unknown``.
    Raises ``ValueError`` naming the file and the problem.
    """
    from ocad_detectors.recorded import to_epoch_ms

    p = Path(path)
    try:
        df = pd.read_parquet(p) if p.suffix.lower() in (".parquet", ".pq") else pd.read_csv(p)
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: cannot read labels: {e}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if "endpoint_id" not in df.columns:
        raise ValueError(f"{p}: labels need an endpoint_id column")
    typ_col = "anomaly_type" if "anomaly_type" in df.columns else ("type" if "type" in df.columns else None)

    def ms(col: str) -> np.ndarray:
        v, ok = to_epoch_ms(df[col])
        bad = np.flatnonzero(~ok & df[col].notna().to_numpy())
        if len(bad):
            raise ValueError(f"{p}, row {int(bad[0]) + 2}, column {col!r}: not a timestamp: {df[col].iloc[bad[0]]!r}")
        return v

    types = df[typ_col].astype(object).where(df[typ_col].notna() & (df[typ_col].astype(str).str.strip() != ""), "unknown").astype(str) \
        if typ_col else pd.Series(["unknown"] * len(df))
    if {"start", "end"} <= set(df.columns):
        start, end = ms("start"), ms("end")
        if np.isnan(start).any() or np.isnan(end).any():
            raise ValueError(f"{p}: every label window needs a start and an end")
        bad = np.flatnonzero(end <= start)
        if len(bad):
            raise ValueError(f"{p}, row {int(bad[0]) + 2}: label window ends before it starts")
        outage = ms("outage_start") if "outage_start" in df.columns else np.full(len(df), np.nan)
        out = pd.DataFrame({"endpoint_id": df["endpoint_id"].astype(str), "start": start.astype(np.int64), "end": end.astype(np.int64),
                            "type": types.to_numpy(), "outage_start": outage})
    else:
        tcol = "timestamp_ms" if "timestamp_ms" in df.columns else ("timestamp" if "timestamp" in df.columns else None)
        if tcol is None or "is_anomaly" not in df.columns:
            raise ValueError(f"{p}: labels need start/end windows or timestamp + is_anomaly columns")
        t = ms(tcol)
        flag = df["is_anomaly"].astype(str).str.strip().str.lower().isin(("1", "true", "yes", "1.0"))
        d = pd.DataFrame({"endpoint_id": df["endpoint_id"].astype(str), "t": t, "f": flag.to_numpy(), "type": types.to_numpy()}).dropna(subset=["t"])
        rows = []
        for ep, g in d.sort_values(["endpoint_id", "t"], kind="stable").groupby("endpoint_id", sort=True):
            tt = g["t"].to_numpy(np.int64)
            step = int(np.median(np.diff(tt))) if len(tt) > 1 else 1000
            for a, b in _runs(g["f"].to_numpy()):
                rows.append({"endpoint_id": ep, "start": int(tt[a]), "end": int(tt[b]) + step, "type": str(g["type"].iloc[a]), "outage_start": np.nan})
        out = pd.DataFrame(rows, columns=["endpoint_id", "start", "end", "type", "outage_start"])
    out.insert(1, "incident_id", np.arange(len(out)))
    return out
