"""Recorded measurements as the pipeline's raw data: samples, endpoints, labels and incidents.

Reading, unit handling and the value rules live in :mod:`ocad_detectors.reader` (strict mode,
via :mod:`ocad_detectors.recorded`; ``ocad-detect`` reads the same files with the same rules in
lenient mode). This module adds what training needs: pandera validation of every row (the same
ranges as the reader: a delay from 0 to the probe timeout, both included; all problems
at once, each named by file, row and column), optional labels (a label column or a separate
labels file, per sample or as start/end windows with an optional ``outage_start``; any non-empty
anomaly type), capabilities inferred from the signals each
endpoint reports, and an incident table derived from the labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from ocad_detectors.features import capability_key
from ocad_detectors.recorded import Problem, ReadOptions, RecordedDataError, read_samples, to_epoch_ms
from ocad_detectors.signals import SIGNALS, VALUE_SIGNALS
from ocad_pipeline.simulator import SimulatedData

UNKNOWN_TYPE = "unknown"  # a labelled anomaly whose type the operator did not give


@dataclass(frozen=True)
class RecordedConfig:
    path: str
    format: str = "auto"
    timestamp_unit: str = "auto"
    signal_map: Mapping[str, str] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=dict)
    labels_path: str | None = None
    endpoint_roles: Mapping[str, str] = field(default_factory=dict)
    #: raw values meaning "no reply" (e.g. RIPE Atlas -3 timeout, -4 error): read as missing
    missing_values: tuple[float, ...] = ()
    #: > 0: keep only the samples of the last ``last_days`` days before ``until`` (rolling retraining)
    last_days: float = 0.0
    #: end of that window (ISO 8601, exclusive; no zone = UTC); None = just after the newest sample
    until: str | None = None


def _row_schema() -> pa.DataFrameSchema:
    cols = {
        "timestamp_ms": pa.Column("int64", pa.Check.ge(0)),
        "endpoint_id": pa.Column(str, pa.Check.str_length(min_value=1)),
    }
    for s in VALUE_SIGNALS:
        sig = SIGNALS[s]
        cols[s] = pa.Column(
            float,
            [
                pa.Check.ge(sig.min_value, error=f"{s} must be >= {sig.min_value:g} {sig.unit}"),
                pa.Check.le(sig.max_value, error=f"{s} above {sig.max_value:g} {sig.unit}"),
            ],
            nullable=True,
            required=False,
        )
    cols["lbm_success"] = pa.Column(float, pa.Check.isin([0.0, 1.0]), nullable=True, required=False)
    return pa.DataFrameSchema(cols, strict=False, name="recorded_samples")


def validate_rows(df: pd.DataFrame) -> None:
    """pandera, lazily: every bad cell of every file, named by file, row and column."""
    with_inf = df.copy()
    try:
        _row_schema().validate(with_inf, lazy=True)
    except pa.errors.SchemaErrors as e:
        problems = []
        for r in e.failure_cases.itertuples():
            idx = r.index
            if idx is None or (isinstance(idx, float) and np.isnan(idx)):
                problems.append(Problem("<all files>", None, str(r.column), f"{r.check}"))
                continue
            src = df.loc[int(idx)]
            problems.append(
                Problem(str(src["src_file"]), int(src["src_row"]), str(r.column), f"value {r.failure_case!r} fails {r.check}")
            )
        raise RecordedDataError(problems) from None


def _role(endpoint_id: str, roles: Mapping[str, str]) -> str:
    """Role from config, else from the name (o-ru-*, o-du-*), else transport."""
    if endpoint_id in roles:
        return roles[endpoint_id]
    e = endpoint_id.lower().replace("_", "-")
    if e.startswith(("o-ru", "oru", "ru-")):
        return "o-ru"
    if e.startswith(("o-du", "odu", "du-")):
        return "o-du"
    return "transport"


def _type_name(value: object) -> str:
    """A label's type as text; missing or blank becomes ``unknown``."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return UNKNOWN_TYPE
    text = str(value).strip()
    return text or UNKNOWN_TYPE


def _labels_from_file(path: Path, samples: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, int, int]]]:
    """is_anomaly / anomaly_type per sample from a labels file (per sample or start/end windows),
    and the windows that carry an ``outage_start`` (endpoint, start, end, outage_start in ms)."""
    lab = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""]) if path.suffix == ".csv" else pd.read_parquet(path)
    f = str(path)
    is_anom = np.zeros(len(samples), dtype=bool)
    atype = np.full(len(samples), None, dtype=object)
    problems: list[Problem] = []
    if "endpoint_id" not in lab.columns:
        raise RecordedDataError([Problem(f, None, "endpoint_id", "labels file needs an endpoint_id column")])
    types = lab["anomaly_type"] if "anomaly_type" in lab.columns else pd.Series([None] * len(lab))
    outages: list[tuple[str, int, int, int]] = []
    if {"start", "end"} <= set(lab.columns):
        start, ok_s = to_epoch_ms(lab["start"])
        end, ok_e = to_epoch_ms(lab["end"])
        for i in np.flatnonzero(~ok_s):
            problems.append(Problem(f, int(i) + 2, "start", f"unreadable time {lab['start'].iloc[i]!r}"))
        for i in np.flatnonzero(~ok_e):
            problems.append(Problem(f, int(i) + 2, "end", f"unreadable time {lab['end'].iloc[i]!r}"))
        for i in np.flatnonzero(ok_s & ok_e & (end <= start)):  # would label nothing, silently
            problems.append(Problem(f, int(i) + 2, "end", f"label window ends ({lab['end'].iloc[i]}) before it starts ({lab['start'].iloc[i]})"))
        has_outage = np.zeros(len(lab), dtype=bool)
        outage = np.full(len(lab), np.nan)
        if "outage_start" in lab.columns:  # optional: when the episode turned into an outage
            has_outage = lab["outage_start"].notna().to_numpy() & (lab["outage_start"].astype(str).str.strip() != "").to_numpy()
            if has_outage.any():
                parsed, ok_o = to_epoch_ms(lab["outage_start"][has_outage])
                outage[has_outage] = parsed
                for i in np.flatnonzero(has_outage)[~ok_o]:
                    problems.append(Problem(f, int(i) + 2, "outage_start", f"unreadable time {lab['outage_start'].iloc[i]!r}"))
                bad = has_outage & ok_s & ok_e & np.isfinite(outage) & ((outage < start) | (outage >= end))
                for i in np.flatnonzero(bad):
                    problems.append(Problem(f, int(i) + 2, "outage_start", "outage_start must lie in [start, end) of its window"))
        if problems:
            raise RecordedDataError(problems)
        ep = samples["endpoint_id"].to_numpy()
        ts = samples["timestamp_ms"].to_numpy()
        for i in range(len(lab)):
            sel = (ep == str(lab["endpoint_id"].iloc[i])) & (ts >= start[i]) & (ts < end[i])
            is_anom[sel] = True
            atype[sel] = _type_name(types.iloc[i])
            if has_outage[i]:
                outages.append((str(lab["endpoint_id"].iloc[i]), int(round(start[i])), int(round(end[i])), int(round(outage[i]))))
        return is_anom, atype, outages
    ts_col = next((c for c in ("timestamp_ms", "timestamp", "time", "ts") if c in lab.columns), None)
    if ts_col is None:
        raise RecordedDataError([Problem(f, None, None, "labels file needs start/end columns or a timestamp column")])
    t, ok = to_epoch_ms(lab[ts_col])
    for i in np.flatnonzero(~ok):
        problems.append(Problem(f, int(i) + 2, ts_col, f"unreadable timestamp {lab[ts_col].iloc[i]!r}"))
    if problems:
        raise RecordedDataError(problems)
    flag = lab["is_anomaly"].astype(str).str.lower().isin(["true", "1", "yes"]) if "is_anomaly" in lab.columns else pd.Series(True, index=lab.index)
    key = pd.MultiIndex.from_arrays([lab["endpoint_id"].astype(str), np.round(t).astype("int64")])
    pos = pd.MultiIndex.from_arrays([samples["endpoint_id"].astype(str), samples["timestamp_ms"]]).get_indexer(key)
    for i in np.flatnonzero(pos < 0)[:30]:
        problems.append(Problem(f, int(i) + 2, ts_col, f"no sample of {lab['endpoint_id'].iloc[i]} at this time"))
    if problems:
        raise RecordedDataError(problems)
    sel = flag.to_numpy()
    is_anom[pos[sel]] = True
    atype[pos[sel]] = [_type_name(v) for v in types[sel]]
    return is_anom, atype, outages


def _incidents_from_labels(samples: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Contiguous runs of anomalous samples of one type per endpoint become incidents."""
    rows = []
    inc_id = np.full(len(samples), None, dtype=object)
    for ep, g in samples.groupby("endpoint_id", sort=True):
        a = g["is_anomaly"].to_numpy()
        t = g["anomaly_type"].astype(object).to_numpy()
        ts = g["timestamp_ms"].to_numpy()
        k = 0
        i = 0
        while i < len(a):
            if not a[i]:
                i += 1
                continue
            j = i
            while j + 1 < len(a) and a[j + 1] and t[j + 1] == t[i]:
                j += 1
            k += 1
            iid = f"{ep}#{k:03d}"
            inc_id[samples.index.get_indexer(g.index[i : j + 1])] = iid
            end = int(ts[j + 1]) if j + 1 < len(ts) else int(ts[j]) + 1
            rows.append({"incident_id": iid, "endpoint_id": str(ep), "start": int(ts[i]), "end": end, "type": str(t[i]),
                         "severity": "major", "outage_start": None, "signals": ",".join(VALUE_SIGNALS)})
            i = j + 1
    inc = pd.DataFrame(rows, columns=["incident_id", "endpoint_id", "start", "end", "type", "severity", "outage_start", "signals"])
    inc["start"] = inc["start"].astype("int64")
    inc["end"] = inc["end"].astype("int64")
    inc["outage_start"] = inc["outage_start"].astype("Int64")
    for c in ("incident_id", "endpoint_id", "type", "severity", "signals"):
        inc[c] = inc[c].astype("string")
    return inc, inc_id


def _attach_outages(incidents: pd.DataFrame, outages: list[tuple[str, int, int, int]]) -> None:
    """Give each incident the outage start of the labelled window it came from, so lead time
    (outage start - first alert) can be measured on recordings. In place."""
    for ep, w_start, w_end, o in outages:
        st, en = incidents["start"].to_numpy(), incidents["end"].to_numpy()
        overlap = (incidents["endpoint_id"].astype(str) == ep).to_numpy() & (st < w_end) & (en > w_start)
        hit = np.flatnonzero(overlap & (st <= o) & (en > o))
        if not len(hit):  # the outage started in a gap before the window's first sample
            hit = np.flatnonzero(overlap & (st > o))[:1]
        if len(hit):
            i = hit[0]
            incidents.loc[incidents.index[i], "outage_start"] = int(min(max(o, st[i]), en[i] - 1))


def rolling_window(samples: pd.DataFrame, last_days: float, until: str | None) -> tuple[pd.DataFrame, str]:
    """The samples of ``[until - last_days, until)`` (all of them when ``last_days`` is 0) and a
    description of the window. Weekly retraining keeps the newest days of a growing directory."""
    if last_days < 0:
        raise ValueError(f"files.last_days must be >= 0, got {last_days}")
    if not last_days and until is None:
        return samples, ""
    ts = samples["timestamp_ms"].to_numpy(np.int64)
    if until is not None:
        stamp = pd.Timestamp(until)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        end = int(stamp.value // 1_000_000)
    else:
        end = int(ts.max()) + 1 if len(ts) else 0
    start = end - int(round(last_days * 86_400_000)) if last_days else int(ts.min()) if len(ts) else 0
    keep = (ts >= start) & (ts < end)
    if len(ts) and not keep.any():
        raise RecordedDataError([Problem(
            "<all files>", None, "timestamp",
            f"no sample in the window [{pd.Timestamp(start, unit='ms', tz='UTC')}, {pd.Timestamp(end, unit='ms', tz='UTC')}) "
            f"(files span {pd.Timestamp(int(ts.min()), unit='ms', tz='UTC')} .. {pd.Timestamp(int(ts.max()), unit='ms', tz='UTC')})",
        )])
    desc = (
        f"{int(keep.sum())} of {len(ts)} samples in [{pd.Timestamp(start, unit='ms', tz='UTC').isoformat()}, "
        f"{pd.Timestamp(end, unit='ms', tz='UTC').isoformat()})"
    )
    return samples[keep].reset_index(drop=True), desc


def load_recorded(cfg: RecordedConfig) -> tuple[SimulatedData, dict]:
    """Recorded files -> the same tables the simulator produces, plus a description of the source."""
    opts = ReadOptions(
        format=cfg.format, timestamp_unit=cfg.timestamp_unit, signal_map=dict(cfg.signal_map), units=dict(cfg.units),
        missing_values=tuple(cfg.missing_values),
    )
    samples, report = read_samples(cfg.path, opts, keep_source=True)
    samples, window = rolling_window(samples, cfg.last_days, cfg.until)
    if window:
        report = dict(report, window=window)
    validate_rows(samples)
    samples = samples.drop(columns=["src_row", "src_file"])
    for s in SIGNALS:
        if s not in samples.columns:
            samples[s] = np.nan
    labelled = False
    outages: list[tuple[str, int, int, int]] = []
    if cfg.labels_path:
        is_anom, atype, outages = _labels_from_file(Path(cfg.labels_path), samples)
        labelled = True
    elif "is_anomaly" in samples.columns:
        flag = samples["is_anomaly"].astype(str).str.lower().isin(["true", "1", "yes", "1.0"])
        is_anom = flag.to_numpy()
        if "anomaly_type" in samples.columns:
            atype = np.where(is_anom, samples["anomaly_type"].where(samples["anomaly_type"].notna(), UNKNOWN_TYPE).astype(object), None)
        else:
            atype = np.where(is_anom, UNKNOWN_TYPE, None)
        labelled = True
    else:
        is_anom = np.zeros(len(samples), dtype=bool)
        atype = np.full(len(samples), None, dtype=object)
    # operators have their own taxonomy: any non-empty type is kept as given (blank = unknown)
    atype = np.array([None if x is None else _type_name(x) for x in atype], dtype=object)
    samples["is_anomaly"] = is_anom
    samples["anomaly_type"] = pd.array(atype, dtype="string")
    incidents, inc_id = _incidents_from_labels(samples)
    _attach_outages(incidents, outages)
    samples["incident_id"] = pd.array(inc_id, dtype="string")
    samples["lbm_success"] = pd.array(
        [pd.NA if np.isnan(v) else bool(v) for v in samples["lbm_success"].to_numpy(dtype=float)], dtype="boolean"
    )
    eps = []
    for ep, g in samples.groupby("endpoint_id", sort=True):
        caps = [c for c, cols in (("udp_echo", ["udp_echo_rtt_ms"]), ("ecpri", ["ecpri_ow_us"]), ("lbm", ["lbm_rtt_ms", "lbm_success"])) if any(g[x].notna().any() for x in cols)]
        row = {"endpoint_id": str(ep), "role": _role(str(ep), cfg.endpoint_roles), "capabilities": capability_key(caps)}
        for s in VALUE_SIGNALS:
            row[f"{s}_base"] = float(g[s].median()) if g[s].notna().any() else np.nan
            row[f"{s}_noise_std"] = np.nan
        eps.append(row)
    cols = ["timestamp_ms", "endpoint_id", *SIGNALS, "is_anomaly", "anomaly_type", "incident_id"]
    samples = samples[cols].reset_index(drop=True)
    samples["endpoint_id"] = samples["endpoint_id"].astype(object)
    labels = samples.loc[samples["is_anomaly"], ["endpoint_id", "timestamp_ms"]].assign(
        is_anomaly=True,
        anomaly_type=samples.loc[samples["is_anomaly"], "anomaly_type"].astype(str),
        severity="major",
        description="recorded label",
    )
    report = dict(report, labelled=labelled, endpoints=len(eps))
    return SimulatedData(samples=samples, incidents=incidents, endpoints=pd.DataFrame(eps), labels=labels.reset_index(drop=True)), report
