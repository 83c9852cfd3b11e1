"""The Dagster code location: every asset, check, job, schedule and resource of OCAD."""

from __future__ import annotations

import dagster as dg

from ocad_pipeline.assets import data, datasets, models
from ocad_pipeline.io_managers import TableSetIOManager
from ocad_pipeline.resources import DEFAULT_DATA_DIR, DatasetSettings, ModelRegistryResource, OcadPaths

ALL_ASSETS = dg.load_assets_from_modules([data, datasets, models])

#: the main job: materialize everything, from raw metrics to the latest artefacts
ocad_pipeline_job = dg.define_asset_job(
    "ocad_pipeline_job",
    selection=dg.AssetSelection.all(),
    description="Materialize every OCAD asset: raw metrics -> validated splits (-> models -> reports as they exist).",
)


def build_resources(data_dir: str = DEFAULT_DATA_DIR) -> dict[str, object]:
    """Resources bound to one data directory (tests pass a temporary one)."""
    return {
        "tables": TableSetIOManager(data_dir=data_dir),
        "paths": OcadPaths(data_dir=data_dir),
        "dataset_settings": DatasetSettings(),
        "model_registry": ModelRegistryResource(root=f"{data_dir}/models"),
    }


defs = dg.Definitions(assets=ALL_ASSETS, jobs=[ocad_pipeline_job], resources=build_resources())
