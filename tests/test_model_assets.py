"""The ``models`` assets end to end: tiny simulator + tiny training configs in a temporary dir."""

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from ocad_detectors.iforest import NumpyIsolationForest
from ocad_detectors.registry import ModelRegistry
from ocad_detectors.tcn import NumpyTCN
from ocad_pipeline.definitions import ALL_ASSETS, build_resources, defs

SIM = {"n_oru": 2, "n_odu": 1, "n_transport": 1, "duration_hours": 8.0, "incidents_per_endpoint_day": 30.0, "seed": 3}
TINY_TCN = {"hidden_channels": 4, "dilations": [1, 2], "max_epochs": 2, "max_train_windows": 600, "batch_size": 128}
TINY_IF = {"n_estimators": 20, "cv_folds": 3}
RUN_CONFIG = {
    "ops": {
        "raw_metrics": {"config": {"simulator": SIM}},
        "tcn_models": {"config": TINY_TCN},
        "isolation_forest_model": {"config": TINY_IF},
    }
}
MODELS_RUN = {"ops": {k: v for k, v in RUN_CONFIG["ops"].items() if k != "raw_metrics"}}
TCN_NAMES = ("tcn_udp_echo", "tcn_ecpri", "tcn_lbm")


def _materialize(tmp_path, selection, run_config, **kw):
    return dg.materialize(
        ALL_ASSETS,
        selection=selection,
        resources=build_resources(str(tmp_path)),
        run_config=run_config,
        instance=dg.DagsterInstance.ephemeral(),
        **kw,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ocad")
    result = _materialize(root, ["*tcn_models", "*isolation_forest_model"], RUN_CONFIG)
    return root, result


def test_models_materialize_from_scratch(trained):
    root, result = trained
    assert result.success
    reg = ModelRegistry(root / "models")
    assert set(reg.list_models()) == {*TCN_NAMES, "isolation_forest"}
    for name in (*TCN_NAMES, "isolation_forest"):
        # new versions are candidates: the quality gate (performance_reports) decides promotion
        assert reg.production_version(name) is None
        assert [v.status for v in reg.list_versions(name)] == ["candidate"]
        vdir = root / "models" / name / "1.0.0"
        meta = json.loads((vdir / "metadata.json").read_text())
        assert meta["dagster_run_id"] == result.run_id
        assert len(meta["data_version"]) == 64 and meta["code_version"]
        for fname, spec in meta["files"].items():
            assert (vdir / fname).stat().st_size == spec["size"] and len(spec["sha256"]) == 64


def test_materialization_metadata(trained):
    _, result = trained
    mats = {m.asset_key.to_user_string(): m.materialization.metadata for m in result.get_asset_materialization_events()}
    tcn = mats["tcn_models"]
    assert "learning_curves" in tcn and "data:image/png;base64" in tcn["learning_curves"].value
    table = tcn["forecast_metrics"].value
    for word in ("udp_echo", "ecpri", "lbm", "tcn", "last_value", "window_mean", "R²", "MSE", "MAE", "RMSE"):
        assert word in table
    for metric in ("udp_echo", "ecpri", "lbm"):
        for key in ("version", "registry_path", "file_size_bytes", "parameter_count", "best_epoch"):
            assert f"{metric}/{key}" in tcn, (metric, key)
        assert tcn[f"{metric}/version"].value == "1.0.0"
    forest = mats["isolation_forest_model"]
    for key in ("version", "registry_path", "file_size_bytes", "groups", "cross_validation", "thresholds"):
        assert key in forest, key
    assert "mean ± std" in forest["cross_validation"].value


def test_registered_models_load_without_torch_or_sklearn(trained):
    root, _ = trained
    reg = ModelRegistry(root / "models")
    ts = pd.read_parquet(root / "processed" / "timeseries_test.parquet")
    for metric in ("udp_echo", "ecpri", "lbm"):
        v = reg.load_version(f"tcn_{metric}", "1.0.0")
        net = NumpyTCN(v.arrays("weights.safetensors"), v.metadata["architecture"])
        seq = np.stack(ts.loc[ts["metric_type"] == metric, "sequence"].to_numpy())[:50]
        seq = seq[np.isfinite(seq).all(axis=1)]
        sc = v.metadata["scaler"]
        assert np.isfinite(net.predict((seq - sc["mean"]) / sc["std"])).all()
    v = reg.load_version("isolation_forest", "1.0.0")
    arrays = v.arrays("forest.safetensors")
    for g, gm in v.metadata["groups"].items():
        forest = NumpyIsolationForest({k[len(g) + 1 :]: a for k, a in arrays.items() if k.startswith(g + "/")})
        assert forest.n_features == len(gm["features"])


def test_same_inputs_reuse_the_version_and_new_inputs_add_a_candidate(trained):
    root, _ = trained
    reg = ModelRegistry(root / "models")
    before = {n: reg.get_metadata(n, "1.0.0") for n in (*TCN_NAMES, "isolation_forest")}
    # same data hash, config and code: no new version, and the run's metadata says so
    result = _materialize(root, ["tcn_models", "isolation_forest_model"], MODELS_RUN)
    assert result.success
    for name in (*TCN_NAMES, "isolation_forest"):
        assert [v.version for v in reg.list_versions(name)] == ["1.0.0"], name
        assert len(before[name]["training_fingerprint"]) == 64
    mats = {m.asset_key.to_user_string(): m.materialization.metadata for m in result.get_asset_materialization_events()}
    assert mats["isolation_forest_model"]["reused_existing_version"].value is True
    for metric in ("udp_echo", "ecpri", "lbm"):
        assert mats["tcn_models"][f"{metric}/reused_existing_version"].value is True
        assert mats["tcn_models"][f"{metric}/version"].value == "1.0.0"
    # another seed is another input: a new candidate version next to the old one
    reseeded = {"ops": {"tcn_models": {"config": {**TINY_TCN, "seed": 1}}, "isolation_forest_model": {"config": {**TINY_IF, "seed": 1}}}}
    result = _materialize(root, ["tcn_models", "isolation_forest_model"], reseeded)
    assert result.success
    for name in (*TCN_NAMES, "isolation_forest"):
        versions = {v.version: v.status for v in reg.list_versions(name)}
        assert versions == {"1.0.0": "candidate", "1.1.0": "candidate"}  # promotion happens after the gate
        new = reg.get_metadata(name, "1.1.0")
        assert new["training_fingerprint"] != before[name]["training_fingerprint"]
        assert new["data_version"] == before[name]["data_version"]
    mats = {m.asset_key.to_user_string(): m.materialization.metadata for m in result.get_asset_materialization_events()}
    assert mats["tcn_models"]["udp_echo/reused_existing_version"].value is False


def test_same_config_gives_byte_identical_models(trained):
    root, _ = trained
    # reuse switched off: the model is trained again on the same data and comes out identical
    forced = {"ops": {"tcn_models": {"config": {**TINY_TCN, "reuse_same_inputs": False}}}}
    result = _materialize(root, ["tcn_models"], forced)
    assert result.success
    reg = ModelRegistry(root / "models")
    for name in TCN_NAMES:
        newest = max((v.version for v in reg.list_versions(name)), key=lambda v: tuple(map(int, v.split("."))))
        a, b = reg.load_version(name, "1.0.0"), reg.load_version(name, newest)
        assert newest != "1.0.0"
        assert a.files["weights.safetensors"] == b.files["weights.safetensors"]
        assert a.metadata["data_version"] == b.metadata["data_version"]
        assert a.metadata["training_fingerprint"] == b.metadata["training_fingerprint"]
        assert a.metadata["dagster_run_id"] != b.metadata["dagster_run_id"]


def test_models_alone_explain_how_to_materialize_upstream(tmp_path):
    with pytest.raises(Exception, match=r"(?s)timeseries_splits.*has not been materialized.*dg launch --assets"):
        _materialize(tmp_path, "tcn_models", {"ops": {"tcn_models": {"config": TINY_TCN}}})
    with pytest.raises(Exception, match=r"(?s)has not been materialized.*dg launch --assets"):
        _materialize(tmp_path, "isolation_forest_model", {"ops": {"isolation_forest_model": {"config": TINY_IF}}})
    assert not (tmp_path / "models").exists()


def test_sequence_length_mismatch_is_a_clear_error(trained):
    root, _ = trained
    bad = {"ops": {"tcn_models": {"config": {**TINY_TCN, "sequence_length": 12}}}}
    with pytest.raises(Exception, match=r"sequence_length=12.*hold 10 values"):
        _materialize(root, "tcn_models", bad)


def test_model_assets_are_grouped_and_described():
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    for key in ("tcn_models", "isolation_forest_model"):
        assert specs[key].group_name == "models"
        assert specs[key].description and len(specs[key].description) > 40
    deps = {d.asset_key.to_user_string() for d in specs["tcn_models"].deps}
    assert deps == {"timeseries_splits"}
    deps = {d.asset_key.to_user_string() for d in specs["isolation_forest_model"].deps}
    # raw_metrics: the full-rate healthy validation samples of the alert-budget calibration
    assert deps == {"multivariate_splits", "reference_stats", "raw_metrics"}
