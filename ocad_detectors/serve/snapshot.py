"""The service's state file: per-endpoint detector state + open alert episodes, verified.

Layout (text, no pickle)::

    {"format": "ocad-serve-snapshot", "version": 1, "sha256": "<hex>", "bytes": N, "created": "..."}\\n
    <N bytes of JSON payload>

The header's sha256 covers exactly the payload bytes, so a truncated, edited or half-written
file is refused (the service logs why and starts fresh). Writes go to a temporary file in the
same directory, fsync, then an atomic rename: a reader sees the old or the new snapshot.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

from ocad_detectors._io import atomic_write

__all__ = ["SNAPSHOT_FORMAT", "SNAPSHOT_VERSION", "read_snapshot", "write_snapshot"]

SNAPSHOT_FORMAT = "ocad-serve-snapshot"
SNAPSHOT_VERSION = 1
logger = logging.getLogger("ocad_detectors.serve")


def write_snapshot(path: str | os.PathLike[str], payload: dict[str, Any]) -> int:
    """Write ``payload`` atomically with a verified header; returns the payload size."""
    p = Path(path)
    body = orjson.dumps(payload)
    header = {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "sha256": hashlib.sha256(body).hexdigest(),
        "bytes": len(body),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, orjson.dumps(header) + b"\n" + body, tmp=p.with_name(p.name + f".tmp{os.getpid()}"))
    return len(body)


def read_snapshot(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The verified payload; ``ValueError`` naming the problem (missing file: ``FileNotFoundError``)."""
    p = Path(path)
    raw = p.read_bytes()
    head, sep, body = raw.partition(b"\n")
    if not sep:
        raise ValueError(f"{p}: no header line")
    try:
        h = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{p}: header is not JSON: {exc}") from None
    if not isinstance(h, dict) or h.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"{p}: not an {SNAPSHOT_FORMAT} file")
    if h.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"{p}: snapshot version {h.get('version')!r}, this service reads {SNAPSHOT_VERSION}")
    if h.get("bytes") != len(body):
        raise ValueError(f"{p}: payload is {len(body)} bytes, header says {h.get('bytes')} (truncated?)")
    digest = hashlib.sha256(body).hexdigest()
    if h.get("sha256") != digest:
        raise ValueError(f"{p}: sha256 mismatch (file {digest[:12]}…, header {str(h.get('sha256'))[:12]}…): corrupted or edited")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{p}: payload is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{p}: payload is not a mapping")
    return payload
