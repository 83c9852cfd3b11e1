"""Samples and files (issue 14): bounded timestamps, exactly one result for any input, batch
and streaming agree on unknown fields, ocad-detect names bad columns / units and exits with
documented codes, datetime columns, the endpoint cap, score_frame does not stall process().
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocad_detectors import recorded
from ocad_detectors.cli import main as detect_main
from ocad_detectors.config import DetectionConfig, LimitsConfig
from ocad_detectors.modelset import ModelSet
from ocad_detectors.pipeline import STATUSES, DetectionPipeline
from ocad_detectors.samples import Sample, read_samples

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NOW_S = T0 / 1000 + 86_400.0  # a fixed wall clock one day after T0


def _pipe(**limits: int) -> DetectionPipeline:
    cfg = DetectionConfig(limits=LimitsConfig(**limits)) if limits else DetectionConfig()
    return DetectionPipeline(cfg, models=ModelSet(), clock=lambda: NOW_S)


def _s(ts: Any, ep: Any = "a", **kw: Any) -> dict[str, Any]:
    return {"timestamp_ms": ts, "endpoint_id": ep, "udp_echo_rtt_ms": 1.0, **kw}


# ----------------------------------------------------------------------------- timestamps


def test_clock_glitch_is_future_and_does_not_block_the_endpoint() -> None:
    p = _pipe()
    assert p.process(_s(T0)).status == "ok"
    r = p.process(_s(2_767_571_200_000))  # 2057: a clock glitch
    assert r.status == "future" and "ahead of the wall clock" in (r.error or "")
    assert p.process(_s(T0 + 1000)).status == "ok"  # not out_of_order forever
    # within the tolerance is fine
    assert p.process(_s(int(NOW_S * 1000) + 60_000)).status == "ok"


@pytest.mark.parametrize("ts", [2**63, 10**30, 2**64 + 5, 10**20, 1e20, 9.3e18, float(2**63)])
def test_huge_timestamps_are_invalid_in_both_paths(ts: Any) -> None:
    p = _pipe()
    r = p.process(_s(ts))
    assert r.status == "invalid" and "timestamp_ms" in (r.error or "")
    frame = pd.DataFrame({"timestamp_ms": pd.array([ts, T0], dtype=object), "endpoint_id": ["a", "a"], "udp_echo_rtt_ms": [1.0, 1.0]})
    b = p.score_frame(frame)
    assert list(b.status) == ["invalid", "ok"]
    if isinstance(ts, float):  # a float column too
        b = p.score_frame(pd.DataFrame({"timestamp_ms": [ts, float(T0)], "endpoint_id": ["a", "a"], "udp_echo_rtt_ms": [1.0, 1.0]}))
        assert list(b.status) == ["invalid", "ok"]


def test_uint64_column_does_not_wrap() -> None:
    frame = pd.DataFrame({"timestamp_ms": np.array([2**64 - 1, T0], dtype=np.uint64), "endpoint_id": ["a", "a"], "udp_echo_rtt_ms": [1.0, 1.0]})
    assert list(_pipe().score_frame(frame).status) == ["invalid", "ok"]


def test_future_in_batch_matches_streaming() -> None:
    rows = [_s(T0), _s(2_767_571_200_000), _s(T0 + 1000), _s(T0 + 500, "b")]
    p = _pipe()
    stream = [p.process(r).status for r in rows]
    batch = list(_pipe().score_frame(pd.DataFrame(rows)).status)
    assert stream == batch == ["ok", "future", "ok", "ok"]


# ----------------------------------------------------------------------------- one result


class _RaisingMapping(Mapping):
    def __getitem__(self, k: Any) -> Any:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[Any]:
        return iter(["timestamp_ms"])

    def __len__(self) -> int:
        return 1


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class _RaisingIter(dict):
    def __iter__(self) -> Iterator[Any]:
        raise OSError("iter")


HOSTILE: list[Any] = [
    _s(T0, udp_echo_rtt_ms=10**400),
    _s(T0, lbm_success=10**400),
    _s(T0, ep=10**5000),
    _s(10**5000),
    _RaisingMapping(),
    _RaisingIter(a=1),
    _s(T0, ep=_BadRepr()),
    {_BadRepr(): 1},
    Sample(T0, "a", udp_echo_rtt_ms=10**400),
    Sample(_BadRepr(), 10**5000),
    None,
    42,
    "timestamp_ms=1",
    [T0, "a"],
]


@pytest.mark.parametrize("sample", HOSTILE, ids=[f"h{i}" for i in range(len(HOSTILE))])
def test_hostile_input_gets_one_invalid_result(sample: Any) -> None:
    r = _pipe().process(sample)
    assert r.status == "invalid", r
    assert r.error and len(r.error) < 2000


_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.binary(max_size=8),
    st.lists(st.integers(), max_size=3), st.sampled_from([T0, "o-ru-1", 1.5, np.int64(5), np.float32(2.5), pd.NA, pd.NaT]),
    st.sampled_from([_BadRepr(), 10**5000, -(10**400), np.uint64(2**64 - 1), float("nan"), object(), {"nested": 1}, b"\xff"]),
)
_keys = st.one_of(
    st.sampled_from(["timestamp_ms", "endpoint_id", "udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms", "lbm_success", "input_error", "foo", "udp_echo_rtt"]),
    st.text(max_size=10), st.integers(), st.none(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=8))
def test_property_any_mapping_gets_exactly_one_result(sample: dict) -> None:
    p = _pipe()
    r = p.process(sample)
    assert r.status in STATUSES and r.status != "error", r
    assert isinstance(r.scores, dict) and len(r.scores) == 4


def test_unknown_fields_agree_between_streaming_and_batch() -> None:
    rows = [_s(T0, foo=1), _s(T0 + 1, udp_echo_rtt=2.0)]
    p = _pipe()
    stream = [p.process(r) for r in rows]
    frame = pd.DataFrame([_s(T0, foo=1, udp_echo_rtt=None), _s(T0 + 1, foo=None, udp_echo_rtt=2.0)])
    batch = _pipe().score_frame(frame)
    assert [r.status for r in stream] == ["invalid", "invalid"]
    assert list(batch.status) == ["invalid", "invalid"]
    assert all("unknown field(s) 'foo', 'udp_echo_rtt'" in e for e in batch.error)
    assert "unknown field(s) 'foo'" in (stream[0].error or "")


# ----------------------------------------------------------------------------- endpoint cap


def test_endpoint_cap_refuses_then_evicts_idle() -> None:
    p = _pipe(max_endpoints=3, endpoint_idle_ms=60_000)
    for i, ep in enumerate("abc"):
        assert p.process(_s(T0 + i, ep)).status == "ok"
    r = p.process(_s(T0 + 10, "d"))
    assert r.status == "refused" and "limits.max_endpoints" in (r.error or "")
    assert p.process(_s(T0 + 20, "a")).status == "ok"  # known endpoints go on
    # two minutes later (sample time) b and c are idle: evicted to make room
    assert p.process(_s(T0 + 120_000, "a")).status == "ok"
    assert p.process(_s(T0 + 120_001, "d")).status == "ok"
    assert sorted(p.endpoints) == ["a", "d"]


# ----------------------------------------------------------------------------- locking


def test_score_frame_does_not_stall_process() -> None:
    p = _pipe()
    inside, release = threading.Event(), threading.Event()

    def progress(_: int) -> None:
        inside.set()
        release.wait(10)

    frame = pd.DataFrame([_s(T0 + i, f"e{i % 5}") for i in range(200)])
    t = threading.Thread(target=p.score_frame, args=(frame,), kwargs={"progress": progress})
    t.start()
    assert inside.wait(10)
    t0 = time.perf_counter()
    r = p.process(_s(T0, "live"))  # while the batch is in the middle of its run
    assert r.status == "ok" and time.perf_counter() - t0 < 1.0
    release.set()
    t.join(10)


# ----------------------------------------------------------------------------- readers


@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Berlin"])
def test_parquet_datetime_column_is_read_as_ms(tmp_path: Path, tz: str | None) -> None:
    ts = pd.to_datetime([T0, T0 + 1000], unit="ms", utc=True)
    ts = ts.tz_convert(tz) if tz else ts.tz_localize(None)
    path = tmp_path / "d.parquet"
    pd.DataFrame({"timestamp": ts, "endpoint_id": ["a", "b"], "udp_echo_rtt_ms": [1.0, 2.0]}).to_parquet(path)
    assert read_samples(path)["timestamp_ms"].tolist() == [T0, T0 + 1000]
    frame, _ = recorded.read_samples(path)
    assert frame["timestamp_ms"].tolist() == [T0, T0 + 1000]


def test_recorded_reader_rejects_huge_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("timestamp,endpoint_id,udp_echo_rtt_ms\n9300000000000000000,a,1.0\n1767225600000,a,1.0\n")
    with pytest.raises(recorded.RecordedDataError, match="unreadable timestamp"):
        recorded.read_samples(path)


# ----------------------------------------------------------------------------- ocad-detect


def _run(argv: list[Any]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = detect_main([str(a) for a in argv], stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def _csv(tmp_path: Path, text: str, name: str = "s.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = "timestamp_ms,endpoint_id,udp_echo_rtt_ms\n1767225600000,a,1.0\n1767225601000,a,1.1\n"


def test_cli_ok_exit_0(tmp_path: Path) -> None:
    rc, _, err = _run([_csv(tmp_path, GOOD), "--model-dir", tmp_path / "none"])
    assert rc == 0 and "error" not in err.lower().replace("  error", "")


@pytest.mark.parametrize(
    "header, needle",
    [
        ("timestamp_ms,endpoint_id,udp_echo_rtt_ms,udp_echo_rtt", "'udp_echo_rtt'"),
        ("timestamp_ms,endpoint_id,udp_echo_rtt_ms, ecpri_ow_us", "' ecpri_ow_us' (did you mean 'ecpri_ow_us'?)"),
        ("timestamp_ms,endpoint_id,udp_echo_rtt_ms,foo", "'foo'"),
    ],
)
def test_cli_unknown_columns_warn_and_strict_fails(tmp_path: Path, header: str, needle: str) -> None:
    path = _csv(tmp_path, header + "\n1767225600000,a,1.0,2.0\n")
    rc, _, err = _run([path, "--model-dir", tmp_path / "none"])
    assert rc == 0 and "warning: " in err and needle in err
    rc, _, err = _run([path, "--model-dir", tmp_path / "none", "--strict"])
    assert rc == 2 and err.startswith("error: ") and needle in err


@pytest.mark.parametrize(
    "text, argv, needle",
    [
        ("timestamp_ms,endpoint_id,udp_echo_rtt_ms,udp_echo_rtt_ms\n1767225600000,a,1,2\n", [], "duplicate column"),
        (GOOD, ["--unit", "ecpri_ow_us=furlong"], "unknown unit 'furlong'"),
        (GOOD, ["--unit", "lbm_success=ms"], "not a delay signal"),
        ("a," * 100_000 + "b\n", [], "more than 1000 columns"),
    ],
)
def test_cli_usage_errors(tmp_path: Path, text: str, argv: list[str], needle: str) -> None:
    t0 = time.perf_counter()
    rc, _, err = _run([_csv(tmp_path, text), "--model-dir", tmp_path / "none", *argv])
    assert rc == 2 and err.startswith("error: ") and needle in err and "Traceback" not in err
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("ts", ["12345678901234567890", "1e20", "99999999999999999999999"])
def test_cli_absurd_timestamps_are_invalid_rows(tmp_path: Path, ts: str) -> None:
    rc, _, err = _run([_csv(tmp_path, f"timestamp_ms,endpoint_id,udp_echo_rtt_ms\n{ts},a,1.0\n1767225600000,a,1.0\n"), "--model-dir", tmp_path / "none"])
    assert rc == 0 and "Traceback" not in err
    assert "invalid: timestamp_ms" in err  # among the top reasons


def test_cli_nothing_scored_exit_3_with_reasons(tmp_path: Path) -> None:
    path = _csv(tmp_path, "timestamp_ms,endpoint_id,udp_echo_rtt_ms\n1767225600000,a,-1\n1767225601000,a,-2\n1767225602000,,1\n")
    rc, _, err = _run([path, "--model-dir", tmp_path / "none"])
    assert rc == 3
    assert "error: nothing scored" in err and "negative value" in err
    assert "why samples were not scored" in err
    rc, _, err = _run([path, "--model-dir", tmp_path / "none", "-q"])
    assert rc == 3 and "error: nothing scored" in err  # said even when quiet


def test_cli_strict_some_invalid_exit_5(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD + "1767225602000,a,abc\n")
    assert _run([path, "--model-dir", tmp_path / "none"])[0] == 0
    rc, _, err = _run([path, "--model-dir", tmp_path / "none", "--strict"])
    assert rc == 5 and "1 of 3 samples not scored" in err


def test_cli_model_refused_exit_4(tmp_path: Path) -> None:
    from ocad_detectors.registry import ModelRegistry, save_arrays

    root = tmp_path / "models"
    ModelRegistry(root).write_version("tcn_ecpri", {"weights.safetensors": save_arrays({"x": np.zeros(2)})}, {"kind": "tcn"})
    rc, _, err = _run([_csv(tmp_path, GOOD), "--model-dir", root])
    assert rc == 4 and "error: model refused: tcn_ecpri" in err and str(root / "tcn_ecpri") in err


def test_cli_escapes_terminal_sequences_in_endpoint_ids(tmp_path: Path) -> None:
    evil = "ep\x1b[2J\x1b]0;pwned\x07"
    lines = ["timestamp_ms,endpoint_id,udp_echo_rtt_ms"] + [f"{T0 + i * 1000},{evil},{500.0 if i > 20 else 1.0}" for i in range(60)]
    rc, _, err = _run([_csv(tmp_path, "\n".join(lines) + "\n"), "--model-dir", tmp_path / "none"])
    assert rc == 0 and "\x1b" not in err and "\x07" not in err
    assert "ep\\x1b[2J" in err  # shown escaped in the alerts-per-endpoint table


def test_recorded_reader_refuses_100k_columns_fast(tmp_path: Path) -> None:
    path = _csv(tmp_path, ",".join(f"c{i}" for i in range(100_000)) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(recorded.RecordedDataError, match="more than 1000 columns"):
        recorded.read_samples(path)
    assert time.perf_counter() - t0 < 5


def test_future_bound_can_be_turned_off() -> None:
    cfg = DetectionConfig.from_dict({"limits": {"future_tolerance_ms": None}})
    p = DetectionPipeline(cfg, models=ModelSet(), clock=lambda: 0.0)  # a host clock stuck in 1970
    assert p.process(_s(T0)).status == "ok"
    assert _pipe().process(_s(T0)).status == "ok"
    assert DetectionPipeline(models=ModelSet(), clock=lambda: 0.0).process(_s(T0)).status == "future"
