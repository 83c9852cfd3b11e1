import numpy as np
import pandas as pd
import pytest

from ocad_pipeline import datasets as ds
from ocad_pipeline.schemas import multivariate_schema, timeseries_schema, validate

CFG = ds.SplitConfig()


@pytest.fixture(scope="module")
def small_sets(small_sim):
    ts = ds.timeseries_splits(small_sim.samples, small_sim.incidents, small_sim.endpoints, CFG)
    ref = ds.reference_stats(small_sim.samples, CFG)
    mv = ds.multivariate_splits(small_sim.samples, small_sim.endpoints, ref, CFG)
    return ts, ref, mv


def test_split_is_by_time_per_endpoint_with_a_gap(small_sim):
    s = small_sim.samples
    lab = ds.split_labels(s, CFG)
    interval = 5000
    for _ep, g in s.assign(split=lab).groupby("endpoint_id"):
        r = g.groupby("split")["timestamp_ms"].agg(["min", "max", "size"])
        assert r.loc["train", "max"] < r.loc["val", "min"] < r.loc["val", "max"] < r.loc["test", "min"]
        assert r.loc["val", "min"] - r.loc["train", "max"] > CFG.gap_samples * interval
        assert r.loc["test", "min"] - r.loc["val", "max"] > CFG.gap_samples * interval
        n = len(g)
        assert r.loc["train", "size"] == int(n * 0.7)
        assert r.loc["gap", "size"] == 2 * CFG.gap_samples


def test_no_timeseries_window_spans_two_splits(small_sets):
    ts, _, _ = small_sets
    span = CFG.sequence_length * 5000
    for key, g in pd.concat([t.assign(split=s) for s, t in ts.items()]).groupby(["endpoint_id", "metric_type"]):
        r = g.groupby("split")["timestamp_ms"].agg(["min", "max"])
        # window of the last train target ends before the first val window starts
        assert r.loc["train", "max"] < r.loc["val", "min"] - span, key
        assert r.loc["val", "max"] < r.loc["test", "min"] - span, key


def test_target_is_not_part_of_its_sequence(small_sim, small_sets):
    """Residual leakage: the value being predicted must not be a model input."""
    ts, _, _ = small_sets
    s = small_sim.samples.set_index(["endpoint_id", "timestamp_ms"])
    row = ts["train"][ts["train"]["metric_type"] == "udp_echo"].iloc[50]
    ep_series = s.loc[row["endpoint_id"], "udp_echo_rtt_ms"]
    before = ep_series[ep_series.index < row["timestamp_ms"]].to_numpy()[-CFG.sequence_length :]
    np.testing.assert_array_equal(np.asarray(row["sequence"]), before)
    assert row["target"] == ep_series.loc[row["timestamp_ms"]] or np.isnan(row["target"])


def test_labels_are_per_metric(small_sim, small_sets):
    ts, _, _ = small_sets
    all_rows = pd.concat(ts.values())
    # a correlated incident affects eCPRI only: it labels ecpri rows, never udp_echo rows
    assert (all_rows[all_rows["metric_type"] == "ecpri"]["anomaly_type"] == "correlated").any()
    assert not (all_rows[all_rows["metric_type"] == "udp_echo"]["anomaly_type"] == "correlated").any()
    assert (all_rows["is_anomaly"] <= all_rows["window_anomalous"]).all()


def test_multivariate_rows_carry_multivariate_labels(small_sets):
    _, _, mv = small_sets
    types = set(pd.concat(mv.values())["anomaly_type"].dropna())
    assert {"concurrent", "correlated"} <= types
    for s, t in mv.items():
        validate(t, multivariate_schema(), f"multivariate_{s}")


def test_reference_stats_come_from_normal_training_samples_only(small_sim):
    ref = ds.reference_stats(small_sim.samples, CFG)
    s = small_sim.samples
    lab = ds.split_labels(s, CFG)
    sel = (lab == "train") & ~s["is_anomaly"].to_numpy() & (s["endpoint_id"] == "o-du-001").to_numpy()
    expected = s.loc[sel, "udp_echo_rtt_ms"].dropna()
    row = ref[(ref["endpoint_id"] == "o-du-001") & (ref["signal"] == "udp_echo_rtt_ms")].iloc[0]
    assert row["mean"] == pytest.approx(expected.mean())
    assert row["std"] == pytest.approx(expected.std(ddof=0))
    assert row["n"] == len(expected)


def test_default_config_meets_the_seed_sizes(default_sim):
    ts = ds.timeseries_splits(default_sim.samples, default_sim.incidents, default_sim.endpoints, CFG)
    for metric in ("udp_echo", "ecpri", "lbm"):
        n = {s: int((t["metric_type"] == metric).sum()) for s, t in ts.items()}
        assert n["train"] >= 10_000 and n["val"] >= 2_000 and n["test"] >= 2_000, (metric, n)
    ref = ds.reference_stats(default_sim.samples, CFG)
    mv = ds.multivariate_splits(default_sim.samples, default_sim.endpoints, ref, CFG)
    assert len(mv["train"]) >= 5_000 and len(mv["val"]) >= 1_000 and len(mv["test"]) >= 1_000
    for t in list(ts.values()) + list(mv.values()):
        assert 0.05 <= t["is_anomaly"].mean() <= 0.10
    validate(ts["val"], timeseries_schema(CFG.sequence_length), "timeseries_val")


def test_healthy_stream_features_are_every_healthy_val_sample_as_the_strided_table_has_them(small_sim, small_sets):
    """The alert-budget calibration's rows: stride 1, healthy windows only, the same features
    as the strided validation table at the samples both hold."""
    _, ref, mv = small_sets
    st = ds.healthy_stream_features(small_sim.samples, small_sim.endpoints, ref, CFG)
    s = small_sim.samples
    lab = ds.split_labels(s, CFG)
    for ep, g in st.groupby("endpoint_id"):
        val = s[(lab == "val") & (s["endpoint_id"] == ep)].sort_values("timestamp_ms")
        ts = val["timestamp_ms"].to_numpy()
        anom = val["is_anomaly"].to_numpy()
        w = CFG.feature_window
        healthy = [ts[i] for i in range(w - 1, len(ts)) if not anom[i - w + 1 : i + 1].any()]
        assert g["timestamp_ms"].tolist() == healthy  # every healthy sample, no stride
    strided = mv["val"][~mv["val"]["window_anomalous"]]
    both = strided.merge(st, on=["endpoint_id", "timestamp_ms"], suffixes=("", "_stream"))
    assert len(both) > 0.9 * len(strided)
    feats = [c for c in st.columns if c not in ("endpoint_id", "timestamp_ms", "capabilities")]
    np.testing.assert_allclose(both[feats].to_numpy(float), both[[f + "_stream" for f in feats]].to_numpy(float), equal_nan=True)
    assert set(st["capabilities"]) == set(mv["val"]["capabilities"])
