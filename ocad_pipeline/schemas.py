"""pandera schemas for every table the pipeline writes, and one way to report their failures.

Ranges are given in each signal's own unit (ms or µs): a µs value in a ms column, or the
reverse, is the kind of mistake these schemas exist to catch. A delay is valid from 0 (a reply
below the probe's resolution) to the signal's ``max_value`` (the probe timeout), both included:
the rule of :mod:`ocad_detectors.reader` and of the streaming validator, so training accepts
exactly the values serving scores.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pandera.pandas as pa

from ocad_detectors.features import feature_names
from ocad_detectors.signals import METRIC_SIGNAL, METRIC_TYPES, SIGNALS
from ocad_pipeline.simulator import ANOMALY_TYPES, SEVERITIES

SPLITS: tuple[str, ...] = ("train", "val", "test")


class DataValidationError(ValueError):
    """A table failed its schema; the message names the table, columns, checks and rows."""

    def __init__(self, table: str, message: str, failure_cases: pd.DataFrame | None = None):
        super().__init__(f"table {table!r} failed validation:\n{message}")
        self.table = table
        self.failure_cases = failure_cases


def _range(sig: str, nullable: bool = True) -> pa.Column:
    s = SIGNALS[sig]
    # a delay is >= 0 (0: below the probe's resolution); the upper bound is the probe timeout
    return pa.Column(
        float,
        checks=[pa.Check.ge(s.min_value), pa.Check.le(s.max_value)],
        nullable=nullable,
        description=f"{s.description} [{s.unit}]",
    )


#: simulator types, plus "unknown" for recorded labels that carry no type. Recorded labels may
#: carry any other non-empty type (operators have their own taxonomy), so the schemas check
#: only that a type is a non-empty string.
LABEL_TYPES: tuple[str, ...] = (*ANOMALY_TYPES, "unknown")


def _type_check() -> pa.Check:
    return pa.Check.str_length(min_value=1, error="anomaly type must be a non-empty string")


def _anomaly_type_column() -> pa.Column:
    return pa.Column("string", checks=_type_check(), nullable=True)


def _type_matches_flag(df: pd.DataFrame) -> pd.Series:
    """anomaly_type is set exactly on anomalous rows."""
    return df["anomaly_type"].notna() == df["is_anomaly"]


RAW_SAMPLES = pa.DataFrameSchema(
    {
        "timestamp_ms": pa.Column("int64", pa.Check.ge(0)),
        "endpoint_id": pa.Column(str, pa.Check.str_length(min_value=1)),
        "udp_echo_rtt_ms": _range("udp_echo_rtt_ms"),
        "ecpri_ow_us": _range("ecpri_ow_us"),
        "lbm_rtt_ms": _range("lbm_rtt_ms"),
        "lbm_success": pa.Column("boolean", nullable=True),
        "is_anomaly": pa.Column(bool),
        "anomaly_type": _anomaly_type_column(),
        "incident_id": pa.Column("string", nullable=True),
    },
    checks=[pa.Check(_type_matches_flag, name="anomaly_type_set_iff_is_anomaly")],
    unique=["endpoint_id", "timestamp_ms"],
    strict=True,
    name="raw_samples",
)

INCIDENTS = pa.DataFrameSchema(
    {
        "incident_id": pa.Column("string", unique=True),
        "endpoint_id": pa.Column("string"),
        "start": pa.Column("int64", pa.Check.ge(0)),
        "end": pa.Column("int64"),
        "type": pa.Column("string", _type_check()),
        "severity": pa.Column("string", pa.Check.isin(list(SEVERITIES))),
        "outage_start": pa.Column("Int64", nullable=True),
        "signals": pa.Column("string"),
    },
    checks=[
        pa.Check(lambda d: d["end"] > d["start"], name="incident_ends_after_it_starts"),
        pa.Check(
            lambda d: d["outage_start"].isna() | ((d["outage_start"] >= d["start"]) & (d["outage_start"] < d["end"])),
            name="outage_inside_incident",
        ),
    ],
    strict=True,
    name="incidents",
)

ANOMALY_LABELS = pa.DataFrameSchema(
    {
        "endpoint_id": pa.Column(str),
        "timestamp_ms": pa.Column("int64", pa.Check.ge(0)),
        "is_anomaly": pa.Column(bool),
        "anomaly_type": pa.Column(str, _type_check()),
        "severity": pa.Column(str, pa.Check.isin(list(SEVERITIES))),
        "description": pa.Column(str),
    },
    strict=True,
    name="anomaly_labels",
)

ENDPOINTS = pa.DataFrameSchema(
    {
        "endpoint_id": pa.Column(str, unique=True),
        "role": pa.Column(str, pa.Check.isin(["o-ru", "o-du", "transport"])),
        "capabilities": pa.Column(str, pa.Check.str_matches(r"^(ecpri|lbm|udp_echo)(\+(ecpri|lbm|udp_echo))*$")),
    },
    strict=False,
    name="endpoints",
)

REFERENCE_STATS = pa.DataFrameSchema(
    {
        "endpoint_id": pa.Column(str),
        "signal": pa.Column(str, pa.Check.isin(list(METRIC_SIGNAL.values()))),
        "mean": pa.Column(float, pa.Check.ge(0)),
        "std": pa.Column(float, pa.Check.gt(0)),
        "n": pa.Column("int64", pa.Check.ge(2)),
    },
    unique=["endpoint_id", "signal"],
    strict=True,
    name="reference_stats",
)


def _target_in_unit_range(df: pd.DataFrame) -> pd.Series:
    ok = pd.Series(True, index=df.index)
    for m, sig in METRIC_SIGNAL.items():
        s = SIGNALS[sig]
        sel = df["metric_type"] == m
        t = df.loc[sel, "target"]
        ok.loc[sel] = t.isna() | ((t >= s.min_value) & (t <= s.max_value))
    return ok


def timeseries_schema(sequence_length: int) -> pa.DataFrameSchema:
    """Rows of the TCN datasets in the seed's layout (section 4.2.1) plus ``window_anomalous``."""

    def one(v) -> bool:
        try:
            if v is None or len(v) != sequence_length:
                return False
            a = np.asarray(v, dtype=float)
        except (TypeError, ValueError):
            return False
        return bool(np.all(np.isnan(a) | ((a >= 0) & (a <= 10_000_000.0))))

    def seq_ok(seq: pd.Series) -> pd.Series:
        # vectorized: the sequences of the right length glued into one (n, L) matrix (a per-row
        # check took 3 of the 8 s of timeseries_splits on the default data); odd rows row by row
        vals = seq.to_numpy(dtype=object)
        lengths = np.fromiter(
            (len(v) if isinstance(v, (np.ndarray, list, tuple)) else -1 for v in vals), dtype=np.int64, count=len(vals)
        )
        out = np.zeros(len(vals), dtype=bool)
        sel = np.flatnonzero(lengths == sequence_length)
        if len(sel):
            try:
                a = np.concatenate([np.asarray(v).ravel() for v in vals[sel]]).astype(float).reshape(len(sel), sequence_length)
                out[sel] = np.all(np.isnan(a) | ((a >= 0) & (a <= 10_000_000.0)), axis=1)
            except (TypeError, ValueError):
                out[sel] = [one(v) for v in vals[sel]]
        return pd.Series(out, index=seq.index)

    return pa.DataFrameSchema(
        {
            "endpoint_id": pa.Column(str),
            "metric_type": pa.Column(str, pa.Check.isin(list(METRIC_TYPES))),
            "timestamp_ms": pa.Column("int64", pa.Check.ge(0)),
            "sequence": pa.Column(
                object,
                pa.Check(seq_ok, name=f"sequence_is_{sequence_length}_positive_floats_or_nan"),
            ),
            "target": pa.Column(float, nullable=True),
            "is_anomaly": pa.Column(bool),
            "anomaly_type": _anomaly_type_column(),
            "window_anomalous": pa.Column(bool),
        },
        checks=[
            pa.Check(_target_in_unit_range, name="target_in_unit_range"),
            pa.Check(_type_matches_flag, name="anomaly_type_set_iff_is_anomaly"),
            pa.Check(lambda d: ~d["is_anomaly"] | d["window_anomalous"], name="anomalous_target_marks_window"),
        ],
        unique=["endpoint_id", "metric_type", "timestamp_ms"],
        strict=True,
        name="timeseries",
    )


def multivariate_schema() -> pa.DataFrameSchema:
    cols: dict[str, pa.Column] = {
        "endpoint_id": pa.Column(str),
        "timestamp_ms": pa.Column("int64", pa.Check.ge(0)),
        "capabilities": pa.Column(str),
    }
    for m in METRIC_TYPES:
        for name in feature_names(m):
            checks = []
            if name.endswith("_missing"):
                checks = [pa.Check.in_range(0.0, 1.0)]
            elif name.endswith("_cusum"):
                checks = [pa.Check.ge(0.0)]
            elif name.endswith(("_p95", "_p99", "_ewma")):
                checks = [pa.Check.ge(0.0)]
            cols[name] = pa.Column(float, checks=checks, nullable=True)
    cols["lbm_fail_runlen"] = pa.Column(float, pa.Check.ge(0.0), nullable=True)
    cols["lbm_fail_ratio"] = pa.Column(float, pa.Check.in_range(0.0, 1.0), nullable=True)
    cols["ecpri_udp_gap_z"] = pa.Column(float, nullable=True)
    cols["is_anomaly"] = pa.Column(bool)
    cols["anomaly_type"] = _anomaly_type_column()
    cols["window_anomalous"] = pa.Column(bool)
    return pa.DataFrameSchema(
        cols,
        checks=[pa.Check(_type_matches_flag, name="anomaly_type_set_iff_is_anomaly")],
        unique=["endpoint_id", "timestamp_ms"],
        strict=True,
        name="multivariate",
    )


def split_disjointness_schema(gap_ms: int) -> pa.DataFrameSchema:
    """Over all splits stacked with a ``split`` column: per endpoint, every row lies at least
    ``gap_ms`` away from the time range of every other split, so no window spans two splits."""

    def disjoint(df: pd.DataFrame) -> pd.Series:
        ts = df["timestamp_ms"].to_numpy()
        ep = df["endpoint_id"].to_numpy()
        sp = df["split"].to_numpy()
        ok = np.ones(len(df), dtype=bool)
        for (e, s), r in df.groupby(["endpoint_id", "split"])["timestamp_ms"].agg(["min", "max"]).iterrows():
            ok &= ~((ep == e) & (sp != s) & (ts > r["min"] - gap_ms) & (ts < r["max"] + gap_ms))
        return pd.Series(ok, index=df.index)

    return pa.DataFrameSchema(
        {"endpoint_id": pa.Column(str), "timestamp_ms": pa.Column("int64"), "split": pa.Column(str, pa.Check.isin(list(SPLITS)))},
        checks=[pa.Check(disjoint, name=f"splits_disjoint_in_time_with_gap_{gap_ms}ms")],
        strict=False,
        name="split_disjointness",
    )


def describe_failures(failure_cases: pd.DataFrame, max_rows: int = 5) -> str:
    """One line per (column, check): how many rows failed, their index and failing values."""
    lines = []
    fc = failure_cases.copy()
    fc["column"] = fc["column"].fillna("<table>").astype(str)
    fc["check"] = fc["check"].astype(str)
    for (col, check), g in fc.groupby(["column", "check"], sort=True):
        idx = [int(i) for i in g["index"].dropna().tolist()[:max_rows]] if "index" in g else []
        vals = [repr(v) for v in g["failure_case"].tolist()[:max_rows]]
        where = f"rows {idx}" if idx else "the table"
        more = f" (+{len(g) - max_rows} more)" if len(g) > max_rows else ""
        lines.append(f"  column {col!r} check {check!r}: {len(g)} failure(s) at {where}{more}; values {vals}")
    return "\n".join(lines)


def validate(df: pd.DataFrame, schema: pa.DataFrameSchema, table: str) -> pd.DataFrame:
    """Validate lazily (every problem at once); raise :class:`DataValidationError` on failure."""
    try:
        return schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as e:
        raise DataValidationError(table, describe_failures(e.failure_cases), e.failure_cases) from None


def validate_tables(tables: Mapping[str, pd.DataFrame], schemas: Mapping[str, pa.DataFrameSchema]) -> dict[str, str | None]:
    """Validate several tables; returns {table: None if valid else the error message}."""
    out: dict[str, str | None] = {}
    for name, schema in schemas.items():
        try:
            validate(tables[name], schema, name)
            out[name] = None
        except DataValidationError as e:
            out[name] = str(e)
    return out
