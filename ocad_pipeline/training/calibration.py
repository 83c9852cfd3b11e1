"""Thresholds calibrated to a false-alert budget on healthy data, not fitted to a few anomalies.

A detector's threshold is the ``1 - target_rate`` quantile of its score on *healthy* (unlabelled
or normal) validation rows, so that about ``target_rate`` of healthy samples carry its evidence;
the alert policy's persistence then turns those scattered exceedances into (almost) no alerts.
Where there is data enough, each endpoint gets its own threshold; otherwise the pooled one
(the documented fallback). A pool smaller than ``min_pooled_rows`` takes the ``fallback`` scores
(for the Isolation Forest: out-of-fold scores of the normal training rows), never a threshold
fitted on a few dozen rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DEFAULT_TARGET_RATE", "MIN_ENDPOINT_ROWS", "MIN_POOLED_ROWS", "budget_calibration", "budget_quantile"]

#: share of healthy samples allowed to carry one detector's evidence
DEFAULT_TARGET_RATE = 0.002
#: an endpoint needs this many healthy rows for its own threshold
MIN_ENDPOINT_ROWS = 2000
#: below this many healthy rows the pool is too small to calibrate on
MIN_POOLED_ROWS = 500


def budget_quantile(scores: np.ndarray, target_rate: float) -> float:
    """The smallest observed score with at most ``target_rate`` of ``scores`` above it."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("no finite healthy scores to calibrate on")
    return float(np.quantile(s, 1.0 - target_rate, method="higher"))


def budget_calibration(
    scores: np.ndarray,
    endpoints: np.ndarray,
    target_rate: float = DEFAULT_TARGET_RATE,
    *,
    source: str = "healthy validation rows",
    fallback: np.ndarray | None = None,
    fallback_source: str = "",
    min_endpoint_rows: int = MIN_ENDPOINT_ROWS,
    min_pooled_rows: int = MIN_POOLED_ROWS,
) -> dict[str, Any]:
    """Pooled and per-endpoint thresholds at ``target_rate`` (the record goes to metadata.json)."""
    if not 0.0 < target_rate < 0.5:
        raise ValueError(f"target_rate must be in (0, 0.5), got {target_rate}")
    scores = np.asarray(scores, dtype=np.float64)
    endpoints = np.asarray(endpoints).astype(str)
    ok = np.isfinite(scores)
    scores, endpoints = scores[ok], endpoints[ok]
    pool, pool_source = scores, source
    if scores.size < min_pooled_rows and fallback is not None and np.isfinite(fallback).sum() > scores.size:
        pool, pool_source = np.asarray(fallback, dtype=np.float64), fallback_source
    pooled = budget_quantile(pool, target_rate)
    per_endpoint: dict[str, float] = {}
    counts: dict[str, int] = {}
    for ep in np.unique(endpoints):
        sel = scores[endpoints == ep]
        counts[str(ep)] = int(sel.size)
        if sel.size >= min_endpoint_rows:
            per_endpoint[str(ep)] = budget_quantile(sel, target_rate)
    return {
        "method": "budget",
        "target_rate": float(target_rate),
        "pooled": pooled,
        "pooled_source": pool_source,
        "pooled_rows": int(np.isfinite(pool).sum()),
        "pooled_rate_observed": float(np.mean(pool[np.isfinite(pool)] > pooled)),
        "per_endpoint": per_endpoint,
        "rows_per_endpoint": counts,
        "min_endpoint_rows": int(min_endpoint_rows),
        "min_pooled_rows": int(min_pooled_rows),
        "fallback": (
            "endpoints with fewer healthy rows than min_endpoint_rows use the pooled threshold; "
            "a pool smaller than min_pooled_rows uses " + (fallback_source or "what it has")
        ),
    }
