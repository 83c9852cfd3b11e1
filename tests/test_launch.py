"""Runs started by ``make run`` (``python -m ocad_pipeline.launch``) carry the code location
``ocad``, so the UI lists them on the job's page and the Overview; ``dagster job execute`` /
``dg launch`` runs carry none and are not listed there."""

from __future__ import annotations

import tomllib
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.storage.tags import REPOSITORY_LABEL_TAG
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster_graphql.test.utils import execute_dagster_graphql

from ocad_pipeline.launch import CODE_LOCATION, launch, main

ROOT = Path(__file__).resolve().parents[1]
TINY = '''
import dagster as dg

@dg.op
def hello() -> int:
    return 1

@dg.job(executor_def=dg.in_process_executor)
def tiny_job():
    hello()

@dg.daily_partitioned_config(start_date="2026-01-01")
def _daily(start, _end):
    return {"ops": {"day": {"config": {"start": start.isoformat()}}}}

@dg.op(config_schema={"start": str})
def day(context) -> str:
    return context.op_config["start"]

@dg.job(config=_daily, executor_def=dg.in_process_executor)
def tiny_partitioned():
    day()

defs = dg.Definitions(jobs=[tiny_job, tiny_partitioned])
'''
# what the UI's job page asks for (dagster-webserver's Pipeline.runs)
JOB_RUNS = """
query JobRuns($selector: PipelineSelector!) {
  pipelineOrError(params: $selector) { __typename ... on Pipeline { runs { runId } } }
}
"""


def _job_page_run_ids(instance: dg.DagsterInstance, tmp_path: Path) -> set[str]:
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="ocad_tiny_defs", attribute="defs", working_directory=str(tmp_path)),
        location_name=CODE_LOCATION,
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget([origin])) as ctx:
        res = execute_dagster_graphql(
            ctx.create_request_context(), JOB_RUNS,
            {"selector": {"pipelineName": "tiny_job", "repositoryName": "__repository__", "repositoryLocationName": CODE_LOCATION}},
        )
    job = res.data["pipelineOrError"]
    assert job["__typename"] == "Pipeline", res
    return {r["runId"] for r in job["runs"]}


def test_launched_runs_carry_the_code_location_and_show_on_the_job_page(tmp_path):
    (tmp_path / "ocad_tiny_defs.py").write_text(TINY)
    with dg.instance_for_test() as instance:
        result = launch("tiny_job", instance, working_directory=str(tmp_path), module="ocad_tiny_defs")
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert run.job_name == "tiny_job"
        assert run.remote_job_origin.repository_origin.code_location_origin.location_name == CODE_LOCATION
        label = f"__repository__@{CODE_LOCATION}"
        by_label = instance.get_runs(filters=dg.RunsFilter(job_name="tiny_job", tags={REPOSITORY_LABEL_TAG: label}))
        assert [r.run_id for r in by_label] == [result.run_id]
        # the way `dagster job execute` / `dg launch --job` run it: no origin, not on the job page
        import sys
        sys.path.insert(0, str(tmp_path))
        try:
            plain = dg.execute_job(dg.reconstructable(_tiny_job_from_module), instance=instance)
        finally:
            sys.path.remove(str(tmp_path))
        assert instance.get_run_by_id(plain.run_id).remote_job_origin is None
        listed = _job_page_run_ids(instance, tmp_path)
        assert result.run_id in listed and plain.run_id not in listed


def test_a_partition_gets_its_tags_and_run_config(tmp_path):
    (tmp_path / "ocad_tiny_defs.py").write_text(TINY)
    with dg.instance_for_test() as instance:
        res = launch("tiny_partitioned", instance, partition="2026-01-03", working_directory=str(tmp_path), module="ocad_tiny_defs")
        assert res.success
        run = instance.get_run_by_id(res.run_id)
        assert run.run_config["ops"]["day"]["config"]["start"] == "2026-01-03T00:00:00+00:00"
        assert run.tags["dagster/partition"] == "2026-01-03"
        with pytest.raises(SystemExit, match="not partitioned"):
            launch("tiny_job", instance, partition="2026-01-03", working_directory=str(tmp_path), module="ocad_tiny_defs")
        with pytest.raises(SystemExit, match="no job 'nope'"):
            launch("nope", instance, working_directory=str(tmp_path), module="ocad_tiny_defs")


def _tiny_job_from_module():
    import ocad_tiny_defs  # noqa: PLC0415 - written by the test

    return ocad_tiny_defs.tiny_job


def test_location_name_agrees_with_dg_toml_and_workspace_yaml():
    dg_toml = tomllib.loads((ROOT / "dg.toml").read_text())
    assert dg_toml["project"]["code_location_name"] == CODE_LOCATION
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["location_name"] == CODE_LOCATION


def test_cli_refuses_without_dagster_home_and_names_unknown_jobs(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["--job", "ocad_pipeline_job"]) == 2
    assert "DAGSTER_HOME is not set" in capsys.readouterr().err
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert main(["--job", "ocad_pipeline_job", "--config-json", "{not json"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
