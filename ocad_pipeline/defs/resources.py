"""Dagster resources: where data lives, the dataset parameters shared by several assets, the model
registry and experiment tracking.

The data directory is one resource, :class:`OcadPaths`, configured with ``EnvVar("OCAD_DATA_DIR")``
(read when a run starts, shown as an environment variable on the UI's resource page); the IO
manager and the model registry take it as a nested resource, so they can never disagree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import dagster as dg
import pandas as pd

from ocad_detectors.registry import ModelRegistry
from ocad_pipeline import tracking
from ocad_pipeline.datasets import SplitConfig
from ocad_pipeline.defs.configs import config_from_dataclass
from ocad_pipeline.io_managers import FILES_KEY, MissingUpstreamError, read_table_cached, write_table

#: environment variable naming the data directory, and its default
DATA_DIR_ENV = "OCAD_DATA_DIR"
DEFAULT_DATA_DIR = "data"


class OcadPaths(dg.ConfigurableResource):
    """Root of materialized data and models: ``$OCAD_DATA_DIR`` (default ``data/``)."""

    data_dir: str = DEFAULT_DATA_DIR

    @property
    def root(self) -> Path:
        return Path(self.data_dir)

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"


class TableSetIOManager(dg.ConfigurableIOManager):
    """Stores ``dict[str, DataFrame]`` outputs as the files the asset declares."""

    paths: OcadPaths

    def _files(self, metadata, asset_key: dg.AssetKey) -> dict[str, Path]:
        files = (metadata or {}).get(FILES_KEY)
        if not files:
            raise dg.DagsterInvariantViolationError(f"asset {asset_key.to_user_string()} declares no {FILES_KEY!r} metadata")
        files = files.value if hasattr(files, "value") else files
        return {name: self.paths.root / rel for name, rel in files.items()}

    def handle_output(self, context: dg.OutputContext, obj: dict[str, pd.DataFrame]) -> None:
        files = self._files(context.definition_metadata, context.asset_key)
        unknown = set(obj) - set(files)
        if unknown:
            raise KeyError(f"asset {context.asset_key.to_user_string()} produced undeclared tables {sorted(unknown)}")
        for name, path in files.items():
            write_table(obj[name], path)
        context.add_output_metadata({f"path/{n}": dg.MetadataValue.path(str(p)) for n, p in files.items()})

    def load_input(self, context: dg.InputContext) -> dict[str, pd.DataFrame]:
        upstream = context.upstream_output
        key = context.asset_key
        files = self._files(upstream.definition_metadata if upstream else None, key)
        missing = [str(p) for p in files.values() if not p.exists()]
        if missing:
            name = key.to_user_string()
            raise MissingUpstreamError(
                f"upstream asset {name!r} has not been materialized (missing {', '.join(missing)}). "
                f"Materialize it first with the same DAGSTER_HOME and data directory, e.g.\n"
                f"  dg launch --assets '*{name}'"
            )
        return {name: read_table_cached(p) for name, p in files.items()}


class DatasetSettings(config_from_dataclass(SplitConfig, dg.ConfigurableResource)):  # type: ignore[misc]
    """How samples become datasets (the fields of ``datasets.SplitConfig``); shared by every asset
    of the ``datasets`` group so that the split boundaries and window sizes agree."""

    def split_config(self) -> SplitConfig:
        return self.to_dataclass()


class ModelRegistryResource(dg.ConfigurableResource):
    """The file-system model registry (``ocad_detectors.registry``) the training assets write
    versions to: ``<data dir>/models`` unless ``root`` says otherwise. New versions are
    candidates; the quality gate (performance_reports) and model_promotion decide what becomes
    production."""

    paths: OcadPaths
    #: empty: ``<paths.data_dir>/models``
    root: str = ""
    #: False since the quality gate exists: versions stay candidates until model_promotion
    #: (after the gate) or `ocad-models promote` makes them production
    auto_promote_first: bool = False
    #: PEM Ed25519 private key that signs every new version's manifest (None: $OCAD_SIGNING_KEY,
    #: unset = unsigned); the detectors verify with detection.trust.public_key
    signing_key: Optional[str] = None

    @property
    def registry_root(self) -> Path:
        return Path(self.root) if self.root else self.paths.models_dir

    def get_registry(self) -> ModelRegistry:
        return ModelRegistry(self.registry_root, auto_promote_first=self.auto_promote_first, signing_key=self.signing_key)


class ExperimentTracker(dg.ConfigurableResource):
    """Experiment tracking (MLflow, optional). ``tracking_uri`` empty: ``$MLFLOW_TRACKING_URI`` when
    the run logs (unset = tracking off, MLflow never imported); see ``ocad_pipeline.tracking``."""

    tracking_uri: str = ""

    def log_run(self, run_name: str, params: Any, metrics: Any, artifacts: Any = None, tags: Any = None) -> str | None:
        """One MLflow run, or None when tracking is off or fails (it never fails the asset)."""
        return tracking.log_run(run_name, params, metrics, artifacts, tags, tracking_uri=self.tracking_uri or None)


def build_resources(data_dir: str | dg.EnvVar | None = None) -> dict[str, Any]:
    """Every resource of the code location, bound to one data directory (default:
    ``EnvVar("OCAD_DATA_DIR")``; tests pass a temporary directory)."""
    paths = OcadPaths(data_dir=dg.EnvVar(DATA_DIR_ENV) if data_dir is None else data_dir)
    return {
        "paths": paths,
        "tables": TableSetIOManager(paths=paths),
        "dataset_settings": DatasetSettings(),
        "model_registry": ModelRegistryResource(paths=paths),
        "tracking": ExperimentTracker(),
    }


# EnvVar has no default: an unset OCAD_DATA_DIR means data/ (relative to where the run starts)
os.environ.setdefault(DATA_DIR_ENV, DEFAULT_DATA_DIR)


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources())
