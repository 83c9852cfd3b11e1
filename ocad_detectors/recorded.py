"""Read an operator's recorded measurements (CSV or Parquet, wide or long) into OCAD's samples.

Accepted input
--------------
*Wide*: ``timestamp, endpoint_id`` and one column per signal (``udp_echo_rtt_ms``,
``ecpri_ow_us``, ``lbm_rtt_ms``, ``lbm_success``; other names via ``signal_map``).
*Long*: ``timestamp, endpoint_id, metric_name, value`` and an optional ``unit`` column.

Timestamps may be epoch seconds, epoch milliseconds or ISO 8601 text with or without a zone
(text without a zone is read as UTC). Values given with a unit (the long form's ``unit`` column,
or ``units`` for wide columns) are converted to the signal's own unit (ms, µs). Exact duplicate
rows are removed; two different values for the same (endpoint, timestamp, signal) are an error.
Rows are sorted by (timestamp, endpoint); gaps in time stay gaps (no interpolation). Raw
sentinel codes for a missing reply (``missing_values``, e.g. RIPE Atlas ``-3``/``-4``) are read
as missing values.

Every problem in a file is collected before failing, and the error names the file, the row
(1-based line in a CSV file, counting the header as line 1; row position in Parquet) and the
column. pandas is imported here, never by the streaming detectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ocad_detectors.signals import SIGNALS

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RecordedDataError", "ReadOptions", "Problem", "read_samples", "list_files", "to_epoch_ms", "UNIT_FACTORS"]

#: 9999-12-31T23:59:59.999Z (the bound of :mod:`ocad_detectors.samples`)
MAX_TIMESTAMP_MS = 253_402_300_799_999
MAX_COLUMNS = 1_000
TIMESTAMP_CANDIDATES = ("timestamp", "timestamp_ms", "time", "ts", "datetime")
LONG_COLUMNS = ("metric_name", "value")

#: factor from a unit to milliseconds (for delays)
UNIT_FACTORS: dict[str, float] = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "μs": 1e-3, "ms": 1.0, "s": 1000.0}
_SIGNAL_UNIT_MS = {"ms": 1.0, "us": 1e-3}


@dataclass(frozen=True)
class Problem:
    file: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.column is not None:
            where += f", column {self.column!r}"
        return f"{where}: {self.message}"


class RecordedDataError(ValueError):
    """One or more problems in recorded files; ``problems`` lists every one of them."""

    def __init__(self, problems: list[Problem], limit: int = 30):
        self.problems = problems
        lines = [str(p) for p in problems[:limit]]
        if len(problems) > limit:
            lines.append(f"... and {len(problems) - limit} more problem(s)")
        super().__init__(f"{len(problems)} problem(s) in recorded data:\n  " + "\n  ".join(lines))


@dataclass(frozen=True)
class ReadOptions:
    """How to interpret recorded files."""

    format: str = "auto"  # auto | wide | long
    timestamp_column: str | None = None  # default: first of timestamp, timestamp_ms, time, ts, datetime
    timestamp_unit: str = "auto"  # auto | s | ms | iso
    signal_map: Mapping[str, str] = field(default_factory=dict)  # source name -> OCAD signal
    units: Mapping[str, str] = field(default_factory=dict)  # wide column -> unit of its values
    keep_columns: tuple[str, ...] = ("is_anomaly", "anomaly_type")  # label columns carried through
    #: raw values that stand for a missing reply, compared before any unit conversion (e.g.
    #: RIPE Atlas writes -3 for a timeout and -4 for an error): read as missing, not as errors
    missing_values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "missing_values", tuple(float(v) for v in self.missing_values))
        except (TypeError, ValueError):
            raise ValueError(f"missing_values must be numbers, got {self.missing_values!r}") from None
        if self.format not in ("auto", "wide", "long"):
            raise ValueError(f"format must be auto, wide or long, got {self.format!r}")
        if self.timestamp_unit not in ("auto", "s", "ms", "iso"):
            raise ValueError(f"timestamp_unit must be auto, s, ms or iso, got {self.timestamp_unit!r}")
        bad = {k: v for k, v in self.signal_map.items() if v not in SIGNALS}
        if bad:
            raise ValueError(f"signal_map targets unknown signals {bad}; known: {', '.join(SIGNALS)}")
        bad_units = {k: v for k, v in self.units.items() if v not in UNIT_FACTORS}
        if bad_units:
            raise ValueError(f"unknown units {bad_units}; known: {', '.join(UNIT_FACTORS)}")


def list_files(path: str | Path | Iterable[str | Path]) -> list[Path]:
    """A file, a directory (its *.csv and *.parquet files, sorted) or a list of files."""
    if isinstance(path, (str, Path)):
        p = Path(path)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".csv", ".parquet", ".pq") and f.is_file())
            if not files:
                raise RecordedDataError([Problem(str(p), None, None, "directory holds no .csv or .parquet file")])
            return files
        paths = [p]
    else:
        paths = [Path(x) for x in path]
    missing = [Problem(str(p), None, None, "file not found") for p in paths if not p.is_file()]
    if missing:
        raise RecordedDataError(missing)
    return paths


def _read_raw(path: Path) -> tuple[pd.DataFrame, int]:
    """The file as a frame and the offset from positional row to the reported row number."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".csv":  # refuse an absurd header before pandas spends minutes on it
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                first = fh.readline(1 << 22)
        except OSError as e:
            raise RecordedDataError([Problem(str(path), None, None, f"cannot be read: {e}")]) from None
        if len(first) >= 1 << 22 or first.count(",") >= MAX_COLUMNS:
            raise RecordedDataError([Problem(str(path), None, None, f"more than {MAX_COLUMNS} columns in the header; not a samples file")])
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""]), 2
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path), 0
    except Exception as e:  # noqa: BLE001 - any parser error becomes a named problem
        raise RecordedDataError([Problem(str(path), None, None, f"cannot be read: {type(e).__name__}: {e}")]) from None
    raise RecordedDataError([Problem(str(path), None, None, f"unsupported file type {suffix!r} (use .csv or .parquet)")])


def to_epoch_ms(values: pd.Series, unit: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Parse timestamps to epoch ms; returns (ms as float with NaN, ok mask).

    ``auto``: numbers below 1e11 are seconds, from 1e11 on milliseconds; text is ISO 8601
    (without a zone = UTC).
    """
    import pandas as pd

    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(values.dtype):
        # a datetime column (Parquet timestamp): its integers are ns (or another unit), not ms
        dt = values.dt.tz_convert("UTC").dt.tz_localize(None) if isinstance(values.dtype, pd.DatetimeTZDtype) else values
        ns = dt.astype("datetime64[ns]").to_numpy().view(np.int64).astype(float)
        out = np.where(dt.isna().to_numpy(), np.nan, ns / 1e6)
        return out, np.isfinite(out) & (out >= 0) & (out <= MAX_TIMESTAMP_MS)
    num = pd.to_numeric(values, errors="coerce")
    out = np.full(len(values), np.nan)
    is_num = num.notna().to_numpy()
    v = num.to_numpy(dtype=float, na_value=np.nan)
    if unit in ("auto", "s", "ms"):
        if unit == "s":
            out[is_num] = v[is_num] * 1000.0
        elif unit == "ms":
            out[is_num] = v[is_num]
        else:
            out[is_num] = np.where(np.abs(v[is_num]) < 1e11, v[is_num] * 1000.0, v[is_num])
    text = ~is_num & values.notna().to_numpy()
    if unit in ("auto", "iso") and text.any():
        parsed = pd.to_datetime(values[text].astype(str), errors="coerce", utc=True, format="ISO8601")
        ok = parsed.notna().to_numpy()
        ms = np.full(int(text.sum()), np.nan)
        ms[ok] = parsed[ok].astype("int64").to_numpy() / 1e6
        out[text] = ms
    good = np.isfinite(out) & (out >= 0) & (out <= MAX_TIMESTAMP_MS)  # 9.3e18 would wrap in int64
    return out, good


def _to_float(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Numbers (NaN for empty cells) and a mask of cells that are present but not numbers."""
    import pandas as pd

    num = pd.to_numeric(values, errors="coerce")
    present = values.notna().to_numpy()
    return num.to_numpy(dtype=float, na_value=np.nan), present & num.isna().to_numpy()


_TRUE = {"true", "1", "yes", "y", "t", "ok", "1.0"}
_FALSE = {"false", "0", "no", "n", "f", "fail", "0.0"}


def _to_success(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """1.0 / 0.0 / NaN (empty) and a mask of cells that are not booleans."""
    s = values.astype("string").str.strip().str.lower()
    out = np.where(s.isin(_TRUE), 1.0, np.where(s.isin(_FALSE), 0.0, np.nan))
    bad = values.notna().to_numpy() & np.isnan(out)
    return out, bad


def blank_missing(v: np.ndarray, sentinels: tuple[float, ...]) -> np.ndarray:
    """Sentinel values (a raw code for "no reply") become NaN, i.e. a missing reply."""
    if not sentinels:
        return v
    out = v.copy()
    out[np.isin(out, np.asarray(sentinels, dtype=float))] = np.nan
    return out


def _convert(v: np.ndarray, from_unit: str, signal: str) -> np.ndarray:
    target = SIGNALS[signal].unit
    return v * UNIT_FACTORS[from_unit] / _SIGNAL_UNIT_MS[target]


def _canonical(name: str, options: ReadOptions) -> str | None:
    if name in options.signal_map:
        return options.signal_map[name]
    return name if name in SIGNALS else None


def _read_one(path: Path, options: ReadOptions, problems: list[Problem]) -> pd.DataFrame | None:
    import pandas as pd

    raw, offset = _read_raw(path)
    f = str(path)
    cols = list(raw.columns)
    ts_col = options.timestamp_column or next((c for c in TIMESTAMP_CANDIDATES if c in cols), None)
    fmt = options.format
    if fmt == "auto":
        fmt = "long" if all(c in cols for c in LONG_COLUMNS) else "wide"
    required = [ts_col or "timestamp", "endpoint_id"] + (list(LONG_COLUMNS) if fmt == "long" else [])
    missing = [c for c in required if c not in cols]
    if missing:
        problems.append(Problem(f, None, None, f"missing column(s) {missing} for the {fmt} format; columns are {cols}"))
        return None
    n = len(raw)
    rows = np.arange(n) + offset
    ts, ts_ok = to_epoch_ms(raw[ts_col], options.timestamp_unit)
    for i in np.flatnonzero(~ts_ok)[:50]:
        problems.append(Problem(f, int(rows[i]), ts_col, f"unreadable timestamp {raw[ts_col].iloc[i]!r}"))
    ep = raw["endpoint_id"].astype("string").str.strip()
    for i in np.flatnonzero((ep.isna() | (ep == "")).to_numpy())[:50]:
        problems.append(Problem(f, int(rows[i]), "endpoint_id", "empty endpoint_id"))
    data: dict[str, np.ndarray] = {}
    if fmt == "wide":
        signal_cols = {c: _canonical(c, options) for c in cols if c not in (ts_col, "endpoint_id", *options.keep_columns)}
        unknown = [c for c, s in signal_cols.items() if s is None]
        if unknown:
            problems.append(
                Problem(f, None, ", ".join(unknown), f"unknown signal column(s); map them with signal_map to one of {list(SIGNALS)}")
            )
        for c, sig in signal_cols.items():
            if sig is None:
                continue
            if sig == "lbm_success":
                v, bad = _to_success(raw[c])
            else:
                v, bad = _to_float(raw[c])
                v = blank_missing(v, options.missing_values)
                if c in options.units:
                    v = _convert(v, options.units[c], sig)
            for i in np.flatnonzero(bad)[:50]:
                problems.append(Problem(f, int(rows[i]), c, f"not a {'boolean' if sig == 'lbm_success' else 'number'}: {raw[c].iloc[i]!r}"))
            if sig != "lbm_success":  # out-of-range delays in the same pass as unreadable cells
                spec = SIGNALS[sig]
                with np.errstate(invalid="ignore"):
                    out_of_range = ~bad & np.isfinite(v) & ((v <= spec.min_value) | (v > spec.max_value))
                for i in np.flatnonzero(out_of_range)[:50]:
                    what = f"must be > {spec.min_value:g} {spec.unit}" if v[i] <= spec.min_value else f"above {spec.max_value:g} {spec.unit}"
                    problems.append(Problem(f, int(rows[i]), c, f"{sig} {what}: {raw[c].iloc[i]!r}"))
            data[sig] = v
        frame = pd.DataFrame({"timestamp_ms": ts, "endpoint_id": ep.to_numpy(dtype=object), **data})
        frame["src_row"] = rows
        for c in options.keep_columns:
            if c in cols:
                frame[c] = raw[c].to_numpy()
        ok = ts_ok & ep.notna().to_numpy()
        return frame[ok]
    # long form
    names = raw["metric_name"].astype("string").str.strip()
    sig = names.map(lambda s: _canonical(str(s), options) if s is not pd.NA else None)
    for i in np.flatnonzero(sig.isna().to_numpy())[:50]:
        problems.append(Problem(f, int(rows[i]), "metric_name", f"unknown metric {names.iloc[i]!r}; map it with signal_map"))
    is_succ = (sig == "lbm_success").to_numpy()
    val, bad = _to_float(raw["value"])
    sv, sbad = _to_success(raw["value"])
    val = np.where(is_succ, sv, blank_missing(val, options.missing_values))
    bad = np.where(is_succ, sbad, bad)
    for i in np.flatnonzero(bad)[:50]:
        problems.append(Problem(f, int(rows[i]), "value", f"not a {'boolean' if is_succ[i] else 'number'}: {raw['value'].iloc[i]!r}"))
    if "unit" in cols:
        unit = raw["unit"].astype("string").str.strip()
        for u in unit.dropna().unique():
            sel = (unit == u).fillna(False).to_numpy() & ~is_succ & sig.notna().to_numpy()
            if u not in UNIT_FACTORS:
                for i in np.flatnonzero(sel)[:50]:
                    problems.append(Problem(f, int(rows[i]), "unit", f"unknown unit {u!r}; known: {list(UNIT_FACTORS)}"))
                continue
            for s in set(sig[sel].dropna()):
                m = sel & (sig == s).to_numpy()
                val[m] = _convert(val[m], str(u), str(s))
    long = pd.DataFrame({"timestamp_ms": ts, "endpoint_id": ep.to_numpy(dtype=object), "signal": sig.to_numpy(dtype=object), "value": val, "src_row": rows})
    for c in options.keep_columns:
        if c in cols:
            long[c] = raw[c].to_numpy()
    long = long[ts_ok & sig.notna().to_numpy() & ep.notna().to_numpy()]
    dup = long.duplicated(["endpoint_id", "timestamp_ms", "signal"], keep=False) & ~long.duplicated(
        ["endpoint_id", "timestamp_ms", "signal", "value"], keep=False
    )
    for r in long[dup].itertuples():
        problems.append(Problem(f, int(r.src_row), "value", f"conflicting values for {r.endpoint_id} {r.signal} at {int(r.timestamp_ms)}"))
    long = long.drop_duplicates(["endpoint_id", "timestamp_ms", "signal"])
    wide = long.pivot(index=["endpoint_id", "timestamp_ms"], columns="signal", values="value").reset_index()
    first_row = long.groupby(["endpoint_id", "timestamp_ms"])["src_row"].min().reset_index()
    wide = wide.merge(first_row, on=["endpoint_id", "timestamp_ms"])
    for c in options.keep_columns:
        if c in long.columns:
            wide = wide.merge(long.groupby(["endpoint_id", "timestamp_ms"])[c].first().reset_index(), on=["endpoint_id", "timestamp_ms"])
    wide.columns.name = None
    return wide


def read_samples(
    path: str | Path | Iterable[str | Path], options: ReadOptions | None = None, keep_source: bool = False
) -> tuple[pd.DataFrame, dict]:
    """Read recorded files into one wide frame sorted by (timestamp_ms, endpoint_id).

    Returns ``(samples, report)``; ``samples`` has ``timestamp_ms`` (int64), ``endpoint_id`` and
    a float column per signal present (``lbm_success`` as 1.0/0.0/NaN), plus any label columns.
    ``report`` counts files, rows read and duplicates removed. ``keep_source`` keeps
    ``src_file``/``src_row`` columns so later checks can name where a row came from. Raises
    :class:`RecordedDataError` listing every problem found in every file.
    """
    import pandas as pd

    options = options or ReadOptions()
    files = list_files(path)
    problems: list[Problem] = []
    frames = []
    for p in files:
        try:
            fr = _read_one(p, options, problems)
        except RecordedDataError as e:
            problems += e.problems
            continue
        if fr is not None:
            frames.append(fr.assign(src_file=str(p)))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["timestamp_ms", "endpoint_id"])
    signals = [s for s in SIGNALS if s in df.columns]
    n_read = len(df)
    value_cols = ["endpoint_id", "timestamp_ms", *signals]
    df = df.drop_duplicates(value_cols)
    n_exact_dups = n_read - len(df)
    clash = df.duplicated(["endpoint_id", "timestamp_ms"], keep=False)
    for r in df[clash].head(30).itertuples():  # listed with the cell problems, in one pass
        problems.append(
            Problem(str(r.src_file), int(r.src_row), "timestamp", f"{r.endpoint_id} has two different samples at {int(r.timestamp_ms)} ms")
        )
    if problems:
        raise RecordedDataError(problems)
    df["timestamp_ms"] = np.round(df["timestamp_ms"].astype(float)).astype("int64")
    df = df.sort_values(["timestamp_ms", "endpoint_id"], kind="stable").reset_index(drop=True)
    report = {"files": [str(p) for p in files], "rows_read": n_read, "duplicates_removed": n_exact_dups, "signals": signals}
    return (df if keep_source else df.drop(columns=["src_row", "src_file"])), report
