"""Hyperparameter tuning: tiny Optuna studies (a few trials, 1-2 epochs) on tiny data.

Library level (no Dagster): resume, seeding, failing and pruned trials, time budget, the
search-space <-> trainer mapping, train/val only. Dagster level: the tuning assets write their
result and metadata, the trainers use it with ``use_tuned_params`` (and say so in
metadata.json), a missing result is a clear error, and the tuning group stays out of the
default jobs.
"""

import json
import time
import types

import dagster as dg
import numpy as np
import optuna
import pandas as pd
import pytest

import ocad_pipeline.training.tuning as tn
from ocad_pipeline import datasets as ds
from ocad_pipeline.definitions import ALL_ASSETS, build_resources, defs
from ocad_pipeline.defs import jobs
from ocad_pipeline.training.iforest import IsolationForestParams
from ocad_pipeline.training.tcn import TCNParams, train_tcn

TINY_TCN_BASE = TCNParams(max_epochs=2, max_train_windows=300, batch_size=128, patience=2)
TINY_IF_BASE = IsolationForestParams(cv_folds=2)


@pytest.fixture(scope="module")
def splits(small_sim):
    cfg = ds.SplitConfig()
    ts = ds.timeseries_splits(small_sim.samples, small_sim.incidents, small_sim.endpoints, cfg)
    ref = ds.reference_stats(small_sim.samples, cfg)
    mv = ds.multivariate_splits(small_sim.samples, small_sim.endpoints, ref, cfg)
    return {"timeseries": ts, "multivariate": mv, "incidents": small_sim.incidents}


@pytest.fixture(scope="module")
def udp_windows(splits):
    return tn.train_val_windows(splits["timeseries"], "udp_echo", 10)


def _url(tmp_path, name="optuna.db"):
    return tn.sqlite_url(tmp_path / "tuning" / name)


def _tune_if(splits, url, n_trials, **kw):
    settings = tn.StudySettings(n_trials=n_trials, seed=kw.pop("seed", 0), n_startup_trials=kw.pop("n_startup_trials", 5), **kw)
    return tn.tune_isolation_forest(splits["multivariate"], splits["incidents"], TINY_IF_BASE, settings, url)


# ------------------------------------------------------------------ library


def test_study_is_stored_and_resumed(tmp_path, splits):
    url = _url(tmp_path)
    first = _tune_if(splits, url, 2)
    assert (tmp_path / "tuning" / "optuna.db").is_file()
    assert (first.n_trials_before, first.n_trials_run, first.n_trials_total) == (0, 2, 2)
    # the first trial of a new study is the trainer's defaults
    assert first.trials[0]["params"] == tn.iforest_optuna_params(IsolationForestParams())
    assert first.trials[0]["user_attrs"]["enqueued"] == "trainer defaults"

    second = _tune_if(splits, url, 2)
    assert (second.n_trials_before, second.n_trials_run, second.n_trials_total) == (2, 2, 4)
    assert [t["number"] for t in second.trials] == [0, 1, 2, 3]
    assert [t["this_run"] for t in second.trials] == [False, False, True, True]
    # earlier trials are kept as they were, the defaults are not enqueued again
    assert [t["params"] for t in second.trials[:2]] == [t["params"] for t in first.trials]
    assert [t["value"] for t in second.trials[:2]] == [t["value"] for t in first.trials]
    assert second.trials[2]["params"] != first.trials[1]["params"]  # no replay of the random start-up points
    assert second.sampler_seed == tn.sampler_seed(0, tn.iforest_study_name(), 2) == first.sampler_seed + 2
    # the best trial is the best over the whole study
    assert second.best_value == max(t["value"] for t in second.trials if t["state"] == "COMPLETE")
    stored = optuna.load_study(study_name=tn.iforest_study_name(), storage=url)
    assert len(stored.trials) == 4


def _quadratic(trial):
    x = trial.suggest_float("x", -5.0, 5.0)
    return (x - 1.0) ** 2


def _run_quadratic(url, n_trials, seed=0, **kw):
    settings = tn.StudySettings(n_trials=n_trials, seed=seed, n_startup_trials=2, **kw)
    return tn.run_study("quadratic", url, "minimize", _quadratic, settings, objective_name="(x-1)^2", trainer_params=dict)


def test_seeded_sampler_is_reproducible(tmp_path):
    a = _run_quadratic(_url(tmp_path, "a.db"), 6)
    b = _run_quadratic(_url(tmp_path, "b.db"), 6)
    assert [t["params"] for t in a.trials] == [t["params"] for t in b.trials]
    c = _run_quadratic(_url(tmp_path, "c.db"), 6, seed=5)
    assert [t["params"] for t in c.trials] != [t["params"] for t in a.trials]
    # a resumed study: same earlier trials + same seed -> the same new suggestions
    for name in ("d.db", "e.db"):
        _run_quadratic(_url(tmp_path, name), 3)
    d, e = (_run_quadratic(_url(tmp_path, name), 3) for name in ("d.db", "e.db"))
    assert d.sampler_seed == e.sampler_seed == tn.sampler_seed(0, "quadratic", 3)
    assert [t["params"] for t in d.trials] == [t["params"] for t in e.trials]
    assert d.trials[3]["params"] != d.trials[0]["params"]  # the start-up points are not replayed


def test_time_budget_stops_starting_trials(tmp_path):
    def slow(trial):
        time.sleep(0.05)
        return _quadratic(trial)

    settings = tn.StudySettings(n_trials=50, timeout_s=0.01)
    out = tn.run_study("slow", _url(tmp_path), "minimize", slow, settings, objective_name="(x-1)^2", trainer_params=dict)
    assert out.n_trials_run == 1  # checked between trials: the running one finishes


def test_failing_trial_does_not_kill_the_study(tmp_path, udp_windows, monkeypatch):
    calls = []

    def flaky(windows, params, log=None, on_epoch=None):
        calls.append(params)
        if len(calls) == 1:
            raise RuntimeError("injected failure")
        return train_tcn(windows, params, log=log, on_epoch=on_epoch)

    monkeypatch.setattr(tn, "train_tcn", flaky)
    out = tn.tune_tcn(udp_windows, TINY_TCN_BASE, tn.StudySettings(n_trials=3), _url(tmp_path))
    states = [t["state"] for t in out.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]
    assert out.trials[0]["user_attrs"]["error"] == "RuntimeError: injected failure"
    assert out.states == {"FAIL": 1, "COMPLETE": 2}
    assert out.best_trial in (1, 2) and out.best_value > 0
    assert out.trainer_params == tn.tcn_trainer_params(out.best_params)


def test_diverging_trial_fails_and_the_study_goes_on(tmp_path, udp_windows, monkeypatch):
    def diverge(windows, params, log=None, on_epoch=None):
        r = train_tcn(windows, params, log=log, on_epoch=on_epoch)
        if params.hidden_channels == 32:  # the enqueued defaults
            r.val_loss = [float("nan")] * len(r.val_loss)
        return r

    monkeypatch.setattr(tn, "train_tcn", diverge)
    out = tn.tune_tcn(udp_windows, TINY_TCN_BASE, tn.StudySettings(n_trials=2), _url(tmp_path))
    assert out.trials[0]["state"] == "FAIL" and "not finite" in out.trials[0]["user_attrs"]["error"]
    assert out.best_trial == 1


def test_unpromising_trials_are_pruned_by_epoch(tmp_path, udp_windows, monkeypatch):
    scripted = iter([[1.0, 0.9, 0.8, 0.7], [5.0, 4.9, 4.8, 4.7], [0.5, 0.4, 0.3, 0.2]])
    seen_epochs = []

    def fake(windows, params, log=None, on_epoch=None):
        losses = next(scripted)
        for epoch, v in enumerate(losses, start=1):
            seen_epochs.append(epoch)
            on_epoch(epoch, v, v)
        return types.SimpleNamespace(
            best_val_loss=min(losses), best_epoch=len(losses), epochs_run=len(losses), parameter_count=1,
            n_train_windows=1, train_seconds=0.0,
        )

    monkeypatch.setattr(tn, "train_tcn", fake)
    out = tn.tune_tcn(
        udp_windows, TINY_TCN_BASE, tn.StudySettings(n_trials=3), _url(tmp_path), pruner_startup_trials=1, pruner_warmup_epochs=2
    )
    assert [t["state"] for t in out.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    pruned = out.trials[1]
    assert pruned["last_step"] == 2 and pruned["last_intermediate"] == 4.9  # first check at the warm-up epoch
    assert seen_epochs == [1, 2, 3, 4, 1, 2, 1, 2, 3, 4]
    assert out.best_trial == 2 and out.best_value == 0.2


def test_tcn_tuning_uses_train_and_validation_only(splits, udp_windows, tmp_path):
    assert set(udp_windows.X) == {"train", "val"}
    full = tn.prepare_metric_windows(splits["timeseries"], "udp_echo", 10)
    np.testing.assert_array_equal(udp_windows.X["val"], full.X["val"])
    np.testing.assert_array_equal(udp_windows.y["train"], full.y["train"])
    with pytest.raises(ValueError, match="training and validation windows only"):
        tn.tune_tcn(full, TINY_TCN_BASE, tn.StudySettings(n_trials=1), _url(tmp_path))


def test_iforest_tuning_ignores_the_test_split(tmp_path, splits):
    mv = splits["multivariate"]
    junk = {**mv, "test": mv["test"].assign(is_anomaly=True).iloc[:3]}
    a = tn.tune_isolation_forest(mv, splits["incidents"], TINY_IF_BASE, tn.StudySettings(n_trials=1), _url(tmp_path, "a.db"))
    b = tn.tune_isolation_forest(junk, splits["incidents"], TINY_IF_BASE, tn.StudySettings(n_trials=1), _url(tmp_path, "b.db"))
    drop = lambda d: {k: v for k, v in d.items() if k != "train_seconds"}  # noqa: E731
    assert a.best_value == b.best_value and drop(a.best_user_attrs) == drop(b.best_user_attrs)


def test_search_space_maps_onto_the_trainers():
    d = TCNParams()
    point = tn.tcn_optuna_params(d)
    assert point == {"learning_rate": 1e-3, "hidden_channels": 32, "n_layers": 3, "kernel_size": 3, "dropout": 0.0}
    assert tn.tcn_trainer_params(point) == {
        "learning_rate": 1e-3, "hidden_channels": 32, "dilations": [1, 2, 4], "kernel_size": 3, "dropout": 0.0
    }
    assert tn.tcn_optuna_params(TCNParams(dilations=(1, 3))) is None  # outside the space: not enqueued
    p = tn.iforest_optuna_params(IsolationForestParams())
    assert p == {"n_estimators": 200, "max_samples": "auto", "max_features": 1.0, "threshold_strategy": "budget"}
    q = tn.iforest_trainer_params({**p, "max_samples": "512", "threshold_strategy": "quantile", "threshold_quantile": 0.95})
    assert q["max_samples"] == "512" and q["threshold_quantile"] == 0.95


def test_observable_incidents_and_event_f1():
    stream = pd.DataFrame({"endpoint_id": ["a"] * 5, "timestamp_ms": np.arange(5, dtype=np.int64) * 60_000})
    incidents = pd.DataFrame(
        {
            "incident_id": ["i1", "i2", "i3"],
            "endpoint_id": ["a", "a", "b"],
            "start": [60_000, 125_000, 0],  # i2 lies between two rows; i3 is another endpoint's
            "end": [120_001, 170_000, 60_000],
            "type": ["spike"] * 3,
            "outage_start": pd.array([None] * 3, dtype="Int64"),
        }
    )
    obs = tn.observable_incidents(stream, incidents)
    assert list(obs["incident_id"]) == ["i1"]


# ------------------------------------------------------------------ Dagster assets

SIM = {"n_oru": 2, "n_odu": 1, "n_transport": 1, "duration_hours": 8.0, "incidents_per_endpoint_day": 30.0, "seed": 3}
TCN_TUNING = {"n_trials": 2, "max_epochs": 1, "max_train_windows": 300, "batch_size": 128}
IF_TUNING = {"n_trials": 2}
TINY_TCN = {"max_epochs": 1, "max_train_windows": 300, "batch_size": 128}
TINY_IF = {"cv_folds": 2}


def _materialize(root, selection, ops):
    return dg.materialize(
        ALL_ASSETS,
        selection=selection,
        resources=build_resources(str(root)),
        run_config={"ops": ops},
        instance=dg.DagsterInstance.ephemeral(),
    )


def _mats(result):
    return {m.asset_key.to_user_string(): m.materialization.metadata for m in result.get_asset_materialization_events()}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("ocad_tuning")
    data = _materialize(root, ["*timeseries_splits", "*multivariate_splits"], {"raw_metrics": {"config": {"simulator": SIM}}})
    assert data.success
    result = _materialize(
        root,
        ["tcn_hyperparameters", "isolation_forest_hyperparameters"],
        {"tcn_hyperparameters": {"config": TCN_TUNING}, "isolation_forest_hyperparameters": {"config": IF_TUNING}},
    )
    return root, result


def test_tuning_assets_write_results_and_metadata(tuned):
    root, result = tuned
    assert result.success
    assert (root / "tuning" / "optuna_tcn.db").is_file() and (root / "tuning" / "optuna_isolation_forest.db").is_file()
    doc = json.loads((root / "tuning" / "tcn_hyperparameters.json").read_text())
    assert set(doc["studies"]) == {"udp_echo", "ecpri", "lbm"}
    for metric, s in doc["studies"].items():
        assert s["name"] == f"tcn_{metric}_v1" and s["n_trials_total"] == 2 and s["direction"] == "minimize"
        assert set(s["trainer_params"]) == {"learning_rate", "hidden_channels", "dilations", "kernel_size", "dropout"}
    assert doc["dagster_run_id"] == result.run_id and len(doc["data_version"]) == 64
    mats = _mats(result)
    for asset in ("tcn_hyperparameters", "isolation_forest_hyperparameters"):
        md = mats[asset]
        for key in ("best_params", "best_values", "top_trials", "optimization_history", "studies", "search_space"):
            assert key in md, (asset, key)
        assert "data:image/png;base64" in md["optimization_history"].value
        assert "| trial | value |" in md["top_trials"].value
    assert mats["isolation_forest_hyperparameters"]["best_params"].value["isolation_forest"]["n_estimators"] >= 50


def test_trainers_use_the_tuned_params_when_configured(tuned):
    root, _ = tuned
    result = _materialize(
        root,
        ["tcn_models", "isolation_forest_model"],
        {
            "tcn_models": {"config": {**TINY_TCN, "use_tuned_params": True}},
            "isolation_forest_model": {"config": {**TINY_IF, "use_tuned_params": True}},
        },
    )
    assert result.success
    tcn_doc = json.loads((root / "tuning" / "tcn_hyperparameters.json").read_text())
    for metric in ("udp_echo", "ecpri", "lbm"):
        meta = json.loads((root / "models" / f"tcn_{metric}" / "1.0.0" / "metadata.json").read_text())
        study = tcn_doc["studies"][metric]
        assert meta["hyperparameters_source"] == "optuna"
        for k, v in study["trainer_params"].items():
            assert meta["config"][k] == v, (metric, k)
        assert meta["config"]["max_epochs"] == 1  # untuned settings stay as configured
        t = meta["tuning"]
        assert t["study_name"] == study["name"] and t["best_trial"] == study["best_trial"]
        assert t["best_value"] == study["best_value"] and t["n_trials"] == 2 and t["params"] == study["trainer_params"]
        assert t["storage"].startswith("sqlite:///") and t["same_data_version"] is True
    if_doc = json.loads((root / "tuning" / "isolation_forest_hyperparameters.json").read_text())
    meta = json.loads((root / "models" / "isolation_forest" / "1.0.0" / "metadata.json").read_text())
    best = if_doc["studies"]["isolation_forest"]["trainer_params"]
    assert meta["hyperparameters_source"] == "optuna" and meta["tuning"]["params"] == best
    assert meta["config"]["n_estimators"] == best["n_estimators"]
    assert str(meta["config"]["max_samples"]) == best["max_samples"]
    assert meta["config"]["threshold_strategy"] == best["threshold_strategy"]
    assert meta["config"]["cv_folds"] == 2
    mats = _mats(result)
    assert mats["tcn_models"]["hyperparameters_source"].value == "optuna"

    # without the flag: defaults, recorded as such
    again = _materialize(root, ["isolation_forest_model"], {"isolation_forest_model": {"config": TINY_IF}})
    assert again.success
    meta = json.loads((root / "models" / "isolation_forest" / "1.1.0" / "metadata.json").read_text())
    assert meta["hyperparameters_source"] == "defaults" and "tuning" not in meta
    assert meta["config"]["n_estimators"] == 200


def test_rematerializing_resumes_the_studies(tuned):
    root, _ = tuned
    result = _materialize(root, ["isolation_forest_hyperparameters"], {"isolation_forest_hyperparameters": {"config": {"n_trials": 1}}})
    assert result.success
    md = _mats(result)["isolation_forest_hyperparameters"]
    s = md["studies"].value["isolation_forest"]
    assert (s["n_trials_before"], s["n_trials_run"], s["n_trials_total"]) >= (2, 1, 3)
    assert s["n_trials_total"] == s["n_trials_before"] + 1
    assert "earlier" in md["top_trials"].value or "this" in md["top_trials"].value


def test_use_tuned_params_without_a_tuning_run_is_a_clear_error(tmp_path):
    ops = {"raw_metrics": {"config": {"simulator": SIM}}, "tcn_models": {"config": {**TINY_TCN, "use_tuned_params": True}}}
    with pytest.raises(Exception, match=r"(?s)tcn_hyperparameters has not been materialized.*dg launch --assets tcn_hyperparameters"):
        _materialize(tmp_path, ["*tcn_models"], ops)
    assert not (tmp_path / "models" / "tcn_udp_echo").exists()


def test_tuning_group_is_opt_in():
    graph = defs.resolve_asset_graph()
    tuning = {k.to_user_string() for k in dg.AssetSelection.groups("tuning").resolve(graph)}
    assert tuning == {"tcn_hyperparameters", "isolation_forest_hyperparameters"}
    main = {k.to_user_string() for k in defs.resolve_job_def("ocad_pipeline_job").asset_layer.selected_asset_keys}
    weekly = {k.to_user_string() for k in defs.resolve_job_def("weekly_retraining_job").asset_layer.selected_asset_keys}
    assert {"tcn_models", "isolation_forest_model"} <= main and not (tuning & main)
    assert "tcn_models" in weekly and not (tuning & weekly)
    with_tuning = {k.to_user_string() for k in jobs.retrain_selection(include_tuning=True).resolve(graph)}
    assert tuning <= with_tuning
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    for key in tuning:
        assert specs[key].group_name == "tuning" and len(specs[key].description) > 40
    # no asset depends on the tuning group: training never requires a tuning run
    assert not any(d.asset_key.to_user_string() in tuning for s in specs.values() for d in s.deps)
