"""The alert policy end to end through DetectionPipeline (rules-only, no models): persistence,
critical levels, resolution, time-based behaviour at 5 s and 240 s probes, batch == streaming."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ocad_detectors.config import DetectionConfig
from ocad_detectors.modelset import ModelSet
from ocad_detectors.pipeline import DetectionPipeline

T0 = 1_767_225_600_000


def _rules_only() -> DetectionPipeline:
    cfg = DetectionConfig.from_dict({"residual": {"enabled": False}, "multivariate": {"enabled": False}})
    return DetectionPipeline(cfg, models=ModelSet())


def _series(n: int, interval_s: float, base: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = T0 + (np.arange(n) * interval_s * 1000).astype(np.int64)
    x = base * (1.0 + 0.03 * rng.standard_normal(n))
    return ts, x


def _frame(ts, x, ep="ep-1") -> pd.DataFrame:
    return pd.DataFrame({"timestamp_ms": ts, "endpoint_id": ep, "udp_echo_rtt_ms": x})


def _stream(pipe, frame):
    return [pipe.process(r) for r in frame.to_dict("records")]


def test_a_benign_spike_does_not_alert_but_a_sustained_shift_of_the_same_height_does():
    ts, x = _series(2000, 5, 4.0)
    spike = x.copy()
    spike[500] = 4.0 * 3.5  # one late reply, 3.5x the baseline (below the 5x critical level)
    res = _rules_only().score_frame(_frame(ts, spike))
    assert res.scores["rule"][500] > 0.5 and not res.alerts  # evidence, but no page
    shift = x.copy()
    shift[500:900] = 4.0 * 3.5  # the same height for 2000 s
    res = _rules_only().score_frame(_frame(ts, shift))
    assert len(res.alerts) == 1
    a = res.alerts[0]
    assert a.timestamp_ms == T0 + 512 * 5000  # after persisting 60 s
    assert a.explanation[0].evidence == "threshold" and "2026-01-01T" in a.message
    assert "sustained for 60 s since 2026-01-01T00:41:40Z" in a.message and a.evidence_since_ms == T0 + 500 * 5000
    assert len(res.resolutions) == 1
    r = res.resolutions[0]
    assert r.end_ms == T0 + 899 * 5000 and r.resolved_ms > r.end_ms and r.reason == "recovered"


def test_a_critical_level_alerts_on_the_first_sample():
    ts, x = _series(200, 5, 4.0)
    x[100] = 4.0 * 8  # past the critical level (5x the baseline)
    res = _rules_only().score_frame(_frame(ts, x))
    assert [a.timestamp_ms for a in res.alerts] == [int(ts[100])] and res.alerts[0].severity == "critical"
    assert "spike (a single sample at a critical level)" in res.alerts[0].message


@pytest.mark.parametrize("interval_s", [5, 240])
def test_the_same_config_decides_the_same_at_5_s_and_240_s(interval_s):
    """Same story in sample time: spikes, a 3 h shift, a 1 h loss of replies; 300 ms baseline."""
    hours = 24
    n = int(hours * 3600 / interval_s)
    ts, x = _series(n, interval_s, 300.0, seed=1)
    at = lambda h: int(h * 3600 / interval_s)  # noqa: E731 - index of hour h
    for h in (1.0, 2.5, 4.0):
        x[at(h)] = 300.0 * 3  # isolated benign spikes
    x[at(6) : at(9)] = 300.0 * 3  # a lasting degradation
    x[at(14) : at(15)] = np.nan  # replies lost for an hour
    res = _rules_only().score_frame(_frame(ts, x))
    starts = [(a.timestamp_ms - T0) / 3.6e6 for a in res.alerts if not a.escalation]
    assert len(starts) == 2
    late = max(65, 2 * interval_s) / 3600  # persistence (60 s) or one more probe, whichever is longer
    assert 6 <= starts[0] <= 6 + late and 14 <= starts[1] <= 14 + late + interval_s / 3600
    # the 3 h shift: one alert, adopted as the new baseline after an hour (one resolution saying
    # so), then one change record up and one down, at the first sample of each new level
    assert [r.reason for r in res.resolutions] == ["rebaselined", "recovered"]
    assert 7 <= (res.resolutions[0].resolved_ms - T0) / 3.6e6 <= 7.2
    changes = [(c.direction, c.signal, (c.change_ms - T0) / 1000 / interval_s) for c in res.change_records]
    assert [c[:2] for c in changes] == [("up", "udp_echo_rtt_ms"), ("down", "udp_echo_rtt_ms")]
    assert abs(changes[0][2] - at(6)) <= 2 and abs(changes[1][2] - at(9)) <= 2


def test_batch_equals_streaming_for_alerts_and_resolutions():
    ts, x = _series(3000, 5, 6.0, seed=4)
    x[400:600] *= 3.0
    x[1000] *= 9.0
    x[1500:1530] = np.nan
    x[2000:2600] = np.linspace(6.0, 40.0, 600)
    frame = _frame(ts, x)
    batch = _rules_only().score_frame(frame).results()
    stream = _stream(_rules_only(), frame)
    assert [(r.status, r.scores, r.evidence) for r in batch] == [(r.status, r.scores, r.evidence) for r in stream]
    assert [r.alert.to_dict() if r.alert else None for r in batch] == [r.alert.to_dict() if r.alert else None for r in stream]
    assert [r.resolved for r in batch] == [r.resolved for r in stream]
    assert sum(r.alert is not None for r in batch) >= 3 and sum(r.resolved is not None for r in batch) >= 3


def test_jitter_growth_without_a_mean_change_alerts_and_explains_itself():
    ts, x = _series(2000, 5, 4.0, seed=3)
    quiet = _rules_only().score_frame(_frame(ts, x))
    assert not quiet.alerts  # healthy Gaussian scatter: no page
    rng = np.random.default_rng(4)
    jit = x.copy()
    jit[800:1000] += 4.0 * 0.03 * 5.0 * rng.standard_normal(200)  # 5x the scatter, same mean
    assert abs(np.median(jit[800:1000]) - 4.0) < 0.2
    res = _rules_only().score_frame(_frame(ts, jit))
    assert res.alerts, "a five-fold growth of the scatter must alert"
    a = res.alerts[0]
    assert int(ts[800]) <= a.timestamp_ms <= int(ts[800]) + 120_000  # within two minutes
    assert "jitter grew" in a.message and a.evidence == ("changepoint",)
    assert res.resolutions and res.resolutions[0].reason == "recovered"


def test_one_sided_deviations_are_not_jitter():
    """A level that drops back (a recovery) deviates below the old level only: no jitter."""
    from ocad_detectors.levels import LevelShiftDetector

    ts, x = _series(3000, 5, 4.0, seed=5)
    x[1000:] -= 0.8  # a lasting drop of 20 %
    det = LevelShiftDetector()
    st = det.new_state("ep", "udp_echo_rtt_ms", "ms")
    jit = []
    for t, v in zip(ts.tolist(), x.tolist()):
        det.update(st, t, v)
        jit.append(min(st.jit, st.jitd))
    assert max(jit) < det.config.jitter_h


def test_intermittent_loss_alerts_once_explained_by_its_share_and_resolves():
    """40 % of replies missing for 4 min, never two in a row: one alert, batch == streaming."""
    ts, x = _series(600, 5, 4.0, seed=6)
    rng = np.random.default_rng(7)
    lossy = np.zeros(600, dtype=bool)
    lossy[300:348] = rng.random(48) < 0.4
    lossy[300:348] &= ~np.r_[False, lossy[300:347]]  # no two lost in a row
    x[lossy] = np.nan
    frame = _frame(ts, x)
    res = _rules_only().score_frame(frame)
    starts = [a for a in res.alerts if not a.escalation]
    assert len(starts) == 1 and int(ts[300]) <= starts[0].timestamp_ms <= int(ts[348])
    assert "of the last 12 probes without a reply" in starts[0].message
    assert len(res.resolutions) == 1 and res.resolutions[0].reason == "recovered"
    stream = _stream(_rules_only(), frame)
    assert [a.to_dict() for a in res.alerts] == [r.alert.to_dict() for r in stream if r.alert]
