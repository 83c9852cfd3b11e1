"""Group ``models``: trained, versioned models in the registry (``data/models/``).

The assets are thin: training lives in ``ocad_pipeline.training`` (testable without Dagster);
here inputs are loaded through the ``tables`` IO manager, every model is written as a new
immutable registry version (safetensors weights + ``metadata.json``) and the run gets rich
materialization metadata. The first version of a model is promoted to production by the
registry; later versions stay candidates until promoted explicitly (``ocad-models promote``).

``tcn_models`` is a graph-backed asset with one op per metric type (``train_tcn_udp_echo``,
``train_tcn_ecpri``, ``train_tcn_lbm``) feeding ``tcn_models_report``, so the multiprocess
executor trains the three forecasters in parallel; its run config is unchanged
(``ops: tcn_models: config: <TCNTrainingConfig>``).
"""

import dataclasses
import math
import time

import dagster as dg
import matplotlib.pyplot as plt
import pandas as pd

from ocad_detectors.artifacts import TCNMetadata
from ocad_detectors.signals import METRIC_SIGNAL, METRIC_TYPES, SIGNALS
from ocad_pipeline.datasets import healthy_stream_features
from ocad_pipeline.defs.configs import config_from_dataclass
from ocad_pipeline.defs.resources import DatasetSettings, ModelRegistryResource, OcadPaths
from ocad_pipeline.fingerprint import FINGERPRINT_KEY, matching_version, training_fingerprint
from ocad_pipeline.io_managers import FILES_KEY, tables_sha256
from ocad_pipeline.plots import figure_markdown
from ocad_pipeline.training import code_version, dataframes_sha256, json_safe, utc_now
from ocad_pipeline.training.iforest import (
    MODEL_NAME as IFOREST_MODEL_NAME,
)
from ocad_pipeline.training.iforest import (
    IsolationForestParams,
    iforest_version_payload,
    train_isolation_forest,
)
from ocad_pipeline.training.metrics import forecast_table_markdown
from ocad_pipeline.training.tcn import (
    NoTrainingData,
    TCNParams,
    evaluate_forecasts,
    prepare_metric_windows,
    tcn_model_name,
    tcn_version_payload,
    train_tcn,
)
from ocad_pipeline.training.tuning import TuningResultMissing, load_tuning_result, tuned_params_for


class TCNTrainingConfig(config_from_dataclass(TCNParams)):  # type: ignore[misc]
    """Hyperparameters of the three TCN forecasters (one per metric type, same settings).

    ``sequence_length`` must equal the length of the ``sequence`` arrays in timeseries_splits
    (DatasetSettings.sequence_length). ``max_train_windows`` caps the normal training windows
    per metric (seeded random subset; 0 = all). ``windows_per_epoch``: each epoch trains on the
    next 32768 windows of a seeded running permutation of all training windows (0 = every window
    every epoch), so an epoch costs the same at any data size; ``max_val_windows`` caps the
    validation windows early stopping scores each epoch (0 = all). Early stopping after 6 such
    epochs without a better validation loss (learning rate halved every 2): about 6-12 s CPU per
    model on the default data, test MSE within 1 % of training on every window every epoch.
    ``num_threads`` stays 1: on a 2-core machine 2 torch threads made an epoch 6-15x slower.

    ``use_tuned_params``: take learning_rate, hidden_channels, dilations, kernel_size and
    dropout of each metric type from the best trial of its Optuna study
    (``data/tuning/tcn_hyperparameters.json``, written by the ``tcn_hyperparameters`` asset);
    the other settings stay as configured here. Fails when that file does not exist.
    """

    pipeline_only = {
        "use_tuned_params": "take the architecture and optimizer settings from the Optuna study",
        "reuse_same_inputs": "reuse the newest version when data, config and code are the same",
    }
    overrides = {
        "patience": "the pipeline's early stopping: 6 running-permutation epochs",
        "lr_decay_patience": "halve the learning rate every 2 epochs without improvement",
        "max_train_windows": "0 = all (Dagster config has no None default here)",
        "windows_per_epoch": "32768 per epoch (0 = every window every epoch)",
        "max_val_windows": "32768 scored by early stopping (0 = all)",
    }

    use_tuned_params: bool = False
    #: same data hash + config + code as the newest version: reuse it instead of registering a copy
    reuse_same_inputs: bool = True

    patience: int = 6
    lr_decay_patience: int = 2
    max_train_windows: int = 0
    windows_per_epoch: int = 32768
    max_val_windows: int = 32768

    def dataclass_values(self) -> dict:
        d = super().dataclass_values()
        for k in ("max_train_windows", "windows_per_epoch", "max_val_windows"):
            d[k] = d[k] or None
        return d

    def to_params(self) -> TCNParams:
        return self.to_dataclass()


class IsolationForestConfig(config_from_dataclass(IsolationForestParams)):  # type: ignore[misc]
    """Hyperparameters of the Isolation Forest (one forest per capability group).

    ``max_samples``: "auto" (= min(256, rows)) or a row count as a string, e.g. "512".
    ``threshold_strategy``: "budget" (default: the ``1 - target_rate`` quantile of healthy
    validation scores, per endpoint where there are rows enough, else pooled per capability
    group; groups with too few validation rows use out-of-fold training scores; each threshold
    is then raised to the highest level healthy validation rows held for ``sustain_s``, and every
    threshold of the group to the level all healthy validation samples, scored at full rate, held
    for ``sustain_s`` in at most ``alerts_per_day`` episodes per endpoint-day), "f1" (maximize
    F1 on validation labels; falls back to the quantile when a group's validation rows hold no
    anomaly) or "quantile" (``threshold_quantile`` of normal validation scores).

    ``use_tuned_params``: take n_estimators, max_samples, max_features and the threshold rule
    from the best trial of the Optuna study (``data/tuning/isolation_forest_hyperparameters.json``,
    written by ``isolation_forest_hyperparameters``); cv_folds and seed stay as configured.
    """

    pipeline_only = {
        "use_tuned_params": "take forest size, subsample, feature share and threshold rule from the Optuna study",
        "reuse_same_inputs": "reuse the newest version when data, config and code are the same",
    }
    overrides = {"max_samples": "Dagster config has no str | int: 'auto' or a row count as a string"}

    use_tuned_params: bool = False
    #: same data hash + config + code as the newest version: reuse it instead of registering a copy
    reuse_same_inputs: bool = True

    max_samples: str = "auto"

    def dataclass_values(self) -> dict:
        d = super().dataclass_values()
        ms = d["max_samples"].strip()
        if ms != "auto":
            try:
                d["max_samples"] = int(ms)
            except ValueError:
                raise ValueError(f"max_samples must be 'auto' or an integer, got {ms!r}") from None
        return d

    def to_params(self) -> IsolationForestParams:
        return self.to_dataclass()


def _register(context, registry, name: str, files: dict[str, bytes], meta: dict, tuning: dict | None, fingerprint: str):
    """Stamp the tuning provenance and the training fingerprint, write a new version; -> (info, bytes)."""
    if tuning is not None:
        meta["tuning"] = json_safe(tuning)
    meta[FINGERPRINT_KEY] = fingerprint
    info = registry.write_version(name, files, meta)
    context.log.info(f"registered {info.model_name} {info.version} ({info.status}) at {info.path}")
    return info, sum(len(b) for b in files.values())


def _provenance(context: dg.OpExecutionContext, frames: dict[str, pd.DataFrame]) -> dict[str, str]:
    return {
        "training_date": utc_now(),
        "data_version": tables_sha256(frames, dataframes_sha256),  # hashed once per process and file set
        "dagster_run_id": context.run_id,
        "code_version": code_version(),
        "hyperparameters_source": "defaults",
    }


def _tuned(
    context: dg.OpExecutionContext, paths: OcadPaths, asset: str, key: str, data_version: str
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


def _learning_curves(summaries: dict[str, dict]) -> str:
    """One panel per metric type from the ops' summaries (train_loss, val_loss, best_epoch)."""
    fig, axes = plt.subplots(1, len(summaries), figsize=(4.6 * len(summaries), 3.2), squeeze=False)
    for ax, (metric, s) in zip(axes[0], summaries.items()):
        epochs = range(1, s["epochs_run"] + 1)
        ax.plot(epochs, s["train_loss"], marker=".", label="train")
        ax.plot(epochs, s["val_loss"], marker=".", label="validation")
        ax.axvline(s["best_epoch"], color="grey", ls="--", lw=0.8, label=f"best epoch {s['best_epoch']}")
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


# --- tcn_models: a graph-backed asset, one training op per metric type ---------------------
#
# The three forecasters are independent, so each trains in its own op (``train_tcn_<metric>``):
# under the multiprocess executor they run in parallel processes, under the in-process executor
# one after another. Each op loads ``timeseries_splits`` once through the ``tables`` IO manager
# (the graph input), trains, writes its registry version and returns a small, picklable summary;
# ``tcn_models_report`` fans the three summaries in and reports the combined materialization.
# The graph takes the same config as the former single-step asset (TCNTrainingConfig under
# ``ops: tcn_models: config``); a config mapping hands it to every op.

TCN_TRAIN_OP_PREFIX = "train_tcn_"
#: what each model asset hands to performance_reports: the versions it trained or reused
TCN_CANDIDATES = {"versions": "reports/model_versions/tcn_models.parquet"}
IFOREST_CANDIDATES = {"versions": "reports/model_versions/isolation_forest_model.parquet"}
VERSION_COLUMNS = ["model", "version", "reused"]


def candidates_table(rows: list[dict]) -> pd.DataFrame:
    """The ``versions`` table of a model asset: one row per model version it trained or reused."""
    return pd.DataFrame(
        {"model": [str(r["model"]) for r in rows], "version": [str(r["version"]) for r in rows],
         "reused": [bool(r.get("reused", False)) for r in rows]},
        columns=VERSION_COLUMNS,
    )
TCN_REPORT_OP = "tcn_models_report"
TCN_MODELS_DESCRIPTION = """Causal dilated 1-D CNN (TCN) forecasters, one per metric type (udp_echo, ecpri, lbm):
the next value from the previous N values only. Trained on normal windows (scaler from the
training split only), early stopping on validation loss with the best epoch restored,
seeded and reproducible on CPU. Each model is a new registry version (tcn_udp_echo,
tcn_ecpri, tcn_lbm under data/models/): weights.safetensors + metadata.json with the scaler,
residual scale, config, data hash, run id, code version and test forecast metrics against
the last-value and window-mean baselines. With use_tuned_params: true each metric type
takes its architecture and optimizer settings from its Optuna study (tcn_hyperparameters);
metadata.json records hyperparameters_source ("defaults" or "optuna") and the study.
A graph of one op per metric type (train_tcn_udp_echo, train_tcn_ecpri, train_tcn_lbm) and
tcn_models_report: the multiprocess executor trains the three models in parallel."""


def tcn_train_op_name(metric: str) -> str:
    return f"{TCN_TRAIN_OP_PREFIX}{metric}"


def _resolve_tuned(context, paths: OcadPaths, metric: str, data_version: str) -> tuple[dict, dict]:
    """Tuned parameters of ``metric``; checks the studies of every metric type first, so that a
    missing study fails all three ops before any of them trains (as the sequential asset did)."""
    asset = "tcn_hyperparameters"
    try:
        doc = load_tuning_result(paths.root, asset)
        for m in METRIC_TYPES:
            tuned_params_for(doc, m, asset)
    except TuningResultMissing as exc:
        raise dg.Failure(str(exc)) from exc
    return _tuned(context, paths, asset, metric, data_version)


def _build_train_tcn_op(metric: str) -> dg.OpDefinition:
    @dg.op(
        name=tcn_train_op_name(metric),
        description=f"Train the TCN forecaster of {metric} and register it as a new version of {tcn_model_name(metric)}.",
        tags={"ocad/metric_type": metric},
    )
    def _train(
        context: dg.OpExecutionContext,
        config: TCNTrainingConfig,
        timeseries_splits: dict[str, pd.DataFrame],
        model_registry: ModelRegistryResource,
        paths: OcadPaths,
    ) -> dg.Output[dict]:
        started = time.time()
        t0 = time.perf_counter()
        params = config.to_params()
        prov = _provenance(context, timeseries_splits)
        tuning = None
        if config.use_tuned_params:
            overrides, tuning = _resolve_tuned(context, paths, metric, prov["data_version"])
            params = dataclasses.replace(params, **{**overrides, "dilations": tuple(overrides["dilations"])})
            prov = {**prov, "hyperparameters_source": "optuna"}
        name = tcn_model_name(metric)
        registry = model_registry.get_registry()
        fingerprint = training_fingerprint(
            name, prov["data_version"],
            {"params": params.to_dict(), "hyperparameters_source": prov["hyperparameters_source"], "tuning": json_safe(tuning)},
            prov["code_version"],
        )
        same = matching_version(registry, name, fingerprint) if config.reuse_same_inputs else None
        if same is not None:
            return _reused_tcn_output(context, registry, metric, same, params, prov, tuning, started, t0)
        try:
            windows = prepare_metric_windows(timeseries_splits, metric, params.sequence_length)
        except NoTrainingData as exc:
            # e.g. a recording without this signal: no model, reported; the other models go on
            context.log.warning(f"tcn_{metric}: not trained: {exc}")
            return dg.Output(
                {"metric": metric, "model": tcn_model_name(metric), "skipped": str(exc), "data_version": prov["data_version"],
                 "code_version": prov["code_version"], "step_started": started, "step_seconds": time.perf_counter() - t0,
                 "step_finished": started + time.perf_counter() - t0},
                metadata={"model": tcn_model_name(metric), "skipped": str(exc)},
            )
        context.log.info(
            f"tcn_{metric}: {windows.counts['train']['used']} normal training windows "
            f"({windows.counts['train']['rows']} rows), {windows.counts['val']['used']} validation, "
            f"{windows.counts['test']['used']} test"
        )
        result = train_tcn(windows, params, log=context.log.info)
        report = evaluate_forecasts(result, windows, "test")
        files, meta = tcn_version_payload(result, windows, prov, report)
        info, size = _register(context, registry, name, files, meta, tuning, fingerprint)
        summary = {
            "metric": metric,
            "model": info.model_name,
            "version": info.version,
            "status": info.status,
            "path": str(info.path),
            "size": size,
            "parameter_count": result.parameter_count,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "best_val_loss": float(result.best_val_loss),
            "train_loss": [float(x) for x in result.train_loss],
            "val_loss": [float(x) for x in result.val_loss],
            "n_train_windows": result.n_train_windows,
            "train_seconds": float(result.train_seconds),
            "report": report,  # pickled as is (NaN stays NaN, as in the tables)
            "calibration": _calibration(meta, name),
            "params": params.to_dict(),
            "hyperparameters_source": prov["hyperparameters_source"],
            "tuning_study": f"{tuning['study_name']} (trial {tuning['best_trial']})" if tuning is not None else None,
            "data_version": prov["data_version"],
            "code_version": prov["code_version"],
            "step_started": started,
            "step_seconds": time.perf_counter() - t0,
            "reused": False,
            "training_fingerprint": fingerprint,
        }
        summary["step_finished"] = started + summary["step_seconds"]
        return dg.Output(
            summary,
            metadata={
                "reused_existing_version": False,
                "training_fingerprint": fingerprint,
                "model": info.model_name,
                "version": info.version,
                "status": info.status,
                "registry_path": dg.MetadataValue.path(str(info.path)),
                "file_size_bytes": size,
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "best_val_loss": float(result.best_val_loss),
                "residual_threshold_sigma": float(summary["calibration"]["pooled"]),
                "calibration": dg.MetadataValue.json(summary["calibration"]),
                "train_seconds": round(result.train_seconds, 2),
                "step_seconds": round(summary["step_seconds"], 2),
                "hyperparameters_source": prov["hyperparameters_source"],
            },
        )

    return _train


def _calibration(meta: dict, name: str) -> dict:
    """The residual-threshold calibration record of a TCN manifest, read through the artifact
    contract; {} for versions written before budget calibration (their detectors use the default)."""
    cal = TCNMetadata.from_dict(meta, name).residual_scale.calibration
    return cal.to_dict() if cal is not None else {}


def _reused_tcn_output(context, registry, metric: str, same: tuple[str, dict], params, prov, tuning, started, t0) -> dg.Output[dict]:
    """The op's summary for an existing version trained on the same inputs (no training, no new version)."""
    version, meta = same
    name = tcn_model_name(metric)
    info = next(v for v in registry.list_versions(name) if v.version == version)
    size = sum(int(f["size"]) for f in meta["files"].values())
    curve = meta.get("learning_curve") or {}
    context.log.info(
        f"{name}: same data ({prov['data_version'][:12]}...), config and code as {name} {version} "
        f"(training fingerprint {meta[FINGERPRINT_KEY][:12]}...): no training, no new version"
    )
    summary = {
        "metric": metric,
        "model": name,
        "version": version,
        "status": info.status,
        "path": str(info.path),
        "size": size,
        "parameter_count": int(meta.get("parameter_count") or 0),
        "best_epoch": int(meta["best_epoch"]),
        "epochs_run": int(meta["epochs_run"]),
        "best_val_loss": float(meta["validation_metrics"]["val_loss"]),
        "train_loss": [float(x) for x in curve.get("train_loss", [])],
        "val_loss": [float(x) for x in curve.get("val_loss", [])],
        "n_train_windows": int((meta.get("windows") or {}).get("train_fitted", 0)),
        "train_seconds": 0.0,
        "report": _nan_for_none(meta["validation_metrics"]["test_forecast"]),
        "params": params.to_dict(),
        "hyperparameters_source": prov["hyperparameters_source"],
        "tuning_study": f"{tuning['study_name']} (trial {tuning['best_trial']})" if tuning is not None else None,
        "data_version": prov["data_version"],
        "code_version": prov["code_version"],
        "step_started": started,
        "step_seconds": time.perf_counter() - t0,
        "reused": True,
        "training_fingerprint": meta[FINGERPRINT_KEY],
        "calibration": _calibration(meta, name),
    }
    summary["step_finished"] = started + summary["step_seconds"]
    return dg.Output(
        summary,
        metadata={
            "reused_existing_version": True,
            "training_fingerprint": meta[FINGERPRINT_KEY],
            "model": name,
            "version": version,
            "status": info.status,
            "registry_path": dg.MetadataValue.path(str(info.path)),
            "file_size_bytes": size,
            "best_epoch": summary["best_epoch"],
            "epochs_run": summary["epochs_run"],
            "best_val_loss": summary["best_val_loss"],
            "train_seconds": 0.0,
            "step_seconds": round(summary["step_seconds"], 2),
            "hyperparameters_source": prov["hyperparameters_source"],
        },
    )


def _nan_for_none(obj):
    """metadata.json stores NaN as null; the report tables expect floats."""
    if isinstance(obj, dict):
        return {k: _nan_for_none(v) for k, v in obj.items()}
    return math.nan if obj is None else obj


#: one training op per metric type, in METRIC_TYPES order
TRAIN_TCN_OPS: dict[str, dg.OpDefinition] = {m: _build_train_tcn_op(m) for m in METRIC_TYPES}


@dg.op(
    name=TCN_REPORT_OP,
    description="Combine the per-metric training summaries into the tcn_models materialization metadata.",
    out=dg.Out(io_manager_key="tables", metadata={FILES_KEY: TCN_CANDIDATES}),
)
def tcn_models_report(
    context: dg.OpExecutionContext, config: TCNTrainingConfig, summaries: list[dict], model_registry: ModelRegistryResource
) -> dg.Output:
    summaries = sorted(summaries, key=lambda s: METRIC_TYPES.index(s["metric"]))
    data_versions = {s["data_version"] for s in summaries}
    if len(data_versions) != 1:  # the ops load the same upstream materialization; guard anyway
        raise dg.Failure(f"the TCN ops trained on different data versions: {sorted(data_versions)}")
    skipped = {s["model"]: s["skipped"] for s in summaries if "skipped" in s}
    summaries = [s for s in summaries if "skipped" not in s]
    if not summaries:
        # nothing to register; the isolation forest may still cover the data
        context.log.warning(f"no TCN model trained: {skipped}")
        return dg.Output(
            {"versions": candidates_table([])},
            metadata={"skipped_models": dg.MetadataValue.json(skipped), "trained_models": 0,
                      "data_version": next(iter(data_versions)), "hyperparameters_source": "optuna" if config.use_tuned_params else "defaults"},
        )
    by_metric = {s["metric"]: s for s in summaries}
    reports = {m: s["report"] for m, s in by_metric.items()}
    metadata: dict = {}
    for m, s in by_metric.items():
        metadata.update(
            {
                f"{m}/version": s["version"],
                f"{m}/status": s["status"],
                f"{m}/registry_path": dg.MetadataValue.path(s["path"]),
                f"{m}/file_size_bytes": s["size"],
                f"{m}/parameter_count": s["parameter_count"],
                f"{m}/best_epoch": s["best_epoch"],
                f"{m}/epochs_run": s["epochs_run"],
                f"{m}/best_val_loss": s["best_val_loss"],
                f"{m}/train_windows": s["n_train_windows"],
                f"{m}/train_seconds": round(s["train_seconds"], 2),
                f"{m}/test_mse_vs_last_value": _ratio(s["report"]["tcn"]["mse"], s["report"]["last_value"]["mse"]),
                f"{m}/test_r2": float(s["report"]["tcn"]["r2"]),
                f"{m}/residual_threshold_sigma": float((s.get("calibration") or {}).get("pooled", math.nan)),
                f"{m}/hyperparameters_source": s["hyperparameters_source"],
                f"{m}/reused_existing_version": bool(s.get("reused", False)),
                f"{m}/training_fingerprint": s.get("training_fingerprint", ""),
            }
        )
        if s["tuning_study"] is not None:
            metadata[f"{m}/tuning_study"] = s["tuning_study"]
    rows = [
        {"model": s["model"], "version": s["version"], "status": s["status"], "path": s["path"], "size": s["size"],
         "params": s["parameter_count"], "best_epoch": s["best_epoch"], "epochs": s["epochs_run"]}
        for s in summaries
    ]
    units = ", ".join(f"{m}: {SIGNALS[METRIC_SIGNAL[m]].unit}" for m in by_metric)
    step_sum = sum(s["step_seconds"] for s in summaries)
    wall = max(s["step_finished"] for s in summaries) - min(s["step_started"] for s in summaries)
    context.log.info(
        f"TCN training: {step_sum:.1f} s summed over the {len(summaries)} ops, {wall:.1f} s from the first op's "
        f"start to the last op's end"
    )
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
        "learning_curves": dg.MetadataValue.md(_learning_curves(by_metric)),
        "calibration": dg.MetadataValue.md(_residual_calibration_table(by_metric)),
        "models": dg.MetadataValue.md(_versions_table(rows)),
        "registry_root": dg.MetadataValue.path(str(model_registry.get_registry().root)),
        "data_version": summaries[0]["data_version"],
        "code_version": summaries[0]["code_version"],
        "config": dg.MetadataValue.json(config.to_params().to_dict()),
        "hyperparameters": dg.MetadataValue.json({m: {"source": s["hyperparameters_source"], **s["params"]} for m, s in by_metric.items()}),
        "hyperparameters_source": "optuna" if config.use_tuned_params else "defaults",
        # sum over the per-metric ops (what one process would need); the wall span shows the parallelism
        "train_seconds_total": round(step_sum, 2),
        "train_wall_seconds": round(wall, 2),
        # models without training data (e.g. a single-signal recording) and why
        "skipped_models": dg.MetadataValue.json(skipped),
        "trained_models": len(summaries),
        "reused_existing_versions": dg.MetadataValue.md(
            "\n".join(
                f"- {s['model']} {s['version']}: " + ("same data hash, config and code: existing version reused, nothing trained"
                                                   if s.get("reused") else "trained and registered")
                for s in summaries
            )
        ),
        **metadata,
    }
    return dg.Output({"versions": candidates_table(summaries)}, metadata=metadata)


@dg.config_mapping
def _tcn_config_to_ops(config: TCNTrainingConfig) -> dict:
    """The asset's config (TCNTrainingConfig under ``ops: tcn_models: config``) for every op."""
    op_config = {"config": config.model_dump()}
    return {**{tcn_train_op_name(m): op_config for m in METRIC_TYPES}, TCN_REPORT_OP: op_config}


@dg.graph_asset(
    group_name="models",
    metadata={FILES_KEY: TCN_CANDIDATES},
    kinds={"pytorch", "safetensors"},
    config=_tcn_config_to_ops,
    description=TCN_MODELS_DESCRIPTION,
)
def tcn_models(timeseries_splits):
    # no edges between the train ops: the executor may run them concurrently
    return tcn_models_report([TRAIN_TCN_OPS[m](timeseries_splits) for m in METRIC_TYPES])


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b and math.isfinite(b) else float("nan")


def _residual_calibration_table(by_metric) -> str:
    out = [
        "Residual thresholds calibrated to a false-alert budget: the (1 - target rate) quantile of the one-sided "
        "residual (σ) on healthy validation windows; per endpoint where it has enough windows, else pooled.\n",
        "| metric | target rate | pooled threshold σ | healthy windows | endpoints with their own | observed rate |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m, s in by_metric.items():
        c = s.get("calibration") or {}
        if not c:
            out.append(f"| {m} | – | (not calibrated: an older version) | – | – | – |")
            continue
        out.append(f"| {m} | {c['target_rate']:.3%} | {c['pooled']:.2f} | {c['pooled_rows']} | {len(c['per_endpoint'])} | "
                   f"{c['pooled_rate_observed']:.3%} |")
    return "\n".join(out)


def _calibration_table(result) -> str:
    out = [
        "Isolation Forest thresholds calibrated to a false-alert budget (share of healthy rows above the threshold).\n",
        "| group | method | target rate | pooled threshold | calibrated on | rows | endpoints with their own | "
        "alert-budget level | healthy endpoint-days | episodes allowed |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for g, m in result.groups.items():
        c = m.calibration
        if c:
            ab = c.get("alert_budget") or {}
            lvl = "–" if ab.get("level") is None else f"{ab['level']:.4f}"
            out.append(f"| {g} | budget | {c['target_rate']:.3%} | {c['pooled']:.4f} | {c['pooled_source']} | {c['pooled_rows']} | "
                       f"{len(c['per_endpoint'])} | {lvl} | {ab.get('endpoint_days', 0.0):.2f} | {ab.get('episodes_allowed', '–')} |")
        else:
            out.append(f"| {g} | {m.threshold_method} | – | {m.threshold:.4f} | validation | – | 0 | – | – | – |")
    return "\n".join(out)


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


@dg.asset(group_name="models", kinds={"scikitlearn", "safetensors"}, io_manager_key="tables", metadata={FILES_KEY: IFOREST_CANDIDATES})
def isolation_forest_model(
    context: dg.AssetExecutionContext,
    config: IsolationForestConfig,
    multivariate_splits: dict[str, pd.DataFrame],
    reference_stats: dict[str, pd.DataFrame],
    raw_metrics: dict[str, pd.DataFrame],
    dataset_settings: DatasetSettings,
    model_registry: ModelRegistryResource,
    paths: OcadPaths,
) -> dg.Output:
    """Isolation Forest per capability group (e.g. ecpri+lbm+udp_echo, lbm): scaler + scikit-learn
    IsolationForest fitted on normal training feature vectors of the shared feature engine,
    5-fold cross-validation (score stability across folds), decision threshold calibrated to a
    false-alert budget on healthy validation rows (per endpoint where there are rows enough) and
    raised to the alert budget: the level every healthy validation sample, scored at full rate
    from raw_metrics, held for sustain_s in at most alerts_per_day episodes per endpoint-day. Registered as a new version of isolation_forest
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
    fcfg = dataset_settings.split_config().feature_config
    fingerprint = training_fingerprint(
        IFOREST_MODEL_NAME, prov["data_version"],
        {"params": params.to_dict(), "feature_config": fcfg.to_dict(), "hyperparameters_source": prov["hyperparameters_source"],
         "tuning": json_safe(tuning)},
        prov["code_version"],
    )
    same = matching_version(registry, IFOREST_MODEL_NAME, fingerprint) if config.reuse_same_inputs else None
    if same is not None:
        version, meta = same
        info = next(v for v in registry.list_versions(IFOREST_MODEL_NAME) if v.version == version)
        context.log.info(
            f"{IFOREST_MODEL_NAME}: same data ({prov['data_version'][:12]}...), config and code as version {version} "
            f"(training fingerprint {fingerprint[:12]}...): no training, no new version"
        )
        return dg.Output({"versions": candidates_table([{"model": IFOREST_MODEL_NAME, "version": version, "reused": True}])}, metadata={
            "reused_existing_version": True,
            "training_fingerprint": fingerprint,
            "version": version,
            "status": info.status,
            "registry_path": dg.MetadataValue.path(str(info.path)),
            "file_size_bytes": sum(int(f["size"]) for f in meta["files"].values()),
            "thresholds": dg.MetadataValue.json({g: {"threshold": m["threshold"], "method": m["threshold_method"]} for g, m in meta["groups"].items()}),
            "data_version": prov["data_version"],
            "code_version": prov["code_version"],
            "config": dg.MetadataValue.json(params.to_dict()),
            "hyperparameters_source": prov["hyperparameters_source"],
            "train_seconds": 0.0,
        })
    stream = None
    if params.threshold_strategy == "budget" and params.alerts_per_day > 0 and params.sustain_s > 0:
        # every healthy validation sample, as the detector will score them (alert-budget calibration)
        stream = healthy_stream_features(raw_metrics["samples"], raw_metrics["endpoints"], reference_stats["stats"],
                                         dataset_settings.split_config())
    result = train_isolation_forest(multivariate_splits, params, log=context.log.info, stream=stream)
    files, meta = iforest_version_payload(result, fcfg, reference_stats["stats"], prov)
    info, size = _register(context, registry, IFOREST_MODEL_NAME, files, meta, tuning, fingerprint)
    metadata = {
        "reused_existing_version": False,
        "training_fingerprint": fingerprint,
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
        "calibration": dg.MetadataValue.md(_calibration_table(result)),
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
    return dg.Output({"versions": candidates_table([{"model": info.model_name, "version": info.version}])}, metadata=metadata)
