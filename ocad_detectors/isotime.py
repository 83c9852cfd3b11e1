"""Sample timestamps (epoch ms) as ISO 8601 UTC text for people: alert messages, records."""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["iso_ms"]


def iso_ms(ts_ms: int) -> str:
    """``1767225605000`` -> ``2026-01-01T00:00:05Z`` (milliseconds shown when not 0); a value
    no calendar can hold comes back as its number."""
    try:
        t = datetime.fromtimestamp(ts_ms / 1000.0, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ts_ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ts_ms % 1000:03d}Z" if ts_ms % 1000 else "Z")
