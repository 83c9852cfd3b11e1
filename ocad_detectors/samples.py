"""The sample type and its validation at the API boundary, one sample or a whole frame at once.

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

Files are read by :mod:`ocad_detectors.reader` (its module docstring states the rule of every
field for files); :func:`read_samples` here is its lenient mode, as ``ocad-detect`` uses it.
Frames are judged by :func:`validate_frame`, the one vectorized validator (``score_frame`` and
both reader modes use it), whose verdicts and messages are those of :func:`validate_sample`.
Delays are valid from 0 to ``Signal.max_value`` inclusive, in the streaming path, the frame
validator, the reader and the pipeline's pandera schemas alike.
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
    "FrameCheck",
    "MAX_COLUMNS",
    "MAX_TIMESTAMP_MS",
    "detect_format",
    "safe_repr",
    "unknown_fields_message",
    "iter_samples",
    "long_to_wide",
    "read_samples",
    "require_valid",
    "validate_fields",
    "validate_frame",
    "validate_sample",
]

#: signals in the order every internal tuple and array uses
SIGNAL_ORDER: tuple[str, ...] = (*VALUE_SIGNALS, "lbm_success")
#: every field a sample may carry (``input_error`` is set by readers for rows they could not parse)
SAMPLE_FIELDS: tuple[str, ...] = ("timestamp_ms", "endpoint_id", *SIGNAL_ORDER, "input_error")
_NAN = float("nan")
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
    ts: Any, ep: Any, udp: Any, ecpri: Any, lbm: Any, succ: Any, input_error: Any, errors: list[str],
    fields: list[str] | None = None,
) -> tuple[int | None, str | None, _ValidTuple | None]:
    """Check the fields of one sample, appending messages to ``errors`` (and, when given, the
    failing field names to ``fields``); returns (ts, endpoint, values or None)."""
    t, e = check_timestamp(ts)
    if e:
        errors.append(e)
        if fields is not None:
            fields.append("timestamp_ms")
    eid, e = check_endpoint(ep)
    if e:
        errors.append(e)
        if fields is not None:
            fields.append("endpoint_id")
    u, e = check_value("udp_echo_rtt_ms", udp)
    if e:
        errors.append(e)
        if fields is not None:
            fields.append("udp_echo_rtt_ms")
    c, e = check_value("ecpri_ow_us", ecpri)
    if e:
        errors.append(e)
        if fields is not None:
            fields.append("ecpri_ow_us")
    lb, e = check_value("lbm_rtt_ms", lbm)
    if e:
        errors.append(e)
        if fields is not None:
            fields.append("lbm_rtt_ms")
    s, e = check_success(succ)
    if e:
        errors.append(e)
        if fields is not None:
            fields.append("lbm_success")
    if input_error is not None and not _is_na(input_error):
        errors.append(str(input_error))
        if fields is not None:
            fields.append("input_error")
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



def require_valid(sample: Any) -> tuple:
    """``(timestamp_ms, endpoint_id, udp, ecpri, lbm_rtt, lbm_success)`` of a valid sample, for
    the detectors' standalone ``score_one``; ``ValueError`` naming every bad field otherwise."""
    vals, _, _, err = validate_sample(sample)
    if vals is None:
        raise ValueError(err)
    return vals


# ----------------------------------------------------------------------------- frames


@dataclass(slots=True)
class FrameCheck:
    """The verdict of :func:`validate_frame` on every row of a wide frame.

    ``valid`` and ``error`` are exactly what :func:`validate_sample` says about each row as
    :func:`iter_samples` yields it; ``ts``/``eps``/``values`` hold the normalized values of the
    valid rows (``values``: udp, ecpri, lbm_rtt, lbm_success as floats, NaN = missing).
    """

    valid: np.ndarray
    error: list[str | None]
    ts: np.ndarray
    eps: np.ndarray
    values: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    #: what could be read of each row's timestamp / endpoint (for results of invalid rows)
    ts_out: list[int | None]
    ep_out: list[str | None]
    #: invalid row -> ``(field, message)`` of each failure, in the order of ``error``; field is
    #: ``timestamp_ms``, ``endpoint_id``, a signal, ``input_error`` or ``unknown_fields``
    bad_fields: dict[int, tuple[tuple[str, str], ...]]

    @property
    def n(self) -> int:
        return len(self.valid)


def _column(frame: pd.DataFrame, name: str, n: int) -> np.ndarray:
    """A column as raw values, exactly as :func:`iter_samples` yields them."""
    if name not in frame.columns:
        return np.full(n, None, dtype=object)
    col = frame[name]
    return col.to_numpy(dtype=object) if col.dtype == object else col.to_numpy()


def _value_column(col: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Floats (NaN = missing) and a mask of rows that need the exact scalar check."""
    sig = SIGNALS[name]
    n = len(col)
    if col.dtype.kind in "fiu":
        v = col.astype(np.float64)
        with np.errstate(invalid="ignore"):
            bad = (v < sig.min_value) | (v > sig.max_value)
        return v, bad
    if col.dtype.kind == "b":
        return np.full(n, np.nan), np.ones(n, dtype=bool)
    out = np.full(n, np.nan)
    bad = np.zeros(n, dtype=bool)
    for i, x in enumerate(col.tolist() if col.dtype == object else list(col)):
        f, err = check_value(name, x)
        if err:
            bad[i] = True
        else:
            out[i] = f
    return out, bad


def _success_column(col: np.ndarray, series: Any) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    n = len(col)
    if series is not None and isinstance(series.dtype, pd.BooleanDtype):
        return series.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(n, dtype=bool)
    if col.dtype.kind == "b":
        return col.astype(np.float64), np.zeros(n, dtype=bool)
    if col.dtype.kind in "fiu":
        v = col.astype(np.float64)
        return v, ~(np.isnan(v) | (v == 0.0) | (v == 1.0))
    out = np.full(n, np.nan)
    bad = np.zeros(n, dtype=bool)
    for i, x in enumerate(col.tolist() if col.dtype == object else list(col)):
        f, err = check_success(x)
        if err:
            bad[i] = True
        else:
            out[i] = f
    return out, bad


def validate_frame(frame: pd.DataFrame) -> FrameCheck:
    """Validate every row of a wide frame at once, with the verdicts of :func:`validate_sample`.

    The one vectorized validator: ``DetectionPipeline.score_frame`` and both modes of
    :mod:`ocad_detectors.reader` use it. Typed columns are checked with array operations; only
    rows that look suspect go through the scalar checks (so every message is the streaming
    one). Raises ``ValueError`` when ``timestamp_ms`` or ``endpoint_id`` is missing or no
    signal column exists (the frame is not a samples frame at all).
    """
    import pandas as pd

    f = frame
    n = len(f)
    cols = set(map(str, f.columns))
    missing = [c for c in ("timestamp_ms", "endpoint_id") if c not in cols]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; columns are {sorted(cols)}")
    if not any(s in cols for s in SIGNAL_ORDER):
        raise ValueError(f"frame has no signal column ({', '.join(SIGNAL_ORDER)}); columns are {sorted(cols)}")
    raw = {name: _column(f, name, n) for name in SAMPLE_FIELDS}
    suspect = np.zeros(n, dtype=bool)
    # unknown columns make every row invalid, exactly as unknown keys of a streamed mapping
    unknown_msg = unknown_fields_message([c for c in f.columns if c not in SAMPLE_FIELDS])
    if unknown_msg:
        suspect[:] = True

    # timestamps
    tcol = raw["timestamp_ms"]
    ts = np.zeros(n, dtype=np.int64)
    if tcol.dtype.kind in "iu":
        big = tcol > MAX_TIMESTAMP_MS  # also keeps uint64 beyond int64 from wrapping
        ts = np.where(big, 0, tcol).astype(np.int64)
        suspect |= (ts < 0) | big
    elif tcol.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(tcol) & (tcol == np.floor(tcol)) & (tcol >= 0) & (tcol <= MAX_TIMESTAMP_MS)
        ts = np.where(ok, tcol, 0).astype(np.int64)
        suspect |= ~ok
    else:
        for i, v in enumerate(tcol.tolist() if tcol.dtype == object else list(tcol)):
            t, err = check_timestamp(v)
            if t is None:
                suspect[i] = True
            else:
                ts[i] = t
    # endpoints: validate the distinct values only
    ecol = raw["endpoint_id"]
    eps = np.empty(n, dtype=object)
    try:
        codes, uniques = pd.factorize(ecol, use_na_sentinel=True)
        uok = np.array([type(u) is str and bool(u.strip()) for u in uniques], dtype=bool)
        good = (codes >= 0) & uok[np.maximum(codes, 0)] if len(uniques) else np.zeros(n, dtype=bool)
        eps[good] = np.asarray(uniques, dtype=object)[codes[good]]
        suspect |= ~good
    except TypeError:
        for i, v in enumerate(ecol.tolist()):
            e, err = check_endpoint(v)
            if err:
                suspect[i] = True
            else:
                eps[i] = e
    # signals
    vals = []
    for name in VALUE_SIGNALS:
        v, bad = _value_column(raw[name], name)
        vals.append(v)
        suspect |= bad
    s, bad = _success_column(raw["lbm_success"], f["lbm_success"] if "lbm_success" in cols else None)
    suspect |= bad
    ie = raw["input_error"]
    if "input_error" in cols:
        suspect |= ~pd.isna(ie)

    valid = np.ones(n, dtype=bool)
    error: list[str | None] = [None] * n
    ts_out: list[int | None] = list(ts.tolist())
    ep_out: list[str | None] = list(eps.tolist())
    bad_fields: dict[int, tuple[tuple[str, str], ...]] = {}
    u, c, lb = vals
    for i in np.flatnonzero(suspect).tolist():
        errors: list[str] = [unknown_msg] if unknown_msg else []
        fields: list[str] = ["unknown_fields"] if unknown_msg else []
        t, eid, tup = validate_fields(
            raw["timestamp_ms"][i], raw["endpoint_id"][i], raw["udp_echo_rtt_ms"][i], raw["ecpri_ow_us"][i],
            raw["lbm_rtt_ms"][i], raw["lbm_success"][i], raw["input_error"][i], errors, fields,
        )
        ts_out[i] = t
        ep_out[i] = eid
        if tup is None:
            valid[i] = False
            error[i] = "; ".join(errors)
            bad_fields[i] = tuple(zip(fields, errors))
        else:
            ts[i], eps[i], u[i], c[i], lb[i], s[i] = tup
    return FrameCheck(valid, error, ts, eps, (u, c, lb, s), ts_out, ep_out, bad_fields)


def iter_samples(frame: pd.DataFrame) -> Iterator[Sample]:
    """The rows of a wide frame as :class:`Sample` objects, values exactly as stored (no coercion).

    Streaming these through ``DetectionPipeline.process`` gives the same results as scoring the
    frame in batch. Absent signal columns become ``None``.
    """
    n = len(frame)
    cols: list[Any] = []
    for name in SAMPLE_FIELDS:
        if name in frame.columns:
            cols.append(frame[name].to_numpy(dtype=object) if frame[name].dtype == object else frame[name].to_numpy())
        else:
            cols.append([None] * n)
    for row in zip(*cols):
        yield Sample(*row)


# ----------------------------------------------------------------------------- files
# The reader lives in :mod:`ocad_detectors.reader`; these keep the names ``ocad-detect`` and
# older callers use.


def read_samples(
    path: str | Path,
    fmt: str = "auto",
    signal_map: Mapping[str, str] | None = None,
    units: Mapping[str, str] | None = None,
    strict: bool = False,
    missing_values: Sequence[float] = (),
) -> pd.DataFrame:
    """A CSV or Parquet file as ``ocad-detect`` reads it: the lenient mode of
    :func:`ocad_detectors.reader.read_samples`, one row per sample, bad cells kept as read.

    Columns: ``timestamp_ms``, ``endpoint_id``, the four signals, ``input_error``. Unknown
    columns are listed in ``frame.attrs["ignored_columns"]`` (``strict``: a ``ValueError``).
    Raises ``ValueError`` for a file that cannot be a samples file (see the reader).
    """
    from ocad_detectors.reader import ReadOptions
    from ocad_detectors.reader import read_samples as read

    opts = ReadOptions(
        format=fmt, signal_map=dict(signal_map or {}), units=dict(units or {}), missing_values=tuple(missing_values), keep_columns=()
    )
    frame, report = read(path, opts, mode="lenient")
    if strict and report["ignored_columns"]:
        raise ValueError(report["ignored_columns"])
    return frame


def long_to_wide(df: pd.DataFrame, timestamp_column: str = "timestamp_ms") -> pd.DataFrame:
    """See :func:`ocad_detectors.reader.long_to_wide`."""
    from ocad_detectors.reader import long_to_wide as pivot

    return pivot(df, timestamp_column)


def detect_format(columns: Any) -> str:
    """``long`` when the frame has ``metric_name`` and ``value`` columns, else ``wide``."""
    from ocad_detectors.reader import detect_format as detect

    return detect(columns)


def check_units(units: Mapping[str, str]) -> None:
    """``ValueError`` naming a unit or signal that ``--unit`` cannot mean."""
    from ocad_detectors.reader import check_units as check

    check(units)
