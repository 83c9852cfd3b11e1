"""Model training, independent of Dagster (the assets in ``ocad_pipeline.defs.assets.models`` are thin).

* :mod:`ocad_pipeline.training.tcn` - data preparation and the TCN forecaster trainer;
* :mod:`ocad_pipeline.training.iforest` - Isolation Forest per capability group, 5-fold CV and
  threshold calibration;
* :mod:`ocad_pipeline.training.metrics` - forecast and anomaly-decision metrics (numpy).

This module holds the provenance helpers every registered version records (and re-exports
:func:`json_safe`, which lives in :mod:`ocad_detectors._io` so both sides share it).
"""

from __future__ import annotations

import hashlib
import io
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import pandas as pd

from ocad_detectors._io import json_safe  # re-exported: the trainers' metadata goes through it

__all__ = ["code_version", "dataframes_sha256", "json_safe", "utc_now"]


def utc_now() -> str:
    """Current UTC time, ISO 8601 with seconds (the ``training_date`` of a version)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_version() -> str:
    """``git rev-parse HEAD`` of the checkout holding this package, else ``ocad <package version>``."""
    repo = Path(__file__).resolve().parents[2]  # the source checkout (editable install)
    try:
        if not (repo / "pyproject.toml").is_file():
            raise OSError("not running from a source checkout")
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        if head:
            return head
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"ocad {importlib_metadata.version('ocad')}"
    except importlib_metadata.PackageNotFoundError:
        return "ocad unknown"


def dataframes_sha256(frames: Mapping[str, pd.DataFrame]) -> str:
    """Deterministic sha256 over named tables: each one's name and its parquet bytes, in name
    order (same content and library versions -> same hash). Used as ``data_version``."""
    h = hashlib.sha256()
    for name in sorted(frames):
        buf = io.BytesIO()
        frames[name].to_parquet(buf, index=False, engine="pyarrow")
        data = buf.getvalue()
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


