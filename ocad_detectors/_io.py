"""File and JSON helpers shared by both sides: one atomic write, one JSON-safe conversion.

Both used to exist several times over (the registry, the service snapshot, the pipeline's
tables and tuning results; alerts, training metadata). ``ocad_pipeline`` imports them from
here (the pipeline may depend on the detectors, never the reverse); numpy is the only import.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write", "json_safe"]


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | Callable[[Path], object],
    *,
    tmp: str | os.PathLike[str] | None = None,
    durable: bool = True,
) -> Path:
    """Write ``path`` so that a reader sees the old content or the new one, never a part.

    ``data`` is the bytes to write, or a function that writes the temporary file it is given
    (e.g. ``lambda p: frame.to_parquet(p)``). The temporary file lies beside ``path`` (same
    file system, so the rename is atomic): ``tmp`` names it (a writer that cleans up what dead
    writers left behind needs to know the name), by default ``.<name>.<random>.tmp``. With
    ``durable`` it is fsync'ed before the rename (a crash cannot leave an empty file under the
    final name). The temporary file is removed when anything fails. Returns ``path``.
    """
    p = Path(path)
    t = Path(tmp) if tmp is not None else p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            with open(t, "wb") as fh:
                fh.write(data)
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
        else:
            data(t)
            if durable:
                fd = os.open(t, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        os.replace(t, p)
    finally:
        t.unlink(missing_ok=True)
    return p


def json_safe(obj: Any) -> Any:
    """A copy of nested data that strict JSON accepts: numpy scalars and arrays become Python
    values, non-finite floats (NaN, ±inf) become ``None``, mapping keys become strings, tuples
    lists, paths strings and datetimes ISO 8601 text. Anything else is returned as it is."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [json_safe(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    return obj
