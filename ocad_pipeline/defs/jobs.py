"""Jobs, the weekly retraining schedule and how the executor is chosen.

The executor is chosen by configuration (``OCAD_EXECUTOR``): ``auto`` (default), ``multiprocess``
(each step in its own process, so the per-metric TCNs train in parallel) or ``in_process`` (one
process). ``auto`` picks ``in_process`` when fewer than :data:`AUTO_MULTIPROCESS_MIN_CPUS` cores
are available to this process: on 2 cores the multiprocess start-up of every step (a fresh
interpreter importing torch, sklearn and dagster: 5-25 s each on a loaded 2-core machine) costs
more than the little parallelism it buys. The multiprocess executor starts its steps from a
``forkserver`` that has preloaded the code location, so a step forks a warm interpreter instead
of importing everything again. To go beyond one machine, swap in an existing distributed
executor (dagster-k8s, dagster-celery, dagster-dask); see README, "Scaling out".
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import dagster as dg

from ocad_pipeline.simulator import SimulatorConfig

#: groups the weekly retraining job materializes, in dependency order
RETRAIN_GROUPS: tuple[str, ...] = ("data", "datasets", "models", "evaluation")
#: groups added to the weekly job when OCAD_WEEKLY_TUNING=1
TUNING_GROUPS: tuple[str, ...] = ("tuning",)

#: the migration study (old online-training detectors vs the thin package): its own job
MIGRATION_STUDY_ASSETS: tuple[str, ...] = ("mode_comparison",)
#: evaluation assets left out of the weekly job (and of the main job)
WEEKLY_EXCLUDED: tuple[str, ...] = MIGRATION_STUDY_ASSETS

WEEKLY_CRON = "0 0 * * 0"  # Sundays 00:00 UTC, as the seed's CI schedule
#: first weekly partition (a Sunday: partitions run Sunday 00:00 -> Sunday 00:00 UTC)
WEEKLY_START_DATE = "2026-01-04"
WEEKLY_PARTITIONS = dg.WeeklyPartitionsDefinition(start_date=WEEKLY_START_DATE, timezone="UTC")

#: ``auto`` runs in process below this many available cores
AUTO_MULTIPROCESS_MIN_CPUS = 4
#: what the multiprocess forkserver imports once, before it forks the steps
PRELOAD_MODULES: tuple[str, ...] = ("ocad_pipeline.definitions",)


def available_cpus() -> int:
    """Cores this process may run on: the CPU affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max", encoding="ascii").read().split()[:2]
        if quota != "max" and int(period) > 0:
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def limit_native_threads(cpus: int | None = None) -> int | None:
    """On small machines (fewer than 4 available cores), one BLAS/OpenMP/torch thread per process.

    Measured on the 2-core machine this project runs on (shared with other work): OpenBLAS with 2
    threads made the thin package's batch TCN scoring in performance_reports 4.5x slower (11.5 s
    vs 2.5 s) and torch with 2 threads made a TCN epoch 6-15x slower, because the threads
    spin-wait for a core. ``OCAD_NATIVE_THREADS=N`` sets the count explicitly. Returns the
    limit applied (None: left alone).
    """
    env = os.environ.get("OCAD_NATIVE_THREADS", "").strip()
    if env:
        n = max(1, int(env))
    elif (cpus or available_cpus()) < AUTO_MULTIPROCESS_MIN_CPUS:
        n = 1
    else:
        return None
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 - a scikit-learn dependency

    threadpool_limits(limits=n)
    import sys  # noqa: PLC0415

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n


def _multiprocess(max_concurrent: int) -> dg.ExecutorDefinition:
    cfg: dict = {"start_method": {"forkserver": {"preload_modules": list(PRELOAD_MODULES)}}}
    if max_concurrent:
        cfg["max_concurrent"] = max_concurrent
    return dg.multiprocess_executor.configured(cfg, name="multiprocess")


def resolve_executor_choice(name: str | None = None, cpus: int | None = None) -> str:
    """``"multiprocess"`` or ``"in_process"`` for a setting of OCAD_EXECUTOR (default ``auto``)."""
    choice = (name or os.environ.get("OCAD_EXECUTOR", "auto")).strip().lower()
    if choice == "auto":
        return "multiprocess" if (cpus or available_cpus()) >= AUTO_MULTIPROCESS_MIN_CPUS else "in_process"
    if choice in ("multiprocess", "multi_process"):
        return "multiprocess"
    if choice in ("in_process", "inprocess"):
        return "in_process"
    raise ValueError(f"OCAD_EXECUTOR must be 'auto', 'multiprocess' or 'in_process', got {choice!r}")


def executor_from_env(name: str | None = None, cpus: int | None = None) -> dg.ExecutorDefinition:
    """The executor for OCAD_EXECUTOR (``auto`` by default); anything else is a configuration error."""
    if resolve_executor_choice(name, cpus) == "in_process":
        return dg.in_process_executor
    return _multiprocess(int(os.environ.get("OCAD_MAX_CONCURRENT", "0") or 0))


def retrain_selection(include_tuning: bool | None = None) -> dg.AssetSelection:
    if include_tuning is None:
        include_tuning = os.environ.get("OCAD_WEEKLY_TUNING", "0").strip().lower() in ("1", "true", "yes")
    groups = RETRAIN_GROUPS + (TUNING_GROUPS if include_tuning else ())
    # the migration comparison (old online-training detectors) is a one-off study, not weekly work
    return dg.AssetSelection.groups(*groups) - dg.AssetSelection.assets(*WEEKLY_EXCLUDED)


def weekly_run_config(start: datetime, end: datetime, env: dict[str, str] | None = None) -> dict:
    """Run config of one weekly partition ``[start, end)``.

    With ``OCAD_RECORDED_DIR`` set, ``raw_metrics`` reads that directory (files appear there over
    time) and keeps the last ``OCAD_TRAIN_LAST_DAYS`` days (default 7) up to the partition's end;
    ``OCAD_RECORDED_LABELS`` names an optional labels file. Without it the simulator's default
    fleet is simulated so that it ends at the partition's end.
    """
    env = dict(os.environ if env is None else env)
    directory = env.get("OCAD_RECORDED_DIR", "").strip()
    if directory:
        files: dict = {"path": directory, "last_days": float(env.get("OCAD_TRAIN_LAST_DAYS", "7") or 7), "until": end.isoformat()}
        if env.get("OCAD_RECORDED_LABELS", "").strip():
            files["labels_path"] = env["OCAD_RECORDED_LABELS"].strip()
        raw = {"source": "files", "files": files}
    else:
        hours = SimulatorConfig().duration_hours  # raw_metrics' simulator config derives its defaults from it
        raw = {"source": "simulator", "simulator": {"start": (end - timedelta(hours=hours)).isoformat()}}
    return {"ops": {"raw_metrics": {"config": raw}}}


@dg.weekly_partitioned_config(start_date=WEEKLY_START_DATE, timezone="UTC")
def weekly_partitioned_config(start: datetime, end: datetime) -> dict:
    """One weekly partition = one retraining run on the data up to that week's end."""
    return weekly_run_config(start, end)


def build_jobs(executor: dg.ExecutorDefinition | None = None, include_tuning: bool | None = None):
    """The main job (data -> models -> reports -> gate -> promotion), the weekly retraining job
    (the same, one weekly partition per run) and the migration study job."""
    executor = executor or executor_from_env()
    main = dg.define_asset_job(
        "ocad_pipeline_job",
        selection=dg.AssetSelection.all()
        - dg.AssetSelection.groups(*TUNING_GROUPS)
        - dg.AssetSelection.assets(*MIGRATION_STUDY_ASSETS),
        executor_def=executor,
        description="The main job: raw metrics -> validated splits -> models -> reports -> quality gate -> promotion. "
        "Tuning (opt-in) and the migration study (migration_study_job) are left out.",
    )
    weekly = dg.define_asset_job(
        "weekly_retraining_job",
        selection=retrain_selection(include_tuning),
        executor_def=executor,
        config=weekly_partitioned_config,
        description="Weekly retraining: data -> validated splits -> models -> performance reports -> quality gate -> promotion, "
        "one weekly partition per run (backfill past weeks from the job's Partitions tab). With OCAD_RECORDED_DIR "
        "it trains on the last OCAD_TRAIN_LAST_DAYS days of that directory. Tuning joins when OCAD_WEEKLY_TUNING=1.",
        tags={"ocad/kind": "retraining"},
    )
    study = dg.define_asset_job(
        "migration_study_job",
        selection=dg.AssetSelection.assets(*MIGRATION_STUDY_ASSETS),
        executor_def=dg.in_process_executor,
        description="The migration study (mode_comparison): the old online-training detectors vs the thin package on "
        "one test stream (about 5 min on 2 cores). Needs the main job's outputs.",
        tags={"ocad/kind": "study"},
    )
    return main, weekly, study


def last_complete_week(when: datetime) -> str:
    """Key of the newest weekly partition that has ended at ``when`` (the week before a Sunday 00:00 tick)."""
    keys = WEEKLY_PARTITIONS.get_partition_keys(current_time=when)
    if not keys:
        raise ValueError(f"no complete weekly partition before {when.isoformat()} (partitions start {WEEKLY_START_DATE})")
    return keys[-1]


def build_weekly_schedule(job) -> dg.ScheduleDefinition:
    @dg.schedule(
        cron_schedule=WEEKLY_CRON,
        job=job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Retrain, evaluate, gate and promote every Sunday 00:00 UTC on the week that just ended. Turn it on "
        "in the UI (Automation -> weekly_retraining_schedule) or with `dagster schedule start weekly_retraining_schedule`.",
    )
    def weekly_retraining_schedule(context: dg.ScheduleEvaluationContext):
        when = context.scheduled_execution_time or datetime.now(timezone.utc)
        stamp = when.strftime("%Y-%m-%dT%H:%MZ") if context.scheduled_execution_time else "manual"
        return dg.RunRequest(run_key=f"weekly-{stamp}", partition_key=last_complete_week(when), tags={"ocad/scheduled_for": stamp})

    return weekly_retraining_schedule


# --- what the code location gets from this module ------------------------------------------

#: OCAD_EXECUTOR (default auto: in process below 4 cores): for the named jobs and for the implicit
#: asset job behind `dg launch --assets` / "Materialize" in the UI
EXECUTOR = executor_from_env()
#: one BLAS/torch thread per process below 4 cores (oversubscribed threads spin: see above)
NATIVE_THREADS = limit_native_threads()
ocad_pipeline_job, weekly_retraining_job, migration_study_job = build_jobs(EXECUTOR)
weekly_retraining_schedule = build_weekly_schedule(weekly_retraining_job)


@dg.definitions
def jobs_and_schedules() -> dg.Definitions:
    return dg.Definitions(
        jobs=[ocad_pipeline_job, weekly_retraining_job, migration_study_job],
        schedules=[weekly_retraining_schedule],
        executor=EXECUTOR,
    )
