import warnings

import numpy as np
import pytest

from ocad_detectors.features import (
    FeatureConfig,
    ReferenceStats,
    capability_key,
    fail_run_length,
    features_for_series,
    features_frame,
    model_feature_names,
    model_matrix,
    window_features,
)


def test_window_features_match_a_hand_computed_example():
    cfg = FeatureConfig(window=4, ewma_alpha=0.5, cusum_k=0.5)
    x = np.array([[1.0, 2.0, np.nan, 4.0]])
    t = np.array([[0.0, 5.0, 10.0, 15.0]])
    f = window_features(x, t, 2.0, 1.0, cfg)
    # percentiles of the present values [1, 2, 4], numpy's linear method
    assert f["p95"][0] == pytest.approx(3.8)
    assert f["p99"][0] == pytest.approx(3.96)
    # EWMA weights by age 0.5^4, 0.5^3, (0.5^2 missing), 0.5^1
    assert f["ewma"][0] == pytest.approx((0.0625 * 1 + 0.125 * 2 + 0.5 * 4) / (0.0625 + 0.125 + 0.5))
    # least squares through (0,1), (5,2), (15,4)
    assert f["slope"][0] == pytest.approx(0.2)
    assert f["slope_z"][0] == pytest.approx(12.0)  # 0.2 /s * 60 s / σ=1
    # CUSUM on z = -1, 0, (skip), 2 with k = 0.5 -> 0, 0, 0, 1.5
    assert f["cusum"][0] == pytest.approx(1.5)
    assert f["missing"][0] == pytest.approx(0.25)
    assert f["p95_z"][0] == pytest.approx(1.8)


def test_cusum_uses_the_reference_not_the_window():
    """A sustained shift that fills the window stays visible (self-normalising would erase it)."""
    cfg = FeatureConfig(window=12, cusum_k=0.5)
    x = np.full((1, 12), 13.0)  # 3 σ above the reference mean, perfectly flat
    t = np.arange(12.0)[None, :] * 5
    f = window_features(x, t, 10.0, 1.0, cfg)
    assert f["cusum"][0] == pytest.approx(12 * 2.5)
    assert f["ewma_z"][0] == pytest.approx(3.0)


def test_all_missing_window_gives_nan_values_and_full_missing_share():
    cfg = FeatureConfig(window=3)
    f = window_features(np.full((1, 3), np.nan), np.arange(3.0)[None, :], 1.0, 1.0, cfg)
    assert np.isnan(f["p95"][0]) and np.isnan(f["ewma"][0]) and np.isnan(f["slope"][0])
    assert f["missing"][0] == 1.0 and f["cusum"][0] == 0.0


def test_fail_run_length_counts_consecutive_failures():
    s = np.array([1, 0, 0, np.nan, 0, 1, 0], dtype=float)
    assert fail_run_length(s).tolist() == [0, 1, 2, 2, 3, 0, 1]


def test_series_features_equal_single_window_computation(small_sim):
    """Batch (whole series) and streaming (one window at a time) give bit-identical features."""
    cfg = FeatureConfig()
    s = small_sim.samples
    g = s[s["endpoint_id"] == "o-du-001"].sort_values("timestamp_ms").iloc[:400]
    t = g["timestamp_ms"].to_numpy() / 1000.0
    vals = {"udp_echo": g["udp_echo_rtt_ms"].to_numpy(), "ecpri": g["ecpri_ow_us"].to_numpy()}
    ref = {"udp_echo": (4.0, 0.2), "ecpri": (100.0, 4.0)}
    batch = features_for_series(t, vals, None, ref, cfg)
    w = cfg.window
    for i in range(w - 1, len(g)):
        for m in vals:
            one = window_features(vals[m][i - w + 1 : i + 1][None, :], t[i - w + 1 : i + 1][None, :], *ref[m], cfg)
            for name, arr in one.items():
                a, b = arr[0], batch[f"{m}_{name}"][i]
                assert (a == b) or (np.isnan(a) and np.isnan(b)), (i, m, name, a, b)


def test_features_frame_covers_each_endpoints_capabilities(small_sim):
    s = small_sim.samples
    normal = ~s["is_anomaly"].to_numpy()
    ref = ReferenceStats.fit(
        s["endpoint_id"].to_numpy(), {c: s[c].to_numpy(float) for c in ("udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms")}, normal
    )
    caps = {r.endpoint_id: set(r.capabilities.split("+")) for r in small_sim.endpoints.itertuples()}
    f = features_frame(s, ref, caps, FeatureConfig())
    assert len(f) == len(s)
    transport = f[f["endpoint_id"] == "transport-002"]  # loopback only
    assert transport["ecpri_p95"].isna().all() and transport["udp_echo_p95"].isna().all()
    assert transport["lbm_p95"].notna().any()
    names = model_feature_names(caps["transport-002"])
    X = model_matrix({c: transport[c].to_numpy() for c in names}, names)
    assert X.shape == (len(transport), len(names)) and np.isfinite(X).all()


def test_reference_stats_fall_back_to_pooled_for_unknown_endpoints():
    ref = ReferenceStats.fit(
        np.array(["a", "a", "b", "b"]), {"udp_echo_rtt_ms": np.array([1.0, 3.0, 5.0, 7.0])}, np.ones(4, bool)
    )
    assert ref.get("a", "udp_echo_rtt_ms") == (2.0, 1.0)
    assert ref.get("new-endpoint", "udp_echo_rtt_ms") == pytest.approx((4.0, np.std([1, 3, 5, 7])))
    assert ReferenceStats.from_records(ref.to_records()).per_endpoint == ref.per_endpoint


def test_invalid_feature_inputs_are_named():
    with pytest.raises(ValueError, match="window must be at least 2"):
        FeatureConfig(window=1)
    with pytest.raises(ValueError, match="unknown capabilities"):
        capability_key(["udp_echo", "telepathy"])
    with pytest.raises(KeyError, match="features missing"):
        model_matrix({"a": np.zeros(2)}, ["a", "b"])
    with pytest.raises(ValueError, match="invalid reference statistics"):
        ReferenceStats.from_records([{"endpoint_id": "x", "signal": "udp_echo_rtt_ms", "mean": 1.0, "std": 0.0}])


@pytest.mark.parametrize("w", [2, 5, 12, 21, 22, 40])
def test_window_percentiles_equal_numpy_nanpercentile(w):
    """Both percentile paths (two largest values for short windows, a sort for long ones)
    give numpy's 'linear' percentile of the present values, bit for bit."""
    rng = np.random.default_rng(w)
    x = rng.normal(10.0, 3.0, size=(400, w)).round(1)  # ties happen
    x[rng.random(x.shape) < 0.3] = np.nan
    x[:5] = np.nan  # all missing
    x[5, 1:] = np.nan  # one value
    t = np.cumsum(np.full((400, w), 5.0), axis=1)
    f = window_features(x, t, 10.0, 3.0, FeatureConfig(window=w))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice" rows
        for q, name in ((95, "p95"), (99, "p99")):
            ref = np.nanpercentile(x, q, axis=1)
            np.testing.assert_array_equal(f[name], ref)


def test_series_features_equal_single_windows_for_a_long_window():
    """The sort-based percentile path (windows over 21 samples) keeps batch == streaming."""
    cfg = FeatureConfig(window=30, ewma_alpha=0.1)
    rng = np.random.default_rng(3)
    v = rng.normal(4.0, 0.3, size=300)
    v[rng.random(300) < 0.2] = np.nan
    t = 1.7e9 + np.cumsum(rng.integers(4, 7, size=300)).astype(float)
    batch = features_for_series(t, {"udp_echo": v}, None, {"udp_echo": (4.0, 0.3)}, cfg)
    for i in range(cfg.window - 1, len(v)):
        one = window_features(v[i - 29 : i + 1][None, :], t[i - 29 : i + 1][None, :], 4.0, 0.3, cfg)
        for name, arr in one.items():
            a, b = arr[0], batch[f"udp_echo_{name}"][i]
            assert (a == b) or (np.isnan(a) and np.isnan(b)), (i, name, a, b)
