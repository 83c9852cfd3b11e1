"""Budget calibration (ocad_pipeline.training.calibration): the sustained-level raise."""

from __future__ import annotations

import numpy as np
import pytest

from ocad_pipeline.training.calibration import budget_calibration, sustained_level

T0 = 1_767_225_600_000


def _healthy(n: int, seed: int) -> np.ndarray:
    """Autocorrelated healthy scores (like window features): exceedances come in runs."""
    rng = np.random.default_rng(seed)
    x = np.empty(n)
    x[0] = 0.0
    for i in range(1, n):
        x[i] = 0.97 * x[i - 1] + rng.standard_normal()
    return 0.5 + 0.01 * x


def test_sustained_level_is_the_largest_rolling_median_and_respects_gaps():
    x = np.full(100, 0.5)
    x[40:44] = 0.9  # four rows high (20 s at 5 s)
    t = T0 + np.arange(100) * 5000
    assert sustained_level(x, t, 20.0) == pytest.approx(0.9)  # a 4-row window inside the excursion
    assert sustained_level(x, t, 60.0) == pytest.approx(0.5)  # 12-row windows: a third is high
    t2 = t.copy()
    t2[42:] += 3_600_000  # an hour's gap splits the excursion into two halves
    assert sustained_level(x, t2, 20.0) == pytest.approx(0.7)  # no 4 consecutive rows are high
    assert sustained_level(x[:2], t[:2], 60.0) is None


def test_sustained_raise_bounds_alert_runs_on_unseen_healthy_data():
    n = 6000
    val = _healthy(n, 1)
    t = T0 + np.arange(n) * 5000
    eps = np.array(["ep"] * n)
    plain = budget_calibration(val, eps, 0.002, min_endpoint_rows=100)
    raised = budget_calibration(val, eps, 0.002, min_endpoint_rows=100, times_ms=t, sustain_s=60.0)
    assert raised["per_endpoint"]["ep"] >= plain["per_endpoint"]["ep"]  # raise only, never lower
    assert raised["sustained_level_per_endpoint"]["ep"] == pytest.approx(sustained_level(val, t, 60.0))
    assert raised["sustain_s"] == 60.0 and plain["sustain_s"] is None

    def sustained_runs(x: np.ndarray, thr: float) -> int:
        win = np.lib.stride_tricks.sliding_window_view(x, 12)
        hot = np.median(win, axis=1) > thr
        return int(np.sum(hot[1:] & ~hot[:-1]) + hot[0])

    unseen = [_healthy(n, s) for s in range(2, 12)]
    before = sum(sustained_runs(u, plain["per_endpoint"]["ep"]) for u in unseen)
    after = sum(sustained_runs(u, raised["per_endpoint"]["ep"]) for u in unseen)
    assert after < before  # fewer runs that would outlast the alert persistence


def test_endpoints_with_few_rows_get_a_raised_threshold_never_below_the_pool():
    a = _healthy(400, 3)
    b = _healthy(400, 4) + 0.05  # a noisier endpoint sits higher
    scores = np.concatenate([a, b])
    eps = np.array(["a"] * 400 + ["b"] * 400)
    t = np.concatenate([T0 + np.arange(400) * 60_000] * 2)
    cal = budget_calibration(scores, eps, 0.002, min_pooled_rows=100, times_ms=t, sustain_s=60.0)
    assert all(v >= cal["pooled"] for v in cal["per_endpoint"].values())
    assert "b" in cal["raised_to_sustained_level"]
    assert cal["per_endpoint"]["b"] == pytest.approx(cal["sustained_level_per_endpoint"]["b"])
