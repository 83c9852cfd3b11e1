"""Metric functions on hand-computed cases."""

import math

import numpy as np
import pandas as pd
import pytest

from ocad_pipeline.evaluation import best_f1_threshold, eventwise, pointwise, roc_auc


def test_pointwise_counts_and_rates():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], bool)
    p = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0], bool)
    m = pointwise(y, p, scores=np.array([0.9, 0.8, 0.3, 0.7, 0.1, 0.2, 0.1, 0.0, 0.1, 0.2]))
    assert m["confusion_matrix"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 6}
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1_score"] == pytest.approx(2 / 3)
    assert m["false_alarm_rate"] == pytest.approx(1 / 7)
    # positives 0.9, 0.8, 0.3 vs 7 negatives: 0.9 and 0.8 beat all 7, 0.3 beats 6 of 7 (not 0.7) -> 20/21
    assert m["roc_auc"] == pytest.approx(20 / 21)


def test_roc_auc_ties_and_single_class():
    assert roc_auc(np.array([1, 0], bool), np.array([0.5, 0.5])) == pytest.approx(0.5)
    # one implementation (ocad_pipeline.training.metrics): NaN when undefined, None in a JSON report
    assert math.isnan(roc_auc(np.array([0, 0], bool), np.array([0.1, 0.2])))
    assert pointwise(np.array([0, 0], bool), np.array([0, 1], bool), scores=np.array([0.1, 0.2]))["roc_auc"] is None


def test_best_f1_threshold_without_anomalies_is_the_99th_percentile():
    s = np.linspace(0.0, 1.0, 101)
    assert best_f1_threshold(np.zeros(101, bool), s) == (pytest.approx(0.99), 0.0)


def _stream(n=40, step=5000):
    return pd.DataFrame({"endpoint_id": ["a"] * n, "timestamp_ms": np.arange(n) * step})


def test_eventwise_counts_each_incident_once_and_measures_mttd_and_lead_time():
    s = _stream()
    inc = pd.DataFrame(
        {
            "incident_id": ["i1", "i2", "i3"],
            "endpoint_id": ["a", "a", "a"],
            "type": ["spike", "drift", "loss"],
            "start": [10_000, 50_000, 150_000],  # samples 2.., 10.., 30..
            "end": [30_000, 120_000, 170_000],  # i2: samples 10..23, outage from sample 20
            "outage_start": pd.array([None, 100_000, None], dtype="Int64"),
        }
    )
    f = np.zeros(40, bool)
    f[[4, 5, 6]] = True  # one predicted event inside i1, first flag at 20 s -> ttd 10 s
    f[[13, 14]] = True  # inside i2 at 65 s, 35 s before the outage at 100 s
    f[[35]] = True  # false alarm
    r = eventwise(s, f, inc)
    m = r.metrics
    assert m["incidents"] == 3 and m["detected"] == 2
    assert m["predicted_events"] == 3 and m["false_alarm_events"] == 1
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["mttd_seconds"] == pytest.approx((10 + 15) / 2)
    assert m["lead_time_p50_minutes"] == pytest.approx(35 / 60)
    assert m["outage_incidents"] == 1 and m["warned_before_outage"] == 1
    per = r.per_incident.set_index("incident_id")
    assert not per.loc["i3", "detected"]


def test_alert_only_during_the_outage_gives_no_lead_time():
    s = _stream()
    inc = pd.DataFrame(
        {"incident_id": ["i"], "endpoint_id": ["a"], "type": ["drift"], "start": [50_000], "end": [120_000],
         "outage_start": pd.array([100_000], dtype="Int64")}
    )
    f = np.zeros(40, bool)
    f[21] = True  # 105 s: after the outage started
    m = eventwise(s, f, inc).metrics
    assert m["detected"] == 1 and m["warned_before_outage"] == 0 and m["lead_time_p50_minutes"] is None


def test_event_wise_is_not_point_adjust():
    """A single flagged sample inside a long incident is one detection, not a full segment of TPs."""
    s = _stream()
    inc = pd.DataFrame(
        {"incident_id": ["i"], "endpoint_id": ["a"], "type": ["drift"], "start": [0], "end": [200_000],
         "outage_start": pd.array([None], dtype="Int64")}
    )
    f = np.zeros(40, bool)
    f[3] = True
    y = (s["timestamp_ms"] < 200_000).to_numpy()
    assert eventwise(s, f, inc).metrics["recall"] == 1.0
    assert pointwise(y, f)["recall"] == pytest.approx(1 / 40)


def test_best_threshold_uses_given_scores_only():
    y = np.array([0] * 90 + [1] * 10, bool)
    s = np.concatenate([np.linspace(0, 0.5, 90), np.linspace(0.8, 1.0, 10)])
    t, f1 = best_f1_threshold(y, s)
    assert 0.5 <= t < 0.8 and f1 == pytest.approx(1.0)


def test_eventwise_without_incidents_in_the_stream():
    s = _stream()
    inc = pd.DataFrame({"incident_id": ["x"], "endpoint_id": ["other"], "type": ["spike"], "start": [0], "end": [10_000],
                        "outage_start": pd.array([None], dtype="Int64")})
    f = np.zeros(40, bool)
    f[5] = True
    m = eventwise(s, f, inc).metrics
    assert m["incidents"] == 0 and m["predicted_events"] == 1 and m["false_alarm_events"] == 1
    assert m["recall"] == 0.0 and m["mttd_seconds"] is None and m["lead_time_p50_minutes"] is None
