"""Rule detector: fixed thresholds in each signal's own unit, and loss run lengths.

No model, no reference statistics: it works when every model is missing. Loss is counted per
probe type the endpoint supports, as consecutive samples without a reply:

* ``udp_echo`` / ``ecpri``: the delay value is missing (None / NaN / absent);
* ``lbm``: ``lbm_success`` is false, or there is neither a success flag nor an RTT.

Score: 0 below the warning level; above it ``0.5 + 0.5 * min(1, excess / (critical - warning))``
for a delay, and the same in samples for a loss run, so 0.5 means "just over", 1 "critical".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ocad_detectors._util import EV_LOSS, EV_THRESHOLD, EVIDENCE_NAMES, mask_values, present_capabilities
from ocad_detectors.config import RuleConfig
from ocad_detectors.signals import VALUE_SIGNALS

__all__ = ["DetectorOutput", "RuleDetector", "loss_runs"]


@dataclass(frozen=True)
class DetectorOutput:
    """What one detector says about one sample when it is used on its own."""

    score: float
    evidence: tuple[str, ...]
    details: Mapping[str, Any]


class _RuleState:
    __slots__ = ("runs",)

    def __init__(self) -> None:
        self.runs = {"udp_echo": 0, "ecpri": 0, "lbm": 0}


def loss_runs(lost: np.ndarray) -> np.ndarray:
    """Consecutive True values up to and including each position (0 where False)."""
    lost = np.asarray(lost, dtype=bool)
    n = len(lost)
    idx = np.arange(n)
    last_ok = np.maximum.accumulate(np.where(~lost, idx, -1)) if n else idx
    return np.where(lost, idx - last_ok, 0)


class RuleDetector:
    """Thresholds and loss runs; ``update`` is the streaming step, ``score_series`` the batch one."""

    name = "rule"

    def __init__(self, config: RuleConfig | None = None) -> None:
        self.config = config or RuleConfig()
        th = self.config.thresholds
        # (index into the (udp, ecpri, lbm) value tuple, warning, critical - warning)
        self._checks = tuple(
            (VALUE_SIGNALS.index(sig), t.warning, t.critical - t.warning) for sig, t in th.items()
        )
        self._lw = self.config.loss_run_warning
        self._lspan = float(self.config.loss_run_critical - self.config.loss_run_warning)
        self._states: dict[str, _RuleState] = {}

    @property
    def active(self) -> bool:
        return self.config.enabled

    def new_state(self) -> _RuleState:
        return _RuleState()

    def update(self, st: _RuleState, caps: frozenset[str], u: float, c: float, lb: float, s: float) -> tuple[float, int]:
        """One accepted sample (values masked to the endpoint's capabilities) -> (score, evidence bits)."""
        score = 0.0
        ev = 0
        runs = st.runs
        if "udp_echo" in caps:
            runs["udp_echo"] = runs["udp_echo"] + 1 if u != u else 0
        if "ecpri" in caps:
            runs["ecpri"] = runs["ecpri"] + 1 if c != c else 0
        if "lbm" in caps:
            runs["lbm"] = runs["lbm"] + 1 if (s == 0.0 or (s != s and lb != lb)) else 0
        if not self.config.enabled:
            return 0.0, 0
        vals = (u, c, lb)
        for i, warn, span in self._checks:
            v = vals[i]
            if v > warn:
                ev = EV_THRESHOLD
                sc = 0.5 + 0.5 * min(1.0, (v - warn) / span)
                if sc > score:
                    score = sc
        lw = self._lw
        for r in runs.values():
            if r >= lw:
                ev |= EV_LOSS
                sc = 0.5 + 0.5 * min(1.0, (r - lw) / self._lspan)
                if sc > score:
                    score = sc
        return score, ev

    def details(self, st: _RuleState) -> dict[str, int]:
        return dict(st.runs)

    def score_one(self, sample: Any, capabilities: Any = None) -> DetectorOutput:
        """Standalone use: validate one sample (``ValueError`` if invalid) and score it.

        ``capabilities`` (e.g. ``{"udp_echo", "lbm"}``) decides which missing values are loss;
        default: every signal that has a value in this sample.
        """
        from ocad_detectors.samples import require_valid

        _, ep, u, c, lb, s = require_valid(sample)
        caps = frozenset(capabilities) if capabilities is not None else present_capabilities(u, c, lb, s)
        st = self._states.setdefault(ep, self.new_state())
        score, ev = self.update(st, caps, *mask_values(caps, u, c, lb, s))
        return DetectorOutput(score, EVIDENCE_NAMES[ev], {"loss_runs": dict(st.runs)})

    def score_series(
        self, caps_masks: Mapping[str, np.ndarray], u: np.ndarray, c: np.ndarray, lb: np.ndarray, s: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Batch over one endpoint's accepted, masked series: (score, evidence bits, loss runs)."""
        n = len(u)
        runs = {
            "udp_echo": loss_runs(caps_masks["udp_echo"] & np.isnan(u)),
            "ecpri": loss_runs(caps_masks["ecpri"] & np.isnan(c)),
            "lbm": loss_runs(caps_masks["lbm"] & ((s == 0.0) | (np.isnan(s) & np.isnan(lb)))),
        }
        score = np.zeros(n)
        ev = np.zeros(n, dtype=np.int64)
        if not self.config.enabled:
            return score, ev, runs
        vals = (u, c, lb)
        for i, warn, span in self._checks:
            v = vals[i]
            over = v > warn
            ev |= np.where(over, EV_THRESHOLD, 0)
            with np.errstate(invalid="ignore"):
                sc = np.where(over, 0.5 + 0.5 * np.minimum(1.0, (v - warn) / span), 0.0)
            score = np.maximum(score, sc)
        lw = self._lw
        for r in runs.values():
            over = r >= lw
            ev |= np.where(over, EV_LOSS, 0)
            sc = np.where(over, 0.5 + 0.5 * np.minimum(1.0, (r - lw) / self._lspan), 0.0)
            score = np.maximum(score, sc)
        return score, ev, runs
