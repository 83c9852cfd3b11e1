"""The artifact contract (issue 12): typed metadata with a format version, write / read / verify
through the registry, clear refusals naming the field, registries written before the contract
keep loading, and the numpy fixture fitters the detector tests are built on (no torch)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_fixtures import _last_hidden, fit_forest_numpy, fit_tcn_numpy

from ocad_detectors.artifacts import (
    FORMAT_KEY,
    FORMAT_VERSION,
    IFOREST_FILE,
    IFOREST_MODEL_NAME,
    MODEL_NAMES,
    TCN_MODEL_NAMES,
    TCN_WEIGHTS_FILE,
    ArtifactError,
    IFGroupSpec,
    IFMetadata,
    IForestArtifact,
    ResidualScale,
    Scaler,
    TCNArchitecture,
    TCNArtifact,
    TCNMetadata,
    model_kind,
    parse_metadata,
    read_artifact,
    tcn_metric,
    verify_version,
)
from ocad_detectors.iforest import NumpyIsolationForest
from ocad_detectors.modelset import ModelLoader
from ocad_detectors.pipeline import DetectionPipeline
from ocad_detectors.registry import METADATA_FILE, ModelRegistry, RegistryError

V = "1.0.0"


@pytest.fixture(scope="module")
def legacy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry in the layout from before the contract: the metadata dicts spelled out as the
    trainers built them then (no ``format_version``), written through the plain registry."""
    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    try:
        import make_legacy_registry
    finally:
        sys.path.pop(0)
    root = tmp_path_factory.mktemp("legacy") / "registry"
    make_legacy_registry.main(str(root))
    return root


@pytest.fixture()
def legacy(legacy_root: Path, tmp_path: Path) -> Path:
    """A writable copy of that registry."""
    return Path(shutil.copytree(legacy_root, tmp_path / "legacy"))


def _manifest(root: Path, name: str, version: str = V) -> dict[str, Any]:
    return json.loads((root / name / version / METADATA_FILE).read_text())


# ----------------------------------------------------------------------------- names


def test_names_and_kinds() -> None:
    assert MODEL_NAMES == ("tcn_udp_echo", "tcn_ecpri", "tcn_lbm", "isolation_forest")
    assert TCN_MODEL_NAMES["lbm"] == "tcn_lbm" and tcn_metric("tcn_lbm") == "lbm"
    assert tcn_metric("tcn_nope") is None and tcn_metric("lbm") is None and tcn_metric(IFOREST_MODEL_NAME) is None
    assert model_kind("tcn_ecpri").value == "tcn" and model_kind("isolation_forest").value == "isolation_forest"
    assert model_kind("something_else") is None


# ----------------------------------------------------------------------------- backward compatibility


def test_registry_written_before_the_contract_loads(legacy: Path) -> None:
    """Metadata in the pre-contract layout (no format_version) loads, scores and promotes."""
    for name in MODEL_NAMES:
        assert FORMAT_KEY not in _manifest(legacy, name)
    det = DetectionPipeline(model_dir=legacy)
    assert det.model_versions == {name: V for name in MODEL_NAMES} and det.model_errors == []
    r = det.process({"timestamp_ms": 1767225600000, "endpoint_id": "o-ru-001", "udp_echo_rtt_ms": 1.0})
    assert r.status == "ok"
    reg = ModelRegistry(legacy)
    tcn = TCNArtifact.read(reg, "ecpri")
    assert tcn.metadata.format_version == 0 and tcn.metadata.signal == "ecpri_ow_us"
    assert tcn.metadata.residual_scale.calibration is not None
    assert tcn.metadata.residual_scale.calibration.per_endpoint == {"o-ru-001": 5.0}
    assert tcn.metadata.info["code_version"] == "be5d150"
    forest = IForestArtifact.read(reg)
    assert forest.metadata.format_version == 0 and forest.metadata.groups["udp_echo"].endpoint_thresholds == {"o-ru-001": 0.62}
    # what the detectors serve is what the manifest says
    models = ModelLoader(legacy, legacy).load()
    assert models.tcn["ecpri"].threshold_pooled == 4.5 and models.tcn["udp_echo"].threshold_pooled is None
    assert models.iforest is not None and models.iforest.groups["udp_echo"].threshold_for("o-ru-001") == 0.62
    # promotion runs the same checks: a legacy version can still be promoted / rolled back to
    reg.promote("tcn_lbm", V)


def test_legacy_manifest_rewritten_in_the_current_format_keeps_every_value(legacy: Path, tmp_path: Path) -> None:
    reg, new = ModelRegistry(legacy), ModelRegistry(tmp_path / "new")
    for name in MODEL_NAMES:
        lv = reg.load_version(name)
        art = read_artifact(lv)
        assert art is not None
        info = art.write(new)
        old = {k: v for k, v in lv.metadata.items() if k not in ("model_name", "version", "created_at", "files")}
        written = _manifest(new.root, name, info.version)
        assert written[FORMAT_KEY] == FORMAT_VERSION
        for key, value in old.items():  # nothing lost or changed; only defaults added
            if key == "groups":
                for g, spec in value.items():
                    assert spec.items() <= written["groups"][g].items()
            elif key == "reference_stats":
                assert sorted(value, key=json.dumps) == sorted(written[key], key=json.dumps)
            else:
                assert written[key] == value, key
        # the weights are byte-identical arrays
        again = read_artifact(new.load_version(name, info.version))
        assert again is not None and again.metadata == art.metadata.__class__.from_dict(written, name)
        assert again.files() == art.files()


# ----------------------------------------------------------------------------- write / read / verify


def _tcn(metric: str = "udp_echo", seed: int = 0, **info: Any) -> TCNArtifact:
    arch = TCNArchitecture(10, 4, (1, 2), 3)
    rng = np.random.default_rng(seed)
    weights = {n: rng.normal(scale=0.1, size=s).astype(np.float32) for n, s in arch.weight_shapes().items()}
    meta = TCNMetadata(metric, arch, Scaler(1.0, 0.5), ResidualScale(0.2, {"o-ru-001": 0.3}), info=info)
    return TCNArtifact(meta, weights)


def test_tcn_round_trip_through_the_registry(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    art = _tcn("lbm", data_version="abc")
    info = art.write(reg)
    assert info.model_name == "tcn_lbm" and (info.path / TCN_WEIGHTS_FILE).is_file()
    assert set(_manifest(reg.root, "tcn_lbm")["files"]) == {TCN_WEIGHTS_FILE}
    back = TCNArtifact.read(reg, "lbm")
    assert back.metadata == art.metadata and back.metadata.format_version == FORMAT_VERSION
    assert back.weights.keys() == art.weights.keys()
    assert all(np.array_equal(back.weights[k], art.weights[k]) for k in art.weights)
    x = np.random.default_rng(1).normal(size=(5, 10))
    np.testing.assert_array_equal(back.build().predict(x), art.build().predict(x))
    assert isinstance(verify_version(reg, "tcn_lbm"), TCNArtifact)


def test_forest_round_trip_through_the_registry(legacy: Path, tmp_path: Path) -> None:
    src = IForestArtifact.read(ModelRegistry(legacy))
    reg = ModelRegistry(tmp_path / "models")
    src.write(reg)
    back = IForestArtifact.read(reg)
    assert src.metadata.format_version == 0 and back.metadata.format_version == FORMAT_VERSION
    assert back.metadata == dataclasses.replace(src.metadata, format_version=FORMAT_VERSION)
    assert set(back.forests) == {"udp_echo"}
    assert set(_manifest(reg.root, IFOREST_MODEL_NAME)["files"]) == {IFOREST_FILE}
    x = np.random.default_rng(2).normal(size=(7, 6))
    np.testing.assert_array_equal(back.build()["udp_echo"].score_samples(x), src.build()["udp_echo"].score_samples(x))


def test_write_refuses_what_the_loader_would_refuse(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    art = _tcn()
    bad = TCNArtifact(art.metadata, {**art.weights, "head.bias": np.array([np.nan], dtype=np.float32)})
    with pytest.raises(ValueError, match="contains NaN"):
        bad.write(reg)
    missing = TCNArtifact(art.metadata, {k: v for k, v in art.weights.items() if k != "head.weight"})
    with pytest.raises(ValueError, match="missing tensors"):
        missing.write(reg)
    assert not (reg.root / "tcn_udp_echo" / V).exists()  # nothing was registered


def test_a_newer_format_is_refused_by_loader_and_promotion(legacy: Path) -> None:
    reg = ModelRegistry(legacy)
    lv = reg.load_version("tcn_lbm")
    meta = {k: v for k, v in lv.metadata.items() if k not in ("model_name", "version", "created_at", "files")}
    info = reg.write_version("tcn_lbm", lv.files, {**meta, FORMAT_KEY: FORMAT_VERSION + 1})
    with pytest.raises(RegistryError, match=f"format_version {FORMAT_VERSION + 1} is newer than this code reads"):
        reg.promote("tcn_lbm", info.version)
    det = DetectionPipeline(model_dir=legacy, versions={"tcn_lbm": info.version})
    assert det.model_versions["tcn_lbm"] is None
    assert "newer than this code reads" in det.model_errors[0]
    assert det.model_versions["tcn_ecpri"] == V  # the others go on


# ----------------------------------------------------------------------------- refusals name the field


def _legacy_meta(root: Path, name: str) -> dict[str, Any]:
    return _manifest(root, name)


def _edit(meta: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    d = meta
    for k in path[:-1]:
        d = d[k]
    if value is _DELETE:
        del d[path[-1]]
    else:
        d[path[-1]] = value
    return meta


_DELETE = object()

TCN_CASES = [
    (("scaler",), _DELETE, "metadata field scaler is missing"),
    (("scaler", "std"), _DELETE, "metadata field scaler.std is missing"),
    (("scaler", "std"), 0.0, "scaler.std must be a finite positive number"),
    (("scaler", "mean"), "1.0", "scaler.mean must be a number"),
    (("scaler",), [1, 2], "scaler must be an object"),
    (("architecture", "seq_len"), 1e9, r"architecture\.seq_len must be an integer in \[1, 4096\]"),
    (("architecture", "dilations"), [], r"architecture\.dilations must be"),
    (("residual_scale", "pooled"), -1.0, "residual_scale.pooled must be a finite positive number"),
    (("residual_scale", "per_endpoint", "o-ru-001"), float("inf"), r"residual_scale\.per_endpoint\[o-ru-001\] must be a finite positive"),
    (("residual_scale", "calibration"), {"pooled": 0}, "residual_scale.calibration.pooled must be a finite positive"),
    (("kind",), "isolation_forest", "kind is 'isolation_forest', expected 'tcn'"),
    (("metric_type",), "lbm", "metadata metric_type 'lbm' does not match the model name 'tcn_udp_echo'"),
    (("metric_type",), "wifi", "metric_type 'wifi' is not one of"),
    (("signal",), "lbm_rtt_ms", "signal 'lbm_rtt_ms' does not belong to metric type 'udp_echo'"),
    ((FORMAT_KEY,), "1", "format_version must be a non-negative integer"),
    ((FORMAT_KEY,), True, "format_version must be a non-negative integer"),
    ((FORMAT_KEY,), 99, "format_version 99 is newer than this code reads"),
]


@pytest.mark.parametrize("path,value,pattern", TCN_CASES, ids=[f"{'.'.join(map(str, c[0]))}={c[1] if c[1] is not _DELETE else 'deleted'}" for c in TCN_CASES])
def test_bad_tcn_metadata_names_the_field(legacy_root: Path, path: tuple[Any, ...], value: Any, pattern: str) -> None:
    meta = _edit(_legacy_meta(legacy_root, "tcn_udp_echo"), path, value)
    with pytest.raises(ArtifactError, match=pattern):
        TCNMetadata.from_dict(meta, "tcn_udp_echo")


IF_CASES = [
    (("groups",), {}, "no capability groups"),
    (("groups", "udp_echo", "threshold"), float("nan"), "group 'udp_echo': threshold must be finite"),
    (("groups", "udp_echo", "threshold"), _DELETE, "metadata field groups.udp_echo.threshold is missing"),
    (("groups", "udp_echo", "endpoint_thresholds", "o-ru-001"), "high", r"group 'udp_echo': endpoint_thresholds\[o-ru-001\] must be a number"),
    (("groups", "udp_echo", "features"), ["udp_echo_p95_z"], "group 'udp_echo': features .* differ from the feature engine's"),
    (("groups", "udp_echo", "scaler", "std"), [1.0] * 5, "group 'udp_echo': scaler needs 6 means and stds"),
    (("groups", "udp_echo", "scaler", "std"), [0.0] * 6, "group 'udp_echo': scaler must be finite with std > 0"),
    (("reference_stats", 0, "std"), 0.0, "reference_stats: ValueError: invalid reference statistics"),
    (("reference_stats", 0, "signal"), _DELETE, "reference_stats: KeyError"),
    (("reference_stats",), {}, "reference_stats must be a list"),
    (("feature_config",), _DELETE, "metadata field feature_config is missing"),
    (("kind",), "tcn", "kind is 'tcn', expected 'isolation_forest'"),
]


@pytest.mark.parametrize("path,value,pattern", IF_CASES, ids=[f"{'.'.join(map(str, c[0]))}" for c in IF_CASES])
def test_bad_forest_metadata_names_the_field(legacy_root: Path, path: tuple[Any, ...], value: Any, pattern: str) -> None:
    meta = _edit(_legacy_meta(legacy_root, IFOREST_MODEL_NAME), path, value)
    with pytest.raises(ArtifactError, match=pattern):
        IFMetadata.from_dict(meta, IFOREST_MODEL_NAME)


def test_typed_fields_cannot_be_smuggled_through_info() -> None:
    art = _tcn()
    with pytest.raises(ArtifactError, match=r"info keys \['scaler'\] are contract or registry fields"):
        TCNMetadata("udp_echo", art.metadata.architecture, art.metadata.scaler, art.metadata.residual_scale, info={"scaler": {}})
    with pytest.raises(ArtifactError, match=r"info keys \['version'\]"):
        _tcn(version="9.9.9")


def test_parse_metadata_dispatches_by_name(legacy_root: Path) -> None:
    assert isinstance(parse_metadata("tcn_lbm", _legacy_meta(legacy_root, "tcn_lbm")), TCNMetadata)
    assert isinstance(parse_metadata(IFOREST_MODEL_NAME, _legacy_meta(legacy_root, IFOREST_MODEL_NAME)), IFMetadata)
    assert parse_metadata("not_a_model", {}) is None


# ----------------------------------------------------------------------------- numpy fixture fitters


def test_fixture_tcn_fitter_matches_an_independent_forward_pass_and_beats_last_value() -> None:
    """The random-feature TCN: NumpyTCN (the runtime) and the fixture's direct transcription of
    TCNForecaster.forward agree, and the fitted head forecasts an AR(1) better than last value."""
    rng = np.random.default_rng(0)
    n = 4000
    s = np.zeros(n + 11)
    for t in range(1, len(s)):
        s[t] = 0.5 * s[t - 1] + rng.normal()
    win = np.lib.stride_tricks.sliding_window_view(s, 11)
    X, y = win[:, :10], win[:, 10]
    arch = TCNArchitecture(10, 8, (1, 2), 3)
    w, original = fit_tcn_numpy(X, y, arch, epochs=0, seed=3)
    assert original is None
    net = TCNArtifact(TCNMetadata("lbm", arch, Scaler(0.0, 1.0), ResidualScale(1.0)), w).build()
    direct = _last_hidden(w, arch, X) @ w["head.weight"][0].astype(np.float64) + float(w["head.bias"][0]) + X[:, -1]
    np.testing.assert_allclose(net.predict(X), direct, rtol=0, atol=1e-9)
    mse_tcn = float(np.mean((net.predict(X) - y) ** 2))
    mse_last = float(np.mean((X[:, -1] - y) ** 2))
    # AR(1) with phi 0.5 and unit noise: the best forecast has MSE 1, last value 4/3
    assert mse_tcn < 1.05 and mse_last > 1.25, (mse_tcn, mse_last)


def test_fixture_forest_fitter_isolates_outliers() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 4))
    arrays, _ = fit_forest_numpy(X, n_trees=50, max_samples=128, seed=4)
    forest = NumpyIsolationForest(arrays)  # structure checks of the runtime pass
    assert forest.n_trees == 50 and forest.n_features == 4 and forest.max_samples == 128
    inliers = -forest.score_samples(rng.normal(size=(500, 4)))
    outliers = -forest.score_samples(rng.normal(size=(50, 4)) + 6.0)
    assert outliers.min() > np.quantile(inliers, 0.99)
    # the score of a typical point sits near 0.5 (path length ~ c(max_samples)), as in the paper
    assert 0.35 < float(np.median(inliers)) < 0.55
    # seeded: the same forest twice
    again, _ = fit_forest_numpy(X, n_trees=50, max_samples=128, seed=4)
    assert all(np.array_equal(arrays[k], again[k], equal_nan=True) for k in arrays)


def test_fixtures_build_without_torch_or_sklearn(tmp_path: Path) -> None:
    """The detector tests' registry is fitted in numpy: neither framework is imported."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from model_fixtures import build_model_registry\n"
        "from ocad_pipeline.simulator import SimulatorConfig\n"
        "b = build_model_registry(sys.argv[2], SimulatorConfig(n_oru=2, n_odu=1, n_transport=1, duration_hours=2.0, seed=3, profile='clean'))\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sklearn'})\n"
        "print(sorted(b.versions), bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path / "m")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == f"{sorted(MODEL_NAMES)} []"
    det = DetectionPipeline(model_dir=tmp_path / "m")
    assert all(v == V for v in det.model_versions.values()) and det.model_errors == []
    for name in MODEL_NAMES:
        assert _manifest(tmp_path / "m", name)[FORMAT_KEY] == FORMAT_VERSION


def test_group_spec_capabilities_and_dataclass_equality(legacy_root: Path) -> None:
    meta = IFMetadata.from_dict(_legacy_meta(legacy_root, IFOREST_MODEL_NAME))
    spec = meta.groups["udp_echo"]
    assert spec.capabilities == frozenset({"udp_echo"}) and math.isclose(spec.threshold, 0.6)
    assert IFGroupSpec.from_dict("udp_echo", spec.to_dict()) == spec
