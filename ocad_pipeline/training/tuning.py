"""Hyperparameter search with Optuna for the TCN forecasters and the Isolation Forest.

Independent of Dagster (the assets in ``ocad_pipeline.defs.assets.tuning`` are thin). What it
guarantees:

* **train and validation splits only**: the TCN objective trains on the training windows and
  scores the validation windows; the Isolation Forest objective fits on training rows,
  calibrates and scores on validation rows. Test data is never handed to an objective
  (:func:`train_val_windows`, :func:`tune_isolation_forest` drop it).
* **objectives**: TCN = best validation MSE (scaled units, the trainer's early-stopping loss)
  within ``max_epochs`` on a seeded subsample of the training windows; every epoch reports the
  best loss so far to the pruner (``MedianPruner``) and unpromising trials are pruned.
  Isolation Forest = event-wise F1 on the validation split
  (:func:`ocad_pipeline.evaluation.eventwise`: an incident counts once) of the model the
  trainer would build with the trial's parameters, thresholds included (the trainer's own
  calibration on validation; the threshold strategy and quantile are part of the search).
* **persistent, resumable studies**: studies live in an Optuna storage (SQLite file by
  default); opening a study that exists loads it (``load_if_exists``) and the new trials are
  added to the old ones. Trials left ``RUNNING`` by a killed process are failed by the storage
  heartbeat on the next run.
* **seeded**: ``TPESampler(seed=seed + crc32(study name) % 10**6 + trials already in the
  study)`` (:func:`sampler_seed`): a fresh study is reproducible, studies of different metric
  types do not explore the same random points, and a resumed study does not replay the random
  start-up points of its first run (same stored trials + same seed -> same suggestions). The
  trainers are seeded as well, so one parameter set always gets the same value.
* **a failing trial does not stop the study**: any exception of an objective marks that trial
  ``FAIL`` (with the error in its ``error`` user attribute) and the study goes on; only a study
  without any completed trial has no result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from ocad_detectors._io import atomic_write
from ocad_pipeline.evaluation import eventwise, pointwise
from ocad_pipeline.training import json_safe
from ocad_pipeline.training.iforest import (
    IsolationForestParams,
    IsolationForestTrainResult,
    group_matrix,
    train_isolation_forest,
)
from ocad_pipeline.training.tcn import MetricWindows, TCNParams, prepare_metric_windows, train_tcn

__all__ = [
    "SEARCH_SPACE_VERSION",
    "TCN_SEARCH_SPACE",
    "IFOREST_SEARCH_SPACE",
    "TUNING_DIR",
    "RESULT_FILES",
    "STORAGE_FILES",
    "StudySettings",
    "StudyOutcome",
    "TuningResultMissing",
    "sqlite_url",
    "display_url",
    "sampler_seed",
    "open_study",
    "run_study",
    "tcn_trial_params",
    "tcn_optuna_params",
    "tcn_trainer_params",
    "iforest_trial_params",
    "iforest_optuna_params",
    "iforest_trainer_params",
    "train_val_windows",
    "tune_tcn",
    "tune_isolation_forest",
    "flag_rows",
    "observable_incidents",
    "detection_report",
    "write_json_atomic",
    "load_tuning_result",
    "tuned_params_for",
]

#: bump when a search space changes: study names carry it, so a new space starts a new study
SEARCH_SPACE_VERSION = "v1"

TUNING_DIR = "tuning"
#: where each tuning asset writes its result, relative to the data directory
RESULT_FILES = {
    "tcn_hyperparameters": f"{TUNING_DIR}/tcn_hyperparameters.json",
    "isolation_forest_hyperparameters": f"{TUNING_DIR}/isolation_forest_hyperparameters.json",
}
#: default SQLite study storage of each tuning asset (one file each: the two assets may run in
#: parallel processes and SQLite serializes writers)
STORAGE_FILES = {
    "tcn_hyperparameters": f"{TUNING_DIR}/optuna_tcn.db",
    "isolation_forest_hyperparameters": f"{TUNING_DIR}/optuna_isolation_forest.db",
}

# ------------------------------------------------------------------ search spaces

TCN_LEARNING_RATE = (1e-4, 1e-2)  # log scale
TCN_HIDDEN_CHANNELS = (8, 16, 32, 64)
TCN_DILATIONS = (1, 2, 4, 8)  # n_layers blocks use the first n dilations
TCN_LAYERS = (1, 4)
TCN_KERNEL_SIZE = (2, 5)
TCN_DROPOUT = (0.0, 0.3)

IF_N_ESTIMATORS = (50, 400, 50)  # low, high, step
IF_MAX_SAMPLES = ("auto", "128", "256", "512", "1024", "2048")
IF_MAX_FEATURES = (0.3, 1.0)
IF_THRESHOLD_STRATEGIES = ("budget", "f1", "quantile")
IF_THRESHOLD_QUANTILE = (0.90, 0.999)  # only when threshold_strategy == "quantile"

TCN_SEARCH_SPACE = {
    "learning_rate": f"log-uniform [{TCN_LEARNING_RATE[0]:g}, {TCN_LEARNING_RATE[1]:g}]",
    "hidden_channels": f"one of {', '.join(map(str, TCN_HIDDEN_CHANNELS))}",
    "n_layers": f"{TCN_LAYERS[0]}-{TCN_LAYERS[1]} blocks with dilations {', '.join(map(str, TCN_DILATIONS))} (the first n)",
    "kernel_size": f"integer {TCN_KERNEL_SIZE[0]}-{TCN_KERNEL_SIZE[1]}",
    "dropout": f"uniform [{TCN_DROPOUT[0]}, {TCN_DROPOUT[1]}]",
}
IFOREST_SEARCH_SPACE = {
    "n_estimators": f"{IF_N_ESTIMATORS[0]}-{IF_N_ESTIMATORS[1]} in steps of {IF_N_ESTIMATORS[2]}",
    "max_samples": f"one of {', '.join(IF_MAX_SAMPLES)} (rows per tree)",
    "max_features": f"uniform [{IF_MAX_FEATURES[0]}, {IF_MAX_FEATURES[1]}]",
    "threshold_strategy": "budget (target rate of healthy validation rows), f1 (max point-wise F1 on validation) or quantile",
    "threshold_quantile": f"uniform [{IF_THRESHOLD_QUANTILE[0]}, {IF_THRESHOLD_QUANTILE[1]}] of normal validation "
    "scores (only with threshold_strategy = quantile)",
}


def tcn_trial_params(trial: optuna.Trial, base: TCNParams) -> TCNParams:
    """``base`` with the trial's learning rate, width, depth (dilations), kernel size and dropout."""
    learning_rate = trial.suggest_float("learning_rate", *TCN_LEARNING_RATE, log=True)
    hidden = trial.suggest_categorical("hidden_channels", list(TCN_HIDDEN_CHANNELS))
    n_layers = trial.suggest_int("n_layers", *TCN_LAYERS)
    kernel = trial.suggest_int("kernel_size", *TCN_KERNEL_SIZE)
    dropout = trial.suggest_float("dropout", *TCN_DROPOUT)
    return dataclasses.replace(
        base,
        learning_rate=learning_rate,
        hidden_channels=int(hidden),
        dilations=TCN_DILATIONS[:n_layers],
        kernel_size=kernel,
        dropout=dropout,
    )


def tcn_optuna_params(params: TCNParams) -> dict[str, Any] | None:
    """The search-space point of ``params`` (to enqueue the trainer defaults as the first trial);
    None when ``params`` lies outside the space."""
    dil = tuple(params.dilations)
    point = {
        "learning_rate": float(params.learning_rate),
        "hidden_channels": int(params.hidden_channels),
        "n_layers": len(dil),
        "kernel_size": int(params.kernel_size),
        "dropout": float(params.dropout),
    }
    inside = (
        dil == TCN_DILATIONS[: len(dil)]
        and TCN_LAYERS[0] <= len(dil) <= TCN_LAYERS[1]
        and TCN_LEARNING_RATE[0] <= point["learning_rate"] <= TCN_LEARNING_RATE[1]
        and point["hidden_channels"] in TCN_HIDDEN_CHANNELS
        and TCN_KERNEL_SIZE[0] <= point["kernel_size"] <= TCN_KERNEL_SIZE[1]
        and TCN_DROPOUT[0] <= point["dropout"] <= TCN_DROPOUT[1]
    )
    return point if inside else None


def tcn_trainer_params(optuna_params: Mapping[str, Any]) -> dict[str, Any]:
    """Trainer config values (``TCNTrainingConfig`` / ``TCNParams`` keys) of a search-space point."""
    return {
        "learning_rate": float(optuna_params["learning_rate"]),
        "hidden_channels": int(optuna_params["hidden_channels"]),
        "dilations": list(TCN_DILATIONS[: int(optuna_params["n_layers"])]),
        "kernel_size": int(optuna_params["kernel_size"]),
        "dropout": float(optuna_params["dropout"]),
    }


def _max_samples(value: str) -> str | int:
    return value if value == "auto" else int(value)


def iforest_trial_params(trial: optuna.Trial, base: IsolationForestParams) -> IsolationForestParams:
    """``base`` with the trial's forest size, subsample, feature share and threshold rule."""
    lo, hi, step = IF_N_ESTIMATORS
    n_estimators = trial.suggest_int("n_estimators", lo, hi, step=step)
    max_samples = trial.suggest_categorical("max_samples", list(IF_MAX_SAMPLES))
    max_features = trial.suggest_float("max_features", *IF_MAX_FEATURES)
    strategy = trial.suggest_categorical("threshold_strategy", list(IF_THRESHOLD_STRATEGIES))
    quantile = (
        trial.suggest_float("threshold_quantile", *IF_THRESHOLD_QUANTILE) if strategy == "quantile" else base.threshold_quantile
    )
    return dataclasses.replace(
        base,
        n_estimators=n_estimators,
        max_samples=_max_samples(str(max_samples)),
        max_features=max_features,
        threshold_strategy=str(strategy),
        threshold_quantile=quantile,
    )


def iforest_optuna_params(params: IsolationForestParams) -> dict[str, Any] | None:
    """The search-space point of ``params``; None when it lies outside the space."""
    lo, hi, step = IF_N_ESTIMATORS
    point: dict[str, Any] = {
        "n_estimators": int(params.n_estimators),
        "max_samples": str(params.max_samples),
        "max_features": float(params.max_features),
        "threshold_strategy": params.threshold_strategy,
    }
    inside = (
        lo <= point["n_estimators"] <= hi
        and (point["n_estimators"] - lo) % step == 0
        and point["max_samples"] in IF_MAX_SAMPLES
        and IF_MAX_FEATURES[0] <= point["max_features"] <= IF_MAX_FEATURES[1]
        and point["threshold_strategy"] in IF_THRESHOLD_STRATEGIES
    )
    if params.threshold_strategy == "quantile":
        point["threshold_quantile"] = float(params.threshold_quantile)
        inside = inside and IF_THRESHOLD_QUANTILE[0] <= params.threshold_quantile <= IF_THRESHOLD_QUANTILE[1]
    return point if inside else None


def iforest_trainer_params(optuna_params: Mapping[str, Any]) -> dict[str, Any]:
    """Trainer config values (``IsolationForestConfig`` keys; ``max_samples`` as a string)."""
    out: dict[str, Any] = {
        "n_estimators": int(optuna_params["n_estimators"]),
        "max_samples": str(optuna_params["max_samples"]),
        "max_features": float(optuna_params["max_features"]),
        "threshold_strategy": str(optuna_params["threshold_strategy"]),
    }
    if "threshold_quantile" in optuna_params:
        out["threshold_quantile"] = float(optuna_params["threshold_quantile"])
    return out


# ------------------------------------------------------------------ studies


@dataclass(frozen=True)
class StudySettings:
    """How much to search in one run of a study (the budget is per study)."""

    #: new trials to run now (added to those already in the study)
    n_trials: int = 10
    #: stop starting new trials after this many seconds (None = no limit; a running trial finishes)
    timeout_s: float | None = None
    seed: int = 0
    #: random trials before TPE takes over (counted over the whole study, old trials included)
    n_startup_trials: int = 5
    #: a new (empty) study evaluates the trainer's default parameters first
    enqueue_defaults: bool = True
    #: storage heartbeat; a trial without a beat for 3 intervals (a killed run) is failed on resume
    heartbeat_s: int = 30

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise ValueError("n_trials must be >= 1")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0 (or None for no limit)")
        if self.n_startup_trials < 0:
            raise ValueError("n_startup_trials must be >= 0")


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """``sqlite:///`` URL of a database file (absolute; its folder is created)."""
    p = Path(path).resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p}"


def display_url(url: str) -> str:
    """A storage URL without its password (for logs and metadata)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def _storage(url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    with warnings.catch_warnings():  # the heartbeat arguments are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s
        )


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna's own INFO lines off (trial lines go through ``log``); warnings stay."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def sampler_seed(seed: int, study_name: str, n_before: int) -> int:
    """Seed of the TPE sampler for a run of ``study_name`` that starts with ``n_before`` trials."""
    return int(seed) + zlib.crc32(study_name.encode()) % 1_000_000 + int(n_before)


def open_study(
    name: str,
    storage_url: str,
    direction: str,
    settings: StudySettings,
    pruner: optuna.pruners.BasePruner | None = None,
) -> tuple[optuna.Study, int]:
    """Create the study or load it when it exists; returns ``(study, trials already in it)``.

    The sampler is ``TPESampler(seed=sampler_seed(settings.seed, name, trials already in it))``.
    """
    study = optuna.create_study(
        study_name=name,
        storage=_storage(storage_url, settings.heartbeat_s),
        direction=direction,
        load_if_exists=True,
        pruner=pruner or optuna.pruners.NopPruner(),
        sampler=optuna.samplers.RandomSampler(seed=settings.seed),  # replaced below
    )
    if study.direction.name.lower() != direction:
        raise ValueError(
            f"study {name!r} in {display_url(storage_url)} was created to {study.direction.name.lower()}, not {direction}; "
            "use another study_version (or storage) for a different objective"
        )
    n_before = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(
        seed=sampler_seed(settings.seed, name, n_before), n_startup_trials=settings.n_startup_trials
    )
    return study, n_before


@dataclass
class StudyOutcome:
    """One study after a run: what ran now, the whole study, and the best trial so far."""

    name: str
    storage: str
    direction: str
    objective: str
    sampler_seed: int
    n_trials_before: int
    n_trials_run: int
    n_trials_total: int
    states: dict[str, int]
    states_this_run: dict[str, int]
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    trainer_params: dict[str, Any]
    best_user_attrs: dict[str, Any]
    seconds: float
    #: every trial of the study: number, state, value, params, user_attrs, duration_s, this_run
    trials: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Everything but the per-trial list (what the result file stores per study)."""
        d = dataclasses.asdict(self)
        d.pop("trials")
        return json_safe(d)

    def top_trials(self, k: int = 10) -> list[dict[str, Any]]:
        done = [t for t in self.trials if t["state"] == "COMPLETE" and t["value"] is not None]
        return sorted(done, key=lambda t: t["value"], reverse=self.direction == "maximize")[:k]


def _trial_record(t: FrozenTrial, this_run: bool) -> dict[str, Any]:
    duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
    last = None
    if t.intermediate_values:
        last = t.intermediate_values[max(t.intermediate_values)]
    return json_safe(
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": dict(t.params),
            "user_attrs": dict(t.user_attrs),
            "duration_s": duration,
            "last_intermediate": last,
            "last_step": max(t.intermediate_values) if t.intermediate_values else None,
            "this_run": this_run,
        }
    )


def _count(trials, numbers=None) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        if numbers is None or t.number in numbers:
            out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _guarded(objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
    """Record an objective's error on its trial before Optuna marks the trial FAIL."""

    def run(trial: optuna.Trial) -> float:
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            raise

    return run


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run_study(
    name: str,
    storage_url: str,
    direction: str,
    objective: Callable[[optuna.Trial], float],
    settings: StudySettings,
    *,
    objective_name: str,
    trainer_params: Callable[[Mapping[str, Any]], dict[str, Any]],
    defaults: Mapping[str, Any] | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    log: Callable[[str], None] | None = None,
) -> StudyOutcome:
    """Open (or resume) study ``name`` and run ``settings.n_trials`` new trials within
    ``settings.timeout_s``; failing trials are recorded and skipped."""
    with _quiet_optuna():
        return _run_study(name, storage_url, direction, objective, settings, objective_name, trainer_params, defaults, pruner, log)


def _run_study(name, storage_url, direction, objective, settings, objective_name, trainer_params, defaults, pruner, log):
    study, n_before = open_study(name, storage_url, direction, settings, pruner)
    before = {t.number for t in study.get_trials(deepcopy=False)}
    if log is not None:
        log(
            f"{name}: {'resuming with ' + str(n_before) + ' earlier trials' if n_before else 'new study'} "
            f"in {display_url(storage_url)}; running {settings.n_trials} trials"
            + (f" (time budget {settings.timeout_s:g} s)" if settings.timeout_s else "")
        )
    if settings.enqueue_defaults and n_before == 0 and defaults is not None:
        study.enqueue_trial(dict(defaults), user_attrs={"enqueued": "trainer defaults"})

    def report(st: optuna.Study, t: FrozenTrial) -> None:
        if log is None:
            return
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
        value = f"{t.value:.6g}" if t.value is not None else "-"
        extra = f" ({t.user_attrs['error']})" if "error" in t.user_attrs else ""
        if t.state == TrialState.PRUNED and t.intermediate_values:
            extra = f" at step {max(t.intermediate_values)}"
        try:
            best = f"{st.best_value:.6g} (trial {st.best_trial.number})"
        except ValueError:
            best = "-"
        log(f"{name} trial {t.number}: {t.state.name} value={value}{extra} [{params}]; best so far {best}")

    t0 = time.perf_counter()
    study.optimize(
        _guarded(objective),
        n_trials=settings.n_trials,
        timeout=settings.timeout_s,
        catch=(Exception,),
        callbacks=[report],
    )
    seconds = time.perf_counter() - t0
    trials = study.get_trials(deepcopy=False)
    new = {t.number for t in trials} - before
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return StudyOutcome(
        name=name,
        storage=display_url(storage_url),
        direction=direction,
        objective=objective_name,
        sampler_seed=sampler_seed(settings.seed, name, n_before),
        n_trials_before=n_before,
        n_trials_run=len(new),
        n_trials_total=len(trials),
        states=_count(trials),
        states_this_run=_count(trials, new),
        best_trial=best.number if best else None,
        best_value=float(best.value) if best else None,
        best_params=dict(best.params) if best else {},
        trainer_params=trainer_params(best.params) if best else {},
        best_user_attrs=json_safe(dict(best.user_attrs)) if best else {},
        seconds=seconds,
        trials=[_trial_record(t, t.number in new) for t in trials],
    )


# ------------------------------------------------------------------ TCN


def train_val_windows(splits: Mapping[str, pd.DataFrame], metric_type: str, sequence_length: int) -> MetricWindows:
    """A metric's normal, finite windows of the train and val splits only (no test entry)."""
    w = prepare_metric_windows(
        {"train": splits["train"], "val": splits["val"], "test": splits["val"]}, metric_type, sequence_length
    )
    keep = ("train", "val")
    return MetricWindows(
        w.metric_type,
        w.sequence_length,
        {k: w.X[k] for k in keep},
        {k: w.y[k] for k in keep},
        {k: w.endpoints[k] for k in keep},
        {k: w.counts[k] for k in keep},
    )


def tcn_study_name(metric_type: str, version: str = SEARCH_SPACE_VERSION) -> str:
    return f"tcn_{metric_type}_{version}"


def tune_tcn(
    windows: MetricWindows,
    base: TCNParams,
    settings: StudySettings,
    storage_url: str,
    *,
    study_name: str | None = None,
    pruner_startup_trials: int = 3,
    pruner_warmup_epochs: int = 3,
    log: Callable[[str], None] | None = None,
) -> StudyOutcome:
    """Search the TCN space for one metric type. Every trial trains with ``base`` (its
    ``max_epochs``, ``max_train_windows``, ``patience``, seed ...) plus the trial's point;
    the value is the best validation loss (scaled MSE). The pruner sees the best loss so far
    after every epoch and stops trials worse than the median of earlier trials at that epoch."""
    if "test" in windows.X:
        raise ValueError("tune_tcn takes training and validation windows only (see train_val_windows)")

    def objective(trial: optuna.Trial) -> float:
        params = tcn_trial_params(trial, base)
        best = math.inf

        def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
            nonlocal best
            if math.isfinite(val_loss):
                best = min(best, val_loss)
            trial.report(best, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: best validation loss {best:.6g} below the median")

        result = train_tcn(windows, params, on_epoch=on_epoch)
        value = float(result.best_val_loss)
        trial.set_user_attr("best_epoch", int(result.best_epoch))
        trial.set_user_attr("epochs_run", int(result.epochs_run))
        trial.set_user_attr("parameter_count", int(result.parameter_count))
        trial.set_user_attr("train_windows", int(result.n_train_windows))
        trial.set_user_attr("train_seconds", round(result.train_seconds, 2))
        if not math.isfinite(value):
            raise ValueError(f"validation loss is not finite ({value}); training diverged")
        return value

    pruner = optuna.pruners.MedianPruner(n_startup_trials=pruner_startup_trials, n_warmup_steps=pruner_warmup_epochs)
    return run_study(
        study_name or tcn_study_name(windows.metric_type),
        storage_url,
        "minimize",
        objective,
        settings,
        objective_name="best validation MSE (scaled units) of the TCN forecaster",
        trainer_params=tcn_trainer_params,
        defaults=tcn_optuna_params(TCNParams()),
        pruner=pruner,
        log=log,
    )


# ------------------------------------------------------------------ Isolation Forest


def flag_rows(result: IsolationForestTrainResult, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(flagged, score - threshold)`` per row: each row is scored by its capability group's
    forest; rows of a group without a model are never flagged (margin NaN)."""
    flagged = np.zeros(len(df), dtype=bool)
    margin = np.full(len(df), np.nan)
    caps = df["capabilities"].astype(str).to_numpy()
    for g, m in result.groups.items():
        mask = caps == g
        if mask.any():
            s = m.anomaly_score(group_matrix(df.loc[mask], m.features))
            margin[mask] = s - m.threshold
            flagged[mask] = s > m.threshold
    return flagged, margin


def observable_incidents(stream: pd.DataFrame, incidents: pd.DataFrame) -> pd.DataFrame:
    """Incidents with at least one ``stream`` row of their endpoint inside ``[start, end)``:
    feature rows come every ``feature_stride`` samples, so an incident shorter than the stride
    can fall between two rows and cannot be detected by any model scored on these rows."""
    if len(incidents) == 0 or len(stream) == 0:
        return incidents.iloc[:0]
    times = {
        str(ep): np.sort(g.to_numpy(np.int64)) for ep, g in stream.groupby(stream["endpoint_id"].astype(str))["timestamp_ms"]
    }
    keep = np.zeros(len(incidents), dtype=bool)
    for i, (ep, start, end) in enumerate(
        zip(incidents["endpoint_id"].astype(str), incidents["start"].to_numpy(np.int64), incidents["end"].to_numpy(np.int64))
    ):
        t = times.get(ep)
        if t is not None:
            j = np.searchsorted(t, start, side="left")
            keep[i] = j < len(t) and t[j] < end
    return incidents[keep].reset_index(drop=True)


def detection_report(result: IsolationForestTrainResult, df: pd.DataFrame, incidents: pd.DataFrame) -> dict[str, Any]:
    """Point-wise (``is_anomaly`` per row) and event-wise (observable incidents, an incident
    counts once) metrics of the model's decisions on the rows of ``df``."""
    flagged, margin = flag_rows(result, df)
    y = df["is_anomaly"].to_numpy(dtype=bool)
    scores = np.where(np.isfinite(margin), margin, -np.inf)
    obs = observable_incidents(df, incidents)
    ev = eventwise(df[["endpoint_id", "timestamp_ms"]], flagged, obs)
    pw = pointwise(y, flagged, scores if np.isfinite(scores).all() else None)
    return {
        "pointwise": pw,
        "eventwise": ev.metrics,
        "incidents_observable": int(len(obs)),
        "incidents_in_range": _incidents_in_range(df, incidents),
    }


def _incidents_in_range(stream: pd.DataFrame, incidents: pd.DataFrame) -> int:
    """Incidents overlapping the time range of their endpoint's rows (what ``eventwise`` would score)."""
    if len(stream) == 0 or len(incidents) == 0:
        return 0
    span = stream.groupby(stream["endpoint_id"].astype(str))["timestamp_ms"].agg(["min", "max"])
    inc = incidents.assign(endpoint_id=incidents["endpoint_id"].astype(str)).join(span, on="endpoint_id", how="inner")
    return int(((inc["end"] > inc["min"]) & (inc["start"] <= inc["max"])).sum())


def iforest_study_name(version: str = SEARCH_SPACE_VERSION) -> str:
    return f"isolation_forest_{version}"


def tune_isolation_forest(
    splits: Mapping[str, pd.DataFrame],
    incidents: pd.DataFrame,
    base: IsolationForestParams,
    settings: StudySettings,
    storage_url: str,
    *,
    study_name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> StudyOutcome:
    """Search the Isolation Forest space; the value is the event-wise F1 on the validation split
    of the model ``train_isolation_forest`` builds (thresholds calibrated on validation as the
    trainer does). Only ``splits["train"]`` and ``splits["val"]`` are used."""
    train_val = {"train": splits["train"], "val": splits["val"]}
    val = splits["val"]
    incidents = incidents.copy()
    incidents["endpoint_id"] = incidents["endpoint_id"].astype(str)

    def objective(trial: optuna.Trial) -> float:
        params = iforest_trial_params(trial, base)
        result = train_isolation_forest(train_val, params)
        rep = detection_report(result, val, incidents)
        ev, pw = rep["eventwise"], rep["pointwise"]
        trial.set_user_attr("val_event_precision", float(ev["precision"]))
        trial.set_user_attr("val_event_recall", float(ev["recall"]))
        trial.set_user_attr("val_false_alarm_events", int(ev["false_alarm_events"]))
        trial.set_user_attr("val_point_f1", float(pw["f1_score"]))
        trial.set_user_attr("val_point_far", float(pw["false_alarm_rate"]))
        trial.set_user_attr("incidents", int(ev["incidents"]))
        trial.set_user_attr("skipped_groups", sorted(result.skipped))
        trial.set_user_attr("train_seconds", round(result.train_seconds, 2))
        return float(ev["f1_score"])

    return run_study(
        study_name or iforest_study_name(),
        storage_url,
        "maximize",
        objective,
        settings,
        objective_name="event-wise F1 on the validation split (observable incidents; an incident counts once)",
        trainer_params=iforest_trainer_params,
        defaults=iforest_optuna_params(IsolationForestParams()),
        log=log,
    )


# ------------------------------------------------------------------ result files


class TuningResultMissing(FileNotFoundError):
    """A trainer was asked for tuned parameters that were never produced."""


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, (json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n").encode(), durable=False)


def load_tuning_result(data_dir: str | os.PathLike[str], asset: str) -> dict[str, Any]:
    """The result file a tuning asset wrote under ``data_dir``; :class:`TuningResultMissing`
    (with the command to run) when it does not exist."""
    path = Path(data_dir) / RESULT_FILES[asset]
    if not path.is_file():
        raise TuningResultMissing(
            f"use_tuned_params is set, but {asset} has not been materialized in this data directory "
            f"(missing {path}). Run the tuning first with the same DAGSTER_HOME and data directory, e.g.\n"
            f"  DAGSTER_HOME=$PWD/dagster_home .venv/bin/dg launch --assets {asset}\n"
            f"or train with use_tuned_params: false (the trainer's defaults)."
        )
    return json.loads(path.read_text())


def tuned_params_for(result: Mapping[str, Any], key: str, asset: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(trainer params, provenance block)`` of study ``key`` (a metric type, or
    ``isolation_forest``) in a tuning result file."""
    studies = result.get("studies", {})
    if key not in studies:
        raise TuningResultMissing(
            f"{asset} holds no study for {key!r} (tuned: {sorted(studies)}); rerun "
            f"`dg launch --assets {asset}` with {key!r} included"
        )
    s = studies[key]
    if s.get("best_trial") is None or not s.get("trainer_params"):
        raise TuningResultMissing(
            f"{asset}: study {s.get('name')!r} has no completed trial yet (states: {s.get('states')}); "
            f"run more trials with `dg launch --assets {asset}`"
        )
    block = {
        "study_name": s["name"],
        "storage": s["storage"],
        "best_trial": s["best_trial"],
        "best_value": s["best_value"],
        "objective": s["objective"],
        "direction": s["direction"],
        "n_trials": s["n_trials_total"],
        "states": s["states"],
        "params": s["trainer_params"],
        "tuned_at": result.get("created_at"),
        "tuning_run_id": result.get("dagster_run_id"),
        "tuning_data_version": result.get("data_version"),
        "tuning_budget": result.get("budget"),
        "result_file": result.get("result_file"),
    }
    return dict(s["trainer_params"]), block
