"""The shared feature engine: windowed statistics per endpoint and signal.

Training (``ocad_pipeline``) and serving (the online detectors) both call this module, so a
model never sees features computed one way in training and another way in production.

Every feature at sample ``t`` is a function of the last ``window`` samples of the same endpoint
(``t - window + 1 .. t``) and of the endpoint's *reference statistics* (mean and standard
deviation of healthy training data). The only exception is the loopback failure run length,
which is a running counter and therefore needs no window.

Features for metric type ``m`` (``udp_echo``, ``ecpri``, ``lbm``), in the signal's own unit
unless marked otherwise:

============================  =====================================================
``{m}_p95``, ``{m}_p99``      95th / 99th percentile of the window (NaN-aware)
``{m}_ewma``                  exponentially weighted mean of the window, newest heaviest
``{m}_slope``                 least-squares slope against sample time, unit per second
``{m}_p95_z``, ``{m}_p99_z``  percentiles standardized with the reference mean and std (σ)
``{m}_ewma_z``                EWMA standardized with the reference (σ)
``{m}_slope_z``               slope in σ per minute
``{m}_cusum``                 one-sided upper CUSUM over the window of z = (x - μ_ref)/σ_ref
                              with allowance ``k`` (σ); the value after the newest sample
``{m}_missing``               fraction of the window without a value (lost replies)
``lbm_fail_runlen``           consecutive failed loopbacks up to and including t (samples)
``lbm_fail_ratio``            fraction of failed loopbacks in the window
``ecpri_udp_gap_z``           ``ecpri_ewma_z - udp_echo_ewma_z``: the eCPRI/UDP relation
============================  =====================================================

NaN handling: a window with no value gives NaN percentiles/EWMA/slope; :func:`model_matrix`
turns NaN into 0 σ for the Isolation Forest, and ``{m}_missing`` carries the loss instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ocad_detectors.signals import CAPABILITIES, METRIC_SIGNAL, METRIC_TYPES

if TYPE_CHECKING:  # pandas is only imported by the frame helpers, never on the streaming path
    import pandas as pd

__all__ = [
    "FeatureConfig",
    "ReferenceStats",
    "window_features",
    "fail_run_length",
    "features_for_series",
    "features_frame",
    "feature_names",
    "model_feature_names",
    "model_matrix",
    "capability_key",
]

_STATS = ("p95", "p99", "ewma", "slope", "p95_z", "p99_z", "ewma_z", "slope_z", "cusum", "missing")
_MIN_STD_FRACTION = 1e-3  # a reference std never falls below 0.1 % of the mean ...
_MIN_STD_ABS = 1e-6  # ... nor below this, so a constant series cannot divide by zero


@dataclass(frozen=True)
class FeatureConfig:
    """How features are computed. Stored with every model that consumes features."""

    window: int = 12  # samples; 12 x 5 s = one minute
    ewma_alpha: float = 0.3
    cusum_k: float = 0.5  # allowance, in σ of the reference

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"feature window must be at least 2 samples, got {self.window}")
        if not 0.0 < self.ewma_alpha <= 1.0:
            raise ValueError(f"ewma_alpha must be in (0, 1], got {self.ewma_alpha}")
        if self.cusum_k < 0:
            raise ValueError(f"cusum_k must be >= 0 (σ units), got {self.cusum_k}")

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "ewma_alpha": self.ewma_alpha, "cusum_k": self.cusum_k}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureConfig:
        return cls(window=int(d["window"]), ewma_alpha=float(d["ewma_alpha"]), cusum_k=float(d["cusum_k"]))


@dataclass
class ReferenceStats:
    """Healthy-behaviour mean and std per (endpoint, signal), learned from training data.

    ``pooled`` holds one (mean, std) per signal over all endpoints; it is used for endpoints
    that were not in the training data (documented fallback, see :meth:`get`).
    """

    per_endpoint: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    pooled: dict[str, tuple[float, float]] = field(default_factory=dict)

    def get(self, endpoint_id: str, signal: str) -> tuple[float, float] | None:
        """(mean, std) for the endpoint, else the pooled value for the signal, else None."""
        ref = self.per_endpoint.get((endpoint_id, signal))
        if ref is None:
            ref = self.pooled.get(signal)
        return ref

    def knows(self, endpoint_id: str) -> bool:
        return any(ep == endpoint_id for ep, _ in self.per_endpoint)

    @staticmethod
    def floor_std(mean: float, std: float) -> float:
        return float(max(std, abs(mean) * _MIN_STD_FRACTION, _MIN_STD_ABS))

    @classmethod
    def fit(cls, endpoint_ids: np.ndarray, values: Mapping[str, np.ndarray], normal: np.ndarray) -> ReferenceStats:
        """Learn the statistics from samples flagged ``normal`` (NaN values are ignored)."""
        ref = cls()
        endpoint_ids = np.asarray(endpoint_ids)
        normal = np.asarray(normal, dtype=bool)
        for sig, vals in values.items():
            vals = np.asarray(vals, dtype=float)
            ok = normal & np.isfinite(vals)
            if ok.sum() >= 2:
                m = float(vals[ok].mean())
                ref.pooled[sig] = (m, cls.floor_std(m, float(vals[ok].std())))
            for ep in np.unique(endpoint_ids[ok]):
                sel = ok & (endpoint_ids == ep)
                if sel.sum() < 2:
                    continue
                m = float(vals[sel].mean())
                ref.per_endpoint[(str(ep), sig)] = (m, cls.floor_std(m, float(vals[sel].std())))
        return ref

    def to_records(self) -> list[dict[str, Any]]:
        """Rows for JSON or a table: endpoint_id ('*' for pooled), signal, mean, std."""
        rows = [
            {"endpoint_id": ep, "signal": sig, "mean": m, "std": s}
            for (ep, sig), (m, s) in sorted(self.per_endpoint.items())
        ]
        rows += [{"endpoint_id": "*", "signal": sig, "mean": m, "std": s} for sig, (m, s) in sorted(self.pooled.items())]
        return rows

    @classmethod
    def from_records(cls, rows: Iterable[Mapping[str, Any]]) -> ReferenceStats:
        ref = cls()
        for r in rows:
            key = (str(r["endpoint_id"]), str(r["signal"]))
            val = (float(r["mean"]), float(r["std"]))
            if not (math.isfinite(val[0]) and math.isfinite(val[1]) and val[1] > 0):
                raise ValueError(f"invalid reference statistics for {key}: mean={val[0]}, std={val[1]}")
            if key[0] == "*":
                ref.pooled[key[1]] = val
            else:
                ref.per_endpoint[key] = val
        return ref


def feature_names(metric: str) -> list[str]:
    """Feature columns produced for one metric type."""
    return [f"{metric}_{s}" for s in _STATS]


def _top_two_suffices(q: float, w: int) -> bool:
    """True when, for every count of values 1..w, the percentile reads only the two largest."""
    for cnt in range(1, w + 1):
        lo = math.floor((q / 100.0) * (cnt - 1))
        if lo < cnt - 2:
            return False
    return True


def _lerp_order_stats(a: np.ndarray, b: np.ndarray, vidx: np.ndarray, lo: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    """numpy's 'linear' interpolation between order statistics a (at lo) and b (at lo + 1)."""
    t = vidx - lo
    diff = b - a
    out = a + diff * t
    np.subtract(b, diff * (1.0 - t), out=out, where=t >= 0.5)  # numpy's own _lerp, for equal results
    return np.where(cnt > 0, out, np.nan)


def _percentile_rows(x: np.ndarray, q: float) -> np.ndarray:
    """Row-wise NaN-aware percentile with numpy's 'linear' method (NaN for an all-NaN row).

    np.nanpercentile falls back to a Python loop over rows when NaNs are present; sorting once
    (NaN sorts last) and interpolating by each row's count of values is just as exact.
    """
    srt = np.sort(x, axis=1)
    cnt = np.sum(~np.isnan(x), axis=1)
    vidx = (q / 100.0) * np.maximum(cnt - 1, 0)
    lo = np.floor(vidx).astype(np.intp)
    hi = np.minimum(lo + 1, np.maximum(cnt - 1, 0))
    rows = np.arange(x.shape[0])
    return _lerp_order_stats(srt[rows, lo], srt[rows, hi], vidx, lo, cnt)


def _column_features(
    x: list[np.ndarray],
    tr: list[np.ndarray],
    mu: np.ndarray | float,
    sd: np.ndarray | float,
    config: FeatureConfig,
) -> dict[str, np.ndarray]:
    """The features of n windows given as w columns (oldest first), each a length-n array.

    ``x[i]``: the i-th value of every window (NaN = missing); ``tr[i]``: its time minus the time
    of the window's newest sample, in seconds. Working column by column keeps every operation
    on contiguous memory (a series' columns are shifted views of it) and fixes the summation
    order, so a window gives the same bits alone and inside a batch.
    """
    w = len(x)
    n = x[0].shape[0]
    mask = [np.isfinite(c) for c in x]
    maskf = [m.astype(np.float64) for m in mask]
    xz = [np.where(m, c, 0.0) for m, c in zip(mask, x)]
    cnt = np.zeros(n)
    for mf in maskf:
        cnt += mf

    if _top_two_suffices(95.0, w) and _top_two_suffices(99.0, w):
        # the percentiles read only the two largest values of a window: track them
        top1 = np.full(n, -np.inf)
        top2 = np.full(n, -np.inf)
        tmp = np.empty(n)
        for m, c in zip(mask, x):
            col = np.where(m, c, -np.inf)
            np.minimum(top1, col, out=tmp)
            np.maximum(top2, tmp, out=top2)
            np.maximum(top1, col, out=top1)
        cm1 = np.maximum(cnt - 1.0, 0.0)
        with np.errstate(invalid="ignore"):  # empty windows: -inf - -inf, replaced by NaN
            pct = []
            for q in (95.0, 99.0):
                vidx = (q / 100.0) * cm1
                lo = np.floor(vidx).astype(np.intp)
                nth = np.where(lo < cnt - 1.0, top2, top1)  # order statistic lo: 2nd largest or largest
                pct.append(_lerp_order_stats(nth, top1, vidx, lo, cnt))
        p95, p99 = pct
    else:
        full = np.column_stack([np.where(m, c, np.nan) for m, c in zip(mask, x)])
        p95 = _percentile_rows(full, 95.0)
        p99 = _percentile_rows(full, 99.0)

    # EWMA over the window's present values; weights alpha*(1-alpha)^age, renormalized
    a = config.ewma_alpha
    num = np.zeros(n)
    den = np.zeros(n)
    for i in range(w):
        wt = a * (1.0 - a) ** (w - 1 - i)
        num += wt * xz[i]
        den += wt * maskf[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        ewma = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    # least-squares slope against time (seconds), relative to the newest sample
    st = np.zeros(n)
    sx = np.zeros(n)
    for i in range(w):
        st += tr[i] * maskf[i]
        sx += xz[i]
    safe_cnt = np.where(cnt > 0, cnt, 1.0)
    tm = st / safe_cnt
    xm = sx / safe_cnt
    sxy = np.zeros(n)
    stt = np.zeros(n)
    for i in range(w):
        dt = (tr[i] - tm) * maskf[i]
        sxy += dt * (xz[i] - xm)
        stt += dt * dt
    slope = np.where((cnt >= 2) & (stt > 0), sxy / np.where(stt > 0, stt, 1.0), np.nan)

    # CUSUM of standardized values against the reference (not the window's own stats)
    s = np.zeros(n)
    k = config.cusum_k
    for i in range(w):
        z = (xz[i] - mu) / sd
        z += s
        z -= k
        np.maximum(0.0, z, out=z)
        np.copyto(s, z, where=mask[i])

    return {
        "p95": p95,
        "p99": p99,
        "ewma": ewma,
        "slope": slope,
        "p95_z": (p95 - mu) / sd,
        "p99_z": (p99 - mu) / sd,
        "ewma_z": (ewma - mu) / sd,
        "slope_z": slope * 60.0 / sd,
        "cusum": s,
        "missing": 1.0 - cnt / w,
    }


def window_features(
    values: np.ndarray,
    times_s: np.ndarray,
    ref_mean: np.ndarray | float,
    ref_std: np.ndarray | float,
    config: FeatureConfig,
) -> dict[str, np.ndarray]:
    """Features for many windows of one metric at once.

    ``values`` and ``times_s`` are ``(n_windows, window)`` arrays, oldest sample first; NaN
    marks a missing value. ``ref_mean``/``ref_std`` broadcast against ``n_windows``. Sums run
    column by column in a fixed order, so one window gives bit-for-bit the same result alone
    (streaming) as inside a batch.
    """
    x = np.asarray(values, dtype=np.float64)
    t = np.asarray(times_s, dtype=np.float64)
    if x.ndim != 2 or x.shape != t.shape:
        raise ValueError(f"values and times must be (n_windows, window) arrays of one shape, got {x.shape} and {t.shape}")
    n, w = x.shape
    mu = np.broadcast_to(np.asarray(ref_mean, dtype=np.float64), (n,))
    sd = np.broadcast_to(np.asarray(ref_std, dtype=np.float64), (n,))
    xt = np.ascontiguousarray(x.T)
    trt = np.ascontiguousarray((t - t[:, -1:]).T)
    return _column_features(list(xt), list(trt), mu, sd, config)


def fail_run_length(success: np.ndarray) -> np.ndarray:
    """Consecutive failed loopbacks up to and including each sample (0 when it succeeded).

    ``success`` holds 1.0 (reply), 0.0 (no reply) or NaN (not probed: the counter is kept).
    """
    s = np.asarray(success, dtype=np.float64)
    fail = s == 0.0
    ok = s == 1.0
    idx = np.arange(len(s))
    # index of the last success (or -1) at or before each sample; NaN samples neither reset nor count
    last_ok = np.maximum.accumulate(np.where(ok, idx, -1))
    fails_cum = np.cumsum(fail)
    fails_at_last_ok = np.where(last_ok >= 0, fails_cum[np.maximum(last_ok, 0)], 0)
    return (fails_cum - fails_at_last_ok).astype(np.float64)


def features_for_series(
    times_s: np.ndarray,
    values: Mapping[str, np.ndarray],
    lbm_success: np.ndarray | None,
    reference: Mapping[str, tuple[float, float]],
    config: FeatureConfig,
) -> dict[str, np.ndarray]:
    """All features at every sample of one endpoint's series (sorted by time).

    ``values`` maps metric type (``udp_echo``, ...) to the series in the signal's unit; only
    the metrics the endpoint supports need to be present. ``reference`` maps metric type to
    (mean, std). The first ``window - 1`` samples see a partly empty window (NaN padding).
    """
    w = config.window
    times = np.asarray(times_s, dtype=np.float64)
    n = len(times)
    # window column i at sample j is padded[j + i]: shifted views, no (n, w) copies
    tpad = np.concatenate([np.full(w - 1, np.nan), times])
    # time of padded slots: extrapolate backwards so slopes stay defined; their values are NaN anyway
    if n:
        tpad = np.where(np.isfinite(tpad), tpad, times[0])
    t_last = tpad[w - 1 :]
    tr = [tpad[i : i + n] - t_last for i in range(w)]
    out: dict[str, np.ndarray] = {}
    for metric, series in values.items():
        if metric not in METRIC_SIGNAL:
            raise KeyError(f"unknown metric type {metric!r}; expected one of {METRIC_TYPES}")
        mean, std = reference[metric]
        xpad = np.concatenate([np.full(w - 1, np.nan), np.asarray(series, dtype=np.float64)])
        feats = _column_features([xpad[i : i + n] for i in range(w)], tr, mean, std, config)
        for name, arr in feats.items():
            out[f"{metric}_{name}"] = arr
    if lbm_success is not None:
        succ = np.asarray(lbm_success, dtype=np.float64)
        out["lbm_fail_runlen"] = fail_run_length(succ)
        spad = np.concatenate([np.full(w - 1, np.nan), succ])
        fails = np.zeros(len(succ))
        for i in range(w):
            fails += spad[i : i + len(succ)] == 0.0
        out["lbm_fail_ratio"] = fails / w
    if "udp_echo" in values and "ecpri" in values:
        out["ecpri_udp_gap_z"] = out["ecpri_ewma_z"] - out["udp_echo_ewma_z"]
    return out


def capability_key(capabilities: Iterable[str]) -> str:
    """Canonical name of a capability set, e.g. ``ecpri+lbm+udp_echo``; models are grouped by it."""
    caps = sorted(set(capabilities))
    unknown = [c for c in caps if c not in CAPABILITIES]
    if unknown:
        raise ValueError(f"unknown capabilities {unknown}; known: {CAPABILITIES}")
    if not caps:
        raise ValueError("an endpoint needs at least one capability")
    return "+".join(caps)


def model_feature_names(capabilities: Iterable[str]) -> list[str]:
    """Standardized feature columns the Isolation Forest uses for a capability set."""
    caps = set(capabilities)
    names: list[str] = []
    for m in METRIC_TYPES:
        if m in caps:
            names += [f"{m}_{s}" for s in ("p95_z", "p99_z", "ewma_z", "slope_z", "cusum", "missing")]
    if "lbm" in caps:
        names += ["lbm_fail_runlen", "lbm_fail_ratio"]
    if "udp_echo" in caps and "ecpri" in caps:
        names.append("ecpri_udp_gap_z")
    return names


def model_matrix(features: Mapping[str, np.ndarray], names: list[str]) -> np.ndarray:
    """Stack the named features into an (n, d) float matrix; NaN (no value in window) -> 0 σ."""
    missing = [n for n in names if n not in features]
    if missing:
        raise KeyError(f"features missing for the model: {missing}")
    cols = [np.asarray(features[n], dtype=np.float64) for n in names]
    return np.nan_to_num(np.column_stack(cols), nan=0.0, posinf=0.0, neginf=0.0)


def features_frame(
    samples: pd.DataFrame,
    reference: ReferenceStats,
    capabilities: Mapping[str, Iterable[str]],
    config: FeatureConfig,
) -> pd.DataFrame:
    """Features for every sample of a wide samples frame (timestamp_ms, endpoint_id, signals).

    Rows come back in the input order of each endpoint, sorted by (endpoint_id, timestamp_ms),
    with ``endpoint_id``, ``timestamp_ms`` and the feature columns; metrics the endpoint does
    not support are NaN.
    """
    import pandas as pd

    frames = []
    for ep, g in samples.sort_values(["endpoint_id", "timestamp_ms"], kind="stable").groupby("endpoint_id", sort=True):
        caps = set(capabilities[str(ep)])
        vals = {m: g[METRIC_SIGNAL[m]].to_numpy(dtype=float, na_value=np.nan) for m in METRIC_TYPES if m in caps}
        ref = {}
        for m in vals:
            r = reference.get(str(ep), METRIC_SIGNAL[m])
            if r is None:
                raise KeyError(f"no reference statistics for endpoint {ep!r}, signal {METRIC_SIGNAL[m]!r}")
            ref[m] = r
        succ = g["lbm_success"].astype("Float64").to_numpy(dtype=float, na_value=np.nan) if "lbm" in caps else None
        f = features_for_series(g["timestamp_ms"].to_numpy() / 1000.0, vals, succ, ref, config)
        df = pd.DataFrame(f, index=g.index)
        df.insert(0, "timestamp_ms", g["timestamp_ms"].to_numpy())
        df.insert(0, "endpoint_id", str(ep))
        frames.append(df)
    out = pd.concat(frames) if frames else pd.DataFrame(columns=["endpoint_id", "timestamp_ms"])
    all_cols = ["endpoint_id", "timestamp_ms"]
    for m in METRIC_TYPES:
        all_cols += feature_names(m)
    all_cols += ["lbm_fail_runlen", "lbm_fail_ratio", "ecpri_udp_gap_z"]
    return out.reindex(columns=all_cols)
