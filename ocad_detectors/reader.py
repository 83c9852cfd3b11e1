"""The one reader of sample files (CSV or Parquet, wide or long), for serving and for training.

Both modes parse a file with the same code and judge every sample with the same validator
(:func:`ocad_detectors.samples.validate_frame`, which ``score_frame`` also uses and which
gives the verdicts of the streaming :func:`~ocad_detectors.samples.validate_sample`):

* ``lenient`` (``ocad-detect``, serving): one row per sample in file order (long files: time
  order); a bad cell stays in the frame as it was read and that sample becomes an ``invalid``
  result. Never raises for bad rows; unknown columns are reported in ``ignored_columns``.
* ``strict`` (the training pipeline): every problem of every file is collected first, then the
  files are refused with :class:`RecordedDataError` naming file, row, column, the cell, and how
  many rows of each column failed. Accepted files come back deduplicated and sorted.

A file gives the same values and the same verdicts in both modes: strict refuses exactly when
lenient marks a sample invalid, names an unknown column, or finds two different samples of one
endpoint at one time (lenient leaves those to the detector's ``duplicate`` status).

Value rules (one per field; the pandera schemas of ``ocad_pipeline`` check the same ranges)
------------------------------------------------------------------------------------------

=================  ==============================================================================
timestamp column   the first of ``timestamp_ms``, ``timestamp``, ``time``, ``ts``, ``datetime``
                   (or ``timestamp_column``); any other of these names is an unknown column.
timestamps         ``timestamp_ms``: numbers are epoch ms. Other names: numbers below 1e11 are
                   epoch seconds, from 1e11 on epoch ms. Text is ISO 8601 (no zone = UTC);
                   Parquet datetimes are exact. Rounded to the nearest ms. Valid:
                   0 .. 9999-12-31T23:59:59.999Z. ``timestamp_unit`` (s, ms, iso) overrides.
endpoint_id        non-empty text after stripping spaces; numeric ids (RIPE Atlas probe ids)
                   become text (``11119``, not ``11119.0``).
delays             numbers in the signal's unit (ms or µs, converted from ``units`` / a ``unit``
                   column: ns, us, µs, ms, s); valid from 0 (a reply below the probe's
                   resolution) to the signal's ``max_value`` (the probe timeout), both
                   included. Negative, infinite, larger or non-numeric: invalid. Codes in
                   ``missing_values`` (compared before unit conversion) are missing replies.
lbm_success        true/false, t/f, yes/no, y/n, ok/fail (any case), or a number equal to 1/0.
missing            an empty cell or ``NA``, ``NaN``, ``nan``, ``null``, ``None``: no reply for that
                   signal (an empty ``endpoint_id`` / timestamp is invalid, not missing).
=================  ==============================================================================

Long files: an exact repeat of a row (same time, endpoint, metric, value and unit) is the same
measurement exported twice and is dropped; a metric repeated with another value starts a second
sample at that time. An unknown ``metric_name`` or ``unit`` makes its sample invalid.

Row numbers in messages: 1-based lines of a CSV file (the header is line 1), row positions in
Parquet. pandas is imported here, never by the streaming detectors.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ocad_detectors.samples import (
    MAX_COLUMNS,
    MAX_TIMESTAMP_MS,
    SIGNAL_ORDER,
    FrameCheck,
    safe_repr,
    validate_frame,
)
from ocad_detectors.signals import SIGNALS, VALUE_SIGNALS

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "LONG_COLUMNS",
    "MAX_COLUMNS",
    "MAX_TIMESTAMP_MS",
    "MODES",
    "NA_TOKENS",
    "TIMESTAMP_CANDIDATES",
    "UNIT_FACTORS",
    "Problem",
    "ReadOptions",
    "RecordedDataError",
    "blank_missing",
    "check_units",
    "detect_format",
    "list_files",
    "long_to_wide",
    "read_samples",
    "to_epoch_ms",
]

MODES: tuple[str, ...] = ("strict", "lenient")
#: timestamp columns in order of priority (the name ``timestamp_ms`` states its unit)
TIMESTAMP_CANDIDATES: tuple[str, ...] = ("timestamp_ms", "timestamp", "time", "ts", "datetime")
LONG_COLUMNS: tuple[str, ...] = ("metric_name", "value")
#: factor from a unit to milliseconds (for delays)
UNIT_FACTORS: dict[str, float] = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "μs": 1e-3, "ms": 1.0, "s": 1000.0}
#: cell texts that mean "no value" in signal columns (an empty cell everywhere)
NA_TOKENS: tuple[str, ...] = ("", "NA", "NaN", "nan", "null", "None")
TRUE_TOKENS = frozenset({"true", "t", "yes", "y", "ok"})
FALSE_TOKENS = frozenset({"false", "f", "no", "n", "fail"})
_SIGNAL_UNIT_MS = {"ms": 1.0, "us": 1e-3}
_SECONDS_BELOW = 1e11  # a number below this in an auto timestamp column is epoch seconds
_LIST_LIMIT = 50  # problems listed per file and column (all of them are counted)
_SUFFIXES = (".csv", ".parquet", ".pq")

# cell kinds while parsing
_MISSING, _NUMBER, _UNREAD = 0, 1, 2


# ----------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    """One problem in a file; ``row``/``column`` are None when it concerns the whole file."""

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
    """One or more problems in sample files. ``problems`` lists them (at most 50 per file and
    column); ``counts`` says how many rows failed per (file, column) in all."""

    def __init__(self, problems: list[Problem], limit: int = 30, counts: Mapping[tuple[str, str], int] | None = None):
        self.problems = problems
        self.counts = dict(counts or {})
        lines, unlisted = [], 0
        for (f, col), k in sorted(self.counts.items()):
            rows = [p.row for p in problems if p.file == f and (p.column or "") == col and p.row is not None]
            unlisted += max(0, k - len(rows))
            if k > 1:
                lines.append(f"{f}, column {col!r}: {k:,} bad row(s), e.g. rows {', '.join(str(r) for r in rows[:5])}")
        lines += [str(p) for p in problems[:limit]]
        if len(problems) > limit:
            lines.append(f"... and {len(problems) - limit} more problem(s) listed in .problems")
        super().__init__(f"{len(problems) + unlisted:,} problem(s) in recorded data:\n  " + "\n  ".join(lines))


def _fail(path: Any, message: str) -> RecordedDataError:
    return RecordedDataError([Problem(str(path), None, None, message)])


# ----------------------------------------------------------------------------- options


def check_units(units: Mapping[str, str], signal_map: Mapping[str, str] | None = None) -> None:
    """``ValueError`` naming a unit that cannot be meant, or a unit for a non-delay signal."""
    signal_map = signal_map or {}
    for key, unit in units.items():
        sig = signal_map.get(key, key)
        if sig not in VALUE_SIGNALS:
            raise ValueError(f"unit given for {key!r}, which is not a delay signal; known: {', '.join(VALUE_SIGNALS)}")
        if str(unit).strip() not in UNIT_FACTORS:
            raise ValueError(f"unknown unit {unit!r} for {key}; known: {', '.join(UNIT_FACTORS)}")


@dataclass(frozen=True)
class ReadOptions:
    """How to interpret sample files (the same for both modes)."""

    format: str = "auto"  # auto | wide | long
    timestamp_column: str | None = None  # default: the first of TIMESTAMP_CANDIDATES present
    timestamp_unit: str = "auto"  # auto | s | ms | iso
    signal_map: Mapping[str, str] = field(default_factory=dict)  # source name -> OCAD signal
    units: Mapping[str, str] = field(default_factory=dict)  # column (source or signal name) -> unit
    keep_columns: tuple[str, ...] = ("is_anomaly", "anomaly_type")  # label columns carried through (strict)
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
        check_units(self.units, self.signal_map)
        by_signal: dict[str, str] = {}
        for k, v in self.units.items():  # keyed by the file's name or the signal's: one per signal
            sig, unit = self.signal_map.get(k, k), str(v).strip()
            if by_signal.get(sig, unit) != unit:
                raise ValueError(f"two units given for {sig}: {by_signal[sig]!r} and {unit!r}")
            by_signal[sig] = unit
        object.__setattr__(self, "units", by_signal)


# ----------------------------------------------------------------------------- files


def list_files(path: str | Path | Iterable[str | Path]) -> list[Path]:
    """A file, a directory (its *.csv and *.parquet files, sorted) or a list of files."""
    if isinstance(path, (str, Path)):
        p = Path(path)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in _SUFFIXES and f.is_file())
            if not files:
                raise _fail(p, "directory holds no .csv or .parquet file")
            return files
        paths = [p]
    else:
        paths = [Path(x) for x in path]
    problems = [Problem(str(p), None, None, f"unsupported file type {p.suffix!r} (use .csv or .parquet)") for p in paths if p.suffix.lower() not in _SUFFIXES]
    problems += [Problem(str(p), None, None, "file not found") for p in paths if p.suffix.lower() in _SUFFIXES and not p.is_file()]
    if problems:
        raise RecordedDataError(problems)
    return paths


def _header(p: Path) -> list[str] | None:
    """Column names without reading the data, refusing more than :data:`MAX_COLUMNS` (a header
    with 100k columns would take pandas minutes) and duplicate names; None when unreadable."""
    if p.suffix.lower() == ".csv":
        try:
            with open(p, newline="", encoding="utf-8", errors="replace") as fh:
                first = fh.readline(1 << 22)  # 4 MiB is far more than any sane header
        except OSError as e:
            raise _fail(p, f"cannot be read: {e}") from None
        if len(first) >= 1 << 22 or first.count(",") >= MAX_COLUMNS:
            raise _fail(p, f"more than {MAX_COLUMNS} columns in the header; not a samples file")
        names = next(csv.reader([first]), [])
    else:
        try:
            import pyarrow.parquet as pq

            names = list(pq.read_schema(p).names)
        except Exception:
            return None
        if len(names) > MAX_COLUMNS:
            raise _fail(p, f"{len(names)} columns, more than {MAX_COLUMNS}; not a samples file")
    dups = sorted({c for c in names if names.count(c) > 1})
    if dups:
        raise _fail(p, f"duplicate column(s) {dups}; which one holds the data is ambiguous")
    return names


def _read_raw(p: Path, text_columns: Iterable[str] = ()) -> tuple[pd.DataFrame, int]:
    """The file as pandas reads it and the offset from row position to the reported row.
    ``endpoint_id`` and ``text_columns`` (labels) are read as text, only an empty cell missing."""
    import pandas as pd

    header = _header(p)
    try:
        if p.suffix.lower() == ".csv":
            # endpoint ids stay text ("007"); NA tokens are "missing" only in value columns
            text = {"endpoint_id", *text_columns} & set(header or [])
            na = {c: ([""] if c in text else list(NA_TOKENS)) for c in header or []}
            dtype = {c: str for c in text} or None
            raw = pd.read_csv(p, dtype=dtype, keep_default_na=False, na_values=na or list(NA_TOKENS), low_memory=False)
            return raw, 2
        return pd.read_parquet(p), 0
    except Exception as e:  # noqa: BLE001 - any parser error becomes a named problem
        raise _fail(p, f"cannot be read: {type(e).__name__}: {safe_repr(e, str, 500)}") from None


def detect_format(columns: Any) -> str:
    """``long`` when the frame has ``metric_name`` and ``value`` columns, else ``wide``."""
    cols = set(columns)
    return "long" if all(c in cols for c in LONG_COLUMNS) else "wide"


# ----------------------------------------------------------------------------- cells


def _is_str_array(raw: np.ndarray) -> np.ndarray:
    return np.fromiter((type(x) is str for x in raw), dtype=bool, count=len(raw))


def _na_cell(x: Any) -> bool:
    import pandas as pd

    try:
        return bool(x is None or (not isinstance(x, (str, bytes)) and pd.isna(x)))
    except (TypeError, ValueError):  # arrays, odd objects
        return False


def _parse_cells(series: Any, success: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(numbers, kind, raw)``: each cell as a float (``_NUMBER``), missing (``_MISSING``), or
    not readable (``_UNREAD``: it stays as read so the validator names it). For ``lbm_success``
    the boolean words count as 1 / 0."""
    import pandas as pd

    dtype = getattr(series, "dtype", None)
    n = len(series)
    if dtype is not None and dtype.kind in "fiu" and not isinstance(dtype, pd.api.extensions.ExtensionDtype):
        v = series.to_numpy(dtype=np.float64)
        kind = np.where(np.isnan(v), _MISSING, _NUMBER).astype(np.int8)
        return v, kind, v
    if dtype is not None and dtype.kind == "b" and not isinstance(dtype, pd.api.extensions.ExtensionDtype):
        raw = series.to_numpy()
        if success:
            return raw.astype(np.float64), np.full(n, _NUMBER, dtype=np.int8), raw
        return np.full(n, np.nan), np.full(n, _UNREAD, dtype=np.int8), raw.astype(object)
    raw = series.to_numpy(dtype=object) if hasattr(series, "to_numpy") else np.asarray(series, dtype=object)
    num = np.full(n, np.nan)
    kind = np.full(n, _UNREAD, dtype=np.int8)
    is_str = _is_str_array(raw)
    if is_str.any():
        idx = np.flatnonzero(is_str)
        text = pd.Series(raw[idx], dtype=object).str.strip()
        na = text.isin(NA_TOKENS).to_numpy()
        todo = ~na
        if success:
            low = text.str.lower()
            t = low.isin(TRUE_TOKENS).to_numpy()
            f = low.isin(FALSE_TOKENS).to_numpy()
            num[idx[t]] = 1.0
            num[idx[f]] = 0.0
            kind[idx[t | f]] = _NUMBER
            todo &= ~(t | f)
        kind[idx[na]] = _MISSING
        if todo.any():
            v = pd.to_numeric(text[todo], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            ok = ~np.isnan(v)
            sel = idx[np.flatnonzero(todo)[ok]]
            num[sel] = v[ok]
            kind[sel] = _NUMBER
    for i in np.flatnonzero(~is_str).tolist():  # typed cells of an object column (Parquet, frames)
        x = raw[i]
        if isinstance(x, (bool, np.bool_)):
            if success:
                num[i], kind[i] = float(x), _NUMBER
        elif isinstance(x, (int, float, np.integer, np.floating)):
            try:
                fx = float(x)
            except OverflowError:
                continue
            if fx != fx:
                kind[i] = _MISSING
            else:
                num[i], kind[i] = fx, _NUMBER
        elif _na_cell(x):
            kind[i] = _MISSING
    return num, kind, raw


def _cells_out(num: np.ndarray, kind: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """The frame column: floats where every cell was read, else objects with the unread cells
    as they were (the validator reports them)."""
    unread = kind == _UNREAD
    if not unread.any():
        return np.where(kind == _MISSING, np.nan, num)
    out = np.asarray(raw, dtype=object).copy()
    ok = ~unread
    out[ok] = np.where(kind[ok] == _MISSING, np.nan, num[ok])
    return out


def blank_missing(v: np.ndarray, sentinels: tuple[float, ...]) -> np.ndarray:
    """Sentinel values (a raw code for "no reply") become NaN, i.e. a missing reply."""
    if not sentinels:
        return v
    out = v.copy()
    out[np.isin(out, np.asarray(sentinels, dtype=float))] = np.nan
    return out


def _delay_cells(series: Any, signal: str, missing_values: tuple[float, ...], unit: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a delay column: sentinels become missing (before conversion), then ``unit`` -> the
    signal's own unit."""
    num, kind, raw = _parse_cells(series, False)
    if missing_values:
        code = (kind == _NUMBER) & np.isin(num, np.asarray(missing_values, dtype=float))
        num = np.where(code, np.nan, num)
        kind = np.where(code, _MISSING, kind).astype(np.int8)
    if unit is not None:
        num = num * (UNIT_FACTORS[unit] / _SIGNAL_UNIT_MS[SIGNALS[signal].unit])
    return num, kind, raw


# ----------------------------------------------------------------------------- timestamps


def _round_ms(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.floor(x + 0.5)


def _epoch_ms(values: Any, numbers: str | None, text: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ms, read, missing)``: epoch ms rounded to whole ms (NaN where nothing was read), a
    mask of cells read as a time, and a mask of empty cells. ``numbers``: ``auto`` (below 1e11
    = seconds), ``s``, ``ms`` or None (numbers not accepted); ``text``: ISO 8601 accepted."""
    import pandas as pd

    s = values if isinstance(values, pd.Series) else pd.Series(values)
    n = len(s)
    if isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(s.dtype):
        # a datetime column (Parquet timestamp): its integers are ns (or another unit), not ms
        dt = s.dt.tz_convert("UTC").dt.tz_localize(None) if isinstance(s.dtype, pd.DatetimeTZDtype) else s
        na = dt.isna().to_numpy()
        ns = dt.astype("datetime64[ns]").to_numpy().view(np.int64)
        ms = np.where(na, np.nan, ((ns + 500_000) // 1_000_000).astype(np.float64))
        return ms, ~na, na
    num, kind, raw = _parse_cells(s, False)
    if numbers is None or s.dtype.kind == "b":  # numbers not accepted; True/False is no time
        kind = np.where(kind == _NUMBER, _UNREAD, kind).astype(np.int8)
        raw = s.to_numpy(dtype=object)
    missing = kind == _MISSING
    read = kind == _NUMBER
    ms = np.full(n, np.nan)
    if read.any():
        v = num[read]
        if numbers == "s":
            v = v * 1000.0
        elif numbers == "auto":
            v = np.where(np.abs(v) < _SECONDS_BELOW, v * 1000.0, v)
        ms[read] = _round_ms(v)
    if text:
        todo = kind == _UNREAD
        if todo.any():
            todo[todo] = _is_str_array(raw[todo])
        if todo.any():
            parsed = pd.to_datetime(pd.Series(raw[todo], dtype=object).str.strip(), errors="coerce", utc=True, format="ISO8601")
            ok = parsed.notna().to_numpy()
            ns = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").view(np.int64)
            idx = np.flatnonzero(todo)
            ms[idx[ok]] = ((ns[ok] + 500_000) // 1_000_000).astype(np.float64)
            read[idx[ok]] = True
    return ms, read, missing


def _ts_mode(column: str, unit: str) -> tuple[str | None, bool]:
    """(how numbers are read, whether ISO text is) for a timestamp column."""
    if unit == "auto":
        return ("ms" if column == "timestamp_ms" else "auto"), True
    if unit == "iso":
        return None, True
    return unit, False


def to_epoch_ms(values: pd.Series, unit: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Parse timestamps to epoch ms (rounded to whole ms); returns (ms as float with NaN, ok).

    ``auto``: numbers below 1e11 are seconds, from 1e11 on milliseconds; text is ISO 8601
    (without a zone = UTC). ``ok`` also requires 0 <= ms <= 9999-12-31.
    """
    numbers, text = ("auto", True) if unit == "auto" else _ts_mode("", unit)
    ms, read, _ = _epoch_ms(values, numbers, text)
    with np.errstate(invalid="ignore"):
        good = read & np.isfinite(ms) & (ms >= 0) & (ms <= MAX_TIMESTAMP_MS)
    return np.where(read, ms, np.nan), good


def _ts_column(values: Any, numbers: str | None, text: bool) -> np.ndarray:
    """The frame's ``timestamp_ms``: int64 when every cell is a valid time, else objects with
    ints where valid, the read number where out of range, the cell as read otherwise."""
    ms, read, missing = _epoch_ms(values, numbers, text)
    with np.errstate(invalid="ignore"):
        good = read & np.isfinite(ms) & (ms >= 0) & (ms <= MAX_TIMESTAMP_MS)
    if good.all():
        return ms.astype(np.int64)
    raw = values.to_numpy(dtype=object) if hasattr(values, "to_numpy") else np.asarray(values, dtype=object)
    out = raw.copy()
    out[good] = ms[good].astype(np.int64)
    out[missing] = None
    for i in np.flatnonzero(read & ~good).tolist():  # a number out of range: the validator says which way
        m = float(ms[i])
        out[i] = int(m) if m == m and abs(m) <= 2**62 else m
    return out


# ----------------------------------------------------------------------------- ids


def _endpoint_value(v: Any) -> Any:
    if type(v) is str:
        return v.strip()
    if isinstance(v, (bool, np.bool_)):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)) and v == v and abs(float(v)) < 2**53 and v == int(v):
        return str(int(v))
    return v


def _endpoint_column(series: Any) -> np.ndarray:
    """Endpoint ids as text, stripped: a numeric id column (RIPE Atlas probe ids, read as
    numbers by Parquet) holds ids, not values; integral floats lose their ``.0``."""
    import pandas as pd

    raw = series.to_numpy(dtype=object)
    if pd.api.types.infer_dtype(raw, skipna=True) in ("string", "empty", "integer", "floating", "mixed-integer-float"):
        codes, uniques = pd.factorize(raw, use_na_sentinel=True)
        conv = np.empty(len(uniques) + 1, dtype=object)
        conv[:-1] = [_endpoint_value(u) for u in uniques]
        conv[-1] = None
        return conv[np.where(codes < 0, len(uniques), codes)]
    return np.array([None if _na_cell(v) else _endpoint_value(v) for v in raw.tolist()], dtype=object)


# ----------------------------------------------------------------------------- one file


@dataclass
class _File:
    """One parsed file: the lenient frame and where each sample's cells came from."""

    path: str
    frame: pd.DataFrame
    raw: pd.DataFrame
    offset: int
    #: row position (in ``raw``) of each sample, and of each signal's cell (long files)
    pos: np.ndarray
    field_pos: dict[str, np.ndarray]
    #: field -> the file's column holding it (as named in the file, and as named in ``raw``)
    columns: dict[str, str]
    cell_cols: dict[str, str]
    present: list[str]
    #: problems found while parsing (unknown metric / unit), keyed by sample
    notes: dict[int, list[Problem]]
    unknown: list[str]
    unknown_msg: str | None
    keep: dict[str, np.ndarray]


def _unknown_text(unknown: list[str], known: set[str], ts_col: str) -> str:
    hints = []
    for c in unknown:
        near = c.strip().lower()
        if c in TIMESTAMP_CANDIDATES:
            hints.append(f"{c!r} (a second timestamp column; {ts_col!r} is used)")
            continue
        match = next((k for k in sorted(known) if k == near or (len(near) > 4 and (k.startswith(near) or near.startswith(k)))), None)
        hints.append(f"{c!r}" + (f" (did you mean {match!r}?)" if match else ""))
    return (
        f"unknown signal column(s) {', '.join(hints)}; known: {', '.join(sorted(known))} "
        "(map other names with signal_map, ocad-detect --signal-map NAME=SIGNAL)"
    )


def _parse_file(p: Path, options: ReadOptions, mode: str) -> _File:
    import pandas as pd

    raw, offset = _read_raw(p, options.keep_columns if mode == "strict" else ())
    f = str(p)
    src_cols = [str(c) for c in raw.columns]
    cols = [options.signal_map.get(c, c) for c in src_cols]
    if len(set(cols)) != len(cols):
        dups = sorted({c for c in cols if cols.count(c) > 1})
        raise _fail(p, f"duplicate column(s) {dups} (after signal_map); which one holds the data is ambiguous")
    raw.columns = cols
    fmt = options.format if options.format != "auto" else detect_format(cols)
    ts_col = options.timestamp_column or next((c for c in TIMESTAMP_CANDIDATES if c in cols), None)
    missing = []
    if ts_col is None or ts_col not in cols:
        missing.append(ts_col or "timestamp")
    if "endpoint_id" not in cols:
        missing.append("endpoint_id")
    if fmt == "long":
        missing += [c for c in LONG_COLUMNS if c not in cols]
    if missing:
        why = f"; no timestamp column: expected one of {list(TIMESTAMP_CANDIDATES)}" if ts_col is None else ""
        raise _fail(p, f"missing column(s) {missing} for the {fmt} format{why}; columns are {src_cols}")
    assert ts_col is not None
    numbers, text = _ts_mode(ts_col, options.timestamp_unit)
    keep_cols = [c for c in options.keep_columns if c in cols] if mode == "strict" else []
    if fmt == "long":
        known = {ts_col, "endpoint_id", "input_error", "unit", *LONG_COLUMNS, *keep_cols}
    else:
        known = {ts_col, "endpoint_id", "input_error", *SIGNAL_ORDER, *keep_cols}
    unknown = [c for c in cols if c not in known]
    unknown_msg = _unknown_text(unknown, known - set(keep_cols), ts_col) if unknown else None
    n = len(raw)
    ts = _ts_column(raw[ts_col], numbers, text)
    ep = _endpoint_column(raw["endpoint_id"])
    columns = {"timestamp_ms": src_cols[cols.index(ts_col)], "endpoint_id": "endpoint_id", "input_error": "input_error"}
    cell_cols = {"timestamp_ms": ts_col, "endpoint_id": "endpoint_id", "input_error": "input_error"}
    if fmt == "wide":
        present = [s for s in SIGNAL_ORDER if s in cols]
        if not present:
            raise _fail(p, f"wide format needs at least one signal column of {list(SIGNAL_ORDER)}; columns are {src_cols}")
        data: dict[str, Any] = {"timestamp_ms": ts, "endpoint_id": ep}
        for s in SIGNAL_ORDER:
            if s not in cols:
                data[s] = np.full(n, np.nan)
                continue
            columns[s] = src_cols[cols.index(s)]
            cell_cols[s] = s
            if s == "lbm_success":
                num, kind, cells = _parse_cells(raw[s], True)
            else:
                num, kind, cells = _delay_cells(raw[s], s, options.missing_values, options.units.get(s))
            data[s] = _cells_out(num, kind, cells)
        data["input_error"] = raw["input_error"].to_numpy(dtype=object) if "input_error" in cols else np.full(n, None, dtype=object)
        frame = pd.DataFrame(data)
        pos = np.arange(n)
        keep = {c: raw[c].to_numpy() for c in keep_cols}
        return _File(f, frame, raw, offset, pos, {}, columns, cell_cols, present, {}, unknown, unknown_msg, keep)
    return _parse_long(p, raw, offset, ts, ep, options, columns, cell_cols, unknown, unknown_msg, keep_cols)


def _parse_long(
    p: Path, raw: pd.DataFrame, offset: int, ts: np.ndarray, ep: np.ndarray, options: ReadOptions,
    columns: dict[str, str], cell_cols: dict[str, str], unknown: list[str], unknown_msg: str | None, keep_cols: list[str],
) -> _File:
    import pandas as pd

    f = str(p)
    n = len(raw)
    names = raw["metric_name"].to_numpy(dtype=object)
    metric = np.array([options.signal_map.get(x.strip(), x.strip()) if type(x) is str else x for x in names.tolist()], dtype=object)
    known = np.isin(metric, np.asarray(SIGNAL_ORDER, dtype=object))
    row_notes: dict[int, list[Problem]] = {}
    known_list = ", ".join(SIGNAL_ORDER)
    for i in np.flatnonzero(~known).tolist():
        row_notes.setdefault(i, []).append(Problem(
            f, i + offset, "metric_name",
            f"metric_name: unknown metric {safe_repr(names[i], limit=60)}; known: {known_list} (map other names with signal_map)",
        ))
    value = np.full(n, None, dtype=object)
    unit_col = raw["unit"].to_numpy(dtype=object) if "unit" in raw.columns else None
    for sig in SIGNAL_ORDER:
        sel = np.flatnonzero(metric == sig)
        if not len(sel):
            continue
        sub = raw["value"].iloc[sel]
        if sig == "lbm_success":
            value[sel] = _cells_out(*_parse_cells(sub, True))
            continue
        num, kind, cells = _delay_cells(sub, sig, options.missing_values, None)
        units = np.full(len(sel), options.units.get(sig), dtype=object)
        if unit_col is not None:
            given = unit_col[sel]
            has = np.array([type(u) is str and bool(u.strip()) for u in given.tolist()], dtype=bool)
            units[has] = [u.strip() for u in given[has].tolist()]
        for u in {x for x in units.tolist() if x is not None}:
            m = units == u
            if u not in UNIT_FACTORS:
                for j in np.flatnonzero(m).tolist():
                    i = int(sel[j])
                    row_notes.setdefault(i, []).append(Problem(f, i + offset, "unit", f"unit: unknown unit {u!r}; known: {', '.join(UNIT_FACTORS)}"))
                continue
            num[m] = num[m] * (UNIT_FACTORS[u] / _SIGNAL_UNIT_MS[SIGNALS[sig].unit])
        value[sel] = _cells_out(num, kind, cells)
    # an exact repeat of a row is the same measurement exported twice
    unit_key = pd.Series(unit_col, dtype=object).astype(str) if unit_col is not None else ""
    keys = pd.DataFrame({
        "ts": pd.Series(ts, dtype=object).astype(str), "ep": pd.Series(ep, dtype=object).astype(str),
        "metric": pd.Series(metric, dtype=object).astype(str), "value": pd.Series(value, dtype=object).map(repr), "unit": unit_key,
    })
    rows = np.flatnonzero(~keys.duplicated().to_numpy())
    wide, first, field_pos, code = _pivot(ts[rows], ep[rows], metric[rows], value[rows])
    first = rows[first]
    field_pos = {s: np.where(v >= 0, rows[np.maximum(v, 0)], -1) for s, v in field_pos.items()}
    # notes of a sample's rows make it invalid, named in input_error (an exact repeat of a
    # row is not a sample: the row it repeats carries the same note)
    notes: dict[int, list[Problem]] = {}
    if row_notes:
        row_code = np.full(n, -1, dtype=np.int64)
        row_code[rows] = code
        for i, probs in row_notes.items():
            if row_code[i] >= 0:
                notes.setdefault(int(row_code[i]), []).extend(probs)
        errs = wide["input_error"].to_numpy(dtype=object)
        for j, probs in notes.items():
            errs[j] = "; ".join(pr.message for pr in probs)
        wide["input_error"] = errs
    # order samples by time (stable); unreadable timestamps go last, reported invalid there
    tcol = wide["timestamp_ms"].to_numpy(dtype=object)
    key = np.array([t if type(t) is int else np.inf for t in tcol.tolist()], dtype=float)
    order = np.argsort(key, kind="stable")
    wide = wide.iloc[order].reset_index(drop=True)
    inv = np.empty(len(order), dtype=np.int64)
    inv[order] = np.arange(len(order))
    notes = {int(inv[j]): v for j, v in notes.items()}
    first = first[order]
    field_pos = {s: v[order] for s, v in field_pos.items()}
    if all(type(t) is int for t in wide["timestamp_ms"].tolist()):
        wide["timestamp_ms"] = wide["timestamp_ms"].astype(np.int64)
    for s in SIGNAL_ORDER:  # typed columns keep score_frame on its vectorized path
        col = wide[s].to_numpy(dtype=object)
        if all(x is None or type(x) is float for x in col.tolist()):
            wide[s] = np.where(col == None, np.nan, col).astype(np.float64)  # noqa: E711 - elementwise
    present = [s for s in SIGNAL_ORDER if (metric == s).any()]
    columns = {**columns, **{s: "value" for s in SIGNAL_ORDER}}
    cell_cols = {**cell_cols, **{s: "value" for s in SIGNAL_ORDER}}
    keep = {c: raw[c].to_numpy()[first] for c in keep_cols}
    return _File(str(p), wide, raw, offset, first, field_pos, columns, cell_cols, present, notes, unknown, unknown_msg, keep)


def _occurrence_codes(ts: np.ndarray, ep: np.ndarray, metric: np.ndarray) -> tuple[int, np.ndarray]:
    """Sample code of each long row: one sample per (time, endpoint) in order of first
    appearance; a metric repeated for the same (time, endpoint) starts the next sample."""
    import pandas as pd

    keys = pd.DataFrame({
        "ts": pd.Series(ts, dtype=object).astype(str), "ep": pd.Series(ep, dtype=object).astype(str),
        "metric": pd.Series(metric, dtype=object).astype(str),
    })
    keys["occ"] = keys.groupby(["ts", "ep", "metric"], sort=False, dropna=False).cumcount().to_numpy()
    code = keys.groupby(["ts", "ep", "occ"], sort=False, dropna=False).ngroup().to_numpy()
    return (int(code.max()) + 1 if len(code) else 0), code


def _pivot(
    ts: np.ndarray, ep: np.ndarray, metric: np.ndarray, value: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Long rows -> wide samples; also the first row of each sample, the row of each signal's
    cell (-1: none) and the sample of each row."""
    import pandas as pd

    n, code = _occurrence_codes(ts, ep, metric)
    first = np.full(n, -1, dtype=np.int64)
    order = np.arange(len(code))[::-1]
    first[code[order]] = order  # last write wins: the smallest row index
    out: dict[str, Any] = {
        "timestamp_ms": np.asarray(ts, dtype=object)[first] if n else np.array([], dtype=object),
        "endpoint_id": np.asarray(ep, dtype=object)[first] if n else np.array([], dtype=object),
    }
    field_pos: dict[str, np.ndarray] = {}
    for sig in SIGNAL_ORDER:
        col = np.full(n, None, dtype=object)
        where = np.full(n, -1, dtype=np.int64)
        sel = np.flatnonzero(metric == sig)
        col[code[sel]] = value[sel]
        where[code[sel]] = sel
        out[sig] = col
        field_pos[sig] = where
    out["input_error"] = np.full(n, None, dtype=object)
    return pd.DataFrame(out), first, field_pos, code


def long_to_wide(df: pd.DataFrame, timestamp_column: str = "timestamp_ms") -> pd.DataFrame:
    """Pivot long rows (timestamp, endpoint_id, metric_name, value) into wide samples, values as
    they are (no parsing).

    One sample per (timestamp, endpoint) in order of first appearance. A metric repeated for
    the same (timestamp, endpoint) starts a second sample with the same timestamp, which the
    detector then reports as a duplicate. Rows with an unknown ``metric_name`` make their
    sample invalid (``input_error`` names the metric) instead of being dropped silently.
    """
    ts = df[timestamp_column].to_numpy(dtype=object)
    ep = df["endpoint_id"].to_numpy(dtype=object)
    metric = df["metric_name"].to_numpy(dtype=object)
    wide, _, _, code = _pivot(ts, ep, metric, df["value"].to_numpy(dtype=object))
    errs = wide["input_error"].to_numpy(dtype=object)
    for i in np.flatnonzero(~np.isin(metric, np.asarray(SIGNAL_ORDER, dtype=object))).tolist():
        msg = f"metric_name: unknown metric {metric[i]!r}; known: {', '.join(SIGNAL_ORDER)}"
        errs[code[i]] = msg if errs[code[i]] is None else errs[code[i]] + "; " + msg
    wide["input_error"] = errs
    return wide


# ----------------------------------------------------------------------------- strict


def _cell(pf: _File, field_name: str, i: int) -> tuple[int, Any]:
    """(row position, cell as written) behind sample ``i``'s field."""
    pos = pf.field_pos.get(field_name)
    r = int(pos[i]) if pos is not None and pos[i] >= 0 else int(pf.pos[i])
    col = pf.cell_cols.get(field_name)
    return r, (pf.raw[col].iloc[r] if col in pf.raw.columns else None)


def _problem_text(field_name: str, cell: Any, frame_cell: Any, message: str) -> str:
    """The strict mode's text for one bad cell: what is wrong and the cell as written."""
    if isinstance(cell, np.generic):
        cell = cell.item()
    shown = safe_repr(cell, limit=80)
    unread = isinstance(frame_cell, str)
    if field_name == "timestamp_ms":
        if _na_cell(cell) or (isinstance(cell, str) and not cell.strip()):
            return "missing timestamp"
        return f"unreadable timestamp {shown}" + ("" if unread else f" ({message})")
    if field_name == "endpoint_id":
        return "empty endpoint_id" if _na_cell(cell) or (isinstance(cell, str) and not cell.strip()) else f"bad endpoint_id {shown}: {message}"
    if field_name == "lbm_success":
        return f"not a boolean: {shown}" if unread or not isinstance(frame_cell, (int, float)) else f"{message} (cell {shown})"
    if field_name in VALUE_SIGNALS:
        return f"not a number: {shown}" if unread else f"{message} (cell {shown})"
    return message


def _problems(pf: _File, chk: FrameCheck, problems: list[Problem], counts: dict[tuple[str, str], int]) -> None:
    """The strict mode's problems of one file from the validator's verdicts and the parse notes:
    every bad cell counted, the first 50 of each column described."""
    listed: dict[str, int] = {}

    def room(col: str) -> bool:
        counts[(pf.path, col)] = counts.get((pf.path, col), 0) + 1
        if listed.get(col, 0) >= _LIST_LIMIT:
            return False
        listed[col] = listed.get(col, 0) + 1
        return True

    bad = np.flatnonzero(~chk.valid)
    if not len(bad):
        return
    frame_cols = {name: pf.frame[name].to_numpy(dtype=object)[bad] for name in SIGNAL_ORDER + ("timestamp_ms", "endpoint_id")}
    for k, i in enumerate(bad.tolist()):
        for name, msg in chk.bad_fields.get(i, ()):
            if name == "unknown_fields":
                continue
            if name == "input_error":
                for pr in pf.notes.get(i) or [Problem(pf.path, int(pf.pos[i]) + pf.offset, "input_error", f"input_error: {safe_repr(pf.frame['input_error'].iloc[i], str, 200)}")]:
                    if room(pr.column or ""):
                        problems.append(pr)
                continue
            column = pf.columns.get(name, name)
            if not room(column):
                continue
            pos, cell = _cell(pf, name, i)
            if column == name or name in ("timestamp_ms", "endpoint_id"):
                msg = msg.removeprefix(name + ": ")  # the column is named already
            problems.append(Problem(pf.path, pos + pf.offset, column, _problem_text(name, cell, frame_cols[name][k], msg)))


def _strict_frame(pf: _File, chk: FrameCheck) -> pd.DataFrame:
    """Normalized values of every sample; invalid ones keep what could be read of their time
    and endpoint (for the check of two different samples at one time)."""
    import pandas as pd

    ts, eps = chk.ts.copy(), chk.eps.copy()
    for i in chk.bad_fields:
        if chk.ts_out[i] is not None:
            ts[i] = chk.ts_out[i]
        eps[i] = chk.ep_out[i]
    data: dict[str, Any] = {"timestamp_ms": ts, "endpoint_id": eps}
    for s, v in zip(SIGNAL_ORDER, chk.values):
        if s in pf.present:
            data[s] = v
    out = pd.DataFrame(data)
    for c, v in pf.keep.items():
        out[c] = v
    out["src_row"] = pf.pos + pf.offset
    out["src_file"] = pf.path
    return out


def read_samples(
    path: str | Path | Iterable[str | Path], options: ReadOptions | None = None, mode: str = "strict", keep_source: bool = False
) -> tuple[pd.DataFrame, dict]:
    """Read sample files; returns ``(frame, report)``.

    ``mode="strict"``: ``frame`` is sorted by (timestamp_ms, endpoint_id) with ``timestamp_ms``
    (int64), ``endpoint_id``, a float column per signal present (``lbm_success`` 1.0/0.0/NaN)
    and the label columns of ``keep_columns``; exact duplicate samples are dropped
    (``report["duplicates_removed"]``); ``keep_source`` keeps ``src_file``/``src_row``. Raises
    :class:`RecordedDataError` listing every problem of every file.

    ``mode="lenient"``: ``frame`` has ``timestamp_ms``, ``endpoint_id``, the four signals and
    ``input_error``, one row per sample in file order, bad cells as read (``score_frame`` /
    :func:`~ocad_detectors.samples.iter_samples` turn them into ``invalid`` results); unknown
    columns are named in ``report["ignored_columns"]`` (and ``frame.attrs``). Raises only for
    what makes a file unreadable as samples: not found, not CSV/Parquet, unparsable, missing
    timestamp / endpoint / signal columns, duplicate or more than 1,000 columns.
    """
    import pandas as pd

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    options = options or ReadOptions()
    files = list_files(path)
    problems: list[Problem] = []
    counts: dict[tuple[str, str], int] = {}
    parsed: list[_File] = []
    for p in files:
        try:
            parsed.append(_parse_file(p, options, mode))
        except RecordedDataError as e:
            if mode == "lenient":
                raise
            problems += e.problems
    signals = [s for s in SIGNALS if any(s in pf.present for pf in parsed)]
    if mode == "lenient":
        frame = pd.concat([pf.frame for pf in parsed], ignore_index=True) if len(parsed) > 1 else parsed[0].frame
        ignored = "; ".join(f"{pf.path}: {pf.unknown_msg}" for pf in parsed if pf.unknown_msg) or None
        frame.attrs["ignored_columns"] = ignored
        report = {"files": [str(p) for p in files], "rows_read": len(frame), "signals": signals, "ignored_columns": ignored}
        return frame, report
    frames = []
    for pf in parsed:
        if pf.unknown:
            problems.append(Problem(pf.path, None, ", ".join(pf.unknown), pf.unknown_msg or ""))
        chk = validate_frame(pf.frame)
        _problems(pf, chk, problems, counts)
        keyed = np.ones(chk.n, dtype=bool)
        for i, fails in chk.bad_fields.items():
            if any(name in ("timestamp_ms", "endpoint_id") for name, _ in fails):
                keyed[i] = False
        frames.append(_strict_frame(pf, chk)[keyed])
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["timestamp_ms", "endpoint_id", "src_row", "src_file"])
    n_read = len(df)
    value_cols = ["endpoint_id", "timestamp_ms", *[s for s in signals if s in df.columns]]
    df = df.drop_duplicates(value_cols)
    n_exact_dups = n_read - len(df)
    clash = df.duplicated(["endpoint_id", "timestamp_ms"], keep=False).to_numpy()
    if clash.any():
        ts_cols = {pf.path: pf.columns["timestamp_ms"] for pf in parsed}
        listed = 0
        sub = df[clash]
        for src_file, src_row, ep, t in zip(sub["src_file"].tolist(), sub["src_row"].tolist(), sub["endpoint_id"].tolist(), sub["timestamp_ms"].tolist()):
            key = (str(src_file), ts_cols.get(str(src_file), "timestamp"))
            counts[key] = counts.get(key, 0) + 1
            if listed < _LIST_LIMIT:  # listed with the cell problems, in one pass
                listed += 1
                problems.append(Problem(key[0], int(src_row), key[1], f"{ep} has two different samples at {int(t)} ms"))
    if problems:
        raise RecordedDataError(problems, counts=counts)
    df["timestamp_ms"] = df["timestamp_ms"].astype("int64")
    df["endpoint_id"] = df["endpoint_id"].astype(object)
    df = df.sort_values(["timestamp_ms", "endpoint_id"], kind="stable").reset_index(drop=True)
    report = {"files": [str(p) for p in files], "rows_read": n_read, "duplicates_removed": n_exact_dups, "signals": signals}
    return (df if keep_source else df.drop(columns=["src_row", "src_file"])), report
