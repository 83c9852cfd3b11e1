"""Thresholds calibrated to a false-alert budget on healthy data, not fitted to a few anomalies.

A detector's threshold is the ``1 - target_rate`` quantile of its score on *healthy* (unlabelled
or normal) validation rows, so that about ``target_rate`` of healthy samples carry its evidence;
the alert policy's persistence then turns those scattered exceedances into (almost) no alerts.
Where there is data enough, each endpoint gets its own threshold; otherwise the pooled one
(the documented fallback). A pool smaller than ``min_pooled_rows`` takes the ``fallback`` scores
(for the Isolation Forest: out-of-fold scores of the normal training rows), never a threshold
fitted on a few dozen rows.

A row budget alone does not bound *alerts*: window features are autocorrelated, so healthy
exceedances come in runs, and a run that lasts the alert policy's persistence is a false alert.
With ``times_ms`` and ``sustain_s`` the calibration also takes, per endpoint, the highest level
that healthy validation data *sustained* (the largest rolling median over ``sustain_s`` of
consecutive rows) and raises the threshold to it: evidence must be higher than anything healthy
held for that long (an endpoint without enough rows for its own row quantile gets its own
threshold this way, never below the pooled one). The pooled threshold is raised to the median
of those levels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_ALERTS_PER_DAY", "DEFAULT_SUSTAIN_S", "DEFAULT_TARGET_RATE", "MIN_ENDPOINT_ROWS", "MIN_POOLED_ROWS",
    "alert_budget_level", "budget_calibration", "budget_quantile", "sustained_level",
]

#: share of healthy samples allowed to carry one detector's evidence
DEFAULT_TARGET_RATE = 0.002
#: an endpoint needs this many healthy rows for its own threshold
MIN_ENDPOINT_ROWS = 2000
#: below this many healthy rows the pool is too small to calibrate on
MIN_POOLED_ROWS = 500
#: false alerts per endpoint-day one detector may add on healthy data (a share of the fleet
#: budget of 1 per endpoint-day; ``alert_budget_level``)
DEFAULT_ALERTS_PER_DAY = 0.25
#: the span a healthy level must be held to count as sustained: the alert policy's default
#: persistence (``ocad_detectors.config.AlertConfig.persist_s``)
DEFAULT_SUSTAIN_S = 60.0


def _sustained_series(scores: np.ndarray, times_ms: np.ndarray, sustain_s: float) -> tuple[np.ndarray, float]:
    """Per row (time order): the median of the last ``sustain_s`` of consecutive rows (NaN
    before a full window or across a break of more than 2.5 intervals), and the interval (ms)."""
    order = np.argsort(times_ms, kind="stable")
    t = np.asarray(times_ms, dtype=np.float64)[order]
    x = np.asarray(scores, dtype=np.float64)[order]
    out = np.full(x.size, np.nan)
    d = np.diff(t)
    d = d[d > 0]
    if d.size == 0:
        return out, 0.0
    interval = float(np.median(d))
    n = max(2, int(round(sustain_s * 1000.0 / interval)))
    breaks = np.flatnonzero(np.diff(t) > 2.5 * interval) + 1
    start = 0
    for seg in np.split(x, breaks):
        if seg.size >= n:
            out[start + n - 1 : start + seg.size] = np.nanmedian(np.lib.stride_tricks.sliding_window_view(seg, n), axis=1)
        start += seg.size
    return out, interval


def sustained_level(scores: np.ndarray, times_ms: np.ndarray, sustain_s: float) -> float | None:
    """The largest rolling median over ``sustain_s`` of consecutive rows of one endpoint (rows
    further apart than 2.5 intervals start a new stretch); None without a full window."""
    if np.size(times_ms) < 3:
        return None
    m, _ = _sustained_series(scores, times_ms, sustain_s)
    return float(np.nanmax(m)) if np.isfinite(m).any() else None


def _episodes(m: np.ndarray, thr: float, gap: int) -> int:
    """Runs of ``m > thr`` (NaN = below), runs closer than ``gap`` rows counted as one."""
    idx = np.flatnonzero(m > thr)
    if idx.size == 0:
        return 0
    return int(1 + np.count_nonzero(np.diff(idx) > gap))


def _peaks(m: np.ndarray, thr: float, gap: int) -> np.ndarray:
    """The peak of each episode of ``m > thr`` (runs closer than ``gap`` rows are one episode)."""
    idx = np.flatnonzero(m > thr)
    if idx.size == 0:
        return np.empty(0)
    cuts = np.flatnonzero(np.diff(idx) > gap) + 1
    return np.array([float(m[g].max()) for g in np.split(idx, cuts)])


#: episodes the peaks-over-threshold tail fit of ``alert_budget_level`` is based on
POT_EPISODES = 20


def alert_budget_level(
    scores: np.ndarray, endpoints: np.ndarray, times_ms: np.ndarray, sustain_s: float, alerts_per_day: float,
    gap_s: float = 300.0,
) -> dict[str, Any]:
    """The score level that healthy rows *hold* for ``sustain_s`` (a rolling median over that
    span, per endpoint, at full sample rate) in about ``alerts_per_day`` separate episodes per
    endpoint-day: the threshold at which the alert policy's persistence lets that many false
    alerts through on data like this. Episodes less than ``gap_s`` apart count once (the alert
    manager merges them too).

    A validation split holds a few endpoint-days, and the highest level seen in a few days is
    exceeded within weeks, so the level is extrapolated: the peaks of the ``POT_EPISODES``
    highest episodes (above the pooled 90th percentile) are fitted with an exponential tail (peaks over threshold, the mean excess
    over the base level u being the scale b), and the level is where the fitted episode rate
    falls to the budget, ``u + b ln(n_u / (alerts_per_day x endpoint-days))``. It is never below
    the empirical level (at most ``floor(alerts_per_day x endpoint-days)`` episodes above it)."""
    endpoints = np.asarray(endpoints).astype(str)
    times_ms = np.asarray(times_ms, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    series: list[tuple[np.ndarray, int]] = []
    days = 0.0
    for ep in np.unique(endpoints):
        sel = endpoints == ep
        m, interval = _sustained_series(scores[sel], times_ms[sel], sustain_s)
        if interval <= 0.0 or not np.isfinite(m).any():
            continue
        series.append((m, max(1, int(round(gap_s * 1000.0 / interval)))))
        days += np.isfinite(scores[sel]).sum() * interval / 86_400_000.0
    if not series:
        return {"level": None, "endpoint_days": 0.0}
    allowed = int(np.floor(alerts_per_day * days))
    pooled = np.concatenate([m[np.isfinite(m)] for m, _ in series])
    # episodes only mean something well above the bulk (lower down, one endpoint's whole series
    # merges into one run), so levels are searched above the pooled 90th percentile
    lo, hi = float(np.quantile(pooled, 0.9)), float(pooled.max())

    def count(thr: float) -> int:
        return sum(_episodes(m, thr, g) for m, g in series)

    def level_for(k: int) -> float:
        """The lowest level with at most k episodes above it (bisection)."""
        a, b = lo, hi
        if count(a) <= k:
            return a
        for _ in range(60):  # count(a) > k >= count(b)
            mid = 0.5 * (a + b)
            if count(mid) > k:
                a = mid
            else:
                b = mid
        return b

    empirical = level_for(allowed)
    u = level_for(POT_EPISODES)
    pk = np.concatenate([_peaks(m, u, g) for m, g in series])
    tail: dict[str, Any] = {"base": float(u), "episodes": int(pk.size)}
    level = empirical
    if pk.size >= 3 and alerts_per_day > 0 and days > 0:
        scale = float(np.mean(pk - u))
        ratio = pk.size / (alerts_per_day * days)
        fitted = u + scale * np.log(ratio) if ratio > 1.0 else u
        tail.update({"scale": scale, "level": float(fitted)})
        level = max(level, float(fitted))
    return {
        "level": float(level), "alerts_per_day": float(alerts_per_day), "endpoint_days": float(days),
        "episodes_allowed": allowed, "empirical_level": float(empirical), "episodes_at_level": count(level),
        "tail_fit": tail, "endpoints": len(series), "sustain_s": float(sustain_s), "gap_s": float(gap_s),
    }


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
    times_ms: np.ndarray | None = None,
    sustain_s: float | None = None,
    fallback_times_ms: np.ndarray | None = None,
    fallback_endpoints: np.ndarray | None = None,
) -> dict[str, Any]:
    """Pooled and per-endpoint thresholds at ``target_rate``, raised to the sustained healthy
    level when ``times_ms`` and ``sustain_s`` are given (the record goes to metadata.json). With
    ``fallback_times_ms`` and ``fallback_endpoints`` the fallback scores (healthy too, and usually
    far more rows) contribute their sustained levels as well: the higher one counts."""
    if not 0.0 < target_rate < 0.5:
        raise ValueError(f"target_rate must be in (0, 0.5), got {target_rate}")
    scores = np.asarray(scores, dtype=np.float64)
    endpoints = np.asarray(endpoints).astype(str)
    ok = np.isfinite(scores)
    scores, endpoints = scores[ok], endpoints[ok]
    times = None if times_ms is None or sustain_s is None else np.asarray(times_ms, dtype=np.int64)[ok]
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
    sustained: dict[str, float] = {}
    raised: list[str] = []
    pooled_rows_only = pooled
    if times is not None and sustain_s is not None:
        sources = [(scores, endpoints, times)]
        if fallback is not None and fallback_times_ms is not None and fallback_endpoints is not None:
            fb = np.asarray(fallback, dtype=np.float64)
            sources.append((fb, np.asarray(fallback_endpoints).astype(str), np.asarray(fallback_times_ms, dtype=np.int64)))
        for sc, eps, tms in sources:
            for ep in np.unique(eps):
                sel = eps == ep
                lv = sustained_level(sc[sel], tms[sel], float(sustain_s))
                if lv is not None and lv > sustained.get(str(ep), -np.inf):
                    sustained[str(ep)] = lv
        if sustained:
            pooled = max(pooled, float(np.median(list(sustained.values()))))
        for ep, lv in sustained.items():
            # raise only: an endpoint's threshold is never below its own row quantile or the pool
            thr = per_endpoint.get(ep, pooled)
            if lv > thr:
                per_endpoint[ep] = lv
                raised.append(ep)
    return {
        "method": "budget",
        "target_rate": float(target_rate),
        "pooled": pooled,
        "pooled_source": pool_source,
        "pooled_rows": int(np.isfinite(pool).sum()),
        "pooled_rate_observed": float(np.mean(pool[np.isfinite(pool)] > pooled)),
        "per_endpoint": per_endpoint,
        "rows_per_endpoint": counts,
        "sustain_s": None if times is None else float(sustain_s),  # type: ignore[arg-type]
        "sustained_level_per_endpoint": sustained,
        "raised_to_sustained_level": sorted(raised),
        "pooled_row_quantile": pooled_rows_only,
        "min_endpoint_rows": int(min_endpoint_rows),
        "min_pooled_rows": int(min_pooled_rows),
        "fallback": (
            "endpoints with fewer healthy rows than min_endpoint_rows use the pooled threshold; "
            "a pool smaller than min_pooled_rows uses " + (fallback_source or "what it has")
        ),
    }
