"""What makes the default run fast and honest: epochs of a fixed number of windows, each file read
once per process, the rolling window over recorded files, and the gate's WARN on a bootstrap."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from ocad_detectors.recorded import RecordedDataError
from ocad_pipeline import datasets as ds
from ocad_pipeline import io_managers
from ocad_pipeline.defs.assets.evaluation import gate_check_result
from ocad_pipeline.outputs import gate_summary
from ocad_pipeline.recorded import RecordedConfig, load_recorded
from ocad_pipeline.training import dataframes_sha256
from ocad_pipeline.training.tcn import TCNParams, prepare_metric_windows, train_tcn

FAST = dict(hidden_channels=4, dilations=(1, 2), max_epochs=4, patience=2, batch_size=64, seed=3)


@pytest.fixture(scope="module")
def windows(small_sim):
    ts = ds.timeseries_splits(small_sim.samples, small_sim.incidents, small_sim.endpoints, ds.SplitConfig())
    return prepare_metric_windows(ts, "udp_echo", 10)


def test_epochs_of_a_fixed_window_count_are_deterministic_and_cheaper(windows):
    n = len(windows.X["train"])
    per_epoch = n // 4
    params = TCNParams(**FAST, windows_per_epoch=per_epoch, max_val_windows=200)
    a, b = train_tcn(windows, params), train_tcn(windows, params)
    assert a.weights_bytes() == b.weights_bytes()  # same config, same model
    assert a.n_train_windows == n and a.n_val_windows == 200
    full = train_tcn(windows, TCNParams(**FAST))
    assert full.weights_bytes() != a.weights_bytes()
    # an epoch sees per_epoch windows (a quarter of the optimizer steps of a full epoch)
    bs = FAST["batch_size"]
    assert a.extra == {"windows_per_epoch": per_epoch, "optimizer_steps": a.epochs_run * -(-per_epoch // bs)}
    assert full.extra["optimizer_steps"] == full.epochs_run * -(-n // bs)
    # windows_per_epoch >= n is the old behaviour (every window every epoch), bit for bit
    same = train_tcn(windows, TCNParams(**FAST, windows_per_epoch=n + 1))
    assert same.weights_bytes() == full.weights_bytes()
    with pytest.raises(ValueError, match="windows_per_epoch"):
        TCNParams(windows_per_epoch=0)


def test_each_file_is_read_once_per_process_and_rewrites_are_seen(tmp_path):
    io_managers.clear_table_cache()
    path = tmp_path / "t.parquet"
    io_managers.write_table(pd.DataFrame({"a": [1, 2, 3]}), path)
    first = io_managers.read_table_cached(path)
    second = io_managers.read_table_cached(path)
    assert first is not second and first.equals(second)
    second["b"] = 0  # a new column on one load does not leak into the next
    assert "b" not in io_managers.read_table_cached(path).columns
    calls = []

    def counting(frames):
        calls.append(1)
        return dataframes_sha256(frames)

    frames = {"x": io_managers.read_table_cached(path)}
    h1 = io_managers.tables_sha256(frames, counting)
    h2 = io_managers.tables_sha256({"x": io_managers.read_table_cached(path)}, counting)
    assert h1 == h2 == dataframes_sha256(frames) and len(calls) == 1  # hashed once
    io_managers.write_table(pd.DataFrame({"a": [9]}), path)  # replaced: a new inode, read again
    fresh = io_managers.read_table_cached(path)
    assert fresh["a"].tolist() == [9]
    assert io_managers.tables_sha256({"x": fresh}, counting) != h1 and len(calls) == 2
    # frames not from the cache are simply hashed
    assert io_managers.tables_sha256({"x": pd.DataFrame({"a": [1]})}, counting) and len(calls) == 3


def _day_file(path, day: str, n: int = 40) -> None:
    ts = pd.date_range(f"{day}T00:00:00Z", periods=n, freq="5s")
    rows = []
    for ep in ("o-ru-001", "o-du-001"):
        rows.append(pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S+00:00"), "endpoint_id": ep,
                                  "udp_echo_rtt_ms": 3.0 + np.arange(n) % 5 * 0.01, "lbm_rtt_ms": 10.0, "lbm_success": "true"}))
    pd.concat(rows).to_csv(path, index=False)


def test_rolling_window_keeps_the_last_days_of_a_growing_directory(tmp_path):
    _day_file(tmp_path / "a.csv", "2026-03-01")
    _day_file(tmp_path / "b.csv", "2026-03-03")
    sim, report = load_recorded(RecordedConfig(str(tmp_path), last_days=1.0))
    days = pd.to_datetime(sim.samples["timestamp_ms"], unit="ms", utc=True).dt.strftime("%Y-%m-%d").unique().tolist()
    assert days == ["2026-03-03"] and "window" in report and "80 of 160 samples" in report["window"]
    _day_file(tmp_path / "c.csv", "2026-03-05")  # a new file appears: the window moves with it
    sim, _ = load_recorded(RecordedConfig(str(tmp_path), last_days=1.0))
    assert pd.to_datetime(sim.samples["timestamp_ms"], unit="ms", utc=True).dt.day.unique().tolist() == [5]
    # an explicit end (a weekly partition's end) picks an older window
    sim, _ = load_recorded(RecordedConfig(str(tmp_path), last_days=3.0, until="2026-03-04T00:00:00Z"))
    assert sorted(pd.to_datetime(sim.samples["timestamp_ms"], unit="ms", utc=True).dt.day.unique().tolist()) == [1, 3]
    sim, report = load_recorded(RecordedConfig(str(tmp_path)))
    assert len(sim.samples) == 240 and "window" not in report  # no window: everything
    with pytest.raises(RecordedDataError, match="no sample in the window"):
        load_recorded(RecordedConfig(str(tmp_path), last_days=1.0, until="2025-01-01T00:00:00Z"))
    with pytest.raises(ValueError, match="last_days"):
        load_recorded(RecordedConfig(str(tmp_path), last_days=-1.0))


def _decision(passed: bool, bootstrap: bool, reasons: list[str]) -> dict:
    return {"passed": passed, "bootstrap": bootstrap, "reasons": reasons, "meets_targets_and_not_worse": passed and not bootstrap}


def test_a_bootstrap_promotion_is_a_warning_with_the_missed_targets(tmp_path):
    ok = gate_check_result(_decision(True, False, []), "table")
    assert ok.passed and ok.severity == dg.AssetCheckSeverity.ERROR
    failed = gate_check_result(_decision(False, False, ["f1 worse than production"]), "table")
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR  # blocks model_promotion
    boot = gate_check_result(_decision(True, True, ["recall 0.5 misses the target > 0.85"]), "table")
    assert not boot.passed and boot.severity == dg.AssetCheckSeverity.WARN  # shown as a warning, does not block
    assert boot.metadata["missed_targets"].value == ["recall 0.5 misses the target > 0.85"]
    # same inputs: the candidates are production; missing targets is a warning about production
    same = gate_check_result(_decision(False, False, ["mttd_seconds 57 misses the target < 20"]), "table", unchanged=True)
    assert not same.passed and same.severity == dg.AssetCheckSeverity.WARN
    assert same.metadata["outcome"].value.startswith("no new candidate")
    # and in the command's output
    (tmp_path / "reports").mkdir()
    report = tmp_path / "reports" / "performance_report.json"
    report.write_text(json.dumps({"gate": _decision(True, True, ["recall 0.5 misses the target > 0.85"])}))
    lines = gate_summary(tmp_path)
    assert lines[0].startswith("Quality gate: WARNING") and "recall 0.5" in lines[1]
    report.write_text(json.dumps({"gate": _decision(True, False, [])}))
    assert gate_summary(tmp_path) == ["Quality gate: PASSED"]
    assert gate_summary(tmp_path / "nowhere") == []
    v = {"tcn_lbm": "1.0.0"}
    report.write_text(json.dumps({"gate": _decision(False, False, ["x"]), "model_info": {"versions": v}, "production": {"versions": v}}))
    assert gate_summary(tmp_path)[0].startswith("Quality gate: WARNING - no new candidate")
    report.write_text(json.dumps({"gate": _decision(False, False, ["x"]), "model_info": {"versions": v}, "production": {"versions": {}}}))
    assert gate_summary(tmp_path)[0].startswith("Quality gate: FAILED")
