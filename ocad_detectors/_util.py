"""Small shared pieces: evidence bit masks, the score squashing map, warn-once logging.

Evidence travels as an int bit mask on the hot path (one ``|`` per detector, ``bit_count`` for
the alert rule) and as a tuple of names in results; both paths use the tables here.
"""

from __future__ import annotations

import logging

import numpy as np

from ocad_detectors.config import EVIDENCE_TYPES

logger = logging.getLogger("ocad_detectors")

EV_THRESHOLD = 1
EV_LOSS = 2
EV_CHANGEPOINT = 4
EV_RESIDUAL = 8
EV_MULTIVARIATE = 16
EVIDENCE_BITS: dict[str, int] = {
    "threshold": EV_THRESHOLD,
    "loss": EV_LOSS,
    "changepoint": EV_CHANGEPOINT,
    "residual": EV_RESIDUAL,
    "multivariate": EV_MULTIVARIATE,
}
#: bit mask -> tuple of evidence names in EVIDENCE_TYPES order
EVIDENCE_NAMES: tuple[tuple[str, ...], ...] = tuple(
    tuple(n for n in EVIDENCE_TYPES if m & EVIDENCE_BITS[n]) for m in range(32)
)


def evidence_mask(names: tuple[str, ...] | list[str]) -> int:
    m = 0
    for n in names:
        m |= EVIDENCE_BITS[n]
    return m


def squash(stat: float, h: float) -> float:
    """Map a non-negative statistic to [0, 1): linear up to 0.5 at the threshold ``h``, then
    ``1 - 0.5 h / stat``. Every detector's score is 0.5 exactly at its decision threshold."""
    if stat <= h:
        return 0.5 * stat / h
    return 1.0 - 0.5 * h / stat


def squash_array(stat: np.ndarray, h: float) -> np.ndarray:
    """:func:`squash` elementwise with the same floating-point operations (NaN -> 0)."""
    stat = np.where(np.isnan(stat), 0.0, stat)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(stat <= h, 0.5 * stat / h, 1.0 - 0.5 * h / np.where(stat <= h, 1.0, stat))


class WarnOnce:
    """Log a warning the first time a key is seen (a bad model or an unreachable tracking
    server must not flood the log); to ``log``, by default the ``ocad_detectors`` logger."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self._seen: set[object] = set()
        self._log = log or logger

    def __call__(self, key: object, msg: str, *args: object) -> None:
        if key not in self._seen:
            self._seen.add(key)
            self._log.warning(msg, *args)


def present_capabilities(u: float, c: float, lb: float, s: float) -> frozenset[str]:
    """Capabilities evidenced by one sample: the probe types that returned something."""
    caps = set()
    if u == u:
        caps.add("udp_echo")
    if c == c:
        caps.add("ecpri")
    if lb == lb or s == s:
        caps.add("lbm")
    return frozenset(caps)


_NAN = float("nan")


def mask_values(caps: frozenset[str], u: float, c: float, lb: float, s: float) -> tuple[float, float, float, float]:
    """Values of signals outside the endpoint's capabilities are ignored (set to NaN)."""
    return (
        u if "udp_echo" in caps else _NAN,
        c if "ecpri" in caps else _NAN,
        lb if "lbm" in caps else _NAN,
        s if "lbm" in caps else _NAN,
    )
