"""Group ``tuning``: Optuna searches for the trainers' hyperparameters (opt-in).

Neither the main job nor (by default) the weekly job runs this group; materialize it on its
own (``--select tcn_hyperparameters`` / ``isolation_forest_hyperparameters``) or set
``OCAD_WEEKLY_TUNING=1``. The search logic lives in ``ocad_pipeline.training.tuning``; here
the inputs are loaded, the studies opened in the data directory (SQLite under
``data/tuning/``, resumed on the next run) and the result written to
``data/tuning/<asset>.json``, which the training assets read when their config says
``use_tuned_params: true``. There is deliberately no asset edge from tuning to training:
training must not require a tuning run.
"""

import math
from pathlib import Path

import dagster as dg
import matplotlib.pyplot as plt
import pandas as pd

from ocad_detectors.signals import METRIC_TYPES
from ocad_pipeline.defs.resources import OcadPaths
from ocad_pipeline.plots import figure_markdown
from ocad_pipeline.training import code_version, dataframes_sha256, utc_now
from ocad_pipeline.training import tuning as tn
from ocad_pipeline.training.iforest import IsolationForestParams
from ocad_pipeline.training.tcn import TCNParams


class TCNTuningConfig(dg.Config):
    """Budget and fixed settings of the TCN searches (one study per metric type).

    ``n_trials`` new trials per study and run (added to the trials already stored);
    ``timeout_s`` time budget per study (0 = none; a running trial is finished). Every trial
    trains on a seeded subset of ``max_train_windows`` normal training windows for at most
    ``max_epochs`` epochs (early stopping with ``patience``) and is scored on the validation
    windows. ``storage``: an Optuna storage URL; empty = ``sqlite:///<data dir>/tuning/optuna_tcn.db``.
    ``study_version`` is part of the study names (``tcn_<metric>_<version>``): change it to
    start fresh studies.
    """

    metrics: list[str] = list(METRIC_TYPES)
    n_trials: int = 10
    timeout_s: float = 0.0
    seed: int = 0
    n_startup_trials: int = 5
    max_train_windows: int = 20000
    max_epochs: int = 8
    patience: int = 3
    batch_size: int = 256
    sequence_length: int = 10
    model_seed: int = 0
    pruner_startup_trials: int = 3
    pruner_warmup_epochs: int = 3
    enqueue_defaults: bool = True
    study_version: str = tn.SEARCH_SPACE_VERSION
    storage: str = ""


class IsolationForestTuningConfig(dg.Config):
    """Budget of the Isolation Forest search (one study).

    ``n_trials`` new trials per run, ``timeout_s`` time budget (0 = none). Each trial trains
    the forests as ``isolation_forest_model`` would (``model_seed`` = the trainer's ``seed``, so
    the best value is reproduced by the trainer) but with ``cv_folds`` (CV is reported only;
    it changes neither the forests nor the thresholds). ``storage`` empty =
    ``sqlite:///<data dir>/tuning/optuna_isolation_forest.db``.
    """

    n_trials: int = 20
    timeout_s: float = 0.0
    seed: int = 0
    n_startup_trials: int = 8
    cv_folds: int = 2
    model_seed: int = 0
    enqueue_defaults: bool = True
    study_version: str = tn.SEARCH_SPACE_VERSION
    storage: str = ""


def _settings(config) -> tn.StudySettings:
    return tn.StudySettings(
        n_trials=config.n_trials,
        timeout_s=config.timeout_s if config.timeout_s > 0 else None,
        seed=config.seed,
        n_startup_trials=config.n_startup_trials,
        enqueue_defaults=config.enqueue_defaults,
    )


def _storage_url(config_storage: str, paths: OcadPaths, asset: str) -> str:
    return config_storage.strip() or tn.sqlite_url(paths.root / tn.STORAGE_FILES[asset])


def _budget(config) -> dict:
    """The run config as recorded (a storage URL without its password)."""
    d = config.model_dump()
    d["storage"] = tn.display_url(d["storage"]) if d["storage"] else ""
    return d


# ------------------------------------------------------------------ metadata helpers


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.4g}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


def _top_table(outcome: tn.StudyOutcome, attrs: list[str], k: int = 10) -> str:
    top = outcome.top_trials(k)
    params = list(outcome.best_params) or sorted({p for t in top for p in t["params"]})
    for t in top:
        params += [p for p in t["params"] if p not in params]
    head = ["trial", "value", *params, *attrs, "duration s", "run"]
    out = ["| " + " | ".join(head) + " |", "|" + "---:|" * 2 + "---|" * len(params) + "---:|" * (len(attrs) + 1) + "---|"]
    for t in top:
        mark = " **best**" if t["number"] == outcome.best_trial else ""
        cells = [f"{t['number']}{mark}", _fmt(t["value"])]
        cells += [_fmt(t["params"].get(p)) for p in params]
        cells += [_fmt(t["user_attrs"].get(a)) for a in attrs]
        cells += [_fmt(t["duration_s"]), "this" if t["this_run"] else "earlier"]
        out.append("| " + " | ".join(cells) + " |")
    s, r = outcome.states, outcome.states_this_run
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(s.items()))
    now = ", ".join(f"{v} {k.lower()}" for k, v in sorted(r.items())) or "none"
    lines = [
        f"**{outcome.name}** ({outcome.direction} {outcome.objective}): {outcome.n_trials_total} trials in the study "
        f"({counts}); this run added {outcome.n_trials_run} ({now}) to {outcome.n_trials_before} earlier ones "
        f"in {outcome.seconds:.0f} s. Top {len(top)} completed trials:",
        "",
        *out,
    ]
    failed = [t for t in outcome.trials if t["state"] == "FAIL"][-5:]
    if failed:
        lines += ["", "Failed trials (last 5): " + "; ".join(f"{t['number']}: {t['user_attrs'].get('error', '?')}" for t in failed)]
    return "\n".join(lines)


def _history_plot(outcomes: dict[str, tn.StudyOutcome], ylabel: str, log_scale: bool) -> str:
    fig, axes = plt.subplots(1, len(outcomes), figsize=(4.8 * len(outcomes), 3.3), squeeze=False)
    for ax, o in zip(axes[0], outcomes.values()):
        done = [t for t in o.trials if t["state"] == "COMPLETE" and t["value"] is not None]
        pruned = [t for t in o.trials if t["state"] == "PRUNED" and t["last_intermediate"] is not None]
        failed = [t for t in o.trials if t["state"] == "FAIL"]
        ax.scatter([t["number"] for t in done], [t["value"] for t in done], s=16, label="complete", zorder=3)
        if pruned:
            ax.scatter(
                [t["number"] for t in pruned], [t["last_intermediate"] for t in pruned], marker="x", s=18, color="grey",
                label="pruned (last report)", zorder=3,
            )
        for i, t in enumerate(failed):
            ax.axvline(t["number"], color="tab:red", ls=":", lw=0.8, label="failed" if i == 0 else None)
        if done:
            xs, best, cur = [], [], None
            for t in sorted(done, key=lambda t: t["number"]):
                v = t["value"]
                cur = v if cur is None else (min(cur, v) if o.direction == "minimize" else max(cur, v))
                xs.append(t["number"])
                best.append(cur)
            ax.step(xs, best, where="post", color="tab:orange", label="best so far")
        if o.n_trials_before:
            ax.axvline(o.n_trials_before - 0.5, color="k", lw=0.6, ls="--", label="resumed here")
        if log_scale and done and min(t["value"] for t in done) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("trial")
        ax.set_title(o.name, fontsize=9)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel(ylabel)
    fig.tight_layout()
    return figure_markdown(fig, "optimization history")


def _result_doc(context, asset: str, data_version: str, space: dict, budget: dict, outcomes: dict[str, tn.StudyOutcome]) -> dict:
    return {
        "asset": asset,
        "created_at": utc_now(),
        "dagster_run_id": context.run_id,
        "code_version": code_version(),
        "data_version": data_version,
        "search_space_version": budget.get("study_version"),
        "search_space": space,
        "budget": budget,
        "result_file": tn.RESULT_FILES[asset],
        "studies": {
            k: {**o.summary(), "storage": tn.display_url(o.storage), "top_trials": o.top_trials(10)} for k, o in outcomes.items()
        },
    }


def _common_metadata(outcomes: dict[str, tn.StudyOutcome], result_path: Path) -> dict:
    md: dict = {
        "result_file": dg.MetadataValue.path(str(result_path)),
        "best_params": dg.MetadataValue.json({k: o.trainer_params for k, o in outcomes.items()}),
        "best_values": dg.MetadataValue.json({k: o.best_value for k, o in outcomes.items()}),
        "studies": dg.MetadataValue.json(
            {k: {"study_name": o.name, "storage": tn.display_url(o.storage), "best_trial": o.best_trial, "n_trials_total": o.n_trials_total,
                 "n_trials_before": o.n_trials_before, "n_trials_run": o.n_trials_run, "states": o.states, "sampler_seed": o.sampler_seed}
             for k, o in outcomes.items()}
        ),
    }
    for k, o in outcomes.items():
        md[f"{k}/best_value"] = float(o.best_value) if o.best_value is not None else float("nan")
        md[f"{k}/best_trial"] = -1 if o.best_trial is None else int(o.best_trial)
        md[f"{k}/n_trials_total"] = o.n_trials_total
        md[f"{k}/n_trials_run"] = o.n_trials_run
        md[f"{k}/pruned"] = o.states.get("PRUNED", 0)
        md[f"{k}/failed"] = o.states.get("FAIL", 0)
    return md


def _require_completed(outcomes: dict[str, tn.StudyOutcome], asset: str) -> None:
    empty = [o.name for o in outcomes.values() if o.best_trial is None]
    if empty:
        raise dg.Failure(
            f"{asset}: no completed trial in {empty} (every trial failed or was pruned); see the run log for the errors",
            metadata={k: dg.MetadataValue.json(o.states) for k, o in outcomes.items()},
        )


# ------------------------------------------------------------------ assets


@dg.asset(
    group_name="tuning",
    kinds={"optuna", "sqlite"},
    metadata={"ocad/result_file": tn.RESULT_FILES["tcn_hyperparameters"], "ocad/storage_file": tn.STORAGE_FILES["tcn_hyperparameters"]},
)
def tcn_hyperparameters(
    context: dg.AssetExecutionContext,
    config: TCNTuningConfig,
    timeseries_splits: dict[str, pd.DataFrame],
    paths: OcadPaths,
) -> dg.MaterializeResult:
    """Optuna search for the TCN forecasters, one study per metric type (tcn_udp_echo_v1, ...):
    learning rate (log scale), hidden channels, number of layers (dilations 1, 2, 4, 8),
    kernel size and dropout. Objective: best validation MSE on the train/validation splits only
    (seeded subset of training windows, capped epochs); trials are pruned per epoch by a median
    pruner. Studies are stored in SQLite (data/tuning/optuna_tcn.db) and resumed by the next
    run; the best parameters go to data/tuning/tcn_hyperparameters.json, which tcn_models uses
    with use_tuned_params: true."""
    unknown = sorted(set(config.metrics) - set(METRIC_TYPES))
    if unknown or not config.metrics:
        raise dg.Failure(f"tcn_hyperparameters: metrics must be a non-empty subset of {list(METRIC_TYPES)}, got {config.metrics}")
    settings = _settings(config)
    url = _storage_url(config.storage, paths, "tcn_hyperparameters")
    base = TCNParams(
        sequence_length=config.sequence_length,
        max_epochs=config.max_epochs,
        patience=config.patience,
        batch_size=config.batch_size,
        seed=config.model_seed,
        max_train_windows=config.max_train_windows or None,
    )
    data_version = dataframes_sha256(timeseries_splits)
    outcomes: dict[str, tn.StudyOutcome] = {}
    for metric in [m for m in METRIC_TYPES if m in config.metrics]:
        windows = tn.train_val_windows(timeseries_splits, metric, config.sequence_length)
        context.log.info(
            f"tcn_{metric}: {windows.counts['train']['used']} normal training windows (at most {config.max_train_windows or 'all'} "
            f"per trial), {windows.counts['val']['used']} validation windows"
        )
        outcomes[metric] = tn.tune_tcn(
            windows,
            base,
            settings,
            url,
            study_name=tn.tcn_study_name(metric, config.study_version),
            pruner_startup_trials=config.pruner_startup_trials,
            pruner_warmup_epochs=config.pruner_warmup_epochs,
            log=context.log.info,
        )
    _require_completed(outcomes, "tcn_hyperparameters")
    budget = _budget(config)
    doc = _result_doc(context, "tcn_hyperparameters", data_version, tn.TCN_SEARCH_SPACE, budget, outcomes)
    result_path = paths.root / tn.RESULT_FILES["tcn_hyperparameters"]
    tn.write_json_atomic(result_path, doc)
    context.log.info(f"wrote {result_path}")
    attrs = ["best_epoch", "epochs_run", "parameter_count"]
    metadata = {
        **_common_metadata(outcomes, result_path),
        "top_trials": dg.MetadataValue.md("\n\n".join(_top_table(o, attrs) for o in outcomes.values())),
        "optimization_history": dg.MetadataValue.md(_history_plot(outcomes, "best validation MSE (scaled)", log_scale=True)),
        "search_space": dg.MetadataValue.json(tn.TCN_SEARCH_SPACE),
        "budget": dg.MetadataValue.json(budget),
        "storage": tn.display_url(url),
        "data_version": data_version,
    }
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    group_name="tuning",
    kinds={"optuna", "sqlite"},
    metadata={
        "ocad/result_file": tn.RESULT_FILES["isolation_forest_hyperparameters"],
        "ocad/storage_file": tn.STORAGE_FILES["isolation_forest_hyperparameters"],
    },
)
def isolation_forest_hyperparameters(
    context: dg.AssetExecutionContext,
    config: IsolationForestTuningConfig,
    multivariate_splits: dict[str, pd.DataFrame],
    reference_stats: dict[str, pd.DataFrame],
    raw_metrics: dict[str, pd.DataFrame],
    paths: OcadPaths,
) -> dg.MaterializeResult:
    """Optuna search for the Isolation Forest (study isolation_forest_v1): n_estimators,
    max_samples, max_features and the threshold rule (max-F1 calibration or a quantile of
    normal validation scores, the quantile tuned). Objective: event-wise F1 on the validation
    split (raw_metrics incidents observable at the feature stride; an incident counts once) of
    the forests the trainer would build, fitted on the training split only. Stored in SQLite
    (data/tuning/optuna_isolation_forest.db), resumed by the next run; best parameters in
    data/tuning/isolation_forest_hyperparameters.json for isolation_forest_model with
    use_tuned_params: true."""
    settings = _settings(config)
    url = _storage_url(config.storage, paths, "isolation_forest_hyperparameters")
    base = IsolationForestParams(cv_folds=config.cv_folds, seed=config.model_seed)
    # the same hash as isolation_forest_model's data_version
    data_version = dataframes_sha256(
        {**{f"multivariate_{k}": v for k, v in multivariate_splits.items()}, "reference_stats": reference_stats["stats"]}
    )
    incidents = raw_metrics["incidents"]
    val = multivariate_splits["val"]
    obs = tn.observable_incidents(val, incidents)
    context.log.info(
        f"isolation_forest: {len(multivariate_splits['train'])} training rows, {len(val)} validation rows, "
        f"{len(obs)} validation incidents observable at the feature stride"
    )
    if len(obs) == 0:
        context.log.warning("no labelled incident in the validation split: event-wise F1 is 0 for every trial")
    outcome = tn.tune_isolation_forest(
        multivariate_splits,
        incidents,
        base,
        settings,
        url,
        study_name=tn.iforest_study_name(config.study_version),
        log=context.log.info,
    )
    outcomes = {"isolation_forest": outcome}
    _require_completed(outcomes, "isolation_forest_hyperparameters")
    budget = _budget(config)
    doc = _result_doc(context, "isolation_forest_hyperparameters", data_version, tn.IFOREST_SEARCH_SPACE, budget, outcomes)
    result_path = paths.root / tn.RESULT_FILES["isolation_forest_hyperparameters"]
    tn.write_json_atomic(result_path, doc)
    context.log.info(f"wrote {result_path}")
    attrs = ["val_event_precision", "val_event_recall", "val_false_alarm_events", "val_point_f1"]
    metadata = {
        **_common_metadata(outcomes, result_path),
        "top_trials": dg.MetadataValue.md(_top_table(outcome, attrs)),
        "optimization_history": dg.MetadataValue.md(_history_plot(outcomes, "validation event-wise F1", log_scale=False)),
        "search_space": dg.MetadataValue.json(tn.IFOREST_SEARCH_SPACE),
        "budget": dg.MetadataValue.json(budget),
        "storage": tn.display_url(url),
        "data_version": data_version,
        "validation_incidents_observable": len(obs),
    }
    return dg.MaterializeResult(metadata=metadata)

