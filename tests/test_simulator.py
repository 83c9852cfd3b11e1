import io

import numpy as np
import pandas as pd
import pytest

from ocad_pipeline.simulator import ANOMALY_TYPES, SimulatorConfig, simulate


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def test_same_config_gives_byte_identical_output(small_config):
    a, b = simulate(small_config), simulate(small_config)
    for name in ("samples", "incidents", "endpoints", "labels"):
        assert _parquet_bytes(getattr(a, name)) == _parquet_bytes(getattr(b, name)), name


def test_other_seed_gives_other_data(small_config):
    a = simulate(small_config)
    b = simulate(SimulatorConfig(**{**small_config.__dict__, "seed": small_config.seed + 1}))
    assert not a.samples["udp_echo_rtt_ms"].equals(b.samples["udp_echo_rtt_ms"])


def test_every_anomaly_type_present_and_every_incident_ends(small_sim, small_config):
    inc = small_sim.incidents
    assert set(inc["type"]) == set(ANOMALY_TYPES)
    series_end = small_config.start_ms + small_config.n_samples * int(small_config.interval_s * 1000)
    assert (inc["end"] > inc["start"]).all()
    assert (inc["end"] < series_end).all()
    s = small_sim.samples
    for r in inc.itertuples():
        ep = s[s["endpoint_id"] == r.endpoint_id]
        inside = ep[(ep["timestamp_ms"] >= r.start) & (ep["timestamp_ms"] < r.end)]
        assert inside["is_anomaly"].all() and (inside["anomaly_type"] == r.type).all()
        after = ep[ep["timestamp_ms"] == r.end]
        # the sample at `end` is healthy again unless the next incident starts right there
        assert len(after) == 1
        assert not after["is_anomaly"].iloc[0] or after["incident_id"].iloc[0] != r.incident_id


def test_drift_can_end_in_outage_with_all_probes_failing(small_sim):
    inc = small_sim.incidents
    out = inc[inc["outage_start"].notna()]
    assert len(out) > 0 and (out["type"] == "drift").all()
    s = small_sim.samples
    r = out.iloc[0]
    ep = s[(s["endpoint_id"] == r["endpoint_id"]) & (s["timestamp_ms"] >= r["outage_start"]) & (s["timestamp_ms"] < r["end"])]
    assert len(ep) > 0
    assert ep["udp_echo_rtt_ms"].isna().all() or "udp_echo" not in r["signals"]
    if ep["lbm_success"].notna().any():
        assert not ep["lbm_success"].any()
    # before the outage the drift raised the delay
    before = s[(s["endpoint_id"] == r["endpoint_id"]) & (s["timestamp_ms"] < r["outage_start"]) & (s["timestamp_ms"] >= r["start"])]
    sig = "lbm_rtt_ms" if before["lbm_rtt_ms"].notna().any() else "udp_echo_rtt_ms"
    vals = before[sig].dropna().to_numpy()
    assert vals[-5:].mean() > vals[:5].mean()


def test_capabilities_decide_which_signals_exist(small_sim):
    s = small_sim.samples
    for r in small_sim.endpoints.itertuples():
        caps = set(r.capabilities.split("+"))
        ep = s[s["endpoint_id"] == r.endpoint_id]
        assert ep["udp_echo_rtt_ms"].notna().any() == ("udp_echo" in caps)
        assert ep["ecpri_ow_us"].notna().any() == ("ecpri" in caps)
        assert ep["lbm_success"].notna().any() == ("lbm" in caps)
    assert small_sim.endpoints["capabilities"].nunique() >= 3


def test_units_are_realistic(default_sim):
    s = default_sim.samples[~default_sim.samples["is_anomaly"]]
    assert 1.5 < s["udp_echo_rtt_ms"].median() < 10  # ms
    assert 40 < s["ecpri_ow_us"].median() < 250  # µs, not ms
    assert 1.0 < s["lbm_rtt_ms"].median() < 16  # ms
    assert s["lbm_success"].dropna().mean() > 0.99


def test_healthy_series_are_forecastable(default_sim):
    """A one-step forecaster from the previous values clearly beats the mean *and* the last
    value: the series carry structure (autocorrelation) and white jitter, so the TCN has
    something to learn that naive baselines miss."""
    s = default_sim.samples
    n = 10
    for ep, g in s[s["endpoint_id"].isin(["o-du-001", "o-ru-002"])].groupby("endpoint_id"):
        x = g["udp_echo_rtt_ms"].to_numpy()
        normal = ~g["is_anomaly"].to_numpy()
        win = np.lib.stride_tricks.sliding_window_view(x, n + 1)
        ok = np.isfinite(win).all(axis=1) & np.lib.stride_tricks.sliding_window_view(normal, n + 1).all(axis=1)
        win = win[ok]
        half = len(win) // 2
        A = np.column_stack([win[:, :n], np.ones(len(win))])
        coef, *_ = np.linalg.lstsq(A[:half], win[:half, n], rcond=None)  # fit on the first half
        y = win[half:, n]
        mse_lin = np.mean((A[half:] @ coef - y) ** 2)
        mse_last = np.mean((win[half:, n - 1] - y) ** 2)
        mse_mean = np.mean((y - y.mean()) ** 2)
        assert mse_lin < 0.65 * mse_mean, ep
        assert mse_lin < 0.8 * mse_last, ep


def test_default_anomaly_share_in_seed_range(default_sim):
    share = default_sim.samples["is_anomaly"].mean()
    assert 0.05 <= share <= 0.10


def test_labels_file_has_seed_columns(small_sim):
    lab = small_sim.labels
    assert list(lab.columns) == ["endpoint_id", "timestamp_ms", "is_anomaly", "anomaly_type", "severity", "description"]
    assert len(lab) == int(small_sim.samples["is_anomaly"].sum())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_oru": 0, "n_odu": 0, "n_transport": 0}, "at least one endpoint"),
        ({"incident_mix": {"meteor": 1.0}}, "unknown incident types"),
        ({"interval_s": 0}, "must be positive"),
    ],
)
def test_bad_config_is_rejected_with_a_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimulatorConfig(**kwargs)
