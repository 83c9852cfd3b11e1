"""Run a job of the ``ocad`` code location now, in this process, and record it under that location.

    python -m ocad_pipeline.launch --job ocad_pipeline_job [--config-json JSON] [--partition KEY]

``make run`` calls this. Like ``dagster job execute`` and ``dg launch --job`` it needs no service
(synchronous, embedded SQLite storage in ``$DAGSTER_HOME``), but the run it creates carries the
origin of the code location (``__repository__@ocad``): ``dagster job execute`` and ``dg launch``
(which calls it) store runs without one, and the UI's job page and Overview then say "No runs"
(they list a job's runs by that origin's repository label).

Dagster has no public call for "execute in process with a code location origin", so this uses
``DagsterInstance.create_run_for_job`` and ``execute_run`` (Dagster 1.13 internals; the pin in
pyproject.toml keeps them stable, ``tests/test_launch.py`` checks the stored origin).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import dagster as dg
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.execution.api import execute_run
from dagster._core.remote_origin import ManagedGrpcPythonEnvCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

#: the code location's name in dg.toml (``code_location_name``) and workspace.yaml
CODE_LOCATION = "ocad"
DEFINITIONS_MODULE = "ocad_pipeline.definitions"


def remote_origin(
    job_name: str, repository_name: str, working_directory: str | None = None, module: str = DEFINITIONS_MODULE
) -> RemoteJobOrigin:
    """The origin the UI's workspace gives this job: location ``ocad`` loading ``ocad_pipeline.definitions``."""
    target = LoadableTargetOrigin(
        executable_path=sys.executable,
        module_name=module,
        working_directory=working_directory or os.getcwd(),
    )
    location = ManagedGrpcPythonEnvCodeLocationOrigin(loadable_target_origin=target, location_name=CODE_LOCATION)
    return RemoteJobOrigin(RemoteRepositoryOrigin(code_location_origin=location, repository_name=repository_name), job_name)


def launch(
    job_name: str,
    instance: dg.DagsterInstance,
    run_config: dict[str, Any] | None = None,
    partition: str | None = None,
    tags: dict[str, str] | None = None,
    working_directory: str | None = None,
    module: str = DEFINITIONS_MODULE,
) -> dg.JobExecutionResult:
    """Execute ``job_name`` synchronously on ``instance``; the run records the ``ocad`` code location.
    ``module`` (attribute ``defs``) is the code location's module (tests pass a tiny one)."""
    recon_repo = ReconstructableRepository.for_module(module, "defs", working_directory or os.getcwd())
    repo_def = recon_repo.get_definition()
    if job_name not in repo_def.job_names:
        public = sorted(n for n in repo_def.job_names if not n.startswith("__"))
        raise SystemExit(f"error: no job {job_name!r} in the ocad code location; jobs: {', '.join(public)}")
    recon_job = recon_repo.get_reconstructable_job(job_name)
    job_def = repo_def.get_job(job_name)
    run_tags = dict(tags or {})
    if partition is not None:
        if job_def.partitions_def is None:
            raise SystemExit(f"error: job {job_name!r} is not partitioned; drop --partition")
        with partition_loading_context(dynamic_partitions_store=instance) as ctx:
            job_def.validate_partition_key(partition, selected_asset_keys=None, context=ctx)
        run_tags.update(job_def.get_tags_for_partition_key(partition, selected_asset_keys=None))
        if run_config is None and job_def.partitioned_config is not None:
            run_config = dict(job_def.partitioned_config.get_run_config_for_partition_key(partition))
    run = instance.create_run_for_job(
        job_def=job_def,
        run_config=run_config or {},
        tags=run_tags,
        remote_job_origin=remote_origin(job_name, repo_def.name, working_directory, module),
        job_code_origin=recon_job.get_python_origin(),
    )
    return execute_run(recon_job, run, instance)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ocad_pipeline.launch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", required=True, help="ocad_pipeline_job, weekly_retraining_job or migration_study_job")
    ap.add_argument("--config-json", help="run config as JSON, e.g. '{\"ops\": {\"raw_metrics\": {\"config\": ...}}}'")
    ap.add_argument("--partition", help="partition key of a partitioned job (weekly_retraining_job: a Sunday, e.g. 2026-11-08)")
    args = ap.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        print("error: DAGSTER_HOME is not set (e.g. export DAGSTER_HOME=$PWD/dagster_home): runs would go to a "
              "throw-away instance and downstream assets could not find their inputs", file=sys.stderr)
        return 2
    try:
        run_config = json.loads(args.config_json) if args.config_json else None
    except json.JSONDecodeError as e:
        print(f"error: --config-json is not valid JSON: {e}", file=sys.stderr)
        return 2
    with dg.DagsterInstance.get() as instance:
        result = launch(args.job, instance, run_config, args.partition)
    print(f"run {result.run_id} of {args.job} (code location {CODE_LOCATION}): {'SUCCESS' if result.success else 'FAILURE'}")
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
