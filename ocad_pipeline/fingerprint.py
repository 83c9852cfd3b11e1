"""Same inputs, same version: a training fingerprint per model version.

Retraining with the same data, the same effective configuration and the same code gives the
same model (training is seeded and deterministic), so registering it again would only add a
byte-identical version. Every version records ``training_fingerprint`` = sha256 over the model
name, the data hash, the configuration, ``code_version`` and a digest of the installed OCAD
sources (so uncommitted edits count as new code). Before training, an asset compares the
fingerprint with the newest registered version's and, when they match, reuses that version.
Only the newest version is reused: performance_reports evaluates the newest versions.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ocad_detectors.registry import ModelNotFoundError, ModelRegistry, parse_version

FINGERPRINT_KEY = "training_fingerprint"
_PACKAGES = ("ocad_pipeline", "ocad_detectors")


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 over the path and bytes of every ``.py`` file of ocad_pipeline and ocad_detectors."""
    h = hashlib.sha256()
    base = Path(__file__).resolve().parents[1]
    for pkg in _PACKAGES:
        for p in sorted((base / pkg).rglob("*.py")):
            h.update(str(p.relative_to(base)).encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


def training_fingerprint(model_name: str, data_version: str, config: Mapping[str, Any], code_version: str) -> str:
    """sha256 of what determines a trained model: name, data hash, configuration and code."""
    doc = {
        "model": model_name,
        "data_version": data_version,
        "config": config,
        "code_version": code_version,
        "source_digest": source_digest(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def matching_version(registry: ModelRegistry, model_name: str, fingerprint: str) -> tuple[str, dict[str, Any]] | None:
    """``(version, metadata)`` of the newest version when it has this fingerprint, else None."""
    try:
        versions = registry.list_versions(model_name)
    except ModelNotFoundError:
        return None
    if not versions:
        return None
    newest = max(versions, key=lambda v: parse_version(v.version))
    meta = registry.get_metadata(model_name, newest.version)
    if meta.get(FINGERPRINT_KEY) == fingerprint:
        return newest.version, meta
    return None
