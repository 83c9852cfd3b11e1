"""Optional experiment tracking with MLflow (seed Task 5.1).

``log_run`` does nothing unless ``MLFLOW_TRACKING_URI`` is set: it returns ``None`` and imports
nothing, so MLflow is not a dependency of OCAD. With the variable set, MLflow is imported
lazily; if it is not installed, one warning says so and the pipeline goes on. MLflow itself
reads ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME`` (default experiment otherwise).

What is logged per call: one MLflow run named ``run_name`` with

* ``params``: flattened to ``a.b.c`` keys, values as strings (lists/tuples as JSON);
* ``metrics``: flattened to ``a.b.c`` keys; only finite numbers (bools as 0/1), ``None``,
  NaN, infinities and non-numbers are skipped;
* ``artifacts``: ``name -> bytes | str | dict | path``: bytes and str are written as a file
  called ``name``; a dict/list as JSON; a :class:`pathlib.Path` (or a ``str`` naming an
  existing file) is uploaded as is;
* ``tags``: string tags.

Tracking never fails the pipeline: an error while logging becomes a warning and ``None``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ocad_detectors._util import WarnOnce

__all__ = ["ENV_TRACKING_URI", "flatten", "log_run", "tracking_enabled"]

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
logger = logging.getLogger("ocad_pipeline.tracking")
_BAD_KEY = re.compile(r"[^0-9A-Za-z_\-. /]")
_MAX_PARAM = 500  # MLflow's historical limit for a parameter value
_warn_once = WarnOnce(logger)


def tracking_enabled() -> bool:
    return bool(os.environ.get(ENV_TRACKING_URI, "").strip())


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (keys cleaned of characters MLflow rejects)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[_BAD_KEY.sub("_", key)] = v
    return out


def _metric_value(v: Any) -> float | None:
    if v is None or isinstance(v, (str, bytes)):
        return None
    if isinstance(v, bool):
        return float(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _param_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        try:
            s = json.dumps(list(v))
        except (TypeError, ValueError):
            s = str(v)
    else:
        s = str(v)
    return s if len(s) <= _MAX_PARAM else s[: _MAX_PARAM - 3] + "..."


def log_run(
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    artifacts: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
) -> str | None:
    """Log one run to MLflow when ``tracking_uri`` is given or ``MLFLOW_TRACKING_URI`` is set;
    returns the run id or None. (Dagster assets call this through the ``tracking`` resource,
    ``ocad_pipeline.defs.resources.ExperimentTracker``.)"""
    if not (tracking_uri or tracking_enabled()):
        return None
    try:
        import mlflow
    except ImportError:
        _warn_once(
            "import",
            "%s is set but mlflow is not installed: nothing is tracked (pip install mlflow to enable tracking)",
            ENV_TRACKING_URI,
        )
        return None
    flat_params = {k: _param_value(v) for k, v in flatten(params).items() if v is not None}
    flat_metrics = {k: f for k, v in flatten(metrics).items() if (f := _metric_value(v)) is not None}
    try:
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        with mlflow.start_run(run_name=run_name, tags={str(k): str(v) for k, v in (tags or {}).items()} or None) as run:
            if flat_params:
                mlflow.log_params(flat_params)
            if flat_metrics:
                mlflow.log_metrics(flat_metrics)
            if artifacts:
                with tempfile.TemporaryDirectory(prefix="ocad-mlflow-") as tmp:
                    for name, art in artifacts.items():
                        mlflow.log_artifact(str(_artifact_file(Path(tmp), str(name), art)))
            return str(run.info.run_id)
    except Exception as exc:  # tracking must never break a pipeline run
        _warn_once(f"log:{type(exc).__name__}:{exc}", "MLflow logging of run %r failed: %s", run_name, exc)
        return None


def _artifact_file(tmp: Path, name: str, art: Any) -> Path:
    if isinstance(art, Path):
        return art
    if isinstance(art, str) and len(art) < 4096 and "\n" not in art and Path(art).is_file():
        return Path(art)
    path = tmp / Path(name).name
    if isinstance(art, bytes):
        path.write_bytes(art)
    elif isinstance(art, str):
        path.write_text(art, encoding="utf-8")
    else:
        path.write_text(json.dumps(art, indent=1, default=str), encoding="utf-8")
    return path
