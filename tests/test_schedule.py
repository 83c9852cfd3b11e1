"""The weekly retraining schedule and the job/executor configuration."""

from datetime import datetime, timezone

import dagster as dg
import pytest

from ocad_pipeline.definitions import defs
from ocad_pipeline.defs import jobs


def test_schedule_runs_weekly_on_sunday_midnight_utc():
    sched = defs.resolve_schedule_def("weekly_retraining_schedule")
    assert sched.cron_schedule == "0 0 * * 0"
    assert sched.execution_timezone == "UTC"
    assert sched.job_name == "weekly_retraining_job"
    assert sched.default_status == dg.DefaultScheduleStatus.STOPPED  # operators switch it on


def test_schedule_tick_requests_the_retraining_job(tmp_path):
    sched = defs.resolve_schedule_def("weekly_retraining_schedule")
    repo = defs.get_repository_def()  # outside the test instance: partitioned run requests resolve their config
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        ctx = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2026, 11, 29, 0, 0, tzinfo=timezone.utc), repository_def=repo
        )
        reqs = sched.evaluate_tick(ctx).run_requests
    assert len(reqs) == 1
    assert reqs[0].run_key == "weekly-2026-11-29T00:00Z"
    assert reqs[0].tags["ocad/scheduled_for"] == "2026-11-29T00:00Z"
    assert reqs[0].partition_key == "2026-11-22"  # the week 2026-11-22 .. 2026-11-29 that just ended


def test_weekly_job_covers_data_to_models_but_not_tuning_by_default():
    graph = defs.resolve_asset_graph()
    weekly = jobs.retrain_selection(include_tuning=False).resolve(graph)
    keys = {k.to_user_string() for k in weekly}
    assert {"raw_metrics", "timeseries_splits", "multivariate_splits", "tcn_models", "isolation_forest_model"} <= keys
    assert "mode_comparison" not in keys and "performance_reports" in keys and "model_promotion" in keys
    tuning = dg.AssetSelection.groups("tuning").resolve(graph)
    assert not (weekly & tuning)
    with_tuning = jobs.retrain_selection(include_tuning=True).resolve(graph)
    assert tuning <= with_tuning


def test_executor_is_chosen_by_configuration(monkeypatch):
    assert jobs.executor_from_env("in_process") is dg.in_process_executor
    multi = jobs.executor_from_env("multiprocess")
    assert multi.name == "multiprocess" and multi.executor_creation_fn is dg.multiprocess_executor.executor_creation_fn
    monkeypatch.setenv("OCAD_EXECUTOR", "in_process")
    assert jobs.executor_from_env() is dg.in_process_executor
    with pytest.raises(ValueError, match="OCAD_EXECUTOR"):
        jobs.executor_from_env("carrier-pigeon")


def test_auto_executor_runs_in_process_on_small_machines(monkeypatch):
    monkeypatch.delenv("OCAD_EXECUTOR", raising=False)
    assert jobs.resolve_executor_choice(cpus=2) == "in_process"
    assert jobs.resolve_executor_choice(cpus=1) == "in_process"
    assert jobs.resolve_executor_choice(cpus=8) == "multiprocess"
    assert jobs.executor_from_env(cpus=2) is dg.in_process_executor
    assert jobs.executor_from_env(cpus=16).name == "multiprocess"
    assert 1 <= jobs.available_cpus() <= (__import__("os").cpu_count() or 1)


def test_multiprocess_steps_start_from_a_preloaded_forkserver():
    cfg = _executor_config(jobs.executor_from_env("multiprocess"))
    assert cfg["start_method"] == {"forkserver": {"preload_modules": ["ocad_pipeline.definitions"]}}


def _executor_config(executor: dg.ExecutorDefinition) -> dict:
    res = executor.config_schema.resolve_config({})  # the fixed config of a configured executor
    assert res.success, res.errors
    return res.value["config"]


def test_main_job_leaves_out_the_migration_study_which_has_its_own_job():
    graph = defs.resolve_asset_graph()
    main = defs.resolve_job_def("ocad_pipeline_job")
    study = defs.resolve_job_def("migration_study_job")
    main_keys = {k.to_user_string() for k in main.asset_layer.selected_asset_keys}
    assert "mode_comparison" not in main_keys
    assert {"raw_metrics", "tcn_models", "isolation_forest_model", "performance_reports", "model_promotion"} <= main_keys
    assert {k.to_user_string() for k in study.asset_layer.selected_asset_keys} == {"mode_comparison"}
    assert graph.get(dg.AssetKey("mode_comparison")).group_name == "evaluation"


def test_weekly_job_is_partitioned_by_week_and_the_schedule_picks_the_week_that_ended():
    weekly = defs.resolve_job_def("weekly_retraining_job")
    pdef = weekly.partitions_def
    assert isinstance(pdef, dg.WeeklyPartitionsDefinition)
    keys = pdef.get_partition_keys(current_time=datetime(2026, 2, 1, tzinfo=timezone.utc))
    assert keys[:2] == ["2026-01-04", "2026-01-11"] and keys[-1] == "2026-01-25"
    assert jobs.last_complete_week(datetime(2026, 11, 29, tzinfo=timezone.utc)) == "2026-11-22"
    assert jobs.last_complete_week(datetime(2026, 11, 28, 23, 59, tzinfo=timezone.utc)) == "2026-11-15"


def test_weekly_partition_config_reads_the_last_days_of_a_recorded_directory(monkeypatch):
    start, end = datetime(2026, 11, 22, tzinfo=timezone.utc), datetime(2026, 11, 29, tzinfo=timezone.utc)
    files = jobs.weekly_run_config(start, end, env={"OCAD_RECORDED_DIR": "/data/exports", "OCAD_TRAIN_LAST_DAYS": "3"})
    raw = files["ops"]["raw_metrics"]["config"]
    assert raw == {"source": "files", "files": {"path": "/data/exports", "last_days": 3.0, "until": "2026-11-29T00:00:00+00:00"}}
    sim = jobs.weekly_run_config(start, end, env={})["ops"]["raw_metrics"]["config"]
    assert sim["source"] == "simulator" and sim["simulator"]["start"] == "2026-11-27T00:00:00+00:00"  # 48 h ending at the week's end
    monkeypatch.setenv("OCAD_RECORDED_DIR", "/data/exports")
    weekly = defs.resolve_job_def("weekly_retraining_job")
    cfg = weekly.partitioned_config.get_run_config_for_partition_key("2026-11-22")
    assert cfg["ops"]["raw_metrics"]["config"]["files"]["until"] == "2026-11-29T00:00:00+00:00"
