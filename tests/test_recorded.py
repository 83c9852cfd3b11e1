"""Recorded measurement files: formats, timestamps, units, labels and malformed input."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from ocad_detectors.recorded import ReadOptions, RecordedDataError, read_samples
from ocad_pipeline.definitions import ALL_ASSETS, build_resources
from ocad_pipeline.recorded import RecordedConfig, load_recorded

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"
T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "stamp",
    ["1767571200", "1767571200000", "2026-01-05T00:00:00Z", "2026-01-05T01:00:00+01:00", "2026-01-05T00:00:00", "2026-01-05 00:00:00"],
)
def test_every_timestamp_style_gives_epoch_ms(tmp_path, stamp):
    p = _write(tmp_path, "a.csv", f"timestamp,endpoint_id,udp_echo_rtt_ms\n{stamp},ep1,4.2\n")
    df, _ = read_samples(p)
    assert df["timestamp_ms"].tolist() == [T0]


def test_wide_file_with_units_converted(tmp_path):
    p = _write(
        tmp_path,
        "w.csv",
        "timestamp,endpoint_id,udp_echo_rtt_ms,ecpri_ow_us,lbm_success\n"
        "1767571205,ep1,4000,0.12,false\n1767571200,ep1,3900,0.11,true\n",
    )
    df, rep = read_samples(p, ReadOptions(units={"udp_echo_rtt_ms": "us", "ecpri_ow_us": "ms"}))
    assert df["timestamp_ms"].tolist() == [T0, T0 + 5000]  # sorted
    np.testing.assert_allclose(df["udp_echo_rtt_ms"], [3.9, 4.0])  # µs -> ms
    np.testing.assert_allclose(df["ecpri_ow_us"], [110.0, 120.0])  # ms -> µs
    assert df["lbm_success"].tolist() == [1.0, 0.0]
    assert rep["signals"] == ["udp_echo_rtt_ms", "ecpri_ow_us", "lbm_success"]


def test_long_file_with_unit_column_and_signal_map():
    df, _ = read_samples(FIXTURES / "recorded_rtt_long.csv", ReadOptions(signal_map={"rtt": "udp_echo_rtt_ms"}))
    assert set(df.columns) == {"timestamp_ms", "endpoint_id", "udp_echo_rtt_ms"}
    assert 1.5 < df["udp_echo_rtt_ms"].median() < 10  # 4135 µs -> 4.135 ms
    assert df["timestamp_ms"].is_monotonic_increasing


def test_duplicates_removed_gaps_kept_conflicts_rejected(tmp_path):
    p = _write(
        tmp_path,
        "d.csv",
        "timestamp,endpoint_id,lbm_rtt_ms\n1767571200,ep,2.0\n1767571200,ep,2.0\n1767571260,ep,2.1\n",
    )
    df, rep = read_samples(p)
    assert len(df) == 2 and rep["duplicates_removed"] == 1
    assert (df["timestamp_ms"].diff().dropna() == 60_000).all()  # the gap is not filled
    q = _write(tmp_path, "c.csv", "timestamp,endpoint_id,lbm_rtt_ms\n1767571200,ep,2.0\n1767571200,ep,9.0\n")
    with pytest.raises(RecordedDataError, match="two different samples"):
        read_samples(q)


def test_malformed_file_lists_every_problem_with_file_row_and_column(tmp_path):
    p = _write(
        tmp_path,
        "bad.csv",
        "timestamp,endpoint_id,udp_echo_rtt_ms,lbm_success,mystery\n"
        "yesterday,ep,4.0,true,1\n"  # row 2: timestamp
        "1767571200,ep,fast,maybe,1\n",  # row 3: value and boolean
    )
    with pytest.raises(RecordedDataError) as e:
        read_samples(p)
    msg = str(e.value)
    assert f"{p}, row 2, column 'timestamp': unreadable timestamp 'yesterday'" in msg
    assert "row 3, column 'udp_echo_rtt_ms': not a number: 'fast'" in msg
    assert "row 3, column 'lbm_success': not a boolean: 'maybe'" in msg
    assert "column 'mystery': unknown signal column" in msg
    assert len(e.value.problems) == 4


def test_out_of_range_values_are_named_by_pandera(tmp_path):
    p = _write(tmp_path, "r.csv", "timestamp,endpoint_id,ecpri_ow_us\n1767571200,ep,100\n1767571205,ep,-3\n1767571210,ep,100\n")
    with pytest.raises(RecordedDataError) as e:
        load_recorded(RecordedConfig(str(p)))
    assert f"{p}, row 3, column 'ecpri_ow_us'" in str(e.value)


def test_missing_file_and_missing_columns(tmp_path):
    with pytest.raises(RecordedDataError, match="file not found"):
        read_samples(tmp_path / "nope.csv")
    p = _write(tmp_path, "m.csv", "when,udp_echo_rtt_ms\n1,2\n")
    with pytest.raises(RecordedDataError, match=r"missing column\(s\)"):
        read_samples(p)


def test_labels_file_as_windows_and_capabilities_inferred():
    data, rep = load_recorded(RecordedConfig(str(FIXTURES / "recorded_wide.csv"), labels_path=str(FIXTURES / "recorded_labels.csv")))
    assert rep["labelled"]
    labels = pd.read_csv(FIXTURES / "recorded_labels.csv")
    assert set(data.incidents["type"]) == set(labels["anomaly_type"])
    s = data.samples
    first = labels.iloc[0]
    start = pd.Timestamp(first["start"]).value // 10**6
    assert s[(s["endpoint_id"] == first["endpoint_id"]) & (s["timestamp_ms"] == start)]["is_anomaly"].item()
    caps = dict(zip(data.endpoints["endpoint_id"], data.endpoints["capabilities"]))
    assert caps == {"o-du-001": "ecpri+lbm+udp_echo", "o-ru-001": "ecpri+lbm+udp_echo", "transport-001": "lbm+udp_echo"}


def test_per_sample_labels_and_unlabelled_data(tmp_path):
    p = _write(tmp_path, "s.csv", "timestamp,endpoint_id,lbm_rtt_ms\n1767571200,ep,2.0\n1767571205,ep,9.0\n1767571210,ep,2.1\n")
    lab = _write(tmp_path, "l.csv", "endpoint_id,timestamp,is_anomaly,anomaly_type\nep,1767571205,true,spike\n")
    data, rep = load_recorded(RecordedConfig(str(p), labels_path=str(lab)))
    assert data.samples["is_anomaly"].tolist() == [False, True, False]
    assert data.samples["anomaly_type"].tolist()[1] == "spike"
    unl, rep2 = load_recorded(RecordedConfig(str(p)))
    assert not rep2["labelled"] and not unl.samples["is_anomaly"].any()
    assert unl.endpoints["capabilities"].tolist() == ["lbm"]  # single-signal file


def test_pipeline_runs_on_recorded_files_and_bad_files_write_nothing(tmp_path):
    run = {
        "ops": {
            "raw_metrics": {
                "config": {
                    "source": "files",
                    "files": {"path": str(FIXTURES / "recorded_wide.csv"), "labels_path": str(FIXTURES / "recorded_labels.csv")},
                }
            }
        }
    }
    res = dg.materialize(
        ALL_ASSETS, selection=dg.AssetSelection.groups("data", "datasets"), resources=build_resources(str(tmp_path / "ok")),
        run_config=run, instance=dg.DagsterInstance.ephemeral(),
    )
    assert res.success
    ts = pd.read_parquet(tmp_path / "ok" / "processed" / "timeseries_train.parquet")
    assert set(ts["metric_type"]) == {"udp_echo", "ecpri", "lbm"} and len(ts) > 1000
    src = pd.read_parquet(tmp_path / "ok" / "raw" / "source.parquet")
    assert src["source"].item() == "files" and src["labelled"].item()

    bad = _write(tmp_path, "bad.csv", "timestamp,endpoint_id,udp_echo_rtt_ms\nnot-a-time,ep,4\n")
    run["ops"]["raw_metrics"]["config"]["files"] = {"path": str(bad)}
    res = dg.materialize(
        ALL_ASSETS, selection=dg.AssetSelection.groups("data", "datasets"), resources=build_resources(str(tmp_path / "bad")),
        run_config=run, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
    )
    assert not res.success
    assert not (tmp_path / "bad").exists()


def test_missing_value_sentinels_become_missing_replies(tmp_path):
    """RIPE Atlas writes -3 (timeout) and -4 (error) where a reply is missing: declared as
    missing_values they are gaps in the series, not bad rows; other negatives still fail."""
    text = "timestamp,endpoint_id,rtt\n1767571200,p1,71.5\n1767571440,p1,-3\n1767571680,p1,-4\n1767571920,p1,70.9\n"
    p = _write(tmp_path, "atlas.csv", text)
    with pytest.raises(RecordedDataError, match="row 3"):
        load_recorded(RecordedConfig(str(p), signal_map={"rtt": "udp_echo_rtt_ms"}))
    data, _ = load_recorded(RecordedConfig(str(p), signal_map={"rtt": "udp_echo_rtt_ms"}, missing_values=(-3, -4)))
    v = data.samples["udp_echo_rtt_ms"].to_numpy()
    assert len(v) == 4 and np.isnan(v[1:3]).all() and v[0] == 71.5 and v[3] == 70.9
    # long form, and compared before unit conversion (a -3 given in µs is still the code)
    long = _write(tmp_path, "l.csv", "timestamp,endpoint_id,metric_name,value,unit\n1767571200,p1,rtt,4100,us\n1767571205,p1,rtt,-3,us\n")
    df, _ = read_samples(long, ReadOptions(signal_map={"rtt": "udp_echo_rtt_ms"}, missing_values=(-3,)))
    assert df["udp_echo_rtt_ms"].iloc[0] == pytest.approx(4.1) and np.isnan(df["udp_echo_rtt_ms"].iloc[1])
    other = _write(tmp_path, "o.csv", "timestamp,endpoint_id,rtt\n1767571200,p1,-5\n")
    with pytest.raises(RecordedDataError, match="udp_echo_rtt_ms"):
        load_recorded(RecordedConfig(str(other), signal_map={"rtt": "udp_echo_rtt_ms"}, missing_values=(-3, -4)))
    with pytest.raises(ValueError, match="missing_values must be numbers"):
        ReadOptions(missing_values=("timeout",))


def test_operator_anomaly_types_are_kept_and_outage_start_gives_lead_time(tmp_path):
    """Window labels may use the operator's own types and an optional outage_start, which the
    incident table carries so that lead time is measured on recordings."""
    rows = ["timestamp,endpoint_id,lbm_rtt_ms"] + [f"{1767571200 + 5 * i},ep,{2.0 + (0.5 if 40 <= i < 80 else 0.0)}" for i in range(120)]
    p = _write(tmp_path, "s.csv", "\n".join(rows) + "\n")
    lab = _write(
        tmp_path, "w.csv",
        "endpoint_id,start,end,anomaly_type,outage_start\n"
        "ep,2026-01-05T00:03:20Z,2026-01-05T00:06:40Z,fiber_degradation,2026-01-05T00:05:50Z\n"
        "ep,2026-01-05T00:08:20Z,2026-01-05T00:09:00Z,  ,\n",
    )
    data, _ = load_recorded(RecordedConfig(str(p), labels_path=str(lab)))
    inc = data.incidents
    assert inc["type"].tolist() == ["fiber_degradation", "unknown"]
    assert inc["outage_start"].iloc[0] == T0 + 350_000 and pd.isna(inc["outage_start"].iloc[1])
    from ocad_pipeline.schemas import INCIDENTS, RAW_SAMPLES, validate

    validate(inc, INCIDENTS, "incidents")
    validate(data.samples, RAW_SAMPLES, "samples")
    # lead time: an alert 100 s before the outage start
    from ocad_pipeline.evaluation import eventwise

    s = data.samples
    flagged = (s["timestamp_ms"] >= T0 + 250_000).to_numpy() & s["is_anomaly"].to_numpy()
    ev = eventwise(s, flagged, inc)
    assert ev.metrics["outage_incidents"] == 1 and ev.metrics["lead_time_p50_minutes"] == pytest.approx(100 / 60)

    bad = _write(tmp_path, "b.csv", "endpoint_id,start,end,anomaly_type,outage_start\nep,2026-01-05T00:03:20Z,2026-01-05T00:06:40Z,x,2026-01-05T01:00:00Z\n")
    with pytest.raises(RecordedDataError, match=r"row 2, column 'outage_start'.*\[start, end\)"):
        load_recorded(RecordedConfig(str(p), labels_path=str(bad)))


def test_a_label_window_that_ends_before_it_starts_is_named_not_ignored(tmp_path):
    labels = pd.read_csv(FIXTURES / "recorded_labels.csv")
    labels.loc[1, ["start", "end"]] = labels.loc[1, ["end", "start"]].to_numpy()  # swapped by hand
    labels.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(RecordedDataError, match=r"labels.csv, row 3, column 'end': label window ends"):
        load_recorded(RecordedConfig(str(FIXTURES / "recorded_wide.csv"), labels_path=str(tmp_path / "labels.csv")))


def test_every_bad_cell_and_clash_is_listed_in_one_pass(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text(
        "timestamp,endpoint_id,udp_echo_rtt_ms,lbm_success\n"
        "2026-01-05T00:00:00Z,a,4.0,true\n"
        "notatime,a,4.0,true\n"
        "2026-01-05T00:00:10Z,a,fast,true\n"
        "2026-01-05T00:00:20Z,a,4.0,maybe\n"
        "2026-01-05T00:00:25Z,a,-4.0,true\n"
        "2026-01-05T00:00:30Z,a,4.0,true\n"
        "2026-01-05T00:00:30Z,a,5.0,true\n"
    )
    with pytest.raises(RecordedDataError) as e:
        load_recorded(RecordedConfig(str(p)))
    got = {(pr.row, pr.column) for pr in e.value.problems}
    assert got == {(3, "timestamp"), (4, "udp_echo_rtt_ms"), (5, "lbm_success"), (6, "udp_echo_rtt_ms"), (7, "timestamp"), (8, "timestamp")}
    # a declared "no reply" code is not out of range
    p.write_text("timestamp,endpoint_id,udp_echo_rtt_ms\n2026-01-05T00:00:00Z,a,4.0\n2026-01-05T00:00:05Z,a,-3\n")
    data, _ = load_recorded(RecordedConfig(str(p), missing_values=(-3.0,)))
    assert data.samples["udp_echo_rtt_ms"].isna().sum() == 1
