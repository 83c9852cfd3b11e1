"""The CFM-lite signals OCAD understands, with their units and plausible ranges.

Units live in the names (``_ms``, ``_us``) because mixing µs and ms silently was a real bug
before: a 100 ms threshold applied to µs values can never fire. Everything else in OCAD refers
to signals through this module.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Signal",
    "SIGNALS",
    "VALUE_SIGNALS",
    "METRIC_TYPES",
    "METRIC_SIGNAL",
    "SIGNAL_METRIC",
    "ROLES",
    "CAPABILITIES",
    "signal",
]


@dataclass(frozen=True)
class Signal:
    """One measured signal: its column name, unit and the range a real value can take."""

    name: str
    unit: str
    description: str
    #: smallest physically possible value (delays are never negative)
    min_value: float
    #: largest value a probe can report before it counts as a timeout; anything above is absurd
    max_value: float
    #: capability an endpoint must have to produce this signal
    capability: str
    #: TCN metric type (udp_echo, ecpri, lbm) or None for the boolean success flag
    metric_type: str | None


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        Signal(
            "udp_echo_rtt_ms", "ms", "UDP echo (RFC 862) round-trip time",
            0.0, 10_000.0, "udp_echo", "udp_echo",
        ),
        Signal(
            "ecpri_ow_us", "us", "eCPRI one-way delay measurement (message type 5)",
            0.0, 10_000_000.0, "ecpri", "ecpri",
        ),
        Signal(
            "lbm_rtt_ms", "ms", "CFM loopback (LBM/LBR) round-trip time",
            0.0, 10_000.0, "lbm", "lbm",
        ),
        Signal(
            "lbm_success", "bool", "did the CFM loopback reply arrive",
            0.0, 1.0, "lbm", None,
        ),
    )
}

#: signals that carry a delay value (everything but the success flag)
VALUE_SIGNALS: tuple[str, ...] = ("udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms")

#: TCN metric types, one forecaster each, and the value signal each one forecasts
METRIC_TYPES: tuple[str, ...] = ("udp_echo", "ecpri", "lbm")
METRIC_SIGNAL: dict[str, str] = {"udp_echo": "udp_echo_rtt_ms", "ecpri": "ecpri_ow_us", "lbm": "lbm_rtt_ms"}
SIGNAL_METRIC: dict[str, str] = {v: k for k, v in METRIC_SIGNAL.items()}

#: endpoint roles in an O-RAN fronthaul/transport network
ROLES: tuple[str, ...] = ("o-ru", "o-du", "transport")

#: capability names; an endpoint supports a subset of these
CAPABILITIES: tuple[str, ...] = ("udp_echo", "ecpri", "lbm")


def signal(name: str) -> Signal:
    """Look a signal up by column name, with an error that lists the known ones."""
    try:
        return SIGNALS[name]
    except KeyError:
        raise KeyError(f"unknown signal {name!r}; known signals: {', '.join(SIGNALS)}") from None
