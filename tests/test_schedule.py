"""The weekly retraining schedule and the job/executor configuration."""

from datetime import datetime, timezone

import dagster as dg
import pytest

from ocad_pipeline import jobs
from ocad_pipeline.definitions import defs


def test_schedule_runs_weekly_on_sunday_midnight_utc():
    sched = defs.resolve_schedule_def("weekly_retraining_schedule")
    assert sched.cron_schedule == "0 0 * * 0"
    assert sched.execution_timezone == "UTC"
    assert sched.job_name == "weekly_retraining_job"
    assert sched.default_status == dg.DefaultScheduleStatus.STOPPED  # operators switch it on


def test_schedule_tick_requests_the_retraining_job(tmp_path):
    sched = defs.resolve_schedule_def("weekly_retraining_schedule")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime(2026, 11, 29, 0, 0, tzinfo=timezone.utc))
        reqs = sched.evaluate_tick(ctx).run_requests
    assert len(reqs) == 1
    assert reqs[0].run_key == "weekly-2026-11-29T00:00Z"
    assert reqs[0].tags["ocad/scheduled_for"] == "2026-11-29T00:00Z"


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
    assert jobs.executor_from_env("multiprocess") is dg.multiprocess_executor
    monkeypatch.setenv("OCAD_EXECUTOR", "in_process")
    assert jobs.executor_from_env() is dg.in_process_executor
    with pytest.raises(ValueError, match="OCAD_EXECUTOR"):
        jobs.executor_from_env("carrier-pigeon")
