"""Sample validation at the API boundary and the lenient CSV/Parquet reader of ocad-detect."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ocad_detectors.samples import (
    Sample,
    check_success,
    check_timestamp,
    check_value,
    iter_samples,
    long_to_wide,
    read_samples,
    validate_sample,
)

T0 = 1_767_225_600_000


def _ok(**kw):
    base = dict(timestamp_ms=T0, endpoint_id="o-ru-001", udp_echo_rtt_ms=5.0, ecpri_ow_us=100.0, lbm_rtt_ms=8.0, lbm_success=True)
    base.update(kw)
    return base


def test_valid_sample_normalizes_values():
    vals, ts, ep, err = validate_sample(Sample(**_ok()))
    assert err is None and ts == T0 and ep == "o-ru-001"
    assert vals == (T0, "o-ru-001", 5.0, 100.0, 8.0, 1.0)
    # a mapping works too; absent signals and None / NaN / pd.NA are missing, not errors
    vals, _, _, err = validate_sample({"timestamp_ms": np.int64(T0), "endpoint_id": "x", "udp_echo_rtt_ms": None, "lbm_success": pd.NA})
    assert err is None
    assert math.isnan(vals[2]) and math.isnan(vals[3]) and math.isnan(vals[4]) and math.isnan(vals[5])
    vals, _, _, err = validate_sample(_ok(ecpri_ow_us=float("nan"), lbm_success=np.bool_(False), timestamp_ms=float(T0)))
    assert err is None and math.isnan(vals[3]) and vals[5] == 0.0 and vals[0] == T0 and type(vals[0]) is int


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("timestamp_ms", None, "timestamp_ms: missing"),
        ("timestamp_ms", "2026-01-01", "timestamp_ms: expected integer epoch milliseconds, got str"),
        ("timestamp_ms", -5, "must be >= 0"),
        ("timestamp_ms", 1.5, "timestamp_ms: expected integer"),
        ("timestamp_ms", True, "got a bool"),
        ("endpoint_id", "", "endpoint_id: empty"),
        ("endpoint_id", 17, "endpoint_id: expected a non-empty string, got int"),
        ("endpoint_id", None, "endpoint_id: missing"),
        ("udp_echo_rtt_ms", float("inf"), "udp_echo_rtt_ms: infinite value"),
        ("udp_echo_rtt_ms", -float("inf"), "udp_echo_rtt_ms: infinite value"),
        ("udp_echo_rtt_ms", -1.0, "udp_echo_rtt_ms: negative value -1 ms"),
        ("ecpri_ow_us", 5e7, "ecpri_ow_us: absurd value 5e+07 us"),
        ("lbm_rtt_ms", "8.0", "lbm_rtt_ms: expected a number in ms, got str '8.0'"),
        ("lbm_rtt_ms", True, "lbm_rtt_ms: expected a number in ms, got a bool"),
        ("lbm_success", 0.5, "lbm_success: expected true/false"),
        ("lbm_success", "yes", "lbm_success: expected true/false (or 1/0), got str"),
    ],
)
def test_each_bad_field_gets_a_clear_error(field, value, fragment):
    vals, _, _, err = validate_sample(_ok(**{field: value}))
    assert vals is None
    assert fragment in err, err


def test_all_errors_are_reported_together_and_readable_fields_kept():
    vals, ts, ep, err = validate_sample(_ok(udp_echo_rtt_ms=-3.0, lbm_success="x"))
    assert vals is None and ts == T0 and ep == "o-ru-001"
    assert "udp_echo_rtt_ms" in err and "lbm_success" in err and "; " in err


def test_unknown_fields_and_wrong_types_are_errors():
    _, _, _, err = validate_sample({**_ok(), "udp_echo_rtt": 3.0})
    assert "unknown field(s) 'udp_echo_rtt'" in err
    _, _, _, err = validate_sample([T0, "x"])
    assert err == "expected a Sample or a mapping, got list"
    _, _, _, err = validate_sample(Sample(T0, "x", input_error="metric_name: unknown metric 'foo'"))
    assert "unknown metric 'foo'" in err


def test_scalar_checks():
    assert check_timestamp(np.uint32(5)) == (5, None)
    assert check_value("udp_echo_rtt_ms", 0) == (0.0, None)
    assert check_value("udp_echo_rtt_ms", 10_000.0)[1] is None  # the probe timeout itself is allowed
    assert check_success(1) == (1.0, None) and check_success(0.0) == (0.0, None)


def test_read_wide_csv_keeps_file_order_and_bad_cells(tmp_path):
    p = tmp_path / "wide.csv"
    p.write_text(
        "timestamp,endpoint_id,udp_echo_rtt_ms,lbm_success\n"
        "1767225600,a,5.0,True\n"  # epoch seconds -> ms
        "1767225595000,a,,False\n"  # older: stays in place (the detector flags it)
        "2026-01-01T00:00:10Z,b,abc,true\n"
        "1767225605000,,3.0,\n"
    )
    f = read_samples(p)
    assert list(f.columns) == ["timestamp_ms", "endpoint_id", "udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms", "lbm_success", "input_error"]
    assert f["timestamp_ms"].tolist()[:3] == [1767225600000, 1767225595000, 1767225610000]
    rows = list(iter_samples(f))
    assert [validate_sample(r)[3] is None for r in rows] == [True, True, False, False]
    assert "udp_echo_rtt_ms: expected a number in ms, got str 'abc'" in validate_sample(rows[2])[3]
    assert "endpoint_id: missing" in validate_sample(rows[3])[3]


def test_long_format_pivot_unknown_metrics_and_repeats(tmp_path):
    long = pd.DataFrame(
        {
            "timestamp": [T0, T0, T0, T0 + 5000, T0, T0 + 5000],
            "endpoint_id": ["a", "a", "b", "a", "a", "a"],
            "metric_name": ["udp_echo_rtt_ms", "lbm_success", "ecpri_ow_us", "udp_echo_rtt_ms", "udp_echo_rtt_ms", "jitter_ms"],
            "value": [5.0, 1.0, 90.0, 5.5, 6.0, 1.0],
        }
    )
    p = tmp_path / "long.parquet"
    long.to_parquet(p)
    f = read_samples(p)
    assert len(f) == 4  # (T0,a), (T0,b), the repeated udp value of (T0,a), (T0+5000,a)
    # samples come back ordered by time (stable): the repeat of (T0,a) is then a duplicate
    assert f[["timestamp_ms", "endpoint_id"]].values.tolist() == [[T0, "a"], [T0, "b"], [T0, "a"], [T0 + 5000, "a"]]
    assert f["udp_echo_rtt_ms"].tolist()[0] == 5.0 and f["lbm_success"].tolist()[0] == 1.0
    assert f["udp_echo_rtt_ms"].tolist()[2] == 6.0
    assert "unknown metric 'jitter_ms'" in f["input_error"].tolist()[3]
    assert f["input_error"].tolist()[0] is None
    # same result through the function directly
    assert long_to_wide(long, "timestamp").shape == f.shape


def test_reader_rejects_files_it_cannot_interpret(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("when,endpoint_id,udp_echo_rtt_ms\n1,a,2\n")
    with pytest.raises(ValueError, match="no timestamp column"):
        read_samples(p)
    p.write_text("timestamp,endpoint_id,foo\n1,a,2\n")
    with pytest.raises(ValueError, match="at least one signal column"):
        read_samples(p)
    with pytest.raises(ValueError, match="unsupported file type"):
        read_samples(tmp_path / "x.txt")
