import hashlib
import io
import time

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kurtosis, skew

from ocad_pipeline.simulator import CLEAN_TYPES, REALISTIC_TYPES, SimulatorConfig, simulate

PROFILES = ["realistic", "clean"]


@pytest.fixture(params=PROFILES)
def sim_pair(request, small_sim, small_config, small_clean_sim, small_clean_config):
    """(config, data) of the small fleet, once per profile."""
    return (small_config, small_sim) if request.param == "realistic" else (small_clean_config, small_clean_sim)


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


@pytest.mark.parametrize("profile", PROFILES)
def test_same_config_gives_byte_identical_output(small_config, profile):
    cfg = SimulatorConfig(**{**small_config.__dict__, "profile": profile, "n_wan": 1 if profile == "realistic" else 0})
    a, b = simulate(cfg), simulate(cfg)
    for name in ("samples", "incidents", "endpoints", "labels", "benign"):
        assert _parquet_bytes(getattr(a, name)) == _parquet_bytes(getattr(b, name)), name


def test_clean_profile_is_the_earlier_simulator(small_clean_sim):
    """The clean profile reproduces the earlier simulator value for value (digest taken from it)."""
    s = small_clean_sim.samples
    m = hashlib.sha256()
    for c in ("timestamp_ms", "udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms"):
        m.update(np.ascontiguousarray(s[c].to_numpy()).tobytes())
    m.update(s["lbm_success"].astype("Float64").to_numpy(dtype=float, na_value=np.nan).tobytes())
    m.update(s["is_anomaly"].to_numpy().tobytes())
    m.update("|".join(s["endpoint_id"].astype(str) + s["anomaly_type"].fillna("").astype(str)).encode())
    assert m.hexdigest() == "229c8495161cf2e3b0a141f93a06c56162a2615ffa6e8233b2952a0a29c276f0"
    assert small_clean_sim.benign.empty


def test_other_seed_gives_other_data(small_config):
    a = simulate(small_config)
    b = simulate(SimulatorConfig(**{**small_config.__dict__, "seed": small_config.seed + 1}))
    assert not a.samples["udp_echo_rtt_ms"].equals(b.samples["udp_echo_rtt_ms"])


def test_every_anomaly_type_present_and_every_incident_ends(sim_pair):
    small_config, small_sim = sim_pair
    inc = small_sim.incidents
    assert set(inc["type"]) == set(REALISTIC_TYPES if small_config.profile == "realistic" else CLEAN_TYPES)
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


def test_drift_can_end_in_outage_with_all_probes_failing(sim_pair):
    _, small_sim = sim_pair
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


def test_capabilities_decide_which_signals_exist(sim_pair):
    _, small_sim = sim_pair
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


@pytest.mark.parametrize("profile", PROFILES)
def test_healthy_series_are_forecastable(default_sim, default_clean_sim, profile):
    """A one-step forecaster from the previous values clearly beats the mean *and* the last
    value: the series carry structure (autocorrelation) and white jitter, so the TCN has
    something to learn that naive baselines miss."""
    s = (default_sim if profile == "realistic" else default_clean_sim).samples
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


@pytest.mark.parametrize("profile", PROFILES)
def test_default_anomaly_share_in_seed_range(default_sim, default_clean_sim, profile):
    s = (default_sim if profile == "realistic" else default_clean_sim).samples
    assert 0.05 <= s["is_anomaly"].mean() <= 0.10
    # per 70/15/15 time split too (the datasets split by time per endpoint)
    t = np.sort(s["timestamp_ms"].unique())
    a, b = t[int(0.7 * len(t))], t[int(0.85 * len(t))]
    for part in (s[s["timestamp_ms"] < a], s[(s["timestamp_ms"] >= a) & (s["timestamp_ms"] < b)], s[s["timestamp_ms"] >= b]):
        assert 0.04 <= part["is_anomaly"].mean() <= 0.11


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
        ({"profile": "noisy"}, "unknown simulator profile"),
        ({"profile": "clean", "incident_mix": {"burst": 1.0}}, "known for profile 'clean'"),
        ({"profile": "clean", "n_wan": 2}, "needs profile='realistic'"),
    ],
)
def test_bad_config_is_rejected_with_a_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimulatorConfig(**kwargs)


# --- the realistic profile: healthy behaviour as real probes show it ------------------------


def _healthy_residuals(sim, endpoint: str, signal: str) -> np.ndarray:
    """Value minus a 1 h rolling median on unlabelled samples that are no benign spike."""
    s = sim.samples
    g = s[s["endpoint_id"] == endpoint]
    x = g[signal].to_numpy()
    keep = ~g["is_anomaly"].to_numpy()
    ben = sim.benign
    spikes = ben[(ben["endpoint_id"] == endpoint) & (ben["kind"] == f"spike:{signal}")]["start"].to_numpy()
    keep[np.searchsorted(g["timestamp_ms"].to_numpy(), spikes)] = False
    med = pd.Series(x).rolling(721, center=True, min_periods=60).median().to_numpy()
    r = (x - med)[keep]
    return r[np.isfinite(r)]


def test_healthy_noise_is_heavy_tailed_and_skewed_upward(default_sim):
    """Queues build fast and drain slowly: healthy residuals are right-skewed with heavy tails
    (kurtosis well above a Gaussian's 3), even without the benign spikes."""
    for ep, sig in (("o-du-001", "udp_echo_rtt_ms"), ("o-ru-002", "ecpri_ow_us"), ("transport-002", "lbm_rtt_ms")):
        r = _healthy_residuals(default_sim, ep, sig)
        assert skew(r) > 0.3, (ep, sig, skew(r))
        assert kurtosis(r, fisher=False) > 4.5, (ep, sig, kurtosis(r, fisher=False))
        # a k-sigma Gaussian threshold fires far more often than it would on Gaussian noise
        z = (r - r.mean()) / r.std()
        assert (z > 4).mean() > 10 * 3.2e-5, (ep, sig)


def test_benign_single_sample_spikes_are_unlabelled(default_sim):
    s, ben = default_sim.samples, default_sim.benign
    spikes = ben[ben["kind"].str.startswith("spike:")]
    n_samples = s.groupby("endpoint_id").size()
    # about one sample in 300 per signal, +10..60 % of the baseline, for one sample only
    assert 1 / 500 < len(spikes) / (n_samples.sum() * 2.3) < 1 / 200
    assert ((spikes["end"] - spikes["start"]) == 5000).all() and spikes["magnitude"].between(0.1, 0.6).all()
    idx = s.set_index(["endpoint_id", "timestamp_ms"])
    at = idx.loc[list(zip(spikes["endpoint_id"], spikes["start"]))]
    inside_incident = at["is_anomaly"].to_numpy()
    assert inside_incident.mean() < 0.15  # most fall on healthy time, and there they stay normal
    eps = default_sim.endpoints.set_index("endpoint_id")
    healthy = spikes[~inside_incident]
    for r in healthy.head(200).itertuples():
        sig = r.kind.split(":", 1)[1]
        g = idx.loc[r.endpoint_id, sig]
        v = g.loc[r.start]
        around = g.loc[r.start - 30_000 : r.start + 30_000].drop(r.start).median()
        if np.isfinite(v):  # (a missing reply may coincide)
            assert v - around > 0.05 * eps.loc[r.endpoint_id, f"{sig}_base"], r
    assert not at.loc[~inside_incident, "is_anomaly"].any()


def test_benign_route_steps_go_both_ways_last_hours_and_are_unlabelled(default_sim):
    s, ben = default_sim.samples, default_sim.benign
    steps = ben[ben["kind"] == "route_step"]
    assert len(steps) >= 12
    assert (steps["magnitude"] > 0).any() and (steps["magnitude"] < 0).any()
    assert steps["magnitude"].abs().between(0.02, 0.06).all()
    assert ((steps["end"] - steps["start"]) >= 3_600_000).mean() > 0.8  # hours, unless cut by the series end
    eps = default_sim.endpoints.set_index("endpoint_id")
    measured = []
    for r in steps.itertuples():
        g = s[s["endpoint_id"] == r.endpoint_id]
        inside = g[(g["timestamp_ms"] >= r.start) & (g["timestamp_ms"] < r.end)]
        # nothing about a route change is labelled; only incidents that happen to fall inside
        assert set(inside["incident_id"].dropna()) <= set(default_sim.incidents["incident_id"])
        assert not (inside["is_anomaly"] & inside["incident_id"].isna()).any()
        before = g[(g["timestamp_ms"] < r.start) & (g["timestamp_ms"] >= r.start - 3_600_000)]
        other = [x for x in steps.itertuples() if x.endpoint_id == r.endpoint_id and x.Index != r.Index
                 and x.start < r.end and x.end > r.start - 3_600_000]
        if len(inside) > 720 and len(before) > 360 and not other:
            sig = "lbm_rtt_ms"
            shift = inside.loc[~inside["is_anomaly"], sig].median() - before.loc[~before["is_anomaly"], sig].median()
            base = eps.loc[r.endpoint_id, f"{sig}_base"]
            measured.append((r.magnitude, shift / base))
    # the level moved with the step (the daily load moves it by a few % too, so: on the whole)
    m = np.asarray(measured)
    assert len(m) >= 5 and np.corrcoef(m[:, 0], m[:, 1])[0, 1] > 0.5, m
    assert np.median(np.abs(m[:, 1] - m[:, 0])) < 0.03, m


def test_baselines_spread_log_uniformly_and_wan_endpoints_are_slow_and_far():
    d = simulate(SimulatorConfig(n_oru=8, n_odu=8, n_transport=8, n_wan=4, duration_hours=2.0, seed=3))
    ep = d.endpoints.set_index("endpoint_id")
    fh = ep[ep["group"] == "fronthaul"]
    assert fh["lbm_rtt_ms_base"].between(1.0, 10.0).all() and fh["lbm_rtt_ms_base"].min() < 2.0 and fh["lbm_rtt_ms_base"].max() > 5.0
    assert fh["ecpri_ow_us_base"].dropna().between(50.0, 200.0).all()
    wan = ep[ep["group"] == "wan"]
    assert len(wan) == 4 and (wan["capabilities"] == "udp_echo").all() and (wan["interval_s"] == 240.0).all()
    assert wan["udp_echo_rtt_ms_base"].between(70.0, 400.0).all()
    s = d.samples
    w = s[s["endpoint_id"] == "wan-001"]
    assert len(w) == 30 and (np.diff(w["timestamp_ms"].to_numpy()) == 240_000).all()
    assert (np.diff(s[s["endpoint_id"] == "o-ru-001"]["timestamp_ms"].to_numpy()) == 5000).all()
    # adding WAN endpoints leaves the fronthaul fleet as it was
    d0 = simulate(SimulatorConfig(n_oru=8, n_odu=8, n_transport=8, duration_hours=2.0, seed=3))
    a = s[~s["endpoint_id"].str.startswith("wan-")].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, d0.samples)


def test_daily_load_rises_fast_in_the_morning_and_decays_slowly():
    d = simulate(SimulatorConfig(n_oru=0, n_odu=6, n_transport=0, duration_hours=24.0 * 4, incidents_per_endpoint_day=0.0, seed=5))
    s = d.samples.assign(h=((d.samples["timestamp_ms"] // 1000) % 86400) // 3600)
    base = d.endpoints.set_index("endpoint_id")["lbm_rtt_ms_base"]
    rel = s["lbm_rtt_ms"] / s["endpoint_id"].map(base)
    by_hour = rel.groupby(s["h"]).median()
    lo, hi = by_hour.min(), by_hour.max()
    level = (by_hour - lo) / (hi - lo)
    rise_h = int(level.loc[5:12].ge(0.8).idxmax()) - int(level.loc[3:12].ge(0.2).idxmax())
    fall_h = int(level.loc[14:].le(0.2).idxmax() if level.loc[14:].le(0.2).any() else 24) - int(level.loc[14:].le(0.8).idxmax())
    assert hi - lo > 0.02 and rise_h < fall_h, (rise_h, fall_h, level.round(2).to_dict())


def _incident_values(sim, r, sig):
    s = sim.samples
    g = s[s["endpoint_id"] == r.endpoint_id]
    inside = g[(g["timestamp_ms"] >= r.start) & (g["timestamp_ms"] < r.end)][sig].to_numpy()
    before = g[(g["timestamp_ms"] < r.start) & (g["timestamp_ms"] >= r.start - 1_800_000) & ~g["is_anomaly"]][sig].to_numpy()
    return inside, before


def test_incidents_are_small_and_large_relative_to_the_noise(default_sim):
    inc, ep = default_sim.incidents, default_sim.endpoints.set_index("endpoint_id")
    ratios = []
    for r in inc[inc["type"].isin(["step", "concurrent", "single_signal"])].itertuples():
        sig = r.signals.split(",")[0]
        inside, before = _incident_values(default_sim, r, sig)
        ratios.append((np.nanmedian(inside) - np.nanmedian(before)) / ep.loc[r.endpoint_id, f"{sig}_noise_std"])
    ratios = np.asarray(ratios)
    assert (ratios < 3.5).mean() > 0.25 and (ratios > 6).mean() > 0.1, np.round(ratios, 1)


def test_jitter_grows_the_variance_not_the_mean(default_sim):
    inc = default_sim.incidents
    jit = inc[inc["type"] == "jitter"]
    assert len(jit) >= 10
    grew, mean_moves = [], []
    for r in jit.itertuples():
        sig = r.signals.split(",")[0]
        inside, before = _incident_values(default_sim, r, sig)
        grew.append(np.nanstd(inside) / np.nanstd(before))
        mean_moves.append(abs(np.nanmedian(inside) - np.nanmedian(before)) / np.nanstd(inside))
    assert np.median(grew) > 1.8 and np.median(mean_moves) < 0.3


def test_intermittent_loss_drops_a_share_of_probes_and_single_signal_touches_one(default_sim):
    inc = default_sim.incidents
    for r in inc[inc["type"] == "intermittent_loss"].itertuples():
        sig = r.signals.split(",")[0]
        inside, _ = _incident_values(default_sim, r, sig)
        assert 0.08 < np.isnan(inside).mean() < 0.6, r
    for r in inc[inc["type"] == "single_signal"].itertuples():
        assert len(r.signals.split(",")) == 1


def test_default_fleet_simulates_quickly():
    t0 = time.perf_counter()
    d = simulate(SimulatorConfig())
    assert len(d.samples) == 414_720
    assert time.perf_counter() - t0 < 10.0  # about 0.3 s on one core; generous for a busy CI box
