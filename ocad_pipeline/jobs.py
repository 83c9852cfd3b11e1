"""Jobs and the weekly retraining schedule.

The executor is chosen by configuration (``OCAD_EXECUTOR``): ``multiprocess`` (default: each
step in its own process, so the per-metric TCNs train in parallel) or ``in_process`` (one
process, for tests and debugging). To go beyond one machine, swap in an existing distributed
executor (dagster-k8s, dagster-celery, dagster-dask); see README, "Scaling out".
"""

from __future__ import annotations

import os

import dagster as dg

#: groups the weekly retraining job materializes, in dependency order
RETRAIN_GROUPS: tuple[str, ...] = ("data", "datasets", "models", "evaluation")
#: groups added to the weekly job when OCAD_WEEKLY_TUNING=1
TUNING_GROUPS: tuple[str, ...] = ("tuning",)

#: evaluation assets left out of the weekly job
WEEKLY_EXCLUDED: tuple[str, ...] = ("mode_comparison",)

WEEKLY_CRON = "0 0 * * 0"  # Sundays 00:00 UTC, as the seed's CI schedule


def executor_from_env(name: str | None = None) -> dg.ExecutorDefinition:
    """``multiprocess`` (default) or ``in_process``; anything else is a configuration error."""
    choice = (name or os.environ.get("OCAD_EXECUTOR", "multiprocess")).strip().lower()
    if choice in ("multiprocess", "multi_process"):
        max_conc = int(os.environ.get("OCAD_MAX_CONCURRENT", "0") or 0)
        return dg.multiprocess_executor.configured({"max_concurrent": max_conc}) if max_conc else dg.multiprocess_executor
    if choice in ("in_process", "inprocess"):
        return dg.in_process_executor
    raise ValueError(f"OCAD_EXECUTOR must be 'multiprocess' or 'in_process', got {choice!r}")


def retrain_selection(include_tuning: bool | None = None) -> dg.AssetSelection:
    if include_tuning is None:
        include_tuning = os.environ.get("OCAD_WEEKLY_TUNING", "0").strip().lower() in ("1", "true", "yes")
    groups = RETRAIN_GROUPS + (TUNING_GROUPS if include_tuning else ())
    # the migration comparison (old online-training detectors) is a one-off study, not weekly work
    return dg.AssetSelection.groups(*groups) - dg.AssetSelection.assets(*WEEKLY_EXCLUDED)


def build_jobs(executor: dg.ExecutorDefinition | None = None, include_tuning: bool | None = None):
    """The main job (everything) and the weekly retraining job (data -> models -> reports -> gate)."""
    executor = executor or executor_from_env()
    main = dg.define_asset_job(
        "ocad_pipeline_job",
        selection=dg.AssetSelection.all() - dg.AssetSelection.groups(*TUNING_GROUPS),
        executor_def=executor,
        description="The main job: every OCAD asset but the (slow, opt-in) tuning group: raw metrics -> validated "
        "splits -> models -> reports.",
    )
    weekly = dg.define_asset_job(
        "weekly_retraining_job",
        selection=retrain_selection(include_tuning),
        executor_def=executor,
        description="Weekly retraining: data -> validated splits -> models -> performance reports -> quality gate -> promotion. "
        "Tuning joins when OCAD_WEEKLY_TUNING=1.",
        tags={"ocad/kind": "retraining"},
    )
    return main, weekly


def build_weekly_schedule(job) -> dg.ScheduleDefinition:
    @dg.schedule(
        cron_schedule=WEEKLY_CRON,
        job=job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Retrain, evaluate, gate and promote every Sunday 00:00 UTC. Turn it on in the UI "
        "(Automation -> weekly_retraining_schedule) or with `dagster schedule start weekly_retraining_schedule`.",
    )
    def weekly_retraining_schedule(context: dg.ScheduleEvaluationContext):
        when = context.scheduled_execution_time
        stamp = when.strftime("%Y-%m-%dT%H:%MZ") if when else "manual"
        return dg.RunRequest(run_key=f"weekly-{stamp}", tags={"ocad/scheduled_for": stamp})

    return weekly_retraining_schedule
