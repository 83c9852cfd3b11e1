"""Multivariate detector: shared-engine features of the last window -> exported Isolation Forest.

Streaming computes the features of one window in plain Python floats, with exactly the
operations and order of :func:`ocad_detectors.features.window_features` (which sums column by
column for this reason), so a streamed sample and the same sample in a batch get bit-identical
features. That matters: the forest compares features against split thresholds, and a
difference in the last bit could send a sample down another branch.

A sample is scored once the endpoint has ``window`` accepted samples since its capability set
last changed (training never saw partial windows); before that the detector says 0.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ocad_detectors._util import EV_MULTIVARIATE, EVIDENCE_NAMES, WarnOnce, mask_values, present_capabilities
from ocad_detectors.config import MultivariateConfig
from ocad_detectors.features import (
    FeatureConfig,
    capability_key,
    features_for_series,
)
from ocad_detectors.modelset import IFGroup, IFModel
from ocad_detectors.rules import DetectorOutput
from ocad_detectors.signals import METRIC_SIGNAL, METRIC_TYPES, SIGNAL_METRIC

__all__ = ["MultivariateDetector", "if_score_to_unit", "window_stats"]

_NAN = float("nan")
_MODEL_STATS = ("p95_z", "p99_z", "ewma_z", "slope_z", "cusum", "missing")


def _pct(srt: list[float], q: float) -> float:
    """numpy 'linear' percentile of sorted finite values, as ``features._percentile_rows`` does it."""
    n = len(srt)
    if n == 0:
        return _NAN
    top = n - 1 if n > 1 else 0
    vidx = (q / 100.0) * top
    lo = math.floor(vidx)
    hi = min(lo + 1, top)
    a = srt[lo]
    b = srt[hi]
    t = vidx - lo
    diff = b - a
    if t >= 0.5:
        return b - diff * (1.0 - t)
    return a + diff * t


def window_stats(
    xs: Any, ts: Any, mu: float, sd: float, wts: tuple[float, ...], k: float
) -> tuple[float, float, float, float, float, float]:
    """Model features of one window (oldest first; NaN = missing), bit-identical to
    ``window_features``: ``(p95_z, p99_z, ewma_z, slope_z, cusum, missing)``.

    ``wts`` are the EWMA weights ``a * (1 - a) ** (w - 1 - i)``, ``k`` the feature CUSUM allowance.
    """
    w = len(wts)
    t_last = ts[w - 1]
    cnt = 0.0
    num = 0.0
    den = 0.0
    st = 0.0
    sx = 0.0
    s = 0.0
    vals: list[float] = []
    trs: list[float] = []
    for i in range(w):
        x = xs[i]
        if x == x:
            cnt += 1.0
            wt = wts[i]
            num += wt * x
            den += wt
            tr = ts[i] - t_last
            st += tr
            sx += x
            vals.append(x)
            trs.append(tr)
            s = s + (x - mu) / sd - k
            if s < 0.0:
                s = 0.0
    safe = cnt if cnt > 0 else 1.0
    tm = st / safe
    xm = sx / safe
    sxy = 0.0
    stt = 0.0
    for j in range(len(vals)):
        dt = trs[j] - tm
        sxy += dt * (vals[j] - xm)
        stt += dt * dt
    vals.sort()
    p95 = _pct(vals, 95.0)
    p99 = _pct(vals, 99.0)
    ewma = num / den if den > 0 else _NAN
    slope = sxy / stt if (cnt >= 2 and stt > 0) else _NAN
    return (
        (p95 - mu) / sd,
        (p99 - mu) / sd,
        (ewma - mu) / sd,
        slope * 60.0 / sd,
        s,
        1.0 - cnt / w,
    )


def if_score_to_unit(a: float, thr: float) -> float:
    """Isolation Forest anomaly score (0..1, ~0.5 = ordinary) -> detector score, 0.5 at ``thr``."""
    if a > thr:
        return 0.5 + 0.5 * min(1.0, (a - thr) / (1.0 - thr)) if thr < 1.0 else 1.0
    return 0.5 * a / thr if thr > 0 else 0.0


def if_score_to_unit_array(a: np.ndarray, thr: float) -> np.ndarray:
    """:func:`if_score_to_unit` elementwise, with the same operations."""
    if thr < 1.0:
        above = 0.5 + 0.5 * np.minimum(1.0, (a - thr) / (1.0 - thr))
    else:
        above = np.ones_like(a)
    below = 0.5 * a / thr if thr > 0 else np.zeros_like(a)
    return np.where(a > thr, above, below)


@dataclass
class _Row:
    """Inputs of the group's feature vector, resolved once per (group, endpoint)."""

    group: IFGroup
    metrics: tuple[str, ...]
    refs: tuple[tuple[float, float], ...]
    lbm: bool
    gap: bool
    threshold: float


class _MVState:
    __slots__ = ("caps", "endpoint_id", "fail_run", "last_a", "last_x", "n_since", "ready", "row", "succ", "times", "vals")

    def __init__(self, w: int, endpoint_id: str) -> None:
        self.endpoint_id = endpoint_id
        self.vals = {m: deque([_NAN] * w, maxlen=w) for m in METRIC_TYPES}
        self.times: deque[float] = deque([_NAN] * w, maxlen=w)
        self.succ: deque[float] = deque([_NAN] * w, maxlen=w)
        self.fail_run = 0.0
        self.n_since = 0
        self.caps: frozenset[str] | None = None
        self.row: _Row | None = None
        self.last_x: np.ndarray | None = None
        self.last_a = _NAN
        self.ready = False

    def resize(self, w: int) -> None:
        """New feature window length (reload): keep the newest values, re-count readiness."""
        old = len(self.times)
        for m in METRIC_TYPES:
            self.vals[m] = deque(([_NAN] * w + list(self.vals[m]))[-w:], maxlen=w)
        self.times = deque(([_NAN] * w + list(self.times))[-w:], maxlen=w)
        self.succ = deque(([_NAN] * w + list(self.succ))[-w:], maxlen=w)
        self.n_since = min(self.n_since, old)


class MultivariateDetector:
    """Isolation Forest over the shared features; one forest per capability group.

    ``model``: an :class:`~ocad_detectors.modelset.IFModel` (None: the detector is off and
    scores 0). Unknown endpoints use the pooled reference statistics of the model.
    """

    name = "multivariate"

    def __init__(self, config: MultivariateConfig | None = None, model: IFModel | None = None) -> None:
        self.config = config or MultivariateConfig()
        self._warn = WarnOnce()
        self._states: dict[str, _MVState] = {}
        self.set_model(model)

    # ------------------------------------------------------------------ model

    def set_model(self, model: IFModel | None) -> None:
        """Swap the model between samples; window buffers are kept (resized if needed)."""
        self.model = model
        fcfg = model.feature_config if model is not None else FeatureConfig()
        self.feature_config = fcfg
        self.window = fcfg.window
        a = fcfg.ewma_alpha
        w = fcfg.window
        self._wts = tuple(a * (1.0 - a) ** (w - 1 - i) for i in range(w))
        self._k = fcfg.cusum_k
        self._rows: dict[tuple[str, str], _Row | None] = {}

    @property
    def active(self) -> bool:
        return self.model is not None and self.config.active

    def new_state(self, endpoint_id: str) -> _MVState:
        return _MVState(self.window, endpoint_id)

    def refresh_state(self, st: _MVState) -> None:
        """After a model swap: resize windows; the group row is re-resolved on the next sample."""
        if len(st.times) != self.window:
            st.resize(self.window)
        st.row = None
        st.ready = False

    def _resolve_row(self, endpoint_id: str, caps: frozenset[str]) -> _Row | None:
        key = (endpoint_id, capability_key(caps)) if caps else (endpoint_id, "")
        if key in self._rows:
            return self._rows[key]
        row = None
        model = self.model
        if model is not None and caps:
            gkey = key[1]
            group = model.groups.get(gkey)
            if group is None:
                self._warn(("group", gkey), "no Isolation Forest for capability group %s (model %s has %s); "
                           "multivariate detector off for those endpoints", gkey, model.version, sorted(model.groups))
            else:
                metrics = tuple(m for m in METRIC_TYPES if m in caps)
                refs = []
                for m in metrics:
                    r = model.reference.get(endpoint_id, METRIC_SIGNAL[m])
                    if r is None:
                        self._warn(("ref", METRIC_SIGNAL[m]), "no reference statistics for %s in Isolation Forest %s; "
                                   "multivariate detector off for endpoints that have it", METRIC_SIGNAL[m], model.version)
                        break
                    refs.append(r)
                else:
                    thr = self.config.threshold if self.config.threshold is not None else group.threshold_for(endpoint_id)
                    row = _Row(group, metrics, tuple(refs), "lbm" in caps, "udp_echo" in caps and "ecpri" in caps, thr)
        self._rows[key] = row
        return row

    # ------------------------------------------------------------------ streaming

    def update(self, st: _MVState, caps: frozenset[str], ts: int, u: float, c: float, lb: float, s: float) -> tuple[float, int]:
        """Push one accepted sample (values already masked to the capabilities); (score, evidence)."""
        st.times.append(ts / 1000.0)
        vals = st.vals
        vals["udp_echo"].append(u)
        vals["ecpri"].append(c)
        vals["lbm"].append(lb)
        st.succ.append(s)
        if s == 0.0:
            st.fail_run += 1.0
        elif s == 1.0:
            st.fail_run = 0.0
        if caps is not st.caps and caps != st.caps:
            st.caps = caps
            st.n_since = 0
            st.row = None
        st.n_since += 1
        st.ready = False
        if self.model is None or not self.config.active or st.n_since < self.window:
            return 0.0, 0
        row = st.row
        if row is None:
            row = self._resolve_row(st.endpoint_id, caps)
            if row is None:
                return 0.0, 0
            st.row = row
        times = st.times
        feats: list[float] = []
        ewz: dict[str, float] = {}
        for m, (mu, sd) in zip(row.metrics, row.refs):
            f = window_stats(vals[m], times, mu, sd, self._wts, self._k)
            feats.extend(f)
            ewz[m] = f[2]
        if row.lbm:
            fails = 0.0
            for ok in st.succ:
                if ok == 0.0:
                    fails += 1.0
            feats.append(st.fail_run)
            feats.append(fails / self.window)
        if row.gap:
            feats.append(ewz["ecpri"] - ewz["udp_echo"])
        x = np.array(feats)
        if not np.isfinite(x).all():
            x[~np.isfinite(x)] = 0.0  # model_matrix: NaN (no value in window) -> 0 σ
        g = row.group
        xs = (x - g.mean) / g.std
        a = -float(g.forest.score_samples(xs)[0])
        st.last_x = xs
        st.last_a = a
        st.ready = True
        thr = row.threshold
        return if_score_to_unit(a, thr), (EV_MULTIVARIATE if a > thr else 0)

    def score_one(self, sample: Any, capabilities: Any = None) -> DetectorOutput:
        """Standalone use (samples of an endpoint in timestamp order): validate (``ValueError``
        if invalid), push and score. ``capabilities``: the endpoint's probe types; default:
        those it was trained with, else every probe type it has answered so far."""
        from ocad_detectors.samples import require_valid

        ts, ep, u, c, lb, s = require_valid(sample)
        st = self._states.get(ep)
        if st is None:
            st = self._states[ep] = self.new_state(ep)
        if capabilities is not None:
            caps = frozenset(capabilities)
        else:
            known = frozenset(
                SIGNAL_METRIC[sig] for (e, sig) in (self.model.reference.per_endpoint if self.model else ()) if e == ep and sig in SIGNAL_METRIC
            )
            caps = known or (st.caps or frozenset()) | present_capabilities(u, c, lb, s)
        score, ev = self.update(st, caps, ts, *mask_values(caps, u, c, lb, s))
        return DetectorOutput(score, EVIDENCE_NAMES[ev], {"explanation": self.explain(st)})

    def explain(self, st: _MVState) -> tuple[float, float, str, float] | None:
        """(anomaly score, threshold, most deviant feature, its value in σ of training)."""
        if not st.ready or st.row is None or st.last_x is None:
            return None
        return top_feature(st.row, st.last_x, st.last_a)

    # ------------------------------------------------------------------ batch

    def prepare_series(
        self,
        endpoint_id: str,
        times_s: np.ndarray,
        values: Mapping[str, np.ndarray],
        success: np.ndarray,
        caps_codes: np.ndarray,
        caps_list: list[frozenset[str]],
    ) -> list[tuple[_Row, np.ndarray, np.ndarray]]:
        """Batch: one endpoint's accepted series (values masked to its capabilities; caps as
        codes into ``caps_list``) -> ``[(row, sample indices, scaled feature matrix)]`` per
        capability group, scored by :func:`score_jobs`."""
        n = len(times_s)
        if self.model is None or not self.config.active or n == 0:
            return []
        w = self.window
        change = np.ones(n, dtype=bool)
        change[1:] = caps_codes[1:] != caps_codes[:-1]
        last_change = np.maximum.accumulate(np.where(change, np.arange(n), 0))
        ready = (np.arange(n) - last_change + 1) >= w
        used = [code for code in sorted(set(caps_codes[ready].tolist())) if caps_list[code]]
        rows = {code: self._resolve_row(endpoint_id, caps_list[code]) for code in used}
        used = [code for code in used if rows[code] is not None]
        if not used:
            return []
        metrics = sorted({m for code in used for m in rows[code].metrics}, key=METRIC_TYPES.index)  # type: ignore[union-attr]
        refs = {}
        for code in used:
            row = rows[code]
            assert row is not None
            refs.update(dict(zip(row.metrics, row.refs)))
        feats = features_for_series(times_s, {m: values[m] for m in metrics}, success, refs, self.feature_config)
        jobs = []
        for code in used:
            row = rows[code]
            assert row is not None
            sel = np.flatnonzero(ready & (caps_codes == code))
            X = np.column_stack([np.asarray(feats[nm], dtype=np.float64)[sel] for nm in row.group.features])
            np.nan_to_num(X, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            X -= row.group.mean
            X /= row.group.std
            jobs.append((row, sel, X))
        return jobs


def top_feature(row: _Row, xs: np.ndarray, a: float) -> tuple[float, float, str, float]:
    """(anomaly score, threshold, feature furthest from its training mean, its value in σ)."""
    i = int(np.argmax(np.abs(xs)))
    return a, row.threshold, row.group.features[i], float(xs[i])


def score_jobs(jobs: list[tuple[_Row, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Anomaly scores for many (row, selection, X_scaled) jobs.

    One forest call per job: the forest cuts its input into cache-sized chunks anyway, and
    gluing the jobs of a group together first would only copy (and page-fault) large arrays.
    """
    return [-row.group.forest.score_samples(X) for row, _, X in jobs]
