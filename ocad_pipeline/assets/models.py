"""Group ``models``: trained, versioned models in the registry (``data/models/``).

The assets are thin: training lives in ``ocad_pipeline.training`` (testable without Dagster);
here inputs are loaded through the ``tables`` IO manager, every model is written as a new
immutable registry version (safetensors weights + ``metadata.json``) and the run gets rich
materialization metadata. The first version of a model is promoted to production by the
registry; later versions stay candidates until promoted explicitly (``ocad-models promote``).
"""

import dataclasses
import math
import time

import dagster as dg
import matplotlib.pyplot as plt
import pandas as pd

from ocad_detectors.signals import METRIC_SIGNAL, METRIC_TYPES, SIGNALS
from ocad_pipeline.plots import figure_markdown
from ocad_pipeline.resources import DatasetSettings, ModelRegistryResource, OcadPaths
from ocad_pipeline.training import code_version, dataframes_sha256, json_safe, utc_now
from ocad_pipeline.training.iforest import (
    MODEL_NAME as IFOREST_MODEL_NAME,
    IsolationForestParams,
    iforest_version_payload,
    train_isolation_forest,
)
from ocad_pipeline.training.metrics import forecast_table_markdown
from ocad_pipeline.training.tuning import TuningResultMissing, load_tuning_result, tuned_params_for
from ocad_pipeline.training.tcn import (
    TCNParams,
    evaluate_forecasts,
    prepare_metric_windows,
    tcn_model_name,
    tcn_version_payload,
    train_tcn,
)


class TCNTrainingConfig(dg.Config):
    """Hyperparameters of the three TCN forecasters (one per metric type, same settings).

    ``sequence_length`` must equal the length of the ``sequence`` arrays in timeseries_splits
    (DatasetSettings.sequence_length). ``max_train_windows`` caps the normal training windows
    per metric (seeded random subset; 0 = all). Defaults take about 1.5 min on 2 CPU cores.

    ``use_tuned_params``: take learning_rate, hidden_channels, dilations, kernel_size and
    dropout of each metric type from the best trial of its Optuna study
    (``data/tuning/tcn_hyperparameters.json``, written by the ``tcn_hyperparameters`` asset);
    the other settings stay as configured here. Fails when that file does not exist.
    """

    use_tuned_params: bool = False

    sequence_length: int = 10
    hidden_channels: int = 32
    dilations: list[int] = [1, 2, 4]
    kernel_size: int = 3
    dropout: float = 0.0
    learning_rate: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 30
    patience: int = 5
    lr_decay_factor: float = 0.5
    lr_decay_patience: int = 1
    seed: int = 0
    max_train_windows: int = 0
    num_threads: int = 1

    def to_params(self) -> TCNParams:
        d = self.model_dump()
        d.pop("use_tuned_params")
        d["dilations"] = tuple(d["dilations"])
        d["max_train_windows"] = d["max_train_windows"] or None
        return TCNParams(**d)


class IsolationForestConfig(dg.Config):
    """Hyperparameters of the Isolation Forest (one forest per capability group).

    ``max_samples``: "auto" (= min(256, rows)) or a row count as a string, e.g. "512".
    ``threshold_strategy``: "f1" (maximize F1 on validation labels; falls back to the quantile
    when a group's validation rows hold no anomaly) or "quantile" (``threshold_quantile`` of
    normal validation scores).

    ``use_tuned_params``: take n_estimators, max_samples, max_features and the threshold rule
    from the best trial of the Optuna study (``data/tuning/isolation_forest_hyperparameters.json``,
    written by ``isolation_forest_hyperparameters``); cv_folds and seed stay as configured.
    """

    use_tuned_params: bool = False

    n_estimators: int = 200
    max_samples: str = "auto"
    max_features: float = 1.0
    threshold_strategy: str = "f1"
    threshold_quantile: float = 0.99
    cv_folds: int = 5
    seed: int = 0

    def to_params(self) -> IsolationForestParams:
        d = self.model_dump()
        d.pop("use_tuned_params")
        ms = d["max_samples"].strip()
        if ms != "auto":
            try:
                d["max_samples"] = int(ms)
            except ValueError:
                raise ValueError(f"max_samples must be 'auto' or an integer, got {ms!r}") from None
        return IsolationForestParams(**d)


def _provenance(context: dg.AssetExecutionContext, frames: dict[str, pd.DataFrame]) -> dict[str, str]:
    return {
        "training_date": utc_now(),
        "data_version": dataframes_sha256(frames),
        "dagster_run_id": context.run_id,
        "code_version": code_version(),
        "hyperparameters_source": "defaults",
    }


def _tuned(
    context: dg.AssetExecutionContext, paths: OcadPaths, asset: str, key: str, data_version: str
) -> tuple[dict, dict]:
    """``(trainer overrides, metadata.json "tuning" block)`` of study ``key`` in the result file
    of tuning asset ``asset``; a ``dg.Failure`` naming the command to run when it is missing."""
    try:
        overrides, block = tuned_params_for(load_tuning_result(paths.root, asset), key, asset)
    except TuningResultMissing as exc:
        raise dg.Failure(str(exc)) from exc
    block["same_data_version"] = block.get("tuning_data_version") == data_version
    if not block["same_data_version"]:
        context.log.warning(
            f"{key}: the tuned parameters come from data {str(block.get('tuning_data_version'))[:12]}..., "
            f"this model trains on {data_version[:12]}... (rerun {asset} to tune on the current data)"
        )
    context.log.info(
        f"{key}: hyperparameters from Optuna study {block['study_name']} (trial {block['best_trial']}, "
        f"value {block['best_value']:.6g}, {block['n_trials']} trials): {overrides}"
    )
    return overrides, block


def _learning_curves(results) -> str:
    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 3.2), squeeze=False)
    for ax, (metric, r) in zip(axes[0], results.items()):
        epochs = range(1, r.epochs_run + 1)
        ax.plot(epochs, r.train_loss, marker=".", label="train")
        ax.plot(epochs, r.val_loss, marker=".", label="validation")
        ax.axvline(r.best_epoch, color="grey", ls="--", lw=0.8, label=f"best epoch {r.best_epoch}")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"tcn_{metric}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("MSE (scaled)")
    fig.tight_layout()
    return figure_markdown(fig, "learning curves")


def _versions_table(rows: list[dict]) -> str:
    out = ["| model | version | status | registry path | file size (bytes) | parameters | best epoch | epochs run |", "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['version']} | {r['status']} | `{r['path']}` | {r['size']} | {r.get('params', '')} | "
            f"{r.get('best_epoch', '')} | {r.get('epochs', '')} |"
        )
    return "\n".join(out)


@dg.asset(group_name="models", kinds={"pytorch", "safetensors"})
def tcn_models(
    context: dg.AssetExecutionContext,
    config: TCNTrainingConfig,
    timeseries_splits: dict[str, pd.DataFrame],
    model_registry: ModelRegistryResource,
    paths: OcadPaths,
) -> dg.MaterializeResult:
    """Causal dilated 1-D CNN (TCN) forecasters, one per metric type (udp_echo, ecpri, lbm):
    the next value from the previous N values only. Trained on normal windows (scaler from the
    training split only), early stopping on validation loss with the best epoch restored,
    seeded and reproducible on CPU. Each model is a new registry version (tcn_udp_echo,
    tcn_ecpri, tcn_lbm under data/models/): weights.safetensors + metadata.json with the scaler,
    residual scale, config, data hash, run id, code version and test forecast metrics against
    the last-value and window-mean baselines. With use_tuned_params: true each metric type
    takes its architecture and optimizer settings from its Optuna study (tcn_hyperparameters);
    metadata.json records hyperparameters_source ("defaults" or "optuna") and the study."""
    base_params = config.to_params()
    registry = model_registry.get_registry()
    prov = _provenance(context, timeseries_splits)
    results, reports, rows = {}, {}, []
    metadata: dict = {}
    used_params: dict = {}
    t_all = time.perf_counter()
    # resolve every metric's parameters before training anything (a missing study fails early)
    tuned = {m: _tuned(context, paths, "tcn_hyperparameters", m, prov["data_version"]) for m in METRIC_TYPES} if config.use_tuned_params else {}
    for metric in METRIC_TYPES:
        params, tuning, metric_prov = base_params, None, prov
        if metric in tuned:
            overrides, tuning = tuned[metric]
            params = dataclasses.replace(base_params, **{**overrides, "dilations": tuple(overrides["dilations"])})
            metric_prov = {**prov, "hyperparameters_source": "optuna"}
        windows = prepare_metric_windows(timeseries_splits, metric, params.sequence_length)
        context.log.info(
            f"tcn_{metric}: {windows.counts['train']['used']} normal training windows "
            f"({windows.counts['train']['rows']} rows), {windows.counts['val']['used']} validation, "
            f"{windows.counts['test']['used']} test"
        )
        result = train_tcn(windows, params, log=context.log.info)
        report = evaluate_forecasts(result, windows, "test")
        files, meta = tcn_version_payload(result, windows, metric_prov, report)
        if tuning is not None:
            meta["tuning"] = json_safe(tuning)
        info = registry.write_version(tcn_model_name(metric), files, meta)
        used_params[metric] = {"source": metric_prov["hyperparameters_source"], **params.to_dict()}
        size = sum(len(b) for b in files.values())
        context.log.info(f"registered {info.model_name} {info.version} ({info.status}) at {info.path}")
        results[metric], reports[metric] = result, report
        rows.append(
            {"model": info.model_name, "version": info.version, "status": info.status, "path": str(info.path),
             "size": size, "params": result.parameter_count, "best_epoch": result.best_epoch, "epochs": result.epochs_run}
        )
        metadata.update(
            {
                f"{metric}/version": info.version,
                f"{metric}/status": info.status,
                f"{metric}/registry_path": dg.MetadataValue.path(str(info.path)),
                f"{metric}/file_size_bytes": size,
                f"{metric}/parameter_count": result.parameter_count,
                f"{metric}/best_epoch": result.best_epoch,
                f"{metric}/epochs_run": result.epochs_run,
                f"{metric}/best_val_loss": float(result.best_val_loss),
                f"{metric}/train_windows": result.n_train_windows,
                f"{metric}/train_seconds": round(result.train_seconds, 2),
                f"{metric}/test_mse_vs_last_value": _ratio(report["tcn"]["mse"], report["last_value"]["mse"]),
                f"{metric}/test_r2": float(report["tcn"]["r2"]),
                f"{metric}/hyperparameters_source": metric_prov["hyperparameters_source"],
            }
        )
        if tuning is not None:
            metadata[f"{metric}/tuning_study"] = f"{tuning['study_name']} (trial {tuning['best_trial']})"
    units = ", ".join(f"{m}: {SIGNALS[METRIC_SIGNAL[m]].unit}" for m in METRIC_TYPES)
    metadata = {
        "forecast_metrics": dg.MetadataValue.md(
            "Normal test windows, errors in the signal's unit (" + units + "). `last_value` predicts the newest "
            "input value, `window_mean` the mean of the N input values. R² is pooled over endpoints (dominated by "
            "their different baselines); R² within endpoint measures against each endpoint's own mean.\n\n"
            + forecast_table_markdown(reports)
            + "\n\n"
            + "\n".join(
                f"- tcn_{m}: MSE below the last-value forecast on {r['tcn']['endpoints_better_than_last_value']}"
                f"/{r['tcn']['endpoints']} endpoints"
                for m, r in reports.items()
            )
        ),
        "learning_curves": dg.MetadataValue.md(_learning_curves(results)),
        "models": dg.MetadataValue.md(_versions_table(rows)),
        "registry_root": dg.MetadataValue.path(str(registry.root)),
        "data_version": prov["data_version"],
        "code_version": prov["code_version"],
        "config": dg.MetadataValue.json(base_params.to_dict()),
        "hyperparameters": dg.MetadataValue.json(used_params),
        "hyperparameters_source": "optuna" if config.use_tuned_params else "defaults",
        "train_seconds_total": round(time.perf_counter() - t_all, 2),
        **metadata,
    }
    return dg.MaterializeResult(metadata=metadata)


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b and math.isfinite(b) else float("nan")


def _group_table(result) -> str:
    out = [
        "| group | features | normal train rows | threshold | val precision | val recall | val F1 | val ROC-AUC | val FAR | test F1 | test ROC-AUC |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    nan = math.nan
    for g, m in result.groups.items():
        v, t = m.validation, m.test or {}
        out.append(
            f"| {g} | {len(m.features)} | {m.n_train} | {m.threshold:.4f} | {v.get('precision', nan):.3f} | "
            f"{v.get('recall', nan):.3f} | {v.get('f1', nan):.3f} | {v.get('roc_auc', nan):.3f} | "
            f"{v.get('false_alarm_rate', nan):.4f} | {t.get('f1', math.nan):.3f} | "
            f"{t.get('roc_auc', math.nan):.3f} |"
        )
    return "\n".join(out)


def _cv_table(result) -> str:
    out = [
        "| group | fold | held-out score mean | held-out score p99 | held-out share > threshold | val ROC-AUC | val rank corr. with final |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for g, m in result.groups.items():
        for f in m.cv["per_fold"]:
            out.append(
                f"| {g} | {f['fold']} | {f['held_out_score_mean']:.4f} | {f['held_out_score_p99']:.4f} | "
                f"{f['held_out_above_threshold']:.4f} | {f.get('val_roc_auc', math.nan):.4f} | "
                f"{f.get('val_rank_corr_with_final', math.nan):.4f} |"
            )
        s = m.cv["summary"]
        out.append(
            f"| {g} | **mean ± std** | {s['held_out_score_mean']['mean']:.4f} ± {s['held_out_score_mean']['std']:.4f} | "
            f"{s['held_out_score_p99']['mean']:.4f} ± {s['held_out_score_p99']['std']:.4f} | "
            f"{s['held_out_above_threshold']['mean']:.4f} ± {s['held_out_above_threshold']['std']:.4f} | "
            + (f"{s['val_roc_auc']['mean']:.4f} ± {s['val_roc_auc']['std']:.4f} | " if "val_roc_auc" in s else " | ")
            + (f"{s['val_rank_corr_with_final']['mean']:.4f} ± {s['val_rank_corr_with_final']['std']:.4f} |" if "val_rank_corr_with_final" in s else " |")
        )
    return "\n".join(out)


@dg.asset(group_name="models", kinds={"scikitlearn", "safetensors"})
def isolation_forest_model(
    context: dg.AssetExecutionContext,
    config: IsolationForestConfig,
    multivariate_splits: dict[str, pd.DataFrame],
    reference_stats: dict[str, pd.DataFrame],
    dataset_settings: DatasetSettings,
    model_registry: ModelRegistryResource,
    paths: OcadPaths,
) -> dg.MaterializeResult:
    """Isolation Forest per capability group (e.g. ecpri+lbm+udp_echo, lbm): scaler + scikit-learn
    IsolationForest fitted on normal training feature vectors of the shared feature engine,
    5-fold cross-validation (score stability across folds), decision threshold calibrated on
    the validation split only. Registered as a new version of isolation_forest
    (forest.safetensors with the exported trees of every group + metadata.json with features,
    scalers, thresholds, feature config and reference statistics). With use_tuned_params:
    true the forest size, subsample, feature share and threshold rule come from the Optuna
    study (isolation_forest_hyperparameters); metadata.json records hyperparameters_source."""
    params = config.to_params()
    registry = model_registry.get_registry()
    prov = _provenance(context, {**{f"multivariate_{k}": v for k, v in multivariate_splits.items()}, "reference_stats": reference_stats["stats"]})
    tuning = None
    if config.use_tuned_params:
        overrides, tuning = _tuned(context, paths, "isolation_forest_hyperparameters", "isolation_forest", prov["data_version"])
        if "max_samples" in overrides and overrides["max_samples"] != "auto":
            overrides["max_samples"] = int(overrides["max_samples"])
        params = dataclasses.replace(params, **overrides)
        prov = {**prov, "hyperparameters_source": "optuna"}
    result = train_isolation_forest(multivariate_splits, params, log=context.log.info)
    fcfg = dataset_settings.split_config().feature_config
    files, meta = iforest_version_payload(result, fcfg, reference_stats["stats"], prov)
    if tuning is not None:
        meta["tuning"] = json_safe(tuning)
    info = registry.write_version(IFOREST_MODEL_NAME, files, meta)
    size = sum(len(b) for b in files.values())
    context.log.info(f"registered {info.model_name} {info.version} ({info.status}) at {info.path}")
    metadata = {
        "version": info.version,
        "status": info.status,
        "registry_path": dg.MetadataValue.path(str(info.path)),
        "file_size_bytes": size,
        "groups": dg.MetadataValue.md(_group_table(result)),
        "cross_validation": dg.MetadataValue.md(
            f"{params.cv_folds}-fold CV over each group's normal training rows (shuffled, seed {params.seed}); "
            "each fold refits scaler + forest. Scores are -score_samples (higher = more anomalous).\n\n" + _cv_table(result)
        ),
        "thresholds": dg.MetadataValue.json({g: {"threshold": m.threshold, "method": m.threshold_method} for g, m in result.groups.items()}),
        "skipped_groups": dg.MetadataValue.json(result.skipped),
        "feature_config": dg.MetadataValue.json(fcfg.to_dict()),
        "data_version": prov["data_version"],
        "code_version": prov["code_version"],
        "config": dg.MetadataValue.json(params.to_dict()),
        "hyperparameters_source": prov["hyperparameters_source"],
        "train_seconds": round(result.train_seconds, 2),
        "models": dg.MetadataValue.md(_versions_table(
            [{"model": info.model_name, "version": info.version, "status": info.status, "path": str(info.path), "size": size}]
        )),
    }
    for g, m in result.groups.items():
        metadata[f"{g}/threshold"] = float(m.threshold)
        metadata[f"{g}/val_f1"] = float(m.validation.get("f1", math.nan))
        metadata[f"{g}/val_roc_auc"] = float(m.validation.get("roc_auc", math.nan))
    return dg.MaterializeResult(metadata=metadata)
