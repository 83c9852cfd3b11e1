"""Isolation Forest training per capability group, with k-fold CV and threshold calibration.

Endpoints support different signals, so ``multivariate_splits`` rows are grouped by their
``capabilities`` key (e.g. ``ecpri+lbm+udp_echo``) and each group gets its own scaler and
forest over ``model_feature_names(caps)`` (NaN -> 0 σ via ``model_matrix``).

Per group:

* **training data**: normal training rows only (``~window_anomalous``: no labelled anomaly
  anywhere in the feature window);
* **scaler**: mean/std per feature over those rows (a constant feature gets std 1);
* **model**: ``sklearn.ensemble.IsolationForest`` on the scaled matrix; the anomaly score is
  ``-score_samples(scaled X)`` (higher = more anomalous), "anomalous" means ``score > threshold``;
* **cross-validation**: k folds (shuffled with the seed) of the normal training rows; each
  fold refits scaler + forest on the other folds and scores the held-out fold and the whole
  validation split. Reported per fold and as mean/std across folds: held-out score mean and
  99th percentile, the share of held-out rows above the final threshold, validation ROC-AUC,
  and the Spearman rank correlation of the fold model's validation scores with the final
  model's (score stability);
* **threshold**, calibrated on the validation split only: the threshold maximizing point-wise
  F1 against ``is_anomaly`` when the group's validation rows contain anomalies (strategy
  ``"f1"``), else — or with strategy ``"quantile"`` — the ``threshold_quantile`` quantile of
  the scores of normal validation rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

from ocad_detectors.artifacts import IFOREST_FILE, IFOREST_MODEL_NAME, IFGroupSpec, IFMetadata, IForestArtifact
from ocad_detectors.features import FeatureConfig, ReferenceStats, model_feature_names, model_matrix
from ocad_pipeline.models.iforest_export import export_isolation_forest
from ocad_pipeline.training import json_safe
from ocad_pipeline.training.calibration import (
    DEFAULT_ALERTS_PER_DAY,
    DEFAULT_SUSTAIN_S,
    DEFAULT_TARGET_RATE,
    alert_budget_level,
    budget_calibration,
)
from ocad_pipeline.training.metrics import best_f1_threshold, classification_metrics, roc_auc

__all__ = [
    "IsolationForestParams",
    "FeatureScaler",
    "GroupModel",
    "IsolationForestTrainResult",
    "MODEL_NAME",
    "FOREST_FILE",
    "group_matrix",
    "fit_group",
    "train_isolation_forest",
    "iforest_version_payload",
    "iforest_artifact",
    "reference_stats_records",
]

#: the contract's model and file names (kept here for callers of this module)
MODEL_NAME = IFOREST_MODEL_NAME
FOREST_FILE = IFOREST_FILE
#: groups with fewer normal training rows than this are skipped (with a reason in the result)
MIN_TRAIN_ROWS = 20


@dataclass(frozen=True)
class IsolationForestParams:
    """Hyperparameters of the Isolation Forest training (the Dagster config maps onto this)."""

    n_estimators: int = 200
    #: "auto" (= min(256, n)) or a number of rows per tree
    max_samples: str | int = "auto"
    max_features: float = 1.0
    #: "budget": the (1 - target_rate) quantile of healthy validation scores, per endpoint where
    #: there are rows enough (see training.calibration); "f1": maximize F1 on validation labels
    #: (quantile fallback without anomalies); "quantile": threshold_quantile of normal scores
    threshold_strategy: str = "budget"
    threshold_quantile: float = 0.99
    #: share of healthy samples allowed above the threshold ("budget" strategy)
    target_rate: float = DEFAULT_TARGET_RATE
    #: "budget" strategy: raise each threshold to the highest level healthy validation rows
    #: sustained for this long (seconds; the alert persistence), 0 = off (training.calibration)
    sustain_s: float = DEFAULT_SUSTAIN_S
    #: "budget" strategy with full-rate healthy validation scores: raise every threshold of a
    #: group to the level those scores held for ``sustain_s`` in at most this many separate
    #: episodes per endpoint-day (training.calibration.alert_budget_level), 0 = off
    alerts_per_day: float = DEFAULT_ALERTS_PER_DAY
    cv_folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_estimators < 1:
            raise ValueError("n_estimators must be >= 1")
        if isinstance(self.max_samples, str):
            if self.max_samples != "auto":
                raise ValueError(f"max_samples must be 'auto' or a positive integer, got {self.max_samples!r}")
        elif int(self.max_samples) < 2:
            raise ValueError("max_samples must be >= 2")
        if not 0.0 < self.max_features <= 1.0:
            raise ValueError("max_features must be in (0, 1]")
        if self.threshold_strategy not in ("budget", "f1", "quantile"):
            raise ValueError(f"threshold_strategy must be 'budget', 'f1' or 'quantile', got {self.threshold_strategy!r}")
        if not 0.0 < self.target_rate < 0.5:
            raise ValueError(f"target_rate must be in (0, 0.5), got {self.target_rate}")
        if not (isinstance(self.sustain_s, (int, float)) and 0.0 <= self.sustain_s <= 86400.0):
            raise ValueError(f"sustain_s must be in [0, 86400] seconds, got {self.sustain_s!r}")
        if not 0.0 < self.threshold_quantile < 1.0:
            raise ValueError("threshold_quantile must be in (0, 1)")
        if not (isinstance(self.alerts_per_day, (int, float)) and 0.0 <= self.alerts_per_day <= 100.0):
            raise ValueError(f"alerts_per_day must be in [0, 100], got {self.alerts_per_day!r}")
        if self.cv_folds < 2:
            raise ValueError("cv_folds must be >= 2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def forest(self, n_rows: int, seed: int | None = None) -> IsolationForest:
        max_samples = self.max_samples if isinstance(self.max_samples, str) else min(int(self.max_samples), n_rows)
        return IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=max_samples,
            max_features=self.max_features,
            random_state=self.seed if seed is None else seed,
            n_jobs=1,
        )


@dataclass(frozen=True)
class FeatureScaler:
    """Per-feature ``(x - mean) / std``, fitted on normal training rows."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> FeatureScaler:
        X = np.asarray(X, dtype=np.float64)
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        return cls(mean=mean, std=np.where(std > 0, std, 1.0))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, dtype=np.float64) - self.mean) / self.std

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}


def group_matrix(df: pd.DataFrame, names: list[str]) -> np.ndarray:
    """The model's (n, d) feature matrix of a multivariate table (NaN -> 0 σ)."""
    return model_matrix({c: df[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in names}, names)


@dataclass
class GroupModel:
    """Scaler + forest of one capability group, with its threshold, CV and validation report."""

    group: str
    features: list[str]
    scaler: FeatureScaler
    forest: IsolationForest
    threshold: float
    threshold_method: str
    n_train: int
    cv: dict[str, Any]
    validation: dict[str, Any]
    train_seconds: float
    #: the same metrics on the test split (reported only; nothing is calibrated on it)
    test: dict[str, Any] = field(default_factory=dict)
    #: the budget calibration record (pooled and per-endpoint thresholds), if that strategy ran
    calibration: dict[str, Any] = field(default_factory=dict)

    def anomaly_score(self, X: np.ndarray) -> np.ndarray:
        """``-score_samples`` of the scaled features (higher = more anomalous)."""
        return -self.forest.score_samples(self.scaler.transform(X))

    def arrays(self) -> dict[str, np.ndarray]:
        return export_isolation_forest(self.forest)

    def spec(self) -> IFGroupSpec:
        """This group's entry of the artifact contract (features, scaler, thresholds) plus its
        training record (threshold method, calibration, CV) as ``info``."""
        return IFGroupSpec(
            key=self.group,
            features=tuple(self.features),
            scaler_mean=tuple(float(v) for v in self.scaler.mean),
            scaler_std=tuple(float(v) for v in self.scaler.std),
            threshold=float(self.threshold),
            endpoint_thresholds=dict(self.calibration.get("per_endpoint", {})),
            info=json_safe({
                "threshold_method": self.threshold_method,
                "calibration": self.calibration,
                "n_train": int(self.n_train),
                "cv": self.cv,
            }),
        )

    def metadata(self) -> dict[str, Any]:
        return self.spec().to_dict()


def _fit(X: np.ndarray, params: IsolationForestParams, seed: int | None = None) -> tuple[FeatureScaler, IsolationForest]:
    scaler = FeatureScaler.fit(X)
    forest = params.forest(len(X), seed).fit(scaler.transform(X))
    return scaler, forest


def _calibrate(val_scores: np.ndarray, val_labels: np.ndarray, params: IsolationForestParams) -> tuple[float, str]:
    normal_scores = val_scores[~val_labels]
    if params.threshold_strategy == "f1" and val_labels.any() and (~val_labels).any():
        thr, f1 = best_f1_threshold(val_labels, val_scores)
        return thr, f"max F1 on validation labels (F1={f1:.3f})"
    ref = normal_scores if normal_scores.size else val_scores
    thr = float(np.quantile(ref, params.threshold_quantile))
    why = "no anomalies in validation" if params.threshold_strategy == "f1" else "configured"
    return thr, f"{params.threshold_quantile:.0%} quantile of normal validation scores ({why})"


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return math.nan
    ra = pd.Series(a).rank().to_numpy()
    rb = pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"mean": math.nan, "std": math.nan}
    return {"mean": float(arr.mean()), "std": float(arr.std())}


def fit_group(
    group: str, train: pd.DataFrame, val: pd.DataFrame, params: IsolationForestParams, stream: pd.DataFrame | None = None
) -> GroupModel:
    """Fit, cross-validate and calibrate one capability group (``train``/``val`` hold only its
    rows; ``stream``: its healthy validation samples at full rate, for the alert budget)."""
    t0 = time.perf_counter()
    names = model_feature_names(group.split("+"))
    normal = ~train["window_anomalous"].to_numpy(dtype=bool)
    X = group_matrix(train.loc[normal], names)
    if len(X) < max(MIN_TRAIN_ROWS, params.cv_folds):
        raise ValueError(f"capability group {group!r}: only {len(X)} normal training rows (need {MIN_TRAIN_ROWS})")
    Xv = group_matrix(val, names)
    yv = val["is_anomaly"].to_numpy(dtype=bool)

    scaler, forest = _fit(X, params)
    val_scores = -forest.score_samples(scaler.transform(Xv)) if len(Xv) else np.empty(0)

    # k-fold CV over the normal training rows, shuffled with the seed; the held-out scores are
    # honest healthy scores (no forest saw its own rows), the budget calibration's fallback pool
    rng = np.random.default_rng(params.seed)
    folds = np.array_split(rng.permutation(len(X)), params.cv_folds)
    oof = np.empty(len(X))
    fold_scores = []
    for k, held in enumerate(folds):
        fit_idx = np.setdiff1d(np.arange(len(X)), held, assume_unique=True)
        f_scaler, f_forest = _fit(X[fit_idx], params, seed=params.seed + k + 1)
        oof[held] = -f_forest.score_samples(f_scaler.transform(X[held]))
        fv = -f_forest.score_samples(f_scaler.transform(Xv)) if len(Xv) else None
        fold_scores.append((k, fit_idx, held, fv))

    calibration: dict[str, Any] = {}
    if params.threshold_strategy == "budget":
        # healthy = the whole feature window is normal (a window touching an incident is not)
        healthy = ~(val["window_anomalous"].to_numpy(dtype=bool) | yv) if "window_anomalous" in val else ~yv
        calibration = budget_calibration(
            val_scores[healthy], val["endpoint_id"].to_numpy()[healthy] if len(Xv) else np.empty(0, dtype=object),
            params.target_rate, fallback=oof, fallback_source="out-of-fold scores of the normal training rows (k-fold CV)",
            times_ms=val["timestamp_ms"].to_numpy()[healthy] if len(Xv) and params.sustain_s > 0 else None,
            sustain_s=params.sustain_s if params.sustain_s > 0 else None,
            fallback_times_ms=train.loc[normal, "timestamp_ms"].to_numpy() if params.sustain_s > 0 else None,
            fallback_endpoints=train.loc[normal, "endpoint_id"].to_numpy() if params.sustain_s > 0 else None,
        )
        method = f"budget: {params.target_rate:.2%} of {calibration['pooled_source']} above it ({calibration['pooled_rows']} rows)"
        if stream is not None and len(stream) and params.alerts_per_day > 0 and params.sustain_s > 0:
            ss = -forest.score_samples(scaler.transform(group_matrix(stream, names)))
            ab = alert_budget_level(ss, stream["endpoint_id"].to_numpy(), stream["timestamp_ms"].to_numpy(),
                                    params.sustain_s, params.alerts_per_day)
            calibration["alert_budget"] = ab
            lvl = ab["level"]
            if lvl is not None:
                # raise only: nothing healthy held above the threshold more often than the budget
                calibration["pooled"] = max(calibration["pooled"], lvl)
                calibration["per_endpoint"] = {ep: max(v, lvl) for ep, v in calibration["per_endpoint"].items()}
                method += (f", raised to the level {ab['episodes_at_level']} episode(s) in {ab['endpoint_days']:.2f} healthy "
                           f"endpoint-days held for {params.sustain_s:g} s (budget {params.alerts_per_day:g}/endpoint-day)")
        threshold = calibration["pooled"]
    elif len(Xv):
        threshold, method = _calibrate(val_scores, yv, params)
    else:  # no validation rows: fall back to the training scores (documented in the method)
        train_scores = -forest.score_samples(scaler.transform(X))
        threshold = float(np.quantile(train_scores, params.threshold_quantile))
        method = f"{params.threshold_quantile:.0%} quantile of normal training scores (no validation rows)"

    per_fold = []
    for k, fit_idx, held, fv in fold_scores:
        held_scores = oof[held]
        fold: dict[str, Any] = {
            "fold": k,
            "n_fit": int(len(fit_idx)),
            "n_held_out": int(len(held)),
            "held_out_score_mean": float(held_scores.mean()),
            "held_out_score_p99": float(np.quantile(held_scores, 0.99)),
            "held_out_above_threshold": float(np.mean(held_scores > threshold)),
        }
        if fv is not None:
            fold["val_roc_auc"] = roc_auc(yv, fv)
            fold["val_rank_corr_with_final"] = _spearman(fv, val_scores)
        per_fold.append(fold)
    keys = [k for k in per_fold[0] if k not in ("fold", "n_fit", "n_held_out")]
    cv = {
        "folds": params.cv_folds,
        "shuffle_seed": params.seed,
        "per_fold": per_fold,
        "summary": {k: _summary([f[k] for f in per_fold]) for k in keys},
    }
    validation = classification_metrics(yv, val_scores, threshold) if len(Xv) else {"n": 0}
    return GroupModel(
        group=group,
        features=names,
        scaler=scaler,
        forest=forest,
        threshold=threshold,
        threshold_method=method,
        calibration=calibration,
        n_train=int(len(X)),
        cv=cv,
        validation=validation,
        train_seconds=time.perf_counter() - t0,
    )


@dataclass
class IsolationForestTrainResult:
    params: IsolationForestParams
    groups: dict[str, GroupModel]
    skipped: dict[str, str] = field(default_factory=dict)
    train_seconds: float = 0.0

    def arrays(self) -> dict[str, np.ndarray]:
        """Every group's exported forest, keys prefixed ``"{group}/"``."""
        out: dict[str, np.ndarray] = {}
        for g, m in self.groups.items():
            out.update({f"{g}/{k}": v for k, v in m.arrays().items()})
        return out


def train_isolation_forest(
    splits: Mapping[str, pd.DataFrame], params: IsolationForestParams, log=None, stream: pd.DataFrame | None = None
) -> IsolationForestTrainResult:
    """One :class:`GroupModel` per capability group found in the training split; ``stream``:
    healthy validation feature rows at full rate (``datasets.healthy_stream_features``) for the
    alert-budget calibration."""
    t0 = time.perf_counter()
    train, val = splits["train"], splits["val"]
    test = splits.get("test")
    groups: dict[str, GroupModel] = {}
    skipped: dict[str, str] = {}
    for g in sorted(train["capabilities"].astype(str).unique()):
        try:
            gs = stream[stream["capabilities"] == g] if stream is not None and len(stream) else None
            m = fit_group(g, train[train["capabilities"] == g], val[val["capabilities"] == g], params, gs)
        except ValueError as exc:
            skipped[g] = str(exc)
            if log is not None:
                log(f"isolation_forest: skipping {g}: {exc}")
            continue
        if test is not None:
            rows = test[test["capabilities"] == g]
            if len(rows):
                scores = m.anomaly_score(group_matrix(rows, m.features))
                m.test = classification_metrics(rows["is_anomaly"].to_numpy(dtype=bool), scores, m.threshold)
        groups[g] = m
        if log is not None:
            v = m.validation
            log(
                f"isolation_forest {g}: {m.n_train} normal training rows, threshold={m.threshold:.4f} ({m.threshold_method}), "
                f"val precision={v.get('precision', math.nan):.3f} recall={v.get('recall', math.nan):.3f} "
                f"f1={v.get('f1', math.nan):.3f} roc_auc={v.get('roc_auc', math.nan):.3f}, {m.train_seconds:.1f}s"
            )
    if not groups:
        raise ValueError(f"no capability group could be trained: {skipped}")
    return IsolationForestTrainResult(params, groups, skipped, time.perf_counter() - t0)


def reference_stats_records(stats: pd.DataFrame) -> list[dict[str, Any]]:
    """The reference_stats table as ``[{endpoint_id, signal, mean, std}]`` (validated by
    ``ReferenceStats.from_records``)."""
    rows = [
        {"endpoint_id": str(r.endpoint_id), "signal": str(r.signal), "mean": float(r.mean), "std": float(r.std)}
        for r in stats.itertuples(index=False)
    ]
    ReferenceStats.from_records(rows)  # raises on a non-finite or non-positive std
    return rows


def iforest_version_payload(
    result: IsolationForestTrainResult,
    feature_config: FeatureConfig,
    reference_stats: pd.DataFrame,
    provenance: Mapping[str, Any],
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """``(files, metadata)`` for ``ModelRegistry.write_version``, built and verified through the
    artifact contract (:class:`ocad_detectors.artifacts.IForestArtifact`)."""
    return iforest_artifact(result, feature_config, reference_stats, provenance).payload()


def iforest_artifact(
    result: IsolationForestTrainResult,
    feature_config: FeatureConfig,
    reference_stats: pd.DataFrame,
    provenance: Mapping[str, Any],
) -> IForestArtifact:
    """The trained forests as a typed artifact: contract fields typed, the training record in ``info``."""
    info: dict[str, Any] = {
        "score": "-score_samples((x - scaler.mean) / scaler.std); anomalous when score > threshold",
        "threshold_calibration": {
            "budget": f"to a false-alert budget: the {1 - result.params.target_rate:.2%} quantile of healthy validation "
            "scores per capability group (per endpoint where it has enough healthy rows; groups with too few "
            "validation rows use out-of-fold scores of their normal training rows); see groups.*.calibration",
            "f1": "validation split only: threshold maximizing point-wise F1 against is_anomaly when the group's "
            "validation rows contain anomalies, else the threshold_quantile of normal validation scores",
            "quantile": "validation split only: threshold_quantile of normal validation scores",
        }[result.params.threshold_strategy],
        "training_date": provenance["training_date"],
        "config": result.params.to_dict(),
        "hyperparameters_source": provenance.get("hyperparameters_source", "defaults"),
        "data_version": provenance["data_version"],
        "dagster_run_id": provenance["dagster_run_id"],
        "code_version": provenance["code_version"],
        "validation_metrics": {g: m.validation for g, m in result.groups.items()},
        "test_metrics": {g: m.test for g, m in result.groups.items()},
        "cv": {g: m.cv for g, m in result.groups.items()},
        "skipped_groups": dict(result.skipped),
    }
    metadata = IFMetadata(
        feature_config=feature_config,
        groups={g: m.spec() for g, m in result.groups.items()},
        reference=ReferenceStats.from_records(reference_stats_records(reference_stats)),
        info=json_safe(info),
    )
    return IForestArtifact(metadata, {g: m.arrays() for g, m in result.groups.items()})
