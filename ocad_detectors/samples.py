"""The sample type, its validation at the API boundary, and a lenient CSV/Parquet reader.

A sample is one probe round of one endpoint: ``(timestamp_ms, endpoint_id)`` plus values for any
subset of the signals in :mod:`ocad_detectors.signals`. Validation never raises for bad data:
it returns an error message that names the field, and the detector turns that into a result
with ``status="invalid"`` (a running stream must not crash on one bad sample).

Treatment of values (documented contract, shared by the streaming and the batch path):

===============================  ==================================================================
``None``, NaN, ``pd.NA``,        *missing*: no reply for that signal. For a signal the endpoint
absent key / column              supports this counts as loss (see ``RuleDetector``).
``lbm_success`` false / 0        the loopback reply did not arrive: loss.
``inf``, negative, above the     *invalid* sample (``Signal.max_value`` is the probe timeout;
signal's ``max_value``           anything above cannot be a real measurement).
strings, bools for delays,       *invalid* sample; strings are never coerced ("3.5" is an error,
other types                      so a mis-typed feed is noticed instead of half-parsed).
timestamp not an integer in      *invalid* (epoch milliseconds; an integral float is accepted).
[0, MAX_TIMESTAMP_MS]            Later than the wall clock (+ tolerance): ``future``, see pipeline.
empty / non-string endpoint_id   *invalid*.
unknown key in a mapping         *invalid* (a typo such as ``udp_echo_rtt`` must not silently
                                 become "missing" and raise loss alarms).
===============================  ==================================================================

All errors of one sample are reported together, joined by ``"; "``.

Files (:func:`read_samples`): CSV cells are text, so the reader turns numeric text into numbers
and true/false/1/0/yes/no into booleans for ``lbm_success``; any other text stays as read and
makes that row invalid. Timestamps: epoch ms in a ``timestamp_ms`` column; in a ``timestamp``
(``time``, ``ts``, ``datetime``) column numbers below 1e11 are epoch seconds, larger ones epoch
milliseconds, and text is ISO 8601 (no zone = UTC).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ocad_detectors.signals import SIGNALS, VALUE_SIGNALS

if TYPE_CHECKING:  # pandas only inside the reader functions
    import pandas as pd

__all__ = [
    "SAMPLE_FIELDS",
    "SIGNAL_ORDER",
    "Sample",
    "check_endpoint",
    "check_success",
    "check_timestamp",
    "check_units",
    "check_value",
    "MAX_COLUMNS",
    "MAX_TIMESTAMP_MS",
    "detect_format",
    "safe_repr",
    "unknown_fields_message",
    "iter_samples",
    "long_to_wide",
    "read_samples",
    "validate_fields",
    "validate_sample",
]

#: signals in the order every internal tuple and array uses
SIGNAL_ORDER: tuple[str, ...] = (*VALUE_SIGNALS, "lbm_success")
#: every field a sample may carry (``input_error`` is set by readers for rows they could not parse)
SAMPLE_FIELDS: tuple[str, ...] = ("timestamp_ms", "endpoint_id", *SIGNAL_ORDER, "input_error")
_NAN = float("nan")
_LONG_COLUMNS = ("metric_name", "value")
_TIMESTAMP_CANDIDATES = ("timestamp_ms", "timestamp", "time", "ts", "datetime")
#: 9999-12-31T23:59:59.999Z: no probe stamps later; larger values are garbage (2**63, 1e20)
MAX_TIMESTAMP_MS = 253_402_300_799_999
#: a file with more columns than this is refused before parsing (a header-only CSV with
#: 100k columns would otherwise take minutes)
MAX_COLUMNS = 1_000


@dataclass(frozen=True, slots=True)
class Sample:
    """One probe round of one endpoint; ``None`` means the signal has no value (missing reply).

    Construction does not validate (a stream must be able to hand over anything it received);
    :func:`validate_sample` and the detectors do.
    """

    timestamp_ms: Any
    endpoint_id: Any
    udp_echo_rtt_ms: Any = None
    ecpri_ow_us: Any = None
    lbm_rtt_ms: Any = None
    lbm_success: Any = None
    #: a problem a reader found before detection (e.g. an unknown metric name); makes the sample invalid
    input_error: str | None = None


def _is_na(v: Any) -> bool:
    """None, float NaN or pandas' NA/NaT, recognised without importing pandas."""
    if v is None:
        return True
    if isinstance(v, float):
        return v != v
    if isinstance(v, np.floating):
        return bool(np.isnan(v))
    t = type(v)
    return t.__name__ in ("NAType", "NaTType") and t.__module__.startswith("pandas")


def safe_repr(v: Any, fn: Any = repr, limit: int = 200) -> str:
    """``repr`` (or ``fn``) of anything, shortened; never raises (a 10**5000 int or an object
    whose ``__repr__`` raises still gets a description)."""
    try:
        if type(v) is int and v.bit_length() > 128:
            return f"<int with {v.bit_length()} bits>"
        r = fn(v)
        if not isinstance(r, str):
            raise TypeError
    except Exception:
        try:
            r = f"<unprintable {type(v).__name__}>"
        except Exception:  # pragma: no cover - type() always has a name
            r = "<unprintable>"
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _show(v: Any) -> str:
    return safe_repr(v, limit=40)


def unknown_fields_message(keys: Any) -> str | None:
    """The error for keys / columns that are not sample fields (None when there are none)."""
    unknown = [k for k in keys if not (isinstance(k, str) and k in SAMPLE_FIELDS)]
    if not unknown:
        return None
    return (
        f"unknown field(s) {', '.join(safe_repr(k, limit=40) for k in unknown[:10])}"
        + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        + f"; a sample has timestamp_ms, endpoint_id and the signals {', '.join(SIGNAL_ORDER)}"
    )


def check_timestamp(v: Any) -> tuple[int | None, str | None]:
    """Epoch milliseconds as int, or an error message."""
    if type(v) is int:
        if v < 0:
            return None, f"timestamp_ms: must be >= 0 epoch milliseconds, got {_show(v)}"
        if v > MAX_TIMESTAMP_MS:
            return None, f"timestamp_ms: {_show(v)} is beyond the year 9999 (epoch milliseconds expected)"
        return v, None
    if _is_na(v):
        return None, "timestamp_ms: missing"
    if isinstance(v, (bool, np.bool_)):
        return None, "timestamp_ms: expected integer epoch milliseconds, got a bool"
    if isinstance(v, (int, np.integer)):
        return check_timestamp(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isfinite(f) and f == math.floor(f):
            if abs(f) > 2**62:
                return None, f"timestamp_ms: {f!r} is beyond the year 9999 (epoch milliseconds expected)"
            return check_timestamp(int(f))
        return None, f"timestamp_ms: expected integer epoch milliseconds, got {f!r}"
    return None, f"timestamp_ms: expected integer epoch milliseconds, got {type(v).__name__} {_show(v)}"


def check_endpoint(v: Any) -> tuple[str | None, str | None]:
    """A non-empty endpoint id, or an error message."""
    if isinstance(v, str):
        if v.strip():
            return str(v), None
        return None, "endpoint_id: empty"
    if _is_na(v):
        return None, "endpoint_id: missing"
    return None, f"endpoint_id: expected a non-empty string, got {type(v).__name__} {_show(v)}"


def check_value(name: str, v: Any) -> tuple[float, str | None]:
    """A delay in the signal's unit (NaN = missing), or an error message."""
    if type(v) is float:
        x = v
    elif v is None:
        return _NAN, None
    elif isinstance(v, (bool, np.bool_)):
        return _NAN, f"{name}: expected a number in {SIGNALS[name].unit}, got a bool"
    elif isinstance(v, (int, float, np.integer, np.floating)):
        try:
            x = float(v)
        except OverflowError:  # an int beyond float range (10**400)
            return _NAN, f"{name}: absurd value {_show(v)} (too large for a number in {SIGNALS[name].unit})"
    elif _is_na(v):
        return _NAN, None
    else:
        return _NAN, f"{name}: expected a number in {SIGNALS[name].unit}, got {type(v).__name__} {_show(v)}"
    if x != x:
        return _NAN, None
    sig = SIGNALS[name]
    if x < sig.min_value:
        if x == -math.inf:
            return _NAN, f"{name}: infinite value"
        return _NAN, f"{name}: negative value {x:g} {sig.unit}; delays cannot be negative"
    if x > sig.max_value:
        if x == math.inf:
            return _NAN, f"{name}: infinite value"
        return _NAN, f"{name}: absurd value {x:g} {sig.unit} (above {sig.max_value:g} {sig.unit}, the probe timeout)"
    return x, None


def check_success(v: Any) -> tuple[float, str | None]:
    """``lbm_success`` as 1.0 / 0.0 / NaN (missing), or an error message."""
    if v is True or v is False:
        return (1.0 if v else 0.0), None
    if isinstance(v, np.bool_):
        return (1.0 if v else 0.0), None
    if _is_na(v):
        return _NAN, None
    if isinstance(v, (int, float, np.integer, np.floating)):
        try:
            f = float(v)
        except OverflowError:
            return _NAN, f"lbm_success: expected true/false (or 1/0), got {_show(v)}"
        if f == 1.0 or f == 0.0:
            return f, None
        return _NAN, f"lbm_success: expected true/false (or 1/0), got {f:g}"
    return _NAN, f"lbm_success: expected true/false (or 1/0), got {type(v).__name__} {_show(v)}"


_ValidTuple = tuple[int, str, float, float, float, float]


def validate_fields(
    ts: Any, ep: Any, udp: Any, ecpri: Any, lbm: Any, succ: Any, input_error: Any, errors: list[str]
) -> tuple[int | None, str | None, _ValidTuple | None]:
    """Check the fields of one sample, appending messages to ``errors``; (ts, endpoint, values or None)."""
    t, e = check_timestamp(ts)
    if e:
        errors.append(e)
    eid, e = check_endpoint(ep)
    if e:
        errors.append(e)
    u, e = check_value("udp_echo_rtt_ms", udp)
    if e:
        errors.append(e)
    c, e = check_value("ecpri_ow_us", ecpri)
    if e:
        errors.append(e)
    lb, e = check_value("lbm_rtt_ms", lbm)
    if e:
        errors.append(e)
    s, e = check_success(succ)
    if e:
        errors.append(e)
    if input_error is not None and not _is_na(input_error):
        errors.append(str(input_error))
    if errors:
        return t, eid, None
    return t, eid, (t, eid, u, c, lb, s)  # type: ignore[return-value]


def validate_sample(sample: Any) -> tuple[_ValidTuple | None, int | None, str | None, str | None]:
    """Check one sample (a :class:`Sample` or a mapping).

    Returns ``(values, timestamp_ms, endpoint_id, error)``: ``values`` is the normalized tuple
    ``(timestamp_ms, endpoint_id, udp_echo_rtt_ms, ecpri_ow_us, lbm_rtt_ms, lbm_success)`` with
    NaN for missing values and ``lbm_success`` as 1.0/0.0/NaN, or None when the sample is invalid;
    ``timestamp_ms``/``endpoint_id`` are whatever could be read (for the result); ``error`` names
    every bad field.
    """
    try:
        return _validate_sample(sample)
    except Exception as exc:  # a hostile object (raising __getitem__, __iter__, __eq__, ...)
        return None, None, None, f"unreadable sample ({safe_repr(type(sample).__name__, str)}): {type(exc).__name__}: {safe_repr(exc, str)}"


def _validate_sample(sample: Any) -> tuple[_ValidTuple | None, int | None, str | None, str | None]:
    errors: list[str] = []
    if type(sample) is Sample:
        t, eid, vals = validate_fields(
            sample.timestamp_ms, sample.endpoint_id, sample.udp_echo_rtt_ms, sample.ecpri_ow_us,
            sample.lbm_rtt_ms, sample.lbm_success, sample.input_error, errors,
        )
    elif isinstance(sample, Mapping):
        unknown_msg = unknown_fields_message(list(sample))
        if unknown_msg:
            errors.append(unknown_msg)
        g = sample.get
        t, eid, vals = validate_fields(
            g("timestamp_ms"), g("endpoint_id"), g("udp_echo_rtt_ms"), g("ecpri_ow_us"),
            g("lbm_rtt_ms"), g("lbm_success"), g("input_error"), errors,
        )
    else:
        return None, None, None, f"expected a Sample or a mapping, got {type(sample).__name__}"
    if errors:
        return None, t, eid, "; ".join(errors)
    return vals, t, eid, None


# ----------------------------------------------------------------------------- files


def detect_format(columns: Any) -> str:
    """``long`` when the frame has ``metric_name`` and ``value`` columns, else ``wide``."""
    cols = set(columns)
    return "long" if all(c in cols for c in _LONG_COLUMNS) else "wide"


def _timestamp_column(columns: list[str]) -> str:
    for c in _TIMESTAMP_CANDIDATES:
        if c in columns:
            return c
    raise ValueError(f"no timestamp column: expected one of {list(_TIMESTAMP_CANDIDATES)}, columns are {columns}")


def _timestamps_ms(col: pd.Series, auto_seconds: bool = True) -> np.ndarray:
    """Epoch ms per row as Python ints where readable, else the raw value (the validator reports it).

    With ``auto_seconds`` (any column name but ``timestamp_ms``) numbers below 1e11 are epoch
    seconds, larger ones epoch milliseconds (the rule of :mod:`ocad_detectors.recorded`); text
    is parsed as ISO 8601 (no zone = UTC).
    """
    import pandas as pd

    if isinstance(col.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(col.dtype):
        # a datetime column (Parquet timestamp): its integers are ns (or another unit), not ms
        dt = col.dt.tz_convert("UTC").dt.tz_localize(None) if isinstance(col.dtype, pd.DatetimeTZDtype) else col
        ns = dt.astype("datetime64[ns]").to_numpy().view(np.int64)
        na = dt.isna().to_numpy()
        out = np.empty(len(col), dtype=object)
        for i, (n, missing) in enumerate(zip(ns.tolist(), na.tolist())):
            out[i] = None if missing else (n // 1_000_000 if n % 1_000_000 == 0 else n / 1e6)
        return out
    if pd.api.types.is_integer_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        if col.dtype.kind == "u" and len(col) and col.max() > MAX_TIMESTAMP_MS:  # 20 digits: no int64
            return col.to_numpy(dtype=object)
        v = col.to_numpy(dtype=np.int64)
        return np.where(np.abs(v) < 100_000_000_000, v * 1000, v) if auto_seconds else v
    raw = col.to_numpy(dtype=object)
    out = raw.copy()
    num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    is_num = np.isfinite(num)
    if is_num.any():
        idx = np.flatnonzero(is_num)
        v = num[idx]
        ms = np.where(np.abs(v) < 1e11, v * 1000.0, v) if auto_seconds else v
        integral = ms == np.floor(ms)
        for i, m, ok in zip(idx.tolist(), ms.tolist(), integral.tolist()):
            # a fractional millisecond (or one beyond any date) stays a float: reported invalid
            out[i] = int(m) if ok and abs(m) <= MAX_TIMESTAMP_MS else m
    text = ~is_num & np.array([isinstance(x, str) for x in raw], dtype=bool)
    if text.any():
        parsed = pd.to_datetime(pd.Series(raw[text]).astype(str), errors="coerce", utc=True, format="ISO8601")
        ok = parsed.notna().to_numpy()
        ns = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").view(np.int64)
        for j, i in enumerate(np.flatnonzero(text).tolist()):
            if ok[j] and ns[j] % 1_000_000 == 0:
                out[i] = int(ns[j] // 1_000_000)
    return out


_TRUE = {"true", "1", "1.0", "yes", "t"}
_FALSE = {"false", "0", "0.0", "no", "f"}


def _parse_text(values: np.ndarray, success: bool) -> np.ndarray:
    """CSV cells are text: parse numbers (or booleans for ``lbm_success``) where the text is one,
    keep any other cell as it was read so the validator reports it."""
    import pandas as pd

    out = np.asarray(values, dtype=object).copy()
    is_text = np.array([isinstance(x, str) for x in out], dtype=bool)
    if not is_text.any():
        return out
    idx = np.flatnonzero(is_text)
    text = pd.Series(out[idx]).str.strip()
    if success:
        low = text.str.lower()
        for i, t in zip(idx.tolist(), low.tolist()):
            if t in _TRUE:
                out[i] = True
            elif t in _FALSE:
                out[i] = False
        return out
    num = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    for i, x in zip(idx.tolist(), num.tolist()):
        if x == x:
            out[i] = x
    return out


def long_to_wide(df: pd.DataFrame, timestamp_column: str = "timestamp_ms") -> pd.DataFrame:
    """Pivot long rows (timestamp, endpoint_id, metric_name, value) into wide samples.

    One sample per (timestamp, endpoint) in order of first appearance. A metric repeated for
    the same (timestamp, endpoint) starts a second sample with the same timestamp, which the
    detector then reports as a duplicate. Rows with an unknown ``metric_name`` make their
    sample invalid (``input_error`` names the metric) instead of being dropped silently.
    """
    import pandas as pd

    d = pd.DataFrame(
        {
            "ts": df[timestamp_column].to_numpy(dtype=object),
            "ep": df["endpoint_id"].to_numpy(dtype=object),
            "metric": df["metric_name"].to_numpy(dtype=object),
            "value": df["value"].to_numpy(dtype=object),
        }
    )
    # group keys must be hashable and comparable: use their repr for odd objects
    keys = d[["ts", "ep", "metric"]].astype(str)
    occ = keys.groupby(["ts", "ep", "metric"], sort=False, dropna=False).cumcount().to_numpy()
    keys["occ"] = occ
    code = keys.groupby(["ts", "ep", "occ"], sort=False, dropna=False).ngroup().to_numpy()
    n = int(code.max()) + 1 if len(code) else 0
    first = np.full(n, -1, dtype=np.int64)
    order = np.arange(len(code))[::-1]
    first[code[order]] = order  # last write wins: the smallest row index
    out: dict[str, Any] = {
        "timestamp_ms": d["ts"].to_numpy()[first] if n else np.array([], dtype=object),
        "endpoint_id": d["ep"].to_numpy()[first] if n else np.array([], dtype=object),
    }
    metric = d["metric"].to_numpy()
    value = d["value"].to_numpy()
    for sig in SIGNAL_ORDER:
        col = np.full(n, None, dtype=object)
        sel = np.flatnonzero(metric == sig)
        col[code[sel]] = value[sel]
        out[sig] = col
    errs = np.full(n, None, dtype=object)
    bad = np.flatnonzero(~np.isin(metric, SIGNAL_ORDER))
    for i in bad.tolist():
        msg = f"metric_name: unknown metric {metric[i]!r}; known: {', '.join(SIGNAL_ORDER)}"
        errs[code[i]] = msg if errs[code[i]] is None else errs[code[i]] + "; " + msg
    out["input_error"] = errs
    return pd.DataFrame(out)


def require_valid(sample: Any) -> tuple:
    """``(timestamp_ms, endpoint_id, udp, ecpri, lbm_rtt, lbm_success)`` of a valid sample, for
    the detectors' standalone ``score_one``; ``ValueError`` naming every bad field otherwise."""
    vals, _, _, err = validate_sample(sample)
    if vals is None:
        raise ValueError(err)
    return vals


def _endpoint_ids(col: pd.Series) -> np.ndarray:
    """Endpoint ids as text: a numeric id column (RIPE Atlas probe ids like 11119, read as
    numbers by CSV and Parquet) is an id, not a value; integral floats lose their ``.0``."""
    out = col.to_numpy(dtype=object).copy()
    for i, v in enumerate(out.tolist()):
        if isinstance(v, bool):
            continue
        if isinstance(v, int):
            out[i] = str(v)
        elif isinstance(v, float) and v == v and abs(v) < 2**53 and v == int(v):
            out[i] = str(int(v))
    return out


def _blank_missing(values: np.ndarray, sentinels: Sequence[float]) -> np.ndarray:
    """Cells equal to a "no reply" code become NaN (a missing reply); others stay as read."""
    if not sentinels:
        return values
    codes = {float(x) for x in sentinels}
    out = np.asarray(values, dtype=object).copy()
    for i, v in enumerate(out.tolist()):
        if isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool) and -(2**53) < v < 2**53):
            if float(v) in codes:
                out[i] = float("nan")
    return out


def _apply_units(values: np.ndarray, units: np.ndarray | str | None, signal: str) -> tuple[np.ndarray, np.ndarray]:
    """Convert numeric cells from ``units`` (per row or one for the column) to ``signal``'s own
    unit (ms, µs); returns the values and a per-row error text (None where fine)."""
    from ocad_detectors.recorded import UNIT_FACTORS

    target_ms = {"ms": 1.0, "us": 1e-3}[SIGNALS[signal].unit]
    out = np.asarray(values, dtype=object).copy()
    errs = np.full(len(out), None, dtype=object)
    if units is None:
        return out, errs
    per_row = np.broadcast_to(np.asarray(units, dtype=object), (len(out),))
    for i in range(len(out)):
        u = per_row[i]
        if u is None or (isinstance(u, float) and u != u) or u == "":
            continue
        u = str(u).strip()
        if u not in UNIT_FACTORS:
            errs[i] = f"{signal}: unknown unit {u!r}; known: {', '.join(UNIT_FACTORS)}"
            continue
        v = out[i]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[i] = float(v) * UNIT_FACTORS[u] / target_ms
    return out, errs


def _header_columns(p: Path) -> list[str] | None:
    """Column names from the file's header / schema without reading the data, refusing more
    than :data:`MAX_COLUMNS` (None when the header cannot be read: the parser reports it)."""
    import csv

    if p.suffix.lower() == ".csv":
        try:
            with open(p, newline="", encoding="utf-8", errors="replace") as fh:
                first = fh.readline(1 << 22)  # 4 MiB is far more than any sane header
        except OSError:
            return None
        if len(first) >= 1 << 22 or first.count(",") >= MAX_COLUMNS:
            raise ValueError(f"{p}: more than {MAX_COLUMNS} columns in the header; not a samples file")
        return next(csv.reader([first]), [])
    try:
        import pyarrow.parquet as pq

        names = list(pq.read_schema(p).names)
    except Exception:
        return None
    if len(names) > MAX_COLUMNS:
        raise ValueError(f"{p}: {len(names)} columns, more than {MAX_COLUMNS}; not a samples file")
    return names


def check_units(units: Mapping[str, str]) -> None:
    """``ValueError`` naming a unit or signal that ``--unit`` cannot mean."""
    from ocad_detectors.recorded import UNIT_FACTORS

    for sig, unit in units.items():
        if sig not in VALUE_SIGNALS:
            raise ValueError(f"unit given for {sig!r}, which is not a delay signal; known: {', '.join(VALUE_SIGNALS)}")
        if str(unit).strip() not in UNIT_FACTORS:
            raise ValueError(f"unknown unit {unit!r} for {sig}; known: {', '.join(UNIT_FACTORS)}")


def read_samples(
    path: str | Path,
    fmt: str = "auto",
    signal_map: Mapping[str, str] | None = None,
    units: Mapping[str, str] | None = None,
    strict: bool = False,
    missing_values: Sequence[float] = (),
) -> pd.DataFrame:
    """Read a CSV or Parquet file into a wide frame, one row per sample, in file order.

    ``missing_values``: raw codes a probe writes for "no reply" (RIPE Atlas: -3, -4); a delay
    cell equal to one of them (before unit conversion) is a missing reply, not an error.

    ``signal_map`` renames other column / metric names to OCAD signals (e.g.
    ``{"rtt": "udp_echo_rtt_ms"}``); ``units`` gives the unit of wide columns (``ns, us, ms, s``)
    and long files may carry a ``unit`` column: values are converted to each signal's own unit,
    the same rules as :mod:`ocad_detectors.recorded` (the pipeline's reader).

    Lenient on purpose (unlike :mod:`ocad_detectors.recorded`, which rejects a bad file): a
    bad cell stays in the frame as it was read and becomes an ``invalid`` result, so every
    sample in the file yields exactly one result. Columns of the returned frame:
    ``timestamp_ms`` (ints where readable), ``endpoint_id``, the four signals, ``input_error``.
    Raises ``ValueError`` for an unreadable file or one without timestamp / endpoint columns,
    duplicate column names, more than :data:`MAX_COLUMNS` columns, unknown ``units``, and
    (with ``strict``) columns it does not know; without ``strict`` those are listed in
    ``frame.attrs["ignored_columns"]`` for the caller to warn about.
    """
    import pandas as pd

    p = Path(path)
    suffix = p.suffix.lower()
    header = _header_columns(p) if suffix in (".csv", ".parquet", ".pq") else None
    if header is not None:
        dups = sorted({c for c in header if header.count(c) > 1})
        if dups:
            raise ValueError(f"{p}: duplicate column(s) {dups}; which one holds the data is ambiguous")
    if suffix == ".csv":
        raw = pd.read_csv(p, keep_default_na=False, na_values=["", "NA", "NaN", "nan", "null", "None"], low_memory=False)
    elif suffix in (".parquet", ".pq"):
        raw = pd.read_parquet(p)
    else:
        raise ValueError(f"{p}: unsupported file type {suffix!r}; use .csv or .parquet")
    signal_map = dict(signal_map or {})
    bad_map = {k: v for k, v in signal_map.items() if v not in SIGNAL_ORDER}
    if bad_map:
        raise ValueError(f"signal_map targets unknown signals {bad_map}; known: {list(SIGNAL_ORDER)}")
    cols = [signal_map.get(str(c), str(c)) for c in raw.columns]
    if len(set(cols)) != len(cols):
        dups = sorted({c for c in cols if cols.count(c) > 1})
        raise ValueError(f"{p}: duplicate column(s) {dups} (after --signal-map); which one holds the data is ambiguous")
    raw.columns = cols
    units = {signal_map.get(k, k): v for k, v in (units or {}).items()}
    check_units(units)
    if fmt not in ("auto", "wide", "long"):
        raise ValueError(f"format must be auto, wide or long, got {fmt!r}")
    if fmt == "auto":
        fmt = detect_format(cols)
    ts_col = _timestamp_column(cols)
    known = {ts_col, "endpoint_id", "input_error", *(("metric_name", "value", "unit") if fmt == "long" else SIGNAL_ORDER)}
    ignored = [c for c in cols if c not in known]
    if ignored:
        hints = []
        for c in ignored:
            near = c.strip().lower()
            match = next((k for k in sorted(known) if k == near or (len(near) > 4 and (k.startswith(near) or near.startswith(k)))), None)
            hints.append(f"{c!r}" + (f" (did you mean {match!r}?)" if match else ""))
        msg = f"{p}: unknown column(s) {', '.join(hints)}; known: {', '.join(sorted(known))} (use --signal-map NAME=SIGNAL)"
        if strict:
            raise ValueError(msg)
    else:
        msg = None
    if "endpoint_id" not in cols:
        raise ValueError(f"{p}: no endpoint_id column; columns are {cols}")
    raw = raw.assign(endpoint_id=_endpoint_ids(raw["endpoint_id"]))
    if fmt == "long":
        missing = [c for c in _LONG_COLUMNS if c not in cols]
        if missing:
            raise ValueError(f"{p}: long format needs columns {list(_LONG_COLUMNS)}; missing {missing}")
        raw = raw.copy()
        raw[ts_col] = _timestamps_ms(raw[ts_col], ts_col != "timestamp_ms")
        if signal_map:
            raw["metric_name"] = [signal_map.get(str(m), m) for m in raw["metric_name"].to_numpy(dtype=object)]
        unit_errs = np.full(len(raw), None, dtype=object)
        if "unit" in cols or units:
            metric = raw["metric_name"].to_numpy(dtype=object)
            vals = _blank_missing(_parse_text(raw["value"].to_numpy(dtype=object), False), missing_values)
            per_row = raw["unit"].to_numpy(dtype=object) if "unit" in cols else np.full(len(raw), None, dtype=object)
            for sig in VALUE_SIGNALS:
                sel = np.flatnonzero(metric == sig)
                if len(sel):
                    u = per_row[sel].copy()
                    if sig in units:
                        u = np.where(pd.isna(u), units[sig], u)
                    conv, errs = _apply_units(vals[sel], u, sig)
                    vals[sel] = conv
                    unit_errs[sel] = errs
            raw["value"] = vals
        wide = long_to_wide(raw, ts_col)
        # a long file's row order says nothing about sample order (a sample is spread over
        # rows, and a signal missing at one time shifts its "first appearance"): order samples
        # by time, stably; unreadable timestamps go last and are reported invalid there
        key = np.array([t if isinstance(t, int) and not isinstance(t, bool) else np.inf for t in wide["timestamp_ms"].tolist()], dtype=float)
        wide = wide.iloc[np.argsort(key, kind="stable")].reset_index(drop=True)
        for sig in SIGNAL_ORDER:
            wide[sig] = _parse_text(wide[sig].to_numpy(dtype=object), sig == "lbm_success")
            if sig != "lbm_success":
                wide[sig] = _blank_missing(wide[sig].to_numpy(dtype=object), missing_values)
        if any(e is not None for e in unit_errs):
            # a row with an unknown unit makes its sample invalid, naming the unit
            for i in np.flatnonzero([e is not None for e in unit_errs]).tolist():
                m = (wide["timestamp_ms"].to_numpy(dtype=object) == raw[ts_col].iloc[i]) & (wide["endpoint_id"].to_numpy(dtype=object) == raw["endpoint_id"].iloc[i])
                for j in np.flatnonzero(m).tolist():
                    wide.at[j, "input_error"] = unit_errs[i] if wide.at[j, "input_error"] is None else f"{wide.at[j, 'input_error']}; {unit_errs[i]}"
        wide.attrs["ignored_columns"] = msg
        return wide
    present = [s for s in SIGNAL_ORDER if s in cols]
    if not present:
        raise ValueError(f"{p}: wide format needs at least one signal column of {list(SIGNAL_ORDER)}; columns are {cols}")
    out = pd.DataFrame({"timestamp_ms": _timestamps_ms(raw[ts_col], ts_col != "timestamp_ms"), "endpoint_id": raw["endpoint_id"].to_numpy(dtype=object)})
    for s in SIGNAL_ORDER:
        if s in cols:
            col = raw[s]
            out[s] = _parse_text(col.to_numpy(dtype=object), s == "lbm_success") if col.dtype == object else col.to_numpy()
            if s != "lbm_success" and missing_values:
                out[s] = _blank_missing(out[s].to_numpy(dtype=object), missing_values)
            if s in units and s != "lbm_success":
                out[s], _ = _apply_units(out[s].to_numpy(dtype=object), units[s], s)
        else:
            out[s] = np.full(len(raw), np.nan)
    out["input_error"] = raw["input_error"].to_numpy(dtype=object) if "input_error" in cols else None
    out.attrs["ignored_columns"] = msg
    return out


def iter_samples(frame: pd.DataFrame) -> Iterator[Sample]:
    """The rows of a wide frame as :class:`Sample` objects, values exactly as stored (no coercion).

    Streaming these through ``DetectionPipeline.process`` gives the same results as scoring the
    frame in batch. Absent signal columns become ``None``.
    """
    n = len(frame)
    cols = []
    for name in SAMPLE_FIELDS:
        if name in frame.columns:
            cols.append(frame[name].to_numpy(dtype=object) if frame[name].dtype == object else frame[name].to_numpy())
        else:
            cols.append([None] * n)
    for row in zip(*cols):
        yield Sample(*row)
