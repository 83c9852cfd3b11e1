"""Deliberately corrupted tables fail with errors that name the column, the check and the rows."""

import numpy as np
import pandas as pd
import pytest

from ocad_pipeline import datasets as ds
from ocad_pipeline.schemas import (
    INCIDENTS,
    RAW_SAMPLES,
    DataValidationError,
    split_disjointness_schema,
    timeseries_schema,
    validate,
)


@pytest.fixture(scope="module")
def samples(small_sim):
    return small_sim.samples.iloc[:2000].copy()


def test_clean_tables_pass(small_sim):
    validate(small_sim.samples, RAW_SAMPLES, "samples")
    validate(small_sim.incidents, INCIDENTS, "incidents")


def test_ms_value_in_the_us_column_is_caught_with_rows(samples):
    bad = samples.copy()
    bad.loc[[3, 17], "ecpri_ow_us"] = -0.1  # negative delay
    bad.loc[40, "udp_echo_rtt_ms"] = 50_000.0  # 50 s "RTT": a timeout recorded as a value
    with pytest.raises(DataValidationError) as e:
        validate(bad, RAW_SAMPLES, "samples")
    msg = str(e.value)
    assert "table 'samples'" in msg
    assert "column 'ecpri_ow_us'" in msg and "[3, 17]" in msg
    assert "column 'udp_echo_rtt_ms'" in msg and "[40]" in msg  # lazy: every problem at once


def test_missing_column_and_wrong_dtype_are_named(samples):
    bad = samples.drop(columns=["lbm_rtt_ms"]).copy()
    bad["timestamp_ms"] = bad["timestamp_ms"].astype(str)
    with pytest.raises(DataValidationError) as e:
        validate(bad, RAW_SAMPLES, "samples")
    msg = str(e.value)
    assert "lbm_rtt_ms" in msg and "column_in_dataframe" in msg
    assert "timestamp_ms" in msg and "dtype" in msg


def test_inconsistent_labels_and_empty_type(samples):
    bad = samples.copy()
    bad["anomaly_type"] = bad["anomaly_type"].astype(object)
    bad.loc[5, "anomaly_type"] = ""
    bad.loc[5, "is_anomaly"] = True
    bad.loc[6, "is_anomaly"] = True  # flagged but no type
    bad["anomaly_type"] = bad["anomaly_type"].astype("string")
    with pytest.raises(DataValidationError) as e:
        validate(bad, RAW_SAMPLES, "samples")
    msg = str(e.value)
    assert "non-empty" in msg and "[5]" in msg and "anomaly_type_set_iff_is_anomaly" in msg and "[6]" in msg


def test_operator_anomaly_types_are_accepted(samples, small_sim):
    """Operators label with their own taxonomy: any non-empty type is valid."""
    ok = samples.copy()
    ok["anomaly_type"] = ok["anomaly_type"].astype(object)
    ok.loc[5, ["anomaly_type", "is_anomaly"]] = ["fiber_cut", True]
    ok["anomaly_type"] = ok["anomaly_type"].astype("string")
    validate(ok, RAW_SAMPLES, "samples")
    inc = small_sim.incidents.copy()
    inc.loc[0, "type"] = "ptp_holdover"
    inc.loc[0, "outage_start"] = inc.loc[0, "start"]  # an operator's outage need not follow a drift
    validate(inc, INCIDENTS, "incidents")


def test_duplicate_sample_rows_are_rejected(samples):
    bad = pd.concat([samples, samples.iloc[[10]]], ignore_index=True)
    with pytest.raises(DataValidationError, match="endpoint_id"):
        validate(bad, RAW_SAMPLES, "samples")


def test_incident_that_never_ends_is_rejected(small_sim):
    bad = small_sim.incidents.copy()
    bad.loc[2, "end"] = bad.loc[2, "start"]
    with pytest.raises(DataValidationError, match=r"incident_ends_after_it_starts.*\[2\]"):
        validate(bad, INCIDENTS, "incidents")


def test_sequence_of_wrong_length_and_target_out_of_unit_range(small_sim):
    cfg = ds.SplitConfig()
    val = ds.timeseries_splits(small_sim.samples, small_sim.incidents, small_sim.endpoints, cfg)["val"]
    ts = pd.concat([val[val["metric_type"] == "udp_echo"].iloc[:100], val[val["metric_type"] == "ecpri"].iloc[:100]])
    ts = ts.reset_index(drop=True)
    ts.at[7, "sequence"] = np.asarray(ts.at[7, "sequence"])[:-1]
    i = ts.index[ts["metric_type"] == "ecpri"][0]
    ts.at[i, "target"] = 1e9  # 1000 s one-way delay: µs/ms mix-up
    with pytest.raises(DataValidationError) as e:
        validate(ts, timeseries_schema(cfg.sequence_length), "timeseries_val")
    msg = str(e.value)
    assert "sequence_is_10_positive_floats_or_nan" in msg and "[7]" in msg
    assert "target_in_unit_range" in msg and f"[{i}]" in msg


def test_overlapping_splits_are_detected():
    df = pd.DataFrame(
        {
            "endpoint_id": ["a"] * 6,
            "timestamp_ms": [0, 5000, 10000, 12000, 60000, 65000],
            "split": ["train", "train", "train", "val", "val", "val"],
        }
    )
    with pytest.raises(DataValidationError) as e:
        validate(df, split_disjointness_schema(gap_ms=20_000), "splits")
    assert "splits_disjoint_in_time_with_gap_20000ms" in str(e.value)
    ok = df.assign(timestamp_ms=[0, 5000, 10000, 40000, 60000, 65000])
    validate(ok, split_disjointness_schema(gap_ms=20_000), "splits")
