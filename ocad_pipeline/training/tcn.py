"""TCN forecaster training: normal windows in, a versionable model out (no Dagster needed).

One forecaster per metric type (``udp_echo``, ``ecpri``, ``lbm``) predicts the next value of
the metric's signal from the previous N values (``sequence`` -> ``target`` of
``timeseries_splits``). What the trainer guarantees:

* **normal windows only**: a row is used when ``window_anomalous`` is false (no labelled
  anomaly among the inputs or the target) and every input and the target are finite (lost
  probes are NaN); the same filter applies to validation and test, so every reported forecast
  metric is "on normal data";
* **scaler from training data only**: one mean/std per metric, over every value (inputs and
  target) of the normal training windows; inputs and target are scaled as ``(x - mean) / std``;
* **early stopping** on the validation MSE (scaled units) with ``patience`` epochs; the weights
  of the best epoch are restored before anything is evaluated or exported. Adam's learning
  rate is multiplied by ``lr_decay_factor`` after every ``lr_decay_patience`` epochs without a
  better validation loss (the validation loss is noisy at a constant rate);
* **reproducible on CPU**: the torch RNG is seeded inside a forked RNG state, batches come from
  a seeded numpy permutation, deterministic algorithms are switched on and the number of torch
  threads is fixed (``num_threads``) for the duration of training; same data + same params ->
  byte-identical weights.

Evaluation compares the TCN with two naive forecasts on normal *test* windows, in the signal's
own unit: ``last_value`` (the newest input) and ``window_mean`` (the mean of the N inputs).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from ocad_detectors.artifacts import (
    TCN_WEIGHTS_FILE,
    ResidualScale,
    TCNArchitecture,
    TCNArtifact,
    TCNMetadata,
    tcn_model_name,
)
from ocad_detectors.artifacts import (
    Scaler as ScalerSpec,
)
from ocad_detectors.registry import save_arrays
from ocad_detectors.signals import METRIC_SIGNAL, METRIC_TYPES
from ocad_pipeline.models.tcn_torch import TCNForecaster, count_parameters, export_tcn, tcn_architecture
from ocad_pipeline.training import json_safe
from ocad_pipeline.training.calibration import DEFAULT_TARGET_RATE, budget_calibration
from ocad_pipeline.training.metrics import forecast_metrics

__all__ = [
    "TCNParams",
    "Scaler",
    "MetricWindows",
    "TCNTrainResult",
    "prepare_metric_windows",
    "data_sequence_length",
    "train_tcn",
    "predict",
    "evaluate_forecasts",
    "residual_scale",
    "tcn_model_name",
    "tcn_version_payload",
    "tcn_artifact",
    "WEIGHTS_FILE",
]

#: the contract's file name (kept here for callers of this module)
WEIGHTS_FILE = TCN_WEIGHTS_FILE
_EVAL_BATCH = 8192


@dataclass(frozen=True)
class TCNParams:
    """Hyperparameters of one TCN training run (the Dagster config maps onto this)."""

    sequence_length: int = 10
    hidden_channels: int = 32
    dilations: tuple[int, ...] = (1, 2, 4)
    kernel_size: int = 3
    #: 0 by default: on the default data dropout 0.1 gave a worse test MSE (see the report)
    dropout: float = 0.0
    learning_rate: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 30
    patience: int = 5
    #: multiply the learning rate by this after ``lr_decay_patience`` epochs without a better
    #: validation loss (1.0 = constant learning rate)
    lr_decay_factor: float = 0.5
    lr_decay_patience: int = 1
    seed: int = 0
    #: cap on normal training windows per metric (a seeded random subset); None = all
    max_train_windows: int | None = None
    #: windows per epoch: each epoch takes the next slice of a seeded permutation of all training
    #: windows (a new permutation when one is used up), so an epoch costs the same however much data
    #: there is and every window is still seen; None = every window every epoch
    windows_per_epoch: int | None = None
    #: cap on the validation windows that early stopping scores every epoch (a seeded subset;
    #: the residual scale and the reports still use all of them); None = all
    max_val_windows: int | None = None
    #: torch intra-op threads while training (fixed for reproducibility)
    num_threads: int = 1
    #: share of healthy samples allowed above the calibrated residual threshold
    target_rate: float = DEFAULT_TARGET_RATE

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        if self.sequence_length < 1 or self.hidden_channels < 1 or self.kernel_size < 1:
            raise ValueError("sequence_length, hidden_channels and kernel_size must be >= 1")
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"dilations must be a non-empty list of integers >= 1, got {list(self.dilations)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.learning_rate <= 0 or self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError("learning_rate must be > 0 and batch_size, max_epochs, patience >= 1")
        if not 0.0 < self.lr_decay_factor <= 1.0 or self.lr_decay_patience < 1:
            raise ValueError("lr_decay_factor must be in (0, 1] and lr_decay_patience >= 1")
        if self.max_train_windows is not None and self.max_train_windows < 1:
            raise ValueError("max_train_windows must be >= 1 (or None for all windows)")
        if self.windows_per_epoch is not None and self.windows_per_epoch < 1:
            raise ValueError("windows_per_epoch must be >= 1 (or None for all windows)")
        if self.max_val_windows is not None and self.max_val_windows < 1:
            raise ValueError("max_val_windows must be >= 1 (or None for all windows)")
        if self.num_threads < 1:
            raise ValueError("num_threads must be >= 1")
        if not 0.0 < self.target_rate < 0.5:
            raise ValueError(f"target_rate must be in (0, 0.5), got {self.target_rate}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        return d


@dataclass(frozen=True)
class Scaler:
    """``(x - mean) / std`` with one mean/std per metric type, in the signal's unit."""

    mean: float
    std: float

    @classmethod
    def fit(cls, values: np.ndarray) -> Scaler:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size < 2:
            raise ValueError("the scaler needs at least two finite training values")
        std = float(v.std())
        return cls(mean=float(v.mean()), std=std if std > 0 else 1.0)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.std

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, dtype=np.float64) * self.std + self.mean

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}


@dataclass
class MetricWindows:
    """Normal, finite windows of one metric type per split (raw signal units)."""

    metric_type: str
    sequence_length: int
    X: dict[str, np.ndarray]  # split -> (n, sequence_length) float64
    y: dict[str, np.ndarray]  # split -> (n,) float64
    endpoints: dict[str, np.ndarray]  # split -> (n,) endpoint ids
    #: split -> {"rows": all rows of the metric, "normal": not window_anomalous, "used": normal and finite}
    counts: dict[str, dict[str, int]]

    @property
    def signal(self) -> str:
        return METRIC_SIGNAL[self.metric_type]


def data_sequence_length(table: pd.DataFrame) -> int | None:
    """Length of the ``sequence`` arrays of a timeseries table (None when it is empty)."""
    if len(table) == 0:
        return None
    lengths = {len(s) for s in table["sequence"].head(1000)}
    if len(lengths) != 1:
        raise ValueError(f"sequences of different lengths in one table: {sorted(lengths)}")
    return lengths.pop()


class NoTrainingData(ValueError):
    """A metric type has no usable window in some split (e.g. a recording without that signal):
    the model cannot be trained, and the pipeline skips it instead of failing."""


def prepare_metric_windows(
    splits: Mapping[str, pd.DataFrame], metric_type: str, sequence_length: int
) -> MetricWindows:
    """Select one metric's normal, finite windows from ``timeseries_splits`` (train/val/test).

    Raises ``ValueError`` when the data's sequence length is not ``sequence_length`` and
    :class:`NoTrainingData` (a ``ValueError``) when a split has no usable window.
    """
    if metric_type not in METRIC_TYPES:
        raise ValueError(f"unknown metric type {metric_type!r}; expected one of {METRIC_TYPES}")
    X: dict[str, np.ndarray] = {}
    y: dict[str, np.ndarray] = {}
    eps: dict[str, np.ndarray] = {}
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "val", "test"):
        if split not in splits:
            raise KeyError(f"timeseries splits lack the {split!r} table")
        df = splits[split]
        data_len = data_sequence_length(df)
        if data_len is not None and data_len != sequence_length:
            raise ValueError(
                f"sequence_length={sequence_length} in the training config, but the {split} sequences of "
                f"timeseries_splits hold {data_len} values; set the training sequence_length to {data_len} "
                f"or rebuild the datasets with sequence_length={sequence_length} (DatasetSettings)"
            )
        rows = df[df["metric_type"] == metric_type]
        normal = ~rows["window_anomalous"].to_numpy(dtype=bool)
        seq = (
            np.stack(rows["sequence"].to_numpy()).astype(np.float64)
            if len(rows)
            else np.empty((0, sequence_length))
        )
        tgt = rows["target"].to_numpy(dtype=np.float64, na_value=np.nan)
        ok = normal & np.isfinite(seq).all(axis=1) & np.isfinite(tgt)
        X[split] = np.ascontiguousarray(seq[ok])
        y[split] = tgt[ok]
        eps[split] = rows["endpoint_id"].astype(str).to_numpy()[ok]
        counts[split] = {"rows": int(len(rows)), "normal": int(normal.sum()), "used": int(ok.sum())}
        if ok.sum() == 0:
            raise NoTrainingData(f"no normal, finite {metric_type} windows in the {split} split")
    return MetricWindows(metric_type, sequence_length, X, y, eps, counts)


@dataclass
class TCNTrainResult:
    """A trained forecaster (best epoch restored, eval mode) and how it got there."""

    metric_type: str
    model: TCNForecaster
    scaler: Scaler
    params: TCNParams
    train_loss: list[float]
    val_loss: list[float]
    best_epoch: int  # 1-based
    epochs_run: int
    stopped_early: bool
    n_train_windows: int
    n_val_windows: int
    train_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best_val_loss(self) -> float:
        return self.val_loss[self.best_epoch - 1]

    @property
    def parameter_count(self) -> int:
        return count_parameters(self.model)

    def weights(self) -> dict[str, np.ndarray]:
        return export_tcn(self.model)

    def weights_bytes(self) -> bytes:
        return save_arrays(self.weights())


@contextlib.contextmanager
def _reproducible_torch(seed: int, num_threads: int) -> Iterator[None]:
    """Seeded torch RNG (restored afterwards), deterministic algorithms, fixed thread count."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(num_threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
            torch.set_num_threads(prev_threads)


def _mse_scaled(model: TCNForecaster, X: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(X), _EVAL_BATCH):
            d = model(X[i : i + _EVAL_BATCH]) - y[i : i + _EVAL_BATCH]
            total += float(torch.sum(d.double() * d.double()))
    return total / max(len(X), 1)


def train_tcn(
    windows: MetricWindows,
    params: TCNParams,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> TCNTrainResult:
    """Train one forecaster on ``windows`` (train split; val for early stopping).

    ``log`` receives one line per epoch (train loss, val loss, best so far). ``on_epoch`` (optional)
    is called after every epoch with ``(epoch, train_loss, val_loss)`` (1-based epoch, scaled
    MSE); an exception it raises stops training and propagates (hyperparameter tuning raises
    ``optuna.TrialPruned`` from it to prune a trial).
    """
    if windows.sequence_length != params.sequence_length:
        raise ValueError(
            f"windows hold {windows.sequence_length} values but params.sequence_length={params.sequence_length}"
        )
    t0 = time.perf_counter()
    rng = np.random.default_rng(params.seed)
    X_tr, y_tr = windows.X["train"], windows.y["train"]
    if params.max_train_windows is not None and len(X_tr) > params.max_train_windows:
        keep = np.sort(rng.choice(len(X_tr), size=params.max_train_windows, replace=False))
        X_tr, y_tr = X_tr[keep], y_tr[keep]
    scaler = Scaler.fit(np.concatenate([X_tr.ravel(), y_tr]))
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(scaler.transform(a), dtype=np.float32))  # noqa: E731
    xt, yt = as_tensor(X_tr), as_tensor(y_tr)
    X_va, y_va = windows.X["val"], windows.y["val"]
    if params.max_val_windows is not None and len(X_va) > params.max_val_windows:
        keep = np.sort(np.random.default_rng(params.seed + 1).choice(len(X_va), size=params.max_val_windows, replace=False))
        X_va, y_va = X_va[keep], y_va[keep]
    xv, yv = as_tensor(X_va), as_tensor(y_va)
    n = len(xt)
    per_epoch = min(n, params.windows_per_epoch or n)
    order = np.empty(0, dtype=np.int64)  # the rest of the current permutation of the training windows
    steps = 0

    train_loss: list[float] = []
    val_loss: list[float] = []
    with _reproducible_torch(params.seed, params.num_threads):
        model = TCNForecaster(
            params.sequence_length, params.hidden_channels, params.dilations, params.kernel_size, params.dropout
        )
        opt = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
        lr = params.learning_rate
        best_state = copy.deepcopy(model.state_dict())
        best_val = math.inf
        best_epoch = 0
        since_best = 0
        stopped_early = False
        for epoch in range(1, params.max_epochs + 1):
            model.train()
            if per_epoch == n:
                perm = torch.from_numpy(rng.permutation(n))
            else:  # the next per_epoch windows of a running permutation: all windows get their turn
                while len(order) < per_epoch:
                    order = np.concatenate([order, rng.permutation(n)])
                perm, order = torch.from_numpy(order[:per_epoch]), order[per_epoch:]
            total = torch.zeros((), dtype=torch.float64)
            for i in range(0, per_epoch, params.batch_size):
                idx = perm[i : i + params.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = torch.mean((model(xt[idx]) - yt[idx]) ** 2)
                loss.backward()
                opt.step()
                steps += 1
                total += loss.detach().double() * len(idx)
            train_loss.append(float(total) / per_epoch)
            val_loss.append(_mse_scaled(model, xv, yv))
            improved = val_loss[-1] < best_val
            if improved:
                best_val, best_epoch, since_best = val_loss[-1], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
                if params.lr_decay_factor < 1.0 and since_best % params.lr_decay_patience == 0:
                    lr *= params.lr_decay_factor
                    for group in opt.param_groups:
                        group["lr"] = lr
            if log is not None:
                log(
                    f"{tcn_model_name(windows.metric_type)} epoch {epoch}/{params.max_epochs}: train_loss={train_loss[-1]:.6f} "
                    f"val_loss={val_loss[-1]:.6f} best_epoch={best_epoch}{' *' if improved else ''} lr={lr:.2e}"
                )
            if on_epoch is not None:
                on_epoch(epoch, train_loss[-1], val_loss[-1])
            if since_best >= params.patience:
                stopped_early = epoch < params.max_epochs
                break
        model.load_state_dict(best_state)
        model.eval()
    epochs_run = len(train_loss)
    if log is not None:
        log(
            f"{tcn_model_name(windows.metric_type)}: {'early stop' if stopped_early else 'done'} after {epochs_run} epochs, "
            f"restored best epoch {best_epoch} (val_loss={best_val:.6f}), {n} training windows, {per_epoch} per epoch"
        )
    return TCNTrainResult(
        metric_type=windows.metric_type,
        model=model,
        scaler=scaler,
        params=params,
        train_loss=train_loss,
        val_loss=val_loss,
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        stopped_early=stopped_early,
        n_train_windows=n,
        n_val_windows=len(xv),
        train_seconds=time.perf_counter() - t0,
        extra={"windows_per_epoch": per_epoch, "optimizer_steps": steps},
    )


def predict(model: TCNForecaster, scaler: Scaler, X: np.ndarray) -> np.ndarray:
    """Forecasts in the signal's unit for raw windows ``X`` (n, sequence_length)."""
    model.eval()
    z = torch.from_numpy(np.ascontiguousarray(scaler.transform(X), dtype=np.float32))
    out = []
    with torch.no_grad():
        for i in range(0, len(z), _EVAL_BATCH):
            out.append(model(z[i : i + _EVAL_BATCH]).double().numpy())
    return scaler.inverse(np.concatenate(out) if out else np.empty(0))


def evaluate_forecasts(result: TCNTrainResult, windows: MetricWindows, split: str = "test") -> dict[str, dict[str, float]]:
    """R², R² within endpoint, MSE, MAE, RMSE (signal units) of the TCN, the last input value
    and the mean of the input window, on the normal windows of ``split``; the TCN entry also
    counts the endpoints on which its MSE is below the last-value forecast's."""
    X, y, eps = windows.X[split], windows.y[split], windows.endpoints[split]
    preds = {"tcn": predict(result.model, result.scaler, X), "last_value": X[:, -1], "window_mean": X.mean(axis=1)}
    report = {name: forecast_metrics(y, p, eps) for name, p in preds.items()}
    # on how many endpoints the TCN's MSE is below the last-value forecast's
    err_tcn = (y - preds["tcn"]) ** 2
    err_last = (y - preds["last_value"]) ** 2
    names = np.unique(eps)
    better = sum(float(err_tcn[eps == ep].mean()) < float(err_last[eps == ep].mean()) for ep in names)
    report["tcn"]["endpoints_better_than_last_value"] = int(better)
    report["tcn"]["endpoints"] = int(len(names))
    return report


def residual_scale(
    result: TCNTrainResult, windows: MetricWindows, split: str = "val", target_rate: float = DEFAULT_TARGET_RATE
) -> dict[str, Any]:
    """Std of ``target - prediction`` (signal units) on normal ``split`` windows: pooled and per
    endpoint (endpoints with fewer than 2 windows or a zero std are left out; detectors use the
    pooled value for them), and the ``calibration`` of the one-sided residual threshold (σ) to
    the false-alert budget ``target_rate`` on the same healthy windows (see training.calibration)."""
    X, y, eps = windows.X[split], windows.y[split], windows.endpoints[split]
    resid = y - predict(result.model, result.scaler, X)
    per_endpoint = {}
    for ep in np.unique(eps):
        r = resid[eps == ep]
        sd = float(r.std()) if r.size >= 2 else math.nan
        if math.isfinite(sd) and sd > 0:
            per_endpoint[str(ep)] = sd
    pooled = float(resid.std()) if resid.size >= 2 else math.nan
    if not (math.isfinite(pooled) and pooled > 0):
        raise ValueError(f"{tcn_model_name(windows.metric_type)}: cannot estimate the residual scale from {resid.size} {split} windows")
    eps_s = eps.astype(str)
    scale = np.array([per_endpoint.get(e, pooled) for e in eps_s.tolist()])
    calibration = budget_calibration(
        resid / scale, eps_s, target_rate, source=f"healthy {split} windows (residual in σ of the endpoint's scale)",
        min_endpoint_rows=1000,
    )
    # a threshold below 1 σ would make ordinary forecast errors evidence; keep a floor
    calibration["pooled"] = max(calibration["pooled"], 1.0)
    calibration["per_endpoint"] = {k: max(v, 1.0) for k, v in calibration["per_endpoint"].items()}
    return {"pooled": pooled, "per_endpoint": per_endpoint, "calibration": calibration}


def tcn_version_payload(
    result: TCNTrainResult,
    windows: MetricWindows,
    provenance: Mapping[str, Any],
    forecast_report: Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """``(files, metadata)`` for ``ModelRegistry.write_version``, built and verified through the
    artifact contract (:class:`ocad_detectors.artifacts.TCNArtifact`).

    ``provenance`` supplies ``training_date``, ``data_version``, ``dagster_run_id``,
    ``code_version`` and optionally ``hyperparameters_source`` (default ``"defaults"``).
    """
    return tcn_artifact(result, windows, provenance, forecast_report).payload()


def tcn_artifact(
    result: TCNTrainResult,
    windows: MetricWindows,
    provenance: Mapping[str, Any],
    forecast_report: Mapping[str, Mapping[str, float]] | None = None,
) -> TCNArtifact:
    """The trained forecaster as a typed artifact: contract fields typed, the training record
    (provenance, config, metrics, learning curve) in ``info``."""
    report = dict(forecast_report) if forecast_report is not None else evaluate_forecasts(result, windows)
    info: dict[str, Any] = {
        "training_date": provenance["training_date"],
        "config": result.params.to_dict(),
        "hyperparameters_source": provenance.get("hyperparameters_source", "defaults"),
        "data_version": provenance["data_version"],
        "dagster_run_id": provenance["dagster_run_id"],
        "code_version": provenance["code_version"],
        "validation_metrics": {
            "val_loss": result.best_val_loss,
            "val_loss_unit": "MSE of scaled values",
            "test_forecast": report,
            "test_forecast_note": "normal test windows, signal units; window_mean = mean of the N input values",
        },
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "parameter_count": result.parameter_count,
        "learning_curve": {"train_loss": list(result.train_loss), "val_loss": list(result.val_loss)},
        "windows": {
            **{f"{s}_{k}": v for s, c in windows.counts.items() for k, v in c.items()},
            "train_fitted": result.n_train_windows,  # after max_train_windows
        },
    }
    metadata = TCNMetadata(
        metric_type=result.metric_type,
        architecture=TCNArchitecture(**tcn_architecture(result.model)),
        scaler=ScalerSpec(result.scaler.mean, result.scaler.std),
        residual_scale=ResidualScale.from_dict(json_safe(residual_scale(result, windows, "val", result.params.target_rate))),
        info=json_safe(info),
    )
    return TCNArtifact(metadata, result.weights())
