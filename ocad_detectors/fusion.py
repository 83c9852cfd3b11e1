"""Score fusion: per-detector scores in [0, 1] -> one composite in [0, 1].

The same arithmetic, in the same order, runs on Python floats (streaming) and on numpy arrays
(batch), so both paths give identical composites.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ocad_detectors.config import DETECTORS, FusionConfig

__all__ = ["ScoreFusion"]


class ScoreFusion:
    """``noisy_or``: ``1 - Π(1 - w_i s_i)``; ``weighted_mean``: ``Σ w_i s_i / Σ w_i`` over the
    active detectors (a detector whose model is missing does not count)."""

    def __init__(self, config: FusionConfig | None = None, active: Sequence[str] = DETECTORS) -> None:
        self.config = config or FusionConfig()
        self.set_active(active)

    def set_active(self, active: Sequence[str]) -> None:
        """Which detectors are running (changes when a model appears or goes away)."""
        self.active = tuple(d for d in DETECTORS if d in set(active))
        self._w = tuple(self.config.weight(d) if d in self.active else 0.0 for d in DETECTORS)
        total = 0.0
        for w in self._w:
            total += w
        self._total = total
        self._noisy = self.config.method == "noisy_or"

    def combine(self, s0: float, s1: float, s2: float, s3: float) -> float:
        """Scores in DETECTORS order (rule, changepoint, residual, multivariate)."""
        w0, w1, w2, w3 = self._w
        if self._noisy:
            p = 1.0
            p *= 1.0 - w0 * s0
            p *= 1.0 - w1 * s1
            p *= 1.0 - w2 * s2
            p *= 1.0 - w3 * s3
            return 1.0 - p
        if self._total <= 0.0:
            return 0.0
        acc = 0.0
        acc += w0 * s0
        acc += w1 * s1
        acc += w2 * s2
        acc += w3 * s3
        return acc / self._total

    def combine_arrays(self, scores: Sequence[np.ndarray]) -> np.ndarray:
        """Batch version of :meth:`combine` (same operations, elementwise)."""
        n = len(scores[0])
        if self._noisy:
            p = np.ones(n)
            for w, s in zip(self._w, scores):
                p *= 1.0 - w * s
            return 1.0 - p
        if self._total <= 0.0:
            return np.zeros(n)
        acc = np.zeros(n)
        for w, s in zip(self._w, scores):
            acc += w * s
        return acc / self._total
