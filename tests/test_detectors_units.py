"""Each detector on its own: rules, CUSUM, residual, features, fusion, alert manager, config."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_fixtures import cached_model_registry

from ocad_detectors.alerts import AlertManager
from ocad_detectors.changepoint import ChangePointDetector
from ocad_detectors.config import AlertConfig, ChangePointConfig, DetectionConfig, FusionConfig, RuleConfig, load_config
from ocad_detectors.features import FeatureConfig, ReferenceStats, window_features
from ocad_detectors.fusion import ScoreFusion
from ocad_detectors.modelset import ModelLoader
from ocad_detectors.multivariate import window_stats
from ocad_detectors.residual import ResidualDetector
from ocad_detectors.rules import RuleDetector
from ocad_detectors.samples import Sample
from ocad_detectors.signals import VALUE_SIGNALS
from ocad_detectors.tcn_stack import StackedTCN
from ocad_pipeline.simulator import SimulatorConfig, simulate

T0 = 1_767_225_600_000
NAN = float("nan")


# ----------------------------------------------------------------------------- rules


def test_absolute_rule_thresholds_are_in_each_signals_own_unit():
    det = RuleDetector(RuleConfig(mode="absolute"))
    # 300 µs eCPRI is below its 400 µs threshold, although 300 > every ms threshold
    out = det.score_one(Sample(T0, "a", udp_echo_rtt_ms=5.0, ecpri_ow_us=300.0, lbm_rtt_ms=8.0, lbm_success=True))
    assert out.score == 0.0 and out.evidence == ()
    out = det.score_one(Sample(T0 + 5000, "a", udp_echo_rtt_ms=5.0, ecpri_ow_us=700.0, lbm_rtt_ms=8.0, lbm_success=True))
    assert out.evidence == ("threshold",) and out.score == pytest.approx(0.5 + 0.5 * 300 / 600)
    out = det.score_one(Sample(T0 + 10000, "a", udp_echo_rtt_ms=80.0, ecpri_ow_us=100.0, lbm_rtt_ms=8.0, lbm_success=True))
    assert out.score == 1.0  # beyond critical


@pytest.mark.parametrize("base_ms", [1.2, 300.0])
def test_relative_rules_follow_each_endpoints_learned_baseline(base_ms):
    """The same defaults for a 1 ms fronthaul link and a 300 ms Internet path."""
    det = RuleDetector()
    rng = np.random.default_rng(3)
    for i in range(12):  # warm-up: the baseline is the median of the first samples
        out = det.score_one(Sample(T0 + i * 5000, "a", udp_echo_rtt_ms=base_ms * (1 + 0.05 * rng.standard_normal())))
        assert out.evidence == ()
    assert det._states["a"].base[0] == pytest.approx(base_ms, rel=0.1)
    out = det.score_one(Sample(T0 + 60_000, "a", udp_echo_rtt_ms=base_ms * 1.6))  # +60 %: a benign spike
    assert out.evidence == ()
    out = det.score_one(Sample(T0 + 65_000, "a", udp_echo_rtt_ms=base_ms * 3.0))
    assert out.evidence == ("threshold",) and 0.5 < out.score < 1.0
    assert det.score_one(Sample(T0 + 70_000, "a", udp_echo_rtt_ms=base_ms * 6.0)).score == 1.0


def test_absolute_sla_thresholds_per_endpoint_group():
    cfg = RuleConfig.from_dict({"absolute_groups": {"o-ru-*": {"udp_echo_rtt_ms": {"warning": 3, "critical": 9}}}})
    det = RuleDetector(cfg)
    assert det.score_one(Sample(T0, "o-ru-001", udp_echo_rtt_ms=4.0)).evidence == ("threshold",)
    assert det.score_one(Sample(T0, "o-du-001", udp_echo_rtt_ms=4.0)).evidence == ()  # relative, warming up
    with pytest.raises(ValueError, match="seconds"):
        RuleConfig.from_dict({"loss_run_warning": 3})


@pytest.mark.parametrize("interval_s", [5, 240])
def test_loss_runs_are_timed_from_the_last_reply(interval_s):
    det = RuleDetector(RuleConfig(loss_warning_s=15, loss_critical_s=60))
    caps = {"udp_echo", "lbm"}
    t = T0
    det.score_one(Sample(t, "a", udp_echo_rtt_ms=5.0, lbm_rtt_ms=5.0, lbm_success=True), caps)
    evid = []
    for i in range(1, 14):
        s = Sample(t + i * interval_s * 1000, "a", udp_echo_rtt_ms=5.0, lbm_rtt_ms=None, lbm_success=False)
        evid.append(det.score_one(s, caps))
    if interval_s == 5:  # 3 lost = 15 s: warning; 12 lost = 60 s: critical, as with counted runs
        assert [o.evidence for o in evid[:2]] == [(), ()]
        assert all(o.evidence == ("loss",) for o in evid[2:])
        assert evid[2].score == 0.5 and max(o.score for o in evid[:11]) < 1.0 and evid[11].score == 1.0
    else:  # one lost 240 s probe is no outage; 2 are evidence, 3 are critical
        assert evid[0].evidence == () and evid[1].evidence == ("loss",) and evid[1].score < 1.0
        assert evid[2].score == 1.0
    assert evid[-1].details["loss_runs"]["lbm"] == 13
    # a reply resets the run; udp missing counts for udp only
    o = det.score_one(Sample(t + 14 * interval_s * 1000, "a", udp_echo_rtt_ms=None, lbm_rtt_ms=8.0, lbm_success=True), caps)
    runs = {k: v for k, v in o.details["loss_runs"].items() if ":" not in k}
    assert runs == {"udp_echo": 1, "ecpri": 0, "lbm": 0} and o.evidence == ()


@pytest.mark.parametrize("interval_s", [5, 240])
def test_intermittent_loss_is_evidence_by_its_share_of_recent_probes(interval_s):
    """Every other reply missing never makes a run of two, but half the probes are lost."""
    det = RuleDetector(RuleConfig())  # 25 % of the last 60 s, at least 12 probes
    caps = {"lbm"}
    out = []
    for i in range(60):
        lost = 20 <= i < 44 and i % 2 == 0
        s = Sample(T0 + i * interval_s * 1000, "a", lbm_rtt_ms=None if lost else 2.0, lbm_success=not lost)
        out.append(det.score_one(s, caps))
    ev = [i for i, o in enumerate(out) if o.evidence == ("loss",)]
    # the 3rd lost probe (i = 24) is 3 of 12: 25 %; then on every lost probe (a reply is none)
    assert ev == list(range(24, 44, 2)) and all(out[i].details["loss_runs"]["lbm"] == 1 for i in ev)
    assert all(0.5 <= out[i].score < 1.0 for i in ev)
    w = out[42].details["loss_runs"]
    assert (w["lbm:lost_recent"], w["lbm:probes_recent"]) == (6, 12)
    # a healthy probe's scattered lost replies (2 in 12) are not
    det2 = RuleDetector(RuleConfig())
    lost_at = {5, 11, 30, 41}
    res = [det2.score_one(Sample(T0 + i * interval_s * 1000, "a", lbm_rtt_ms=None if i in lost_at else 2.0,
                                 lbm_success=i not in lost_at), caps) for i in range(60)]
    assert all(o.evidence == () for o in res)
    # off
    det3 = RuleDetector(RuleConfig(loss_rate=0.0))
    assert all(det3.score_one(Sample(T0 + i * 5000, "a", lbm_rtt_ms=None if i % 2 else 2.0, lbm_success=not i % 2), caps).evidence == ()
               for i in range(60))
    with pytest.raises(ValueError, match="loss_rate"):
        RuleConfig(loss_rate=1.5)


def test_standalone_detectors_reject_invalid_samples():
    with pytest.raises(ValueError, match="udp_echo_rtt_ms: negative value"):
        RuleDetector().score_one(Sample(T0, "a", udp_echo_rtt_ms=-1.0))
    with pytest.raises(ValueError, match="timestamp_ms: missing"):
        ChangePointDetector().score_one({"endpoint_id": "a"})


# ----------------------------------------------------------------------------- CUSUM


@pytest.fixture(scope="module")
def healthy():
    # reference from one full day (it must see the daily load cycle), test on the next day.
    # Pinned to the clean profile: on the realistic profile's heavy tails and benign route
    # steps the CUSUM fires today (the detectors are being made robust to it).
    sim = simulate(
        SimulatorConfig(n_oru=3, n_odu=2, n_transport=2, duration_hours=48.0, incidents_per_endpoint_day=0.0, seed=21, profile="clean")
    )
    s = sim.samples
    rank = s.groupby("endpoint_id").cumcount()
    train = s[rank < 17280]
    ref = ReferenceStats.fit(train["endpoint_id"].to_numpy(), {c: train[c].to_numpy(float) for c in VALUE_SIGNALS}, np.ones(len(train), bool))
    return s[rank >= 17280], ref


def test_level_shifts_do_not_fire_on_healthy_noise(healthy):
    test, ref = healthy
    det = ChangePointDetector(reference=ref)
    fired = changes = 0
    for ep, g in test.groupby("endpoint_id"):
        score, ev, chg, _, _ = det.score_series(str(ep), g["timestamp_ms"].tolist(), *(g[c].to_numpy(float) for c in VALUE_SIGNALS))
        fired += int((ev != 0).sum())
        changes += sum(len(v) for v in chg.values())
    assert fired == 0 and changes == 0


def test_a_lasting_shift_is_one_change_record_then_the_new_baseline():
    det = ChangePointDetector()
    rng = np.random.default_rng(0)
    n = 3000
    ts = (T0 + 5000 * np.arange(n)).tolist()
    x = 5.0 + 0.2 * rng.standard_normal(n)
    x[1000:2500] += 6 * 0.2  # +6 σ for 125 min
    score, ev, changes, rebase, _ = det.score_series("a", ts, x, np.full(n, NAN), np.full(n, NAN))
    recs = [r for v in changes.values() for r in v]
    assert [r.direction for r in recs] == ["up", "down"]
    assert abs((recs[0].change_ms - T0) / 5000 - 1000) <= 2 and abs((recs[1].change_ms - T0) / 5000 - 2500) <= 2
    assert recs[0].level_before == pytest.approx(5.0, abs=0.1) and recs[0].level_after == pytest.approx(6.2, abs=0.1)
    first = int(np.argmax(ev != 0))
    # short-horizon evidence within minutes, long before the change is confirmed (32 min), and
    # on until the new level is the baseline
    assert 1000 < first <= 1000 + 60 < min(changes) and (ev[first : 1000 + 720 - 2] != 0).all()
    assert not (ev[1000 + 720 + 2 :] != 0).any()  # then the new level is normal: no days of alarm
    assert [(i, flag) for v in rebase.values() for i, _, flag in v] == [(0, True), (0, False)]
    # the streaming update gives exactly the batch result
    det2 = ChangePointDetector()
    st2 = det2.new_state("a")
    stream = [det2.update(st2, t, float(v), NAN, NAN) for t, v in zip(ts, x)]
    assert [s_[0] for s_ in stream] == score.tolist() and [s_[1] for s_ in stream] == ev.tolist()
    assert [r for s_ in stream for r in s_[2]] == recs


def test_a_single_huge_sample_is_no_sustained_shift():
    det = ChangePointDetector()
    n = 2000
    rng = np.random.default_rng(1)
    x = 5.0 + 0.2 * rng.standard_normal(n)
    x[1000] = 500.0
    _, ev, changes, _, _ = det.score_series("a", (T0 + 5000 * np.arange(n)).tolist(), x, np.full(n, NAN), np.full(n, NAN))
    assert not changes and not ev.any()


def test_cusum_unknown_endpoint_uses_pooled_reference():
    ref = ReferenceStats(pooled={"lbm_rtt_ms": (8.0, 0.5)})
    det = ChangePointDetector(reference=ref)
    assert det.new_state("never-seen").refs == [None, None, (8.0, 0.5)]


# ----------------------------------------------------------------------------- features


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.one_of(st.floats(0.0, 1e4), st.just(NAN)), min_size=12, max_size=12),
    st.lists(st.integers(1, 60_000), min_size=12, max_size=12),
    st.floats(0.0, 100.0),
    st.floats(1e-3, 50.0),
)
def test_streaming_window_features_are_bit_identical_to_the_engine(xs, gaps, mu, sd):
    cfg = FeatureConfig()
    w = cfg.window
    times = (T0 + np.cumsum(gaps)) / 1000.0
    wts = tuple(cfg.ewma_alpha * (1.0 - cfg.ewma_alpha) ** (w - 1 - i) for i in range(w))
    got = window_stats(deque(xs), deque(times.tolist()), mu, sd, wts, cfg.cusum_k)
    ref = window_features(np.array([xs]), times[None, :], mu, sd, cfg)
    for g, name in zip(got, ("p95_z", "p99_z", "ewma_z", "slope_z", "cusum", "missing")):
        r = float(ref[name][0])
        assert (math.isnan(g) and math.isnan(r)) or g == r, (name, g, r)


# ----------------------------------------------------------------------------- residual


@pytest.fixture(scope="module")
def models():
    built = cached_model_registry()
    return ModelLoader(built.root, built.root).load()


def test_residual_buffer_is_exactly_seq_len_and_the_target_is_not_an_input(models):
    det = ResidualDetector(models=models.tcn)
    L = models.tcn["udp_echo"].seq_len
    st1 = det.new_state("o-ru-001")
    rng = np.random.default_rng(1)
    xs = 5.0 + 0.2 * rng.standard_normal(L + 5)
    for i in range(L):
        det.update(st1, float(xs[i]), NAN, NAN)
        assert math.isnan(st1.r[0])  # not scored before the buffer is full
    assert len(st1.buf["udp_echo"]) == L
    # two detectors with the same history, different current values: same forecast
    st2 = det.new_state("o-ru-001")
    for i in range(L):
        det.update(st2, float(xs[i]), NAN, NAN)
    det.update(st1, 5.0, NAN, NAN)
    det.update(st2, 50.0, NAN, NAN)
    assert st1.pred[0] == st2.pred[0]
    scale = models.tcn["udp_echo"].residual_scale("o-ru-001")
    assert st2.r[0] == pytest.approx(abs(50.0 - st2.pred[0]) / scale)
    assert len(st1.buf["udp_echo"]) == L and list(st1.buf["udp_echo"])[-1] == 5.0
    # unknown endpoints use the pooled residual scale
    assert det.new_state("nobody").scale["udp_echo"] == models.tcn["udp_echo"].residual_pooled
    # a lost value is not scored; the last value is carried into the buffer
    det.update(st1, NAN, NAN, NAN)
    assert math.isnan(st1.r[0]) and list(st1.buf["udp_echo"])[-2:] == [5.0, 5.0]


def test_stacked_tcn_matches_each_numpy_tcn(models):
    mods = [models.tcn[m] for m in ("udp_echo", "ecpri", "lbm")]
    stack = StackedTCN([m.weights for m in mods], mods[0].architecture)
    rng = np.random.default_rng(2)
    for _ in range(20):
        X = rng.standard_normal((mods[0].seq_len, 3))
        got = stack.predict_one(X)
        ref = [m.net.predict(X[:, j])[0] for j, m in enumerate(mods)]
        assert np.allclose(got, ref, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- fusion


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4), st.sampled_from(["noisy_or", "weighted_mean"]))
def test_fusion_composite_is_in_unit_interval_and_matches_the_array_version(scores, method):
    f = ScoreFusion(FusionConfig(method=method))
    c = f.combine(*scores)
    assert 0.0 <= c <= 1.0
    arr = f.combine_arrays([np.array([s]) for s in scores])
    assert arr[0] == c


def test_fusion_weights_and_inactive_detectors():
    f = ScoreFusion(FusionConfig(method="weighted_mean", weights={"rule": 1, "changepoint": 1, "residual": 1, "multivariate": 1}))
    assert f.combine(1, 0, 0, 0) == 0.25
    f.set_active(["rule", "changepoint"])  # models missing: their weight does not dilute
    assert f.combine(1, 0, 0.9, 0.9) == 0.5
    g = ScoreFusion()  # noisy-or: one strong rule alone can carry the composite
    assert g.combine(1.0, 0, 0, 0) == 1.0
    assert g.combine(0.5, 0.5, 0, 0) > g.combine(0.5, 0, 0, 0)


# ----------------------------------------------------------------------------- alerts


def _feed(am, ep, t0, step_ms, evs, comp=0.6, critical=False):
    """Feed evidence lists at a fixed interval; returns the alerts (None where none)."""
    return [am.observe(ep, t0 + i * step_ms, ev, comp, critical=critical) for i, ev in enumerate(evs)]


def test_any_evidence_alerts_once_it_persists_and_loss_at_once():
    am = AlertManager()  # persist 60 s, at least 2 worthy samples
    out = _feed(am, "a", T0, 5000, [["threshold"]] * 14)
    assert [a is not None for a in out] == [False] * 12 + [True, False]  # at T0 + 60 s
    out = _feed(am, "b", T0, 5000, [["loss"]] * 7)  # a loss run is timed already: at once
    assert out[0] is not None and all(a is None for a in out[1:])
    out = _feed(am, "c", T0, 5000, [["multivariate"]] * 14, comp=0.9)
    assert out[12] is not None and all(a is None for a in out[:12])
    # demanding two distinct types: one statistical detector alone never alerts
    two = AlertManager(AlertConfig(min_evidence=2, standalone_evidence=()))
    assert all(a is None for a in _feed(two, "c", T0, 5000, [["multivariate"]] * 40, comp=0.9))
    assert _feed(two, "d", T0, 5000, [["multivariate", "residual"]] * 13, comp=0.7)[12] is not None
    # a CUSUM past its threshold has summed evidence over samples already: it alerts at once
    out = _feed(am, "e", T0, 5000, [["changepoint"]] * 5)
    assert out[0] is not None and all(a is None for a in out[1:])
    strict = AlertManager(AlertConfig(min_evidence=3, standalone_evidence=()))
    assert all(a is None for a in _feed(strict, "a", T0, 5000, [["threshold", "changepoint"]] * 40, comp=0.9))


def test_a_single_sample_alerts_only_at_a_critical_level():
    am = AlertManager()
    assert am.observe("a", T0, ["threshold"], 0.7) is None  # one late reply: no page
    assert am.observe("a", T0 + 5000, [], 0.0) is None
    a = am.observe("b", T0, ["threshold"], 1.0, critical=True)
    assert a is not None and a.severity == "critical"


def test_persistence_tolerates_short_gaps_but_not_sparse_blips():
    am = AlertManager()
    # evidence in 2 of every 3 samples for a minute: a real, flickering degradation
    evs = [["threshold"] if i % 3 else [] for i in range(1, 14)]
    assert any(a is not None for a in _feed(am, "a", T0, 5000, evs))
    # isolated blips every 20 samples for an hour: benign noise, never an alert
    evs = [["threshold"] if i % 20 == 0 else [] for i in range(720)]
    assert all(a is None for a in _feed(am, "b", T0, 5000, evs))


def test_dedup_escalation_resolution_and_new_episode_use_sample_timestamps(monkeypatch):
    import time

    monkeypatch.setattr(time, "time", lambda: (_ for _ in ()).throw(AssertionError("wall clock used")))
    monkeypatch.setattr(time, "monotonic", lambda: (_ for _ in ()).throw(AssertionError("wall clock used")))
    am = AlertManager(AlertConfig(dedup_s=60, persist_s=10, severity={"major": 0.6, "critical": 0.85}))
    assert am.observe("a", T0, ["threshold"], 0.55) is None
    assert am.observe("a", T0 + 5000, ["threshold"], 0.55) is None
    a1 = am.observe("a", T0 + 10_000, ["threshold"], 0.55)
    assert a1.severity == "warning" and not a1.escalation and a1.episode_start_ms == T0 + 10_000
    assert am.observe("a", T0 + 15_000, ["threshold"], 0.5) is None  # deduplicated
    a2 = am.observe("a", T0 + 20_000, ["threshold"], 0.9)  # escalation inside the episode
    assert a2.severity == "critical" and a2.escalation and a2.episode_start_ms == T0 + 10_000
    assert am.observe("a", T0 + 25_000, ["threshold"], 0.9) is None
    for t in range(30_000, 90_000, 5000):
        assert am.observe("a", T0 + t, [], 0.0) is None
    assert am.resolutions == []  # quiet for 60 s, not more
    assert am.observe("a", T0 + 90_000, [], 0.0) is None
    (r,) = am.resolutions
    assert (r.episode_start_ms, r.end_ms, r.resolved_ms, r.reason, r.severity, r.alerts) == (
        T0 + 10_000, T0 + 25_000, T0 + 90_000, "recovered", "critical", 2)
    assert r.to_dict()["episode_start"] == "2026-01-01T00:00:10Z"
    # a new episode needs its own persistent run
    assert am.observe("a", T0 + 95_000, ["threshold"], 0.55) is None
    assert am.observe("a", T0 + 100_000, ["threshold"], 0.55) is None
    a3 = am.observe("a", T0 + 105_000, ["threshold"], 0.55)
    assert a3 is not None and not a3.escalation and a3.episode_start_ms == T0 + 105_000


def test_hold_down_requires_the_condition_to_last():
    am = AlertManager(AlertConfig(hold_down_s=60, persist_s=0))
    out = _feed(am, "a", T0, 5000, [["threshold"]] * 13)
    assert [a is not None for a in out] == [False] * 12 + [True]
    am2 = AlertManager(AlertConfig(hold_down_s=60, persist_s=0, gap_s=0))
    evs = ([["threshold"]] * 10 + [[]] * 3) * 5  # runs of 50 s broken by 15 s of clean samples
    assert all(a is None for a in _feed(am2, "a", T0, 5000, evs))


def test_legacy_millisecond_keys_are_read_as_seconds():
    cfg = DetectionConfig.from_dict({"alerts": {"dedup_ms": 60_000, "hold_down_ms": 10_000}})
    assert (cfg.alerts.dedup_s, cfg.alerts.hold_down_s) == (60.0, 10.0)
    with pytest.raises(ValueError, match="dedup_s or dedup_ms"):
        DetectionConfig.from_dict({"alerts": {"dedup_ms": 1, "dedup_s": 1}})


@pytest.mark.parametrize("interval_s", [5, 240])
def test_same_config_same_decisions_at_5_s_and_240_s(interval_s):
    """A one-sample spike, then a shift lasting 2 h, then recovery: the same story at both rates."""
    am = AlertManager()
    n = int(6 * 3600 / interval_s)
    start, end = n // 3, n // 3 + int(2 * 3600 / interval_s)
    evs = [["threshold"] if (i == 10 or start <= i < end) else [] for i in range(n)]
    out = _feed(am, "a", T0, interval_s * 1000, evs)
    alerts = [i for i, a in enumerate(out) if a is not None]
    assert len(alerts) == 1 and start < alerts[0] <= start + max(2, 60 // interval_s + 1)
    (r,) = am.resolutions
    assert r.end_ms == T0 + (end - 1) * interval_s * 1000 and r.reason == "recovered"


def test_replay_with_shifted_timestamps_gives_the_same_alerts():
    seq = [(t, ["threshold"], 0.55) for t in range(0, 65_000, 5000)] + [(65_000, ["threshold"], 0.9)]
    seq += [(t, [], 0.1) for t in range(70_000, 400_000, 5000)]
    seq += [(t, ["loss", "changepoint"], 0.7) for t in range(400_000, 440_000, 5000)]

    def run(offset):
        am = AlertManager()
        out = []
        for t, ev, c in seq:
            a = am.observe("x", T0 + offset + t, ev, c)
            if a is not None:
                out.append((a.timestamp_ms - offset, a.severity, a.escalation))
        return out, [(r.episode_start_ms - offset, r.resolved_ms - offset) for r in am.resolutions]

    first = run(0)
    assert first == run(86_400_000)
    # warning after 60 s, escalation to critical, resolution after 5 min of quiet, a new episode
    assert [a[1:] for a in first[0]] == [("warning", False), ("critical", True), ("major", False)]
    assert len(first[1]) == 1


# ----------------------------------------------------------------------------- config


def test_example_yaml_loads_and_equals_the_defaults():
    cfg = load_config("config/detection.example.yaml")
    assert cfg == DetectionConfig(model_path="data/models")
    assert cfg.residual.use_pretrained_models and cfg.residual.model_path is None


def test_config_errors_name_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("detection:\n  residual:\n    use_pretrained_model: true\n")
    with pytest.raises(ValueError, match=r"residual: unknown key\(s\) \['use_pretrained_model'\]"):
        load_config(p)
    p.write_text("detection:\n  rules:\n    thresholds:\n      ecpri_ow_us: {warning: 500}\n")
    with pytest.raises(ValueError, match="ecpri_ow_us: missing 'critical'"):
        load_config(p)
    p.write_text("detection:\n  changepoint: {k: -1}\n")
    with pytest.raises(ValueError, match="changepoint.k"):
        load_config(p)
    p.write_text("detection:\n  fusion: {weights: {rule: 2.0}}\n")
    with pytest.raises(ValueError, match="noisy_or weights must be in"):
        load_config(p)
    p.write_text("detection:\n  endpoints: {x: ecpri+foo}\n")
    with pytest.raises(ValueError, match="endpoints.x"):
        load_config(p)


def test_seed_keys_and_model_path_precedence(tmp_path, monkeypatch):
    p = tmp_path / "c.yaml"
    p.write_text(
        "detection:\n  model_path: /cfg/models\n  residual:\n    use_pretrained_models: false\n    model_path: /seed/tcn\n"
        "  rules:\n    thresholds:\n      lbm_rtt_ms: null\n      udp_echo_rtt_ms: {warning: 10, critical: 20}\n"
        "  endpoints:\n    o-ru-9: [lbm, ecpri]\n"
    )
    cfg = load_config(p)
    assert not cfg.residual.active
    assert "lbm_rtt_ms" not in cfg.rules.thresholds and cfg.rules.thresholds["udp_echo_rtt_ms"].warning == 10
    assert cfg.endpoints == {"o-ru-9": "ecpri+lbm"}
    monkeypatch.delenv("OCAD_MODEL_DIR", raising=False)
    assert str(cfg.resolve_model_path()) == "/cfg/models"
    assert str(cfg.resolve_model_path(detector="residual")) == "/seed/tcn"
    monkeypatch.setenv("OCAD_MODEL_DIR", "/env/models")
    assert str(cfg.resolve_model_path(detector="multivariate")) == "/env/models"
    assert str(cfg.resolve_model_path("/cli/models", "multivariate")) == "/cli/models"


def test_multivariate_detector_alone_matches_the_pipeline(models):
    from model_fixtures import SAMPLE_COLUMNS

    from ocad_detectors.multivariate import MultivariateDetector
    from ocad_detectors.pipeline import DetectionPipeline
    from ocad_detectors.samples import iter_samples

    built = cached_model_registry()
    det = MultivariateDetector(model=models.iforest)
    pipe = DetectionPipeline(models=models)
    frame = built.test[SAMPLE_COLUMNS].head(600)
    alone = [det.score_one(s) for s in iter_samples(frame)]
    together = [pipe.process(s) for s in iter_samples(frame)]
    assert [o.score for o in alone] == [r.scores["multivariate"] for r in together]
    assert any(o.score > 0 for o in alone)
    with pytest.raises(ValueError, match="lbm_success"):
        det.score_one(Sample(T0, "x", lbm_success="maybe"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.floats(0.0, 20.0), st.just(NAN)), min_size=1, max_size=400), st.integers(1, 300), st.floats(0.5, 3.0))
def test_change_point_batch_equals_streaming(xs, step_s, h):
    cfg = ChangePointConfig.from_dict({"h": h, "min_duration_s": 60.0, "warmup_s": 60.0, "reference_window_s": 120.0})
    x = np.array(xs)
    ts = (T0 + 1000 * step_s * np.arange(len(x))).tolist()
    score, ev, changes, _, _ = ChangePointDetector(cfg).score_series("a", ts, np.full(len(x), NAN), np.full(len(x), NAN), x)
    det = ChangePointDetector(cfg)
    state = det.new_state("a")
    out = [det.update(state, t, NAN, NAN, v) for t, v in zip(ts, xs)]
    assert [o[0] for o in out] == score.tolist() and [o[1] for o in out] == ev.tolist()
    assert {i: o[2] for i, o in enumerate(out) if o[2]} == changes


def test_configured_reference_statistics(tmp_path):
    import json

    recs = [{"endpoint_id": "*", "signal": "udp_echo_rtt_ms", "mean": 5.0, "std": 0.3}]
    (tmp_path / "ref.json").write_text(json.dumps(recs))
    p = tmp_path / "c.yaml"
    p.write_text(f"detection:\n  changepoint:\n    reference: {tmp_path / 'ref.json'}\n")
    assert load_config(p).changepoint.reference_stats().pooled == {"udp_echo_rtt_ms": (5.0, 0.3)}
    p.write_text("detection:\n  changepoint:\n    reference:\n      - {endpoint_id: a, signal: lbm_rtt_ms, mean: 8, std: 0.5}\n")
    assert load_config(p).changepoint.reference_stats().per_endpoint == {("a", "lbm_rtt_ms"): (8.0, 0.5)}
    p.write_text("detection:\n  changepoint:\n    reference:\n      - {endpoint_id: a, signal: lbm_rtt_ms, mean: 8}\n")
    with pytest.raises(ValueError, match="changepoint.reference: bad record"):
        load_config(p)
