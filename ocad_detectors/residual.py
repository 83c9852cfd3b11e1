"""Residual detector: TCN forecast of the next value from previous values only.

Per (endpoint, metric) an inference buffer of exactly the model's ``seq_len`` previous values.
At each sample with a value ``x``: if the buffer is full, ``x̂ = TCN(buffer)`` (the buffer does
not contain ``x``: no leakage), ``r = (x - x̂) / residual_scale`` in σ of the training
residual (per endpoint; pooled for unknown endpoints), then ``x`` enters the buffer. Only
``r > threshold`` is evidence: a delay *below* its forecast is no degradation (a recovery edge
must not alert). The threshold is the model's budget calibration (per endpoint where the
training had data enough) unless the configuration fixes one. A missing
value is not scored; the last value is carried forward into the buffer so the time axis the
model sees stays regular (the loss itself is the rule detector's evidence).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ocad_detectors._util import EV_RESIDUAL, EVIDENCE_NAMES, mask_values, present_capabilities, squash, squash_array
from ocad_detectors.config import ResidualConfig
from ocad_detectors.modelset import TCNModel
from ocad_detectors.rules import DetectorOutput
from ocad_detectors.signals import METRIC_TYPES
from ocad_detectors.tcn_stack import StackedTCN

__all__ = ["ResidualDetector", "forward_fill"]

_NAN = float("nan")
_METRICS = tuple(enumerate(METRIC_TYPES))
#: buffer length kept for a metric without a model (covers any sensible seq_len)
_SPARE_LEN = 64


class _ResState:
    __slots__ = ("buf", "endpoint_id", "pred", "r", "scale", "thr")

    def __init__(self, endpoint_id: str) -> None:
        self.endpoint_id = endpoint_id
        self.buf: dict[str, deque[float]] = {}
        self.scale: dict[str, float] = {}
        self.thr: dict[str, float] = {}
        self.pred = [_NAN, _NAN, _NAN]
        self.r = [_NAN, _NAN, _NAN]


def forward_fill(v: np.ndarray) -> tuple[np.ndarray, int]:
    """Carry the last finite value forward; returns (filled, index of the first finite value or n)."""
    n = len(v)
    ok = np.isfinite(v)
    if not ok.any():
        return np.full(n, np.nan), n
    idx = np.maximum.accumulate(np.where(ok, np.arange(n), -1))
    filled = np.where(idx >= 0, v[np.maximum(idx, 0)], np.nan)
    return filled, int(np.argmax(ok))


class ResidualDetector:
    """TCN residuals per metric; ``models`` maps metric type -> :class:`TCNModel`."""

    name = "residual"

    def __init__(self, config: ResidualConfig | None = None, models: Mapping[str, TCNModel] | None = None) -> None:
        self.config = config or ResidualConfig()
        self._states: dict[str, _ResState] = {}
        self.set_models(models or {})

    def set_models(self, models: Mapping[str, TCNModel]) -> None:
        """Swap models between samples; buffers are kept (trimmed/extended to a new ``seq_len``)."""
        self.models = dict(models)
        self._per_ep = self.config.scale == "per_endpoint"
        self._thr = self.config.threshold
        # (index in the value tuple, metric, model) for every loaded metric
        self._slots = tuple((METRIC_TYPES.index(m), m, mod) for m, mod in self.models.items() if m in METRIC_TYPES)
        self._spare = max((mod.seq_len for _, _, mod in self._slots), default=_SPARE_LEN)
        # streaming units: same-architecture models fused into one StackedTCN, others alone
        by_arch: dict[str, list[tuple[int, str, TCNModel]]] = {}
        for slot in self._slots:
            mod = slot[2]
            key = json.dumps(dict(mod.architecture), sort_keys=True) if mod.weights else f"alone:{slot[1]}"
            by_arch.setdefault(key, []).append(slot)
        units: list[tuple[StackedTCN | None, tuple[tuple[int, str, TCNModel], ...], np.ndarray | None, np.ndarray | None]] = []
        for key, slots in by_arch.items():
            stack = None
            if not key.startswith("alone:"):
                try:
                    stack = StackedTCN([mod.weights for _, _, mod in slots], slots[0][2].architecture)
                except (ValueError, KeyError):
                    stack = None
            if stack is None:
                units += [(None, (slot,), None, None) for slot in slots]
            else:
                means = np.array([mod.mean for _, _, mod in slots])
                stds = np.array([mod.std for _, _, mod in slots])
                units.append((stack, tuple(slots), means, stds))
        self._units = tuple(units)

    @property
    def active(self) -> bool:
        return bool(self.models) and self.config.active

    def new_state(self, endpoint_id: str) -> _ResState:
        st = _ResState(endpoint_id)
        self.refresh_state(st)
        return st

    def refresh_state(self, st: _ResState) -> None:
        """Size every metric's buffer for the current models and re-read residual scales.

        Buffers exist for all three metrics whether or not a model is loaded, so a model that
        appears with a reload scores at once; without a model a buffer keeps ``_SPARE_LEN``
        values (trimmed to the model's ``seq_len`` when one arrives)."""
        for m in METRIC_TYPES:
            mod = self.models.get(m)
            L = mod.seq_len if mod is not None else max(self._spare, _SPARE_LEN)
            old = st.buf.get(m)
            if old is None:
                st.buf[m] = deque(maxlen=L)
            elif old.maxlen != L:
                st.buf[m] = deque(list(old)[-L:], maxlen=L)
            if mod is not None:
                st.scale[m] = mod.residual_scale(st.endpoint_id, self._per_ep)
                st.thr[m] = self.threshold(mod, st.endpoint_id)

    def threshold(self, mod: TCNModel, endpoint_id: str) -> float:
        """The residual threshold (σ) for one endpoint: configured > calibrated > default."""
        if self._thr is not None:
            return self._thr
        t = mod.threshold_for(endpoint_id, self._per_ep)
        return t if t is not None else self.config.default_threshold

    def update(self, st: _ResState, u: float, c: float, lb: float) -> tuple[float, int]:
        """One accepted sample (masked values) -> (score, evidence bits)."""
        vals = (u, c, lb)
        score = 0.0
        ev = 0
        active = self.config.active
        thrs = st.thr
        bufs = st.buf
        for stack, slots, means, stds in self._units:
            ready = None
            for j in range(len(slots)):
                i, m, _ = slots[j]
                x = vals[i]
                buf = bufs[m]
                if x == x and active and len(buf) == buf.maxlen:
                    if ready is None:
                        ready = [False] * len(slots)
                    ready[j] = True
            if ready is not None:
                if stack is not None:
                    zeros = None
                    cols: list[Sequence[float]] = []
                    for j in range(len(slots)):
                        if ready[j]:
                            cols.append(bufs[slots[j][1]])
                        else:
                            if zeros is None:
                                zeros = [0.0] * stack.seq_len
                            cols.append(zeros)
                    X = (np.array(cols).T - means) / stds
                    preds = (stack.predict_one(X) * stds + means).tolist()
                else:
                    mod = slots[0][2]
                    w = (np.array(bufs[slots[0][1]]) - mod.mean) / mod.std
                    preds = [float(mod.net.predict(w)[0]) * mod.std + mod.mean]
                for j in range(len(slots)):
                    i, m, _ = slots[j]
                    if ready[j]:
                        pred = preds[j]
                        r = (vals[i] - pred) / st.scale[m]
                        st.pred[i] = pred
                        st.r[i] = r
                        if r > 0.0:
                            thr = thrs[m]
                            sc = squash(r, thr)
                            if sc > score:
                                score = sc
                            if r > thr:
                                ev = EV_RESIDUAL
                    else:
                        st.r[i] = _NAN
            else:
                for i, _, _ in slots:
                    st.r[i] = _NAN
        for i, m in _METRICS:
            x = vals[i]
            buf = bufs[m]
            if x == x:
                buf.append(x)
            elif buf:
                buf.append(buf[-1])
        return score, ev

    def score_one(self, sample: Any) -> DetectorOutput:
        """Standalone use: validate (``ValueError`` if invalid), then update and score."""
        from ocad_detectors.samples import require_valid

        _, ep, u, c, lb, s = require_valid(sample)
        st = self._states.get(ep)
        if st is None:
            st = self._states[ep] = self.new_state(ep)
        mu, mc, ml, _ = mask_values(present_capabilities(u, c, lb, s), u, c, lb, s)
        score, ev = self.update(st, mu, mc, ml)
        sig = ("udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms")
        return DetectorOutput(score, EVIDENCE_NAMES[ev], {"prediction": dict(zip(sig, st.pred)), "residual_sigma": dict(zip(sig, st.r))})

    def prepare_series(self, endpoint_id: str, values: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[tuple[int, TCNModel, np.ndarray, np.ndarray, float, float]]:
        """Batch, step 1: the windows of one endpoint's masked series that get a forecast:
        ``[(value index, model, sample indices, windows (scaled), residual scale, threshold)]``."""
        jobs: list[tuple[int, TCNModel, np.ndarray, np.ndarray, float, float]] = []
        if not self.config.active:
            return jobs
        for i, _, mod in self._slots:
            v = values[i]
            filled, first = forward_fill(v)
            L = mod.seq_len
            n = len(v)
            t = np.arange(n)
            sel = np.flatnonzero(np.isfinite(v) & (t - first >= L))
            if len(sel) == 0:
                continue
            scaled = (filled - mod.mean) / mod.std  # per value, as the streaming window is scaled
            win = np.lib.stride_tricks.sliding_window_view(scaled, L)[sel - L]
            jobs.append((i, mod, sel, win, mod.residual_scale(endpoint_id, self._per_ep), self.threshold(mod, endpoint_id)))
        return jobs

    def finish_series(
        self, n: int, values: tuple[np.ndarray, np.ndarray, np.ndarray], jobs: list[tuple[int, TCNModel, np.ndarray, np.ndarray, float, float]], preds: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Batch, step 2: scaled predictions -> (score, evidence bits, prediction and r per value signal)."""
        score = np.zeros(n)
        ev = np.zeros(n, dtype=np.int64)
        P = [np.full(n, np.nan) for _ in range(3)]
        R = [np.full(n, np.nan) for _ in range(3)]
        for (i, mod, sel, _, scale, thr), p in zip(jobs, preds):
            pred = p * mod.std + mod.mean
            r = (values[i][sel] - pred) / scale
            P[i][sel] = pred
            R[i][sel] = r
            score[sel] = np.maximum(score[sel], squash_array(np.maximum(r, 0.0), thr))
            ev[sel] |= np.where(r > thr, EV_RESIDUAL, 0)
        return score, ev, P, R
