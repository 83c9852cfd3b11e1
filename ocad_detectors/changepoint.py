"""Change-point detector: one-sided upper CUSUM on reference-standardized values.

``z = (x - μ_ref) / σ_ref`` with μ/σ of *healthy training data* for the endpoint (pooled for
unknown endpoints), never the recent window's own statistics: self-normalising would erase a
sustained shift once it fills the window (DOMAIN.md). ``S = min(clamp·h, max(0, S + z - k))``;
evidence when ``S > h``. A missing value leaves ``S`` unchanged (loss is the rule detector's
business). Lower shifts (faster than usual) are not alarms for a delay and are not tracked.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ocad_detectors._util import EV_CHANGEPOINT, EVIDENCE_NAMES, WarnOnce, mask_values, present_capabilities, squash, squash_array
from ocad_detectors.config import ChangePointConfig
from ocad_detectors.features import ReferenceStats
from ocad_detectors.rules import DetectorOutput
from ocad_detectors.signals import VALUE_SIGNALS

__all__ = ["ChangePointDetector"]


class _CPState:
    __slots__ = ("S", "endpoint_id", "refs", "z")

    def __init__(self, endpoint_id: str, refs: list[tuple[float, float] | None]) -> None:
        self.endpoint_id = endpoint_id
        self.refs = refs
        self.S = [0.0, 0.0, 0.0]
        self.z = [float("nan")] * 3


class ChangePointDetector:
    """CUSUM per (endpoint, delay signal). ``reference``: healthy mean/std from training."""

    name = "changepoint"

    def __init__(self, config: ChangePointConfig | None = None, reference: ReferenceStats | None = None) -> None:
        self.config = config or ChangePointConfig()
        self._k = self.config.k
        self._h = self.config.h
        self._cap = self.config.clamp * self.config.h
        self._warn = WarnOnce()
        self._states: dict[str, _CPState] = {}
        self.reference = reference or ReferenceStats()

    @property
    def active(self) -> bool:
        return self.config.enabled

    def set_reference(self, reference: ReferenceStats | None) -> None:
        """New reference statistics (after a model reload); CUSUM sums are kept (they are in σ)."""
        self.reference = reference or ReferenceStats()

    def _refs(self, endpoint_id: str) -> list[tuple[float, float] | None]:
        out: list[tuple[float, float] | None] = []
        for sig in VALUE_SIGNALS:
            r = self.reference.get(endpoint_id, sig)
            out.append(None if r is None else (float(r[0]), float(r[1])))
        return out

    def new_state(self, endpoint_id: str) -> _CPState:
        return _CPState(endpoint_id, self._refs(endpoint_id))

    def refresh_state(self, st: _CPState) -> None:
        st.refs = self._refs(st.endpoint_id)

    def _missing_ref(self, i: int) -> None:
        sig = VALUE_SIGNALS[i]
        self._warn(sig, "no reference statistics for %s (no model provides them and none are configured); "
                   "CUSUM is off for that signal", sig)

    def update(self, st: _CPState, u: float, c: float, lb: float) -> tuple[float, int]:
        """One accepted sample (values masked to the capabilities) -> (score, evidence bits)."""
        if not self.config.enabled:
            return 0.0, 0
        k = self._k
        h = self._h
        cap = self._cap
        S = st.S
        score = 0.0
        ev = 0
        for i, v in enumerate((u, c, lb)):
            ref = st.refs[i]
            if ref is not None:
                if v == v:
                    z = (v - ref[0]) / ref[1]
                    s = S[i] + z - k
                    if s < 0.0:
                        s = 0.0
                    elif s > cap:
                        s = cap
                    S[i] = s
                    st.z[i] = z
                s = S[i]
                if s > 0.0:
                    sc = squash(s, h)
                    if sc > score:
                        score = sc
                    if s > h:
                        ev = EV_CHANGEPOINT
            elif v == v:
                self._missing_ref(i)
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
        return DetectorOutput(score, EVIDENCE_NAMES[ev], {"cusum": dict(zip(VALUE_SIGNALS, st.S)), "z": dict(zip(VALUE_SIGNALS, st.z))})

    def score_series(self, endpoint_id: str, u: np.ndarray, c: np.ndarray, lb: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Batch over one endpoint's accepted, masked series: (score, evidence bits, S per
        signal, z per signal (NaN where missing)). The recursion is a plain loop (it is
        sequential by nature); everything around it is vectorized."""
        n = len(u)
        score = np.zeros(n)
        ev = np.zeros(n, dtype=np.int64)
        Ss: list[np.ndarray] = []
        zs: list[np.ndarray] = []
        refs = self._refs(endpoint_id)
        k, h, cap = self._k, self._h, self._cap
        for i, v in enumerate((u, c, lb)):
            ref = refs[i]
            if ref is None or not self.config.enabled:
                if ref is None and np.isfinite(v).any():
                    self._missing_ref(i)
                Ss.append(np.zeros(n))
                zs.append(np.full(n, np.nan))
                continue
            mu, sd = ref
            z = (v - mu) / sd
            S = np.zeros(n)
            # S only leaves 0 at a sample with z - k > 0 (0.0 + z - k == z - k exactly), so the
            # recursion runs from each such sample until S is back at 0; the rest stays 0
            with np.errstate(invalid="ignore"):
                starts = np.flatnonzero(z - k > 0.0)
            zl = z.tolist()
            j = 0
            for p in starts.tolist():
                if p < j:
                    continue  # inside the segment already computed
                s = 0.0
                j = p
                while j < n:
                    zi = zl[j]
                    if zi == zi:
                        s = s + zi - k
                        if s < 0.0:
                            s = 0.0
                        elif s > cap:
                            s = cap
                    S[j] = s
                    j += 1
                    if s == 0.0:
                        break
            score = np.maximum(score, np.where(S > 0.0, squash_array(S, h), 0.0))
            ev |= np.where(h < S, EV_CHANGEPOINT, 0)
            Ss.append(S)
            zs.append(z)
        return score, ev, Ss, zs
