"""Trainers without Dagster: data preparation, reproducibility, early stopping, scaler,
calibration, metrics, and numpy-vs-torch / numpy-vs-sklearn equivalence through the registry."""

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

import ocad_pipeline.training.tcn as tcn_mod
from ocad_detectors.artifacts import FORMAT_KEY, FORMAT_VERSION, IFMetadata, TCNMetadata
from ocad_detectors.features import FeatureConfig, ReferenceStats, model_feature_names
from ocad_detectors.iforest import NumpyIsolationForest
from ocad_detectors.registry import ModelRegistry
from ocad_detectors.tcn import NumpyTCN
from ocad_pipeline import datasets as ds
from ocad_pipeline.training import code_version, dataframes_sha256, json_safe
from ocad_pipeline.training.iforest import (
    FOREST_FILE,
    IsolationForestParams,
    group_matrix,
    iforest_version_payload,
    train_isolation_forest,
)
from ocad_pipeline.training.metrics import best_f1_threshold, classification_metrics, forecast_metrics, roc_auc
from ocad_pipeline.training.tcn import (
    WEIGHTS_FILE,
    TCNParams,
    evaluate_forecasts,
    predict,
    prepare_metric_windows,
    tcn_version_payload,
    train_tcn,
)

TINY = TCNParams(hidden_channels=8, dilations=(1, 2), max_epochs=3, batch_size=128, max_train_windows=1500, seed=1)
TINY_IF = IsolationForestParams(n_estimators=25, cv_folds=3, seed=2)
PROVENANCE = {"training_date": "2026-01-01T00:00:00+00:00", "data_version": "abc", "dagster_run_id": "run-1", "code_version": "test"}

TCN_KEYS = {
    "kind", "metric_type", "signal", "architecture", "scaler", "residual_scale", "training_date", "config",
    "hyperparameters_source", "data_version", "dagster_run_id", "code_version", "validation_metrics", "best_epoch",
    "parameter_count", "learning_curve",
}
IF_KEYS = {
    "kind", "feature_config", "groups", "reference_stats", "training_date", "config", "hyperparameters_source",
    "data_version", "dagster_run_id", "code_version", "validation_metrics", "cv",
}


@pytest.fixture(scope="module")
def splits(small_sim):
    cfg = ds.SplitConfig()
    ts = ds.timeseries_splits(small_sim.samples, small_sim.incidents, small_sim.endpoints, cfg)
    ref = ds.reference_stats(small_sim.samples, cfg)
    mv = ds.multivariate_splits(small_sim.samples, small_sim.endpoints, ref, cfg)
    return {"timeseries": ts, "multivariate": mv, "reference": ref}


@pytest.fixture(scope="module")
def udp_windows(splits):
    return prepare_metric_windows(splits["timeseries"], "udp_echo", 10)


@pytest.fixture(scope="module")
def tiny_tcn(udp_windows):
    return train_tcn(udp_windows, TINY)


@pytest.fixture(scope="module")
def tiny_forest(splits):
    return train_isolation_forest(splits["multivariate"], TINY_IF)


def _strict_json(obj):
    def refuse(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(json.dumps(obj), parse_constant=refuse)


# ---------------------------------------------------------------- data preparation


def _toy_split(n=6, anomalous=(1,), nan_seq=(2,), nan_target=(3,), metric="udp_echo"):
    seqs = [np.arange(10, dtype=float) + i for i in range(n)]
    for i in nan_seq:
        seqs[i] = seqs[i].copy()
        seqs[i][4] = np.nan
    target = np.arange(n, dtype=float) + 10
    target[list(nan_target)] = np.nan
    return pd.DataFrame(
        {
            "endpoint_id": "ep",
            "metric_type": [metric] * (n - 1) + ["lbm"],
            "timestamp_ms": np.arange(n, dtype=np.int64),
            "sequence": seqs,
            "target": target,
            "is_anomaly": False,
            "anomaly_type": pd.array([None] * n, dtype="string"),
            "window_anomalous": [i in anomalous for i in range(n)],
        }
    )


def test_prepare_keeps_only_normal_finite_windows_of_the_metric():
    splits = {s: _toy_split() for s in ("train", "val", "test")}
    w = prepare_metric_windows(splits, "udp_echo", 10)
    # rows 0..4 are udp_echo; 1 anomalous, 2 NaN input, 3 NaN target -> 0 and 4 remain
    assert w.counts["train"] == {"rows": 5, "normal": 4, "used": 2}
    np.testing.assert_array_equal(w.y["train"], [10.0, 14.0])
    np.testing.assert_array_equal(w.X["train"][1], np.arange(10) + 4.0)
    assert np.isfinite(w.X["val"]).all() and w.X["val"].shape == (2, 10)


def test_prepare_rejects_a_different_sequence_length(splits):
    with pytest.raises(ValueError, match=r"sequence_length=12.*hold 10 values"):
        prepare_metric_windows(splits["timeseries"], "udp_echo", 12)


def test_training_uses_normal_windows_only(splits, udp_windows):
    train = splits["timeseries"]["train"]
    rows = train[train["metric_type"] == "udp_echo"]
    assert rows["window_anomalous"].any()  # the fixture does contain anomalies ...
    normal_finite = (
        ~rows["window_anomalous"]
        & rows["target"].notna()
        & rows["sequence"].map(lambda s: bool(np.isfinite(s).all()))
    )
    assert udp_windows.counts["train"]["used"] == int(normal_finite.sum()) < len(rows)
    # exactly the normal, finite rows, in order
    np.testing.assert_array_equal(udp_windows.y["train"], rows.loc[normal_finite, "target"].to_numpy())


# ---------------------------------------------------------------- TCN trainer


def test_scaler_is_fitted_on_training_windows_only(udp_windows):
    params = TCNParams(hidden_channels=4, dilations=(1,), max_epochs=1, max_train_windows=None)
    r = train_tcn(udp_windows, params)
    values = np.concatenate([udp_windows.X["train"].ravel(), udp_windows.y["train"]])
    assert r.scaler.mean == pytest.approx(values.mean(), rel=1e-12)
    assert r.scaler.std == pytest.approx(values.std(), rel=1e-12)
    # shifting validation and test data does not move the scaler
    shifted = tcn_mod.MetricWindows(
        udp_windows.metric_type, 10,
        {"train": udp_windows.X["train"], "val": udp_windows.X["val"] + 100, "test": udp_windows.X["test"] + 100},
        {"train": udp_windows.y["train"], "val": udp_windows.y["val"] + 100, "test": udp_windows.y["test"] + 100},
        udp_windows.endpoints, udp_windows.counts,
    )
    assert train_tcn(shifted, params).scaler == r.scaler


def test_same_seed_gives_identical_weights(udp_windows, tiny_tcn):
    again = train_tcn(udp_windows, TINY)
    assert again.weights_bytes() == tiny_tcn.weights_bytes()
    assert again.train_loss == tiny_tcn.train_loss and again.val_loss == tiny_tcn.val_loss
    other = train_tcn(udp_windows, TCNParams(**{**TINY.to_dict(), "dilations": (1, 2), "seed": 2}))
    assert other.weights_bytes() != tiny_tcn.weights_bytes()


def test_training_leaves_global_torch_state_alone(udp_windows):
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_tcn(udp_windows, TCNParams(hidden_channels=4, dilations=(1,), max_epochs=1, max_train_windows=200))
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == det


def test_early_stopping_restores_the_best_epoch(udp_windows, monkeypatch):
    scripted = [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 9.0, 9.0]
    states = []
    real = tcn_mod._mse_scaled

    def fake(model, X, y):
        real(model, X, y)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return scripted[len(states) - 1]

    monkeypatch.setattr(tcn_mod, "_mse_scaled", fake)
    logs = []
    params = TCNParams(hidden_channels=4, dilations=(1,), max_epochs=8, patience=3, lr_decay_factor=1.0, max_train_windows=300)
    r = train_tcn(udp_windows, params, log=logs.append)
    assert r.best_epoch == 3 and r.epochs_run == 6 and r.stopped_early
    assert r.val_loss == scripted[:6] and len(r.train_loss) == 6
    final = r.model.state_dict()
    assert all(torch.equal(final[k], states[2][k]) for k in final)
    assert not all(torch.equal(final[k], states[5][k]) for k in final)
    assert sum("train_loss=" in line for line in logs) == 6  # per-epoch progress


def test_best_val_loss_matches_the_restored_model(udp_windows, tiny_tcn):
    xv = torch.from_numpy(tiny_tcn.scaler.transform(udp_windows.X["val"]).astype(np.float32))
    yv = torch.from_numpy(tiny_tcn.scaler.transform(udp_windows.y["val"]).astype(np.float32))
    assert tcn_mod._mse_scaled(tiny_tcn.model, xv, yv) == pytest.approx(min(tiny_tcn.val_loss), rel=1e-9)
    assert tiny_tcn.best_val_loss == min(tiny_tcn.val_loss)


def test_forecast_report_has_the_three_predictors(udp_windows, tiny_tcn):
    rep = evaluate_forecasts(tiny_tcn, udp_windows)
    assert set(rep) == {"tcn", "last_value", "window_mean"}
    X, y = udp_windows.X["test"], udp_windows.y["test"]
    assert rep["last_value"]["mse"] == pytest.approx(np.mean((y - X[:, -1]) ** 2))
    assert rep["window_mean"]["mae"] == pytest.approx(np.mean(np.abs(y - X.mean(axis=1))))
    for m in rep.values():
        assert {"r2", "mse", "mae", "rmse", "r2_within_endpoint"} <= set(m)
        assert m["rmse"] == pytest.approx(math.sqrt(m["mse"]))


def test_numpy_tcn_from_registry_matches_torch(tmp_path, udp_windows, tiny_tcn):
    files, meta = tcn_version_payload(tiny_tcn, udp_windows, PROVENANCE)
    reg = ModelRegistry(tmp_path / "models")
    info = reg.write_version("tcn_udp_echo", files, meta)
    assert info.version == "1.0.0" and reg.production_version("tcn_udp_echo") == "1.0.0"
    loaded = reg.load_version("tcn_udp_echo")
    m = loaded.metadata
    net = NumpyTCN(loaded.arrays(WEIGHTS_FILE), m["architecture"])
    X = udp_windows.X["test"][:500]
    scaled = (X - m["scaler"]["mean"]) / m["scaler"]["std"]
    with torch.no_grad():
        ref = tiny_tcn.model(torch.from_numpy(scaled.astype(np.float32))).double().numpy()
    got = net.predict(scaled)
    assert np.max(np.abs(got - ref)) <= 1e-5
    # in signal units, through the stored scaler
    raw = got * m["scaler"]["std"] + m["scaler"]["mean"]
    np.testing.assert_allclose(raw, predict(tiny_tcn.model, tiny_tcn.scaler, X), atol=1e-4)


def test_tcn_metadata_has_every_contract_key(udp_windows, tiny_tcn):
    files, meta = tcn_version_payload(tiny_tcn, udp_windows, PROVENANCE)
    assert set(files) == {WEIGHTS_FILE}
    assert TCN_KEYS <= set(meta)
    assert meta["kind"] == "tcn" and meta["metric_type"] == "udp_echo" and meta["signal"] == "udp_echo_rtt_ms"
    assert meta["architecture"] == {"seq_len": 10, "hidden_channels": 8, "dilations": [1, 2], "kernel_size": 3}
    assert set(meta["scaler"]) == {"mean", "std"}
    rs = meta["residual_scale"]
    assert rs["pooled"] > 0 and set(rs["per_endpoint"]) == set(np.unique(udp_windows.endpoints["val"]))
    assert meta["hyperparameters_source"] == "defaults"
    assert set(meta["validation_metrics"]["test_forecast"]) == {"tcn", "last_value", "window_mean"}
    assert "val_loss" in meta["validation_metrics"]
    assert len(meta["learning_curve"]["train_loss"]) == len(meta["learning_curve"]["val_loss"]) == tiny_tcn.epochs_run
    assert meta["config"]["dilations"] == [1, 2] and meta["config"]["max_epochs"] == 3
    # written in the artifact contract's current format; the contract reads back what was written
    assert meta[FORMAT_KEY] == FORMAT_VERSION
    assert TCNMetadata.from_dict(meta, "tcn_udp_echo").to_dict() == meta
    _strict_json(meta)


def test_residual_scale_is_std_of_validation_residuals(udp_windows, tiny_tcn):
    _, meta = tcn_version_payload(tiny_tcn, udp_windows, PROVENANCE)
    resid = udp_windows.y["val"] - predict(tiny_tcn.model, tiny_tcn.scaler, udp_windows.X["val"])
    assert meta["residual_scale"]["pooled"] == pytest.approx(resid.std())
    ep = udp_windows.endpoints["val"][0]
    assert meta["residual_scale"]["per_endpoint"][ep] == pytest.approx(resid[udp_windows.endpoints["val"] == ep].std())


# ---------------------------------------------------------------- Isolation Forest trainer


def test_forest_trains_on_normal_rows_per_group(splits, tiny_forest):
    train = splits["multivariate"]["train"]
    assert set(tiny_forest.groups) == set(train["capabilities"].unique())
    for g, m in tiny_forest.groups.items():
        rows = train[train["capabilities"] == g]
        assert m.n_train == int((~rows["window_anomalous"]).sum()) < len(rows)
        assert m.features == model_feature_names(g.split("+"))
        X = group_matrix(rows[~rows["window_anomalous"]], m.features)
        np.testing.assert_allclose(m.scaler.mean, X.mean(axis=0))


def test_cross_validation_report(tiny_forest):
    for m in tiny_forest.groups.values():
        assert m.cv["folds"] == 3 and len(m.cv["per_fold"]) == 3
        assert sum(f["n_held_out"] for f in m.cv["per_fold"]) == m.n_train
        s = m.cv["summary"]
        assert {"held_out_score_mean", "held_out_score_p99", "val_roc_auc", "val_rank_corr_with_final"} <= set(s)
        assert s["held_out_score_mean"]["std"] >= 0


@pytest.fixture(scope="module")
def two_day_splits():
    """Two days, so validation and test see the same hours of the daily cycle."""
    from ocad_pipeline.simulator import SimulatorConfig, simulate

    sim = simulate(SimulatorConfig(n_oru=2, n_odu=1, n_transport=1, duration_hours=48, incidents_per_endpoint_day=2, seed=11))
    cfg = ds.SplitConfig()
    return ds.multivariate_splits(sim.samples, sim.endpoints, ds.reference_stats(sim.samples, cfg), cfg)


@pytest.mark.parametrize("rate", [0.002, 0.01])
def test_budget_threshold_comes_from_healthy_validation_rows_and_holds_on_unseen_healthy_data(two_day_splits, rate):
    mv = two_day_splits
    params = dataclasses.replace(TINY_IF, n_estimators=50, target_rate=rate)
    result = train_isolation_forest(mv, params)
    sources = set()
    for g, m in result.groups.items():
        val = mv["val"][mv["val"]["capabilities"] == g]
        healthy = ~(val["is_anomaly"].to_numpy(bool) | val["window_anomalous"].to_numpy(bool))
        cal = m.calibration
        assert cal["method"] == "budget" and cal["target_rate"] == rate and m.metadata()["calibration"] == cal
        sources.add(cal["pooled_source"])
        if cal["pooled_source"] == "healthy validation rows":
            scores = m.anomaly_score(group_matrix(val, m.features))
            assert cal["pooled_row_quantile"] == pytest.approx(np.quantile(scores[healthy], 1 - rate, method="higher"))
            # ... raised to the median level healthy rows sustained for the alert persistence
            assert m.threshold == cal["pooled"] >= cal["pooled_row_quantile"]
        else:  # too few validation rows: out-of-fold training scores, never a few dozen rows
            assert cal["pooled_rows"] >= 500
        # the budget holds on healthy test rows nobody calibrated on (within sampling noise)
        t = mv["test"]
        test = t[(t["capabilities"] == g) & ~t["is_anomaly"].astype(bool) & ~t["window_anomalous"].astype(bool)]
        observed = float(np.mean(m.anomaly_score(group_matrix(test, m.features)) > m.threshold))
        assert observed <= max(2.5 * rate, 3 / len(test)), (g, observed, len(test))
    assert sources == {"healthy validation rows", "out-of-fold scores of the normal training rows (k-fold CV)"}
    # anomalous validation rows do not move the threshold (no F1 fitted on a few dozen rows)
    only_healthy = {**mv, "val": mv["val"][~mv["val"]["is_anomaly"].astype(bool)]}
    g = "ecpri+lbm+udp_echo"
    assert train_isolation_forest(only_healthy, params).groups[g].threshold == result.groups[g].threshold


def test_threshold_is_calibrated_on_validation_only(splits):
    f1_params = dataclasses.replace(TINY_IF, threshold_strategy="f1")
    tiny_forest = train_isolation_forest(splits["multivariate"], f1_params)
    TINY_F1 = f1_params
    mv = splits["multivariate"]
    g = "ecpri+lbm+udp_echo"
    m = tiny_forest.groups[g]
    val = mv["val"][mv["val"]["capabilities"] == g]
    scores = m.anomaly_score(group_matrix(val, m.features))
    thr, f1 = best_f1_threshold(val["is_anomaly"].to_numpy(), scores)
    assert m.threshold == pytest.approx(thr) and "F1" in m.threshold_method
    assert m.validation["f1"] == pytest.approx(f1)
    # changing the test split changes nothing; without validation anomalies -> quantile
    changed = {**mv, "test": mv["test"].iloc[:10]}
    assert train_isolation_forest(changed, TINY_F1).groups[g].threshold == m.threshold
    no_anom = {**mv, "val": mv["val"].assign(is_anomaly=False)}
    q = train_isolation_forest(no_anom, TINY_F1).groups[g]
    assert q.threshold == pytest.approx(np.quantile(scores, 0.99)) and "quantile" in q.threshold_method


def test_numpy_forest_from_registry_matches_sklearn(tmp_path, splits, tiny_forest):
    files, meta = iforest_version_payload(tiny_forest, FeatureConfig(), splits["reference"], PROVENANCE)
    reg = ModelRegistry(tmp_path / "models")
    reg.write_version("isolation_forest", files, meta)
    loaded = reg.load_version("isolation_forest")
    arrays = loaded.arrays(FOREST_FILE)
    test = splits["multivariate"]["test"]
    for g, gm in loaded.metadata["groups"].items():
        sub = {k[len(g) + 1 :]: v for k, v in arrays.items() if k.startswith(g + "/")}
        forest = NumpyIsolationForest(sub)
        X = group_matrix(test[test["capabilities"] == g], gm["features"])
        scaled = (X - np.asarray(gm["scaler"]["mean"])) / np.asarray(gm["scaler"]["std"])
        expected = tiny_forest.groups[g].forest.score_samples(scaled)
        assert np.max(np.abs(forest.score_samples(scaled) - expected)) <= 1e-9
        np.testing.assert_array_equal(
            -forest.score_samples(scaled) > gm["threshold"], tiny_forest.groups[g].anomaly_score(X) > tiny_forest.groups[g].threshold
        )


def test_forest_metadata_has_every_contract_key(splits, tiny_forest):
    fcfg = FeatureConfig(window=12, ewma_alpha=0.3, cusum_k=0.5)
    files, meta = iforest_version_payload(tiny_forest, fcfg, splits["reference"], PROVENANCE)
    assert set(files) == {FOREST_FILE}
    assert IF_KEYS <= set(meta)
    assert meta["kind"] == "isolation_forest" and meta["feature_config"] == fcfg.to_dict()
    for g, gm in meta["groups"].items():
        assert {"features", "scaler", "threshold", "n_train", "cv"} <= set(gm)
        assert len(gm["scaler"]["mean"]) == len(gm["scaler"]["std"]) == len(gm["features"])
        assert {"precision", "recall", "f1", "roc_auc"} <= set(meta["validation_metrics"][g])
    ref = ReferenceStats.from_records(meta["reference_stats"])
    assert ref.pooled and ref.per_endpoint
    assert meta[FORMAT_KEY] == FORMAT_VERSION
    assert IFMetadata.from_dict(meta, "isolation_forest").to_dict() == meta
    _strict_json(meta)


# ---------------------------------------------------------------- metrics and provenance


def test_forecast_metrics_known_values():
    m = forecast_metrics([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 6.0], groups=["a", "a", "b", "b"])
    assert m["mse"] == 1.0 and m["mae"] == 0.5 and m["rmse"] == 1.0 and m["n"] == 4
    assert m["r2"] == pytest.approx(1 - 4 / 5)
    assert m["r2_within_endpoint"] == pytest.approx(1 - 4 / 1)
    assert math.isnan(forecast_metrics([2.0, 2.0], [2.0, 2.0])["r2"])


def test_classification_metrics_and_auc():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.2
    s = rng.normal(size=300) + y * 1.5
    s[:20] = 0.25  # ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    thr, f1 = best_f1_threshold(y, s)
    c = classification_metrics(y, s, thr)
    assert c["f1"] == pytest.approx(f1)
    grid = np.unique(s)
    assert all(classification_metrics(y, s, t)["f1"] <= f1 + 1e-12 for t in grid)


def test_provenance_helpers():
    a = pd.DataFrame({"x": [1.0, 2.0], "s": [np.arange(3.0), np.arange(3.0)]})
    assert dataframes_sha256({"t": a}) == dataframes_sha256({"t": a.copy()})
    assert dataframes_sha256({"t": a}) != dataframes_sha256({"t": a.assign(x=[1.0, 2.5])})
    assert len(code_version()) >= 7
    assert json_safe({"a": [np.float64("nan"), np.int64(3)], "b": np.array([1.5])}) == {"a": [None, 3], "b": [1.5]}
