"""LevelShiftDetector on synthetic series: one record per lasting shift, both directions,
re-anchoring, spike robustness, time scaling, batch == streaming, state round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ocad_detectors.levels import ChangeRecord, LevelShiftConfig, LevelShiftDetector, LevelShiftState

DT_MS = 240_000  # RIPE Atlas-like probing, what the defaults were tuned for
T0 = 1_700_000_000_000


def _series(n: int, level: float = 100.0, noise: float = 0.3, seed: int = 0, dt_ms: int = DT_MS) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(n, dtype=np.int64) * dt_ms
    return ts, level + noise * rng.standard_normal(n)


def _run(x: np.ndarray, ts: np.ndarray, cfg: LevelShiftConfig | None = None):
    det = LevelShiftDetector(cfg)
    return det.run_series(ts, x, endpoint_id="ep1", signal="udp_echo_rtt_ms", unit="ms")


def _index(ts: np.ndarray, rec: ChangeRecord) -> int:
    return int(np.searchsorted(ts, rec.change_ms))


def test_persistent_upward_shift_gives_one_record_and_re_anchors() -> None:
    ts, x = _series(1200)
    start = 400
    x[start:] += 5.0  # 5 % up, for the rest of the series (3 days at 240 s)
    scores, ev, recs = _run(x, ts)
    assert len(recs) == 1, [r.to_dict() for r in recs]
    r = recs[0]
    assert r.direction == "up"
    assert abs(_index(ts, r) - start) <= 2
    assert r.detected_ms > r.change_ms  # detected later, reported at the estimated start
    assert r.level_before == pytest.approx(100.0, abs=0.5)
    assert r.level_after == pytest.approx(105.0, abs=0.5)
    assert (r.endpoint_id, r.signal, r.unit) == ("ep1", "udp_echo_rtt_ms", "ms")
    det_i = int(np.searchsorted(ts, r.detected_ms))
    ev = np.asarray(ev)
    assert not ev[:det_i].any()
    assert ev[det_i]  # evidence from the confirming sample on ...
    # ... until the new level has held rebaseline_s, then it is the normal level
    hold = int(round(LevelShiftConfig().rebaseline_s * 1000 / DT_MS))
    assert not ev[start + hold + 1:].any()
    assert ev.sum() < hold + 2  # not days of alarm
    assert max(scores[start + hold + 2:]) < 0.5


def test_single_huge_sample_is_not_a_shift() -> None:
    ts, x = _series(600, seed=1)
    x[300] += 60.0  # hundreds of sigma, one late reply
    scores, ev, recs = _run(x, ts)
    assert recs == []
    assert not any(ev)


def test_short_burst_of_jitter_is_not_a_shift() -> None:
    ts, x = _series(600, seed=2)
    x[300:303] += np.array([40.0, 25.0, 55.0])  # three late replies in a row
    _, ev, recs = _run(x, ts)
    assert recs == [] and not any(ev)


def test_downward_shift_gives_down_record_and_no_evidence() -> None:
    ts, x = _series(800, seed=3)
    x[350:] -= 6.0
    _, ev, recs = _run(x, ts)
    assert [r.direction for r in recs] == ["down"]
    assert abs(_index(ts, recs[0]) - 350) <= 2
    assert recs[0].level_after < recs[0].level_before
    assert not any(ev)


def test_up_then_recovery_gives_two_records_and_evidence_ends_at_recovery() -> None:
    ts, x = _series(900, seed=4)
    x[300:330] += 8.0  # two hours up, then back (shorter than rebaseline_s would not matter)
    _, ev, recs = _run(x, ts, LevelShiftConfig(rebaseline_s=86_400.0))
    assert [r.direction for r in recs] == ["up", "down"]
    assert abs(_index(ts, recs[0]) - 300) <= 2 and abs(_index(ts, recs[1]) - 330) <= 2
    ev = np.asarray(ev)
    down_i = int(np.searchsorted(ts, recs[1].detected_ms))
    assert ev[down_i - 1] and not ev[down_i:].any()


def test_missing_values_are_skipped() -> None:
    ts, x = _series(900, seed=5)
    x[400:] += 5.0
    x[::7] = np.nan  # every 7th reply lost
    x[401] = np.nan
    _, _, recs = _run(x, ts)
    assert len(recs) == 1 and recs[0].direction == "up"
    assert abs(_index(ts, recs[0]) - 400) <= 2


def test_heavy_tailed_healthy_noise_gives_no_record() -> None:
    rng = np.random.default_rng(6)
    n = 5000
    ts = T0 + np.arange(n, dtype=np.int64) * DT_MS
    x = 150.0 + 0.4 * rng.standard_normal(n) + rng.exponential(0.3, n)  # skewed queueing delay
    spikes = rng.choice(n, 25, replace=False)
    x[spikes] += rng.uniform(10.0, 80.0, spikes.size)  # one late reply in a few hundred
    _, ev, recs = _run(x, ts)
    assert recs == [] and not any(ev)


def test_same_decisions_at_5s_and_240s_with_time_scaled_config() -> None:
    ts240, x = _series(1500, seed=7)
    x[500:] += 4.0
    x[900:] -= 9.0
    x[1200] += 50.0
    ts5 = T0 + np.arange(x.size, dtype=np.int64) * 5_000
    cfg240 = LevelShiftConfig()
    cfg5 = cfg240.scaled(48.0)
    s240, e240, r240 = _run(x, ts240, cfg240)
    s5, e5, r5 = _run(x, ts5, cfg5)
    assert len(r240) == 2
    assert [(r.direction, _index(ts240, r), r.level_before, r.level_after) for r in r240] == [
        (r.direction, _index(ts5, r), r.level_before, r.level_after) for r in r5
    ]
    assert s240 == s5 and e240 == e5


def test_interval_is_inferred_per_state() -> None:
    """One detector, two endpoints at different intervals: each gets its own sample counts."""
    det = LevelShiftDetector(LevelShiftConfig().scaled(1.0))
    _, x = _series(900, seed=8)
    x[400:] += 5.0
    fast = T0 + np.arange(x.size, dtype=np.int64) * 5_000
    slow = T0 + np.arange(x.size, dtype=np.int64) * DT_MS
    a = det.new_state("fast", "rtt")
    b = det.new_state("slow", "rtt")
    ra = [r for t, v in zip(fast, x) if (r := det.update(a, int(t), float(v))[2])]
    rb = [r for t, v in zip(slow, x) if (r := det.update(b, int(t), float(v))[2])]
    assert a.dt == 5_000 and b.dt == DT_MS
    # the same 1,920 s minimum duration is 384 samples at 5 s: the confirmation comes later
    assert len(rb) == 1 and len(ra) == 1
    assert int(np.searchsorted(fast, ra[0].detected_ms)) > int(np.searchsorted(slow, rb[0].detected_ms)) + 300


def test_batch_equals_streaming_bit_for_bit() -> None:
    ts, x = _series(2000, seed=9)
    x[600:] += 6.0
    x[1400:] -= 3.0
    x[::11] = np.nan
    det = LevelShiftDetector()
    b_scores, b_ev, b_recs = det.run_series(ts, x, "e", "s", "ms")
    st = det.new_state("e", "s", "ms")
    s_scores, s_ev, s_recs = [], [], []
    for t, v in zip(ts.tolist(), x.tolist()):
        s, e, r = det.update(st, t, v)
        s_scores.append(s)
        s_ev.append(e)
        if r is not None:
            s_recs.append(r)
    assert b_scores == s_scores and b_ev == s_ev and b_recs == s_recs
    assert len(b_recs) == 2
    assert all(0.0 <= s <= 1.0 for s in b_scores)


def test_state_is_json_and_round_trips() -> None:
    ts, x = _series(1000, seed=10)
    x[500:] += 5.0
    det = LevelShiftDetector()
    st = det.new_state("e", "s", "ms")
    for t, v in zip(ts[:450].tolist(), x[:450].tolist()):
        det.update(st, t, v)
    d = json.loads(json.dumps(st.to_dict(), allow_nan=False))
    st2 = LevelShiftState.from_dict(d)
    rest = list(zip(ts[450:].tolist(), x[450:].tolist()))
    out1 = [det.update(st, t, v) for t, v in rest]
    out2 = [det.update(st2, t, v) for t, v in rest]
    assert out1 == out2
    assert sum(r is not None for _, _, r in out1) == 1
    with pytest.raises(ValueError, match="missing field"):
        LevelShiftState.from_dict({"n": 1})


def test_fresh_state_to_dict_has_no_nan() -> None:
    json.dumps(LevelShiftState().to_dict(), allow_nan=False)


def test_change_record_to_dict() -> None:
    r = ChangeRecord("ep", "udp_echo_rtt_ms", "up", 10, 20, 1.0, 2.0, "ms")
    assert r.to_dict() == {"endpoint_id": "ep", "signal": "udp_echo_rtt_ms", "direction": "up", "change_ms": 10,
                           "detected_ms": 20, "level_before": 1.0, "level_after": 2.0, "unit": "ms",
                           "event": "change", "change_time": "1970-01-01T00:00:00.010Z"}


def test_score_one_keeps_state_per_key_and_rejects_bad_input() -> None:
    det = LevelShiftDetector()
    ts, x = _series(700, seed=11)
    x[300:] += 5.0
    recs = [r for t, v in zip(ts.tolist(), x.tolist()) if (r := det.score_one("ep", "rtt", t, v, "ms")[2])]
    assert len(recs) == 1
    assert det.score_one("other", "rtt", int(ts[0]), None) == (0.0, False, None)  # missing: skipped
    with pytest.raises(ValueError, match="value"):
        det.score_one("ep", "rtt", int(ts[-1]) + DT_MS, "12.5")
    with pytest.raises(ValueError, match="ts_ms"):
        det.score_one("ep", "rtt", None, 1.0)  # type: ignore[arg-type]


def test_disabled_detector_does_nothing() -> None:
    ts, x = _series(600, seed=12)
    x[300:] += 10.0
    scores, ev, recs = _run(x, ts, LevelShiftConfig(enabled=False))
    assert recs == [] and not any(ev) and not any(scores)


def test_backward_and_duplicate_time_stamps_do_not_break_it() -> None:
    ts, x = _series(800, seed=13)
    x[400:] += 5.0
    ts = ts.copy()
    ts[100] = ts[99]  # duplicate
    ts[200] = ts[198]  # backward step
    _, _, recs = _run(x, ts)
    assert len(recs) == 1 and recs[0].direction == "up"


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"k": -1.0}, "levels.k"),
        ({"h": 0.0}, "levels.h"),
        ({"clip": 0.4, "k": 0.5}, "clip"),
        ({"min_duration_s": 0.0}, "min_duration_s"),
        ({"reference_window_s": math.inf}, "reference_window_s"),
        ({"min_shift_sigma": 0.0, "min_shift_rel": 0.0}, "both be 0"),
        ({"enabled": "yes"}, "enabled"),
        ({"min_snr": "2"}, "min_snr"),
    ],
)
def test_config_validation(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LevelShiftConfig(**kw)


def test_config_from_dict_rejects_unknown_keys() -> None:
    assert LevelShiftConfig.from_dict({"h": 3.0}).h == 3.0
    with pytest.raises(ValueError, match="unknown key"):
        LevelShiftConfig.from_dict({"min_duration": 60})
