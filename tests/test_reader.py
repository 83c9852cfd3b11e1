"""The one sample reader (issue 12): strict and lenient modes agree on values and verdicts, one
rule per field shared with the streaming validator, ``score_frame`` and the pandera schemas."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ocad_detectors import reader
from ocad_detectors.cli import main as detect_main
from ocad_detectors.config import DetectionConfig
from ocad_detectors.modelset import ModelSet
from ocad_detectors.pipeline import DetectionPipeline
from ocad_detectors.samples import SIGNAL_ORDER, iter_samples, validate_frame, validate_sample
from ocad_detectors.signals import SIGNALS, VALUE_SIGNALS
from ocad_pipeline import schemas
from ocad_pipeline.recorded import RecordedConfig, _row_schema, load_recorded

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z


def _write(tmp_path: Path, text: str, name: str = "s.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _lenient(p: Path, **kw: Any) -> tuple[pd.DataFrame, dict]:
    return reader.read_samples(p, reader.ReadOptions(keep_columns=(), **kw), mode="lenient")


def _strict(p: Path, **kw: Any) -> pd.DataFrame:
    return reader.read_samples(p, reader.ReadOptions(**kw), mode="strict")[0]


def _detect(argv: list[Any]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = detect_main([str(a) for a in argv], stdout=out, stderr=err)
    return rc, err.getvalue()


# ----------------------------------------------------------------------------- regressions


def test_ok_fail_booleans_are_1_and_0_in_both_modes_and_in_ocad_detect(tmp_path: Path) -> None:
    """Before: training read ok/fail as 1/0 while ocad-detect marked every row invalid."""
    words = ["ok", "fail", "OK", " Fail ", "true", "False", "y", "n", "yes", "no", "t", "f", "1", "0", "1.0", "0.0"]
    lines = ["timestamp_ms,endpoint_id,lbm_rtt_ms,lbm_success"] + [f"{T0 + i * 1000},ep,2.0,{w}" for i, w in enumerate(words)]
    p = _write(tmp_path, "\n".join(lines) + "\n")
    want = [1.0, 0.0] * (len(words) // 2)
    frame, _ = _lenient(p)
    chk = validate_frame(frame)
    assert chk.valid.all() and chk.values[3].tolist() == want
    assert _strict(p)["lbm_success"].tolist() == want
    data, _ = load_recorded(RecordedConfig(str(p)))
    assert data.samples["lbm_success"].tolist() == [bool(v) for v in want]
    rc, err = _detect([p, "--model-dir", tmp_path / "none", "--strict"])
    assert rc == 0, err  # --strict exits 5 when any sample is not scored


@pytest.mark.parametrize("bad", ["maybe", "2", "0.5", "okay"])
def test_other_success_words_are_invalid_in_both_modes(tmp_path: Path, bad: str) -> None:
    p = _write(tmp_path, f"timestamp_ms,endpoint_id,lbm_success\n{T0},ep,true\n{T0 + 1000},ep,{bad}\n")
    frame, _ = _lenient(p)
    assert validate_frame(frame).valid.tolist() == [True, False]
    with pytest.raises(reader.RecordedDataError, match=r"row 3, column 'lbm_success'"):
        _strict(p)


def test_zero_delay_is_valid_everywhere_and_negative_nowhere(tmp_path: Path) -> None:
    """Before: 0.0 ms was accepted by ocad-detect and refused by the pipeline (pandera "> 0")."""
    p = _write(tmp_path, f"timestamp,endpoint_id,udp_echo_rtt_ms,ecpri_ow_us,lbm_rtt_ms\n{T0 // 1000},ep,0.0,0,0.000\n{T0 // 1000 + 5},ep,1.0,90,2.0\n")
    frame, _ = _lenient(p)
    assert validate_frame(frame).valid.all()
    assert _strict(p)["udp_echo_rtt_ms"].tolist() == [0.0, 1.0]
    data, _ = load_recorded(RecordedConfig(str(p)))
    assert data.samples["ecpri_ow_us"].tolist() == [0.0, 90.0]
    schemas.validate(data.samples, schemas.RAW_SAMPLES, "samples")
    vals, _, _, err = validate_sample({"timestamp_ms": T0, "endpoint_id": "ep", "udp_echo_rtt_ms": 0.0})
    assert err is None and vals[2] == 0.0
    assert _detect([p, "--model-dir", tmp_path / "none", "--strict"])[0] == 0
    q = _write(tmp_path, f"timestamp,endpoint_id,udp_echo_rtt_ms\n{T0 // 1000},ep,-0.001\n", "neg.csv")
    assert not validate_frame(_lenient(q)[0]).valid.any()
    with pytest.raises(reader.RecordedDataError, match="negative value"):
        load_recorded(RecordedConfig(str(q)))


def test_timestamp_ms_has_priority_over_timestamp_in_both_modes(tmp_path: Path) -> None:
    """Before: ocad-detect used ``timestamp_ms`` and the pipeline ``timestamp``."""
    p = _write(tmp_path, f"timestamp,timestamp_ms,endpoint_id,udp_echo_rtt_ms\n1000,{T0},ep,1.0\n2000,{T0 + 5000},ep,1.0\n")
    frame, report = _lenient(p)
    assert frame["timestamp_ms"].tolist() == [T0, T0 + 5000]
    assert "'timestamp' (a second timestamp column; 'timestamp_ms' is used)" in report["ignored_columns"]
    with pytest.raises(reader.RecordedDataError, match=r"column 'timestamp': unknown signal column\(s\) 'timestamp' \(a second timestamp"):
        _strict(p)
    rc, err = _detect([p, "--model-dir", tmp_path / "none"])
    assert rc == 0 and "warning: " in err and "a second timestamp column" in err
    # an explicit timestamp_column picks the other one (and names timestamp_ms as the extra)
    with pytest.raises(reader.RecordedDataError, match="'timestamp_ms'"):
        _strict(p, timestamp_column="timestamp")


@pytest.mark.parametrize(
    "header, cell, want",
    [
        ("timestamp_ms", str(T0), T0),
        ("timestamp_ms", "5000", 5000),  # the name says ms: no guessing at seconds
        ("timestamp", "1767571200", T0),  # below 1e11: epoch seconds
        ("timestamp", str(T0), T0),
        ("time", "1767571200.0004", T0),  # sub-ms precision rounds to the nearest ms
        ("ts", "2026-01-05T00:00:00.0006Z", T0 + 1),
        ("datetime", "2026-01-05T01:00:00+01:00", T0),
        ("timestamp_ms", "2026-01-05 00:00:00", T0),  # ISO text in any timestamp column, no zone = UTC
    ],
)
def test_one_timestamp_rule_in_both_modes(tmp_path: Path, header: str, cell: str, want: int) -> None:
    p = _write(tmp_path, f"{header},endpoint_id,udp_echo_rtt_ms\n{cell},ep,1.0\n")
    assert _lenient(p)[0]["timestamp_ms"].tolist() == [want]
    assert _strict(p)["timestamp_ms"].tolist() == [want]


def test_endpoint_ids_are_stripped_text_in_both_modes(tmp_path: Path) -> None:
    p = _write(tmp_path, f"timestamp_ms,endpoint_id,udp_echo_rtt_ms\n{T0},007,1.0\n{T0},  a ,1.0\n{T0},11119,1.0\n")
    assert _lenient(p)[0]["endpoint_id"].tolist() == ["007", "a", "11119"]
    assert _strict(p)["endpoint_id"].tolist() == ["007", "11119", "a"]  # sorted by (time, endpoint)
    pq = tmp_path / "ids.parquet"
    pd.DataFrame({"timestamp_ms": [T0, T0], "endpoint_id": [11119.0, 42.0], "udp_echo_rtt_ms": [1.0, 2.0]}).to_parquet(pq)
    assert _lenient(pq)[0]["endpoint_id"].tolist() == ["11119", "42"]


# ----------------------------------------------------------------------------- strict messages


def test_strict_error_counts_rows_per_column_and_gives_examples(tmp_path: Path) -> None:
    lines = ["timestamp_ms,endpoint_id,udp_echo_rtt_ms"] + [f"{T0 + i * 1000},ep,{'x' if i % 2 else 1.0}" for i in range(240)]
    p = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(reader.RecordedDataError) as e:
        _strict(p)
    msg = str(e.value)
    assert msg.startswith("120 problem(s) in recorded data")
    assert f"{p}, column 'udp_echo_rtt_ms': 120 bad row(s), e.g. rows 3, 5, 7, 9, 11" in msg
    assert f"{p}, row 3, column 'udp_echo_rtt_ms': not a number: 'x'" in msg
    assert len(e.value.problems) == 50 and e.value.counts == {(str(p), "udp_echo_rtt_ms"): 120}
    # the lenient mode never raises for bad rows: the same 120 samples are invalid
    assert int((~validate_frame(_lenient(p)[0]).valid).sum()) == 120


def test_long_file_rules_in_both_modes(tmp_path: Path) -> None:
    text = (
        "timestamp,endpoint_id,metric_name,value,unit\n"
        "1767571200,p,rtt,4100,us\n"
        "1767571200,p,rtt,4100,us\n"  # an exact repeat: the same measurement exported twice
        "1767571200,p,lbm_success,ok,\n"
        "1767571205,p,rtt,4.2,furlong\n"  # unknown unit
        "1767571210,p,jitter,1,ms\n"  # unknown metric
        "1767571215,p,rtt,-3,us\n"  # the probe's no-reply code
    )
    p = _write(tmp_path, text)
    opts = {"signal_map": {"rtt": "udp_echo_rtt_ms"}, "missing_values": (-3,)}
    frame, _ = _lenient(p, **opts)
    chk = validate_frame(frame)
    assert frame["timestamp_ms"].tolist() == [T0, T0 + 5000, T0 + 10_000, T0 + 15_000]
    assert chk.valid.tolist() == [True, False, False, True]
    assert chk.values[0][0] == pytest.approx(4.1) and chk.values[3][0] == 1.0 and math.isnan(chk.values[0][3])
    assert "unknown unit 'furlong'" in (chk.error[1] or "") and "unknown metric 'jitter'" in (chk.error[2] or "")
    with pytest.raises(reader.RecordedDataError) as e:
        _strict(p, **opts)
    assert {(pr.row, pr.column) for pr in e.value.problems} == {(5, "unit"), (6, "metric_name")}
    # a metric repeated with another value: lenient gives a second sample (a duplicate for the
    # detector), strict refuses the file
    q = _write(tmp_path, "timestamp,endpoint_id,metric_name,value\n1767571200,p,lbm_rtt_ms,2.0\n1767571200,p,lbm_rtt_ms,2.5\n", "c.csv")
    assert len(_lenient(q)[0]) == 2
    with pytest.raises(reader.RecordedDataError, match="two different samples"):
        _strict(q)


def test_lenient_raises_only_for_files_that_are_no_samples_file(tmp_path: Path) -> None:
    with pytest.raises(reader.RecordedDataError, match="file not found"):
        _lenient(tmp_path / "nope.csv")
    p = _write(tmp_path, "timestamp_ms,endpoint_id,udp_echo_rtt_ms\n\"unclosed,ep,1\n")
    with pytest.raises(reader.RecordedDataError, match="cannot be read: ParserError"):  # not CSV at all
        _lenient(p)
    p = _write(tmp_path, "timestamp_ms,endpoint_id,udp_echo_rtt_ms\n-1,,x\n")
    assert len(_lenient(p)[0]) == 1  # every cell bad: still one (invalid) sample
    with pytest.raises(ValueError, match="mode must be one of"):
        reader.read_samples(p, mode="sloppy")


# ----------------------------------------------------------------------------- properties

_junk = st.one_of(
    st.sampled_from(["", " ", "NA", "nan", "None", "null", "abc", "inf", "-inf", "1e400", "1_000", "0x10", "true", "-1", "1.5", "1e20"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=6),
)
_ts_cell = st.one_of(st.sampled_from(["ok", "ok", "ok", "sec", "iso", "dup"]), _junk)
_ep_cell = st.one_of(st.sampled_from(["a", "a", "b", " a ", "007", "11119", "1.0", "", "NA"]), _junk)
_value_cell = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**6), max_value=10**8).map(str),
    st.sampled_from(["0", "0.0", "-0.0", " 4.2 ", "10000", "10000.000001", "9999999", "10000000", "-3"]),
    _junk,
)
_success_cell = st.one_of(
    st.sampled_from(["true", "false", "ok", "fail", "OK", " Fail ", "y", "n", "yes", "no", "t", "f", "1", "0", "1.0", "0.0", "2", "0.5", "maybe"]),
    _junk,
)


@st.composite
def _csv_files(draw: Any) -> tuple[str, list[str], int]:
    ts_name = draw(st.sampled_from(["timestamp_ms", "timestamp", "time"]))
    sigs = draw(st.lists(st.sampled_from(SIGNAL_ORDER), min_size=1, max_size=4, unique=True))
    n = draw(st.integers(min_value=0, max_value=12))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([ts_name, "endpoint_id", *sigs])
    clean = draw(st.booleans())  # half the files hold mostly good cells (their values are compared)
    good_value = st.one_of(st.floats(0, 10_000).map(repr), st.sampled_from(["", "NA", "0", " 4.2 ", "10000"]))
    good_success = st.sampled_from(["true", "false", "ok", "fail", " Fail ", "y", "n", "1", "0", "1.0", ""])
    for i in range(n):
        kind = draw(st.sampled_from(["ok", "sec", "iso", "dup"]) if clean else _ts_cell)
        t = T0 + i * 1000
        ts = {"ok": str(t), "sec": str(t / 1000), "iso": pd.Timestamp(t, unit="ms", tz="UTC").isoformat(), "dup": str(T0)}.get(kind, kind)
        ep = draw(st.sampled_from(["a", "b", " a ", "007"]) if clean else _ep_cell)
        cells = [draw((good_success if clean else _success_cell) if s == "lbm_success" else (good_value if clean else _value_cell)) for s in sigs]
        w.writerow([ts, ep, *cells])
    return buf.getvalue(), sigs, n


def _same(a: Any, b: Any) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_csv_files())
def test_property_strict_and_lenient_give_the_same_values_and_verdicts(tmp_path: Path, case: tuple[str, list[str], int]) -> None:
    text, sigs, n = case
    p = tmp_path / "p.csv"
    p.write_text(text, encoding="utf-8")
    frame, report = _lenient(p)  # never raises for bad rows
    assert len(frame) == n and report["ignored_columns"] is None
    chk = validate_frame(frame)
    # the vectorized verdicts are the streaming ones, value for value
    for i, sample in enumerate(iter_samples(frame)):
        vals, ts, ep, err = validate_sample(sample)
        assert (vals is not None) == bool(chk.valid[i]) and err == chk.error[i]
        if vals is not None:
            got = (int(chk.ts[i]), chk.eps[i], *(float(v[i]) for v in chk.values))
            assert all(_same(x, y) for x, y in zip(vals, got)), (vals, got)
    invalid = set(np.flatnonzero(~chk.valid).tolist())
    # what strict must say, from the lenient verdicts alone
    rows = [
        (int(chk.ts[i]), chk.eps[i], *(float(chk.values[SIGNAL_ORDER.index(s)][i]) for s in sigs))
        for i in range(n) if i not in invalid
    ]
    by_key: dict[tuple[int, str], set[tuple]] = {}
    for r in rows:
        by_key.setdefault((r[0], r[1]), set()).add(tuple("nan" if isinstance(x, float) and math.isnan(x) else x for x in r))
    clash = any(len(v) > 1 for v in by_key.values())
    event("strict refuses" if invalid or clash else "strict accepts")
    if invalid or clash:
        with pytest.raises(reader.RecordedDataError) as e:
            reader.read_samples(p, mode="strict")
        named = {pr.row - 2 for pr in e.value.problems if "two different samples" not in pr.message}
        assert named == invalid, (named, invalid, str(e.value))
        # strict also names two samples at one time when one of them is invalid (their time
        # and endpoint are readable): every problem in one pass
        keyed = [(chk.ts_out[i], chk.ep_out[i]) for i in range(n)
                 if not any(f in ("timestamp_ms", "endpoint_id") for f, _ in chk.bad_fields.get(i, ()))]
        if not clash and len(set(keyed)) == len(keyed):
            assert all("two different samples" not in pr.message for pr in e.value.problems)
        return
    df, _ = reader.read_samples(p, mode="strict")
    want = pd.DataFrame(rows, columns=["timestamp_ms", "endpoint_id", *sigs]).drop_duplicates()
    want = want.sort_values(["timestamp_ms", "endpoint_id"], kind="stable").reset_index(drop=True)
    cols = ["timestamp_ms", "endpoint_id", *[s for s in SIGNAL_ORDER if s in sigs]]
    pd.testing.assert_frame_equal(df[cols], want[cols], check_dtype=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_csv_files())
def test_property_score_frame_marks_invalid_exactly_what_validate_frame_does(tmp_path: Path, case: tuple[str, list[str], int]) -> None:
    text, _, _ = case
    p = tmp_path / "p.csv"
    p.write_text(text, encoding="utf-8")
    frame, _ = _lenient(p)
    chk = validate_frame(frame)
    pipe = DetectionPipeline(DetectionConfig.from_dict({"limits": {"future_tolerance_ms": None}}), models=ModelSet())
    res = pipe.score_frame(frame)
    assert [s == "invalid" for s in res.status] == (~chk.valid).tolist()
    assert [e for e, v in zip(res.error, chk.valid) if not v] == [e for e, v in zip(chk.error, chk.valid) if not v]


_delay = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 10_000.0, 10_000.000001, 10_000_000.0, 10_000_000.1]),
)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(VALUE_SIGNALS), st.lists(_delay, min_size=1, max_size=20))
def test_property_pandera_schemas_accept_exactly_the_delays_the_validator_accepts(sig: str, values: list[float]) -> None:
    frame = pd.DataFrame({"timestamp_ms": [T0 + i for i in range(len(values))], "endpoint_id": "a", sig: values})
    valid = validate_frame(frame).valid
    for schema in (pa.DataFrameSchema({sig: schemas._range(sig)}), _row_schema()):
        try:
            schema.validate(frame[["timestamp_ms", "endpoint_id", sig]] if schema.name else frame[[sig]], lazy=True)
            failed: set[int] = set()
        except pa.errors.SchemaErrors as e:
            failed = {int(i) for i in e.failure_cases["index"].dropna()}
        assert failed == set(np.flatnonzero(~valid).tolist()), (sig, values, failed)
    assert SIGNALS[sig].min_value == 0.0  # the documented rule: 0 .. max_value, both included


@st.composite
def _long_files(draw: Any) -> str:
    n = draw(st.integers(min_value=0, max_value=8))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["timestamp", "endpoint_id", "metric_name", "value", "unit"])
    clean = draw(st.booleans())  # half the files hold only readable cells (their values are compared)
    for _ in range(n):
        i = draw(st.integers(min_value=0, max_value=5))  # few distinct times: samples span rows
        kind = draw(st.sampled_from(["s", "ms"] if clean else ["s", "ms", "s", "ms", "s", "ms", "junk"]))
        ts = {"s": str(T0 // 1000 + i), "ms": str(T0 + i * 1000)}.get(kind) or draw(_junk)
        metric = draw(st.sampled_from(["rtt", "udp_echo_rtt_ms", "lbm_success", "ecpri_ow_us", " rtt ", "rtt", "lbm_success", *([] if clean else ["jitter"])]))
        good = st.sampled_from(["true", "false", "ok", "fail"]) if metric == "lbm_success" else st.floats(0, 9.0).map(repr)
        value = draw(good if clean else st.one_of(good, good, good, _success_cell if metric == "lbm_success" else _value_cell))
        unit = draw(st.sampled_from(["", "", "", "us", "ms", "s", *([] if clean else ["furlong"])]))
        w.writerow([ts, draw(st.sampled_from(["a", "b"] if clean else ["a", "b", "a", "b", ""])), metric, value, unit])
    return buf.getvalue()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_long_files())
def test_property_long_files_strict_refuses_exactly_when_lenient_finds_a_bad_sample(tmp_path: Path, text: str) -> None:
    p = tmp_path / "l.csv"
    p.write_text(text, encoding="utf-8")
    opts = {"signal_map": {"rtt": "udp_echo_rtt_ms"}, "missing_values": (-3,)}
    frame, _ = _lenient(p, **opts)
    chk = validate_frame(frame)
    for i, sample in enumerate(iter_samples(frame)):
        vals, _, _, err = validate_sample(sample)
        assert (vals is not None) == bool(chk.valid[i]) and err == chk.error[i]
    valid = np.flatnonzero(chk.valid)
    by_key: dict[tuple[int, str], set[tuple]] = {}
    for i in valid.tolist():
        by_key.setdefault((int(chk.ts[i]), chk.eps[i]), set()).add(tuple(repr(float(v[i])) for v in chk.values))
    clash = any(len(v) > 1 for v in by_key.values())  # a metric repeated with another value
    event("strict refuses" if (~chk.valid).any() or clash else "strict accepts")
    if (~chk.valid).any() or clash:
        with pytest.raises(reader.RecordedDataError):
            _strict(p, **opts)
        return
    df = _strict(p, **opts)
    assert len(df) == len(by_key)
    got = df.set_index(["timestamp_ms", "endpoint_id"])
    for i in valid.tolist():
        row = got.loc[(int(chk.ts[i]), chk.eps[i])]
        for s, v in zip(SIGNAL_ORDER, chk.values):
            if s in got.columns:
                assert _same(float(row[s]), float(v[i])), (s, row[s], v[i])
            else:
                assert math.isnan(v[i])
