"""The Dagster code location ``ocad``: everything under ``ocad_pipeline/defs/``.

``dg.load_from_defs_folder`` imports every module of that folder (``dg.toml`` at the repository
root names it) and merges what they define: the assets (``defs/assets/``, one module per
group), the jobs, schedule and executor (``defs/jobs.py``) and the resources
(``defs/resources.py``). ``dg dev``, ``dg launch``, ``dagster-webserver -w workspace.yaml`` and
``python -m ocad_pipeline.launch`` all load this module.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from ocad_pipeline.defs.jobs import EXECUTOR, NATIVE_THREADS
from ocad_pipeline.defs.resources import build_resources

__all__ = ["ALL_ASSETS", "EXECUTOR", "NATIVE_THREADS", "build_resources", "defs"]

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent)

#: every asset of the code location (tests and scripts materialize subsets with their own resources)
ALL_ASSETS = list(defs.assets or [])
