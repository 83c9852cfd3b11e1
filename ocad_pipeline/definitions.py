"""The Dagster code location: every asset, check, job, schedule and resource of OCAD."""

from __future__ import annotations

import dagster as dg

from ocad_pipeline.assets import comparison, data, datasets, models, evaluation, tuning
from ocad_pipeline.io_managers import TableSetIOManager
from ocad_pipeline.jobs import build_jobs, build_weekly_schedule, executor_from_env, limit_native_threads
from ocad_pipeline.resources import DEFAULT_DATA_DIR, DatasetSettings, ModelRegistryResource, OcadPaths

ASSET_MODULES = [data, datasets, models, evaluation, tuning, comparison]
ALL_ASSETS = dg.load_assets_from_modules(ASSET_MODULES)

#: OCAD_EXECUTOR (default auto: in process below 4 cores): for the named jobs and for the implicit
#: asset job behind `dagster asset materialize` / "Materialize" in the UI
EXECUTOR = executor_from_env()
#: one BLAS/torch thread per process below 4 cores (oversubscribed threads spin: see jobs.py)
NATIVE_THREADS = limit_native_threads()
ocad_pipeline_job, weekly_retraining_job, migration_study_job = build_jobs(EXECUTOR)
weekly_retraining_schedule = build_weekly_schedule(weekly_retraining_job)


def build_resources(data_dir: str = DEFAULT_DATA_DIR) -> dict[str, object]:
    """Resources bound to one data directory (tests pass a temporary one)."""
    return {
        "tables": TableSetIOManager(data_dir=data_dir),
        "paths": OcadPaths(data_dir=data_dir),
        "dataset_settings": DatasetSettings(),
        "model_registry": ModelRegistryResource(root=f"{data_dir}/models"),
    }


defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[ocad_pipeline_job, weekly_retraining_job, migration_study_job],
    schedules=[weekly_retraining_schedule],
    resources=build_resources(),
    executor=EXECUTOR,
)
