"""Model integrity corpus (issue 14): every way a registry can be damaged or tampered with is
refused with one message naming the file, promotion refuses what loading refuses, detection
goes on with the sound models, reloads are all-or-nothing, signatures catch edited manifests,
and kill -9 during promotion leaves a loadable registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import cached_model_registry, copy_registry

from ocad_detectors.config import DetectionConfig, TrustConfig
from ocad_detectors.modelset import IFOREST_MODEL_NAME
from ocad_detectors.pipeline import DetectionPipeline
from ocad_detectors.registry import (
    INDEX_FILE,
    METADATA_FILE,
    ModelIntegrityError,
    ModelRegistry,
    RegistryError,
    generate_signing_key,
    load_arrays,
    save_arrays,
)
from ocad_detectors.registry_cli import main as models_main

V = "1.0.0"


@pytest.fixture(scope="module")
def built():
    return cached_model_registry()


# ----------------------------------------------------------------------------- helpers


def _meta_path(root: Path, name: str) -> Path:
    return root / name / V / METADATA_FILE


def _index(root: Path, name: str) -> dict:
    return json.loads((root / name / INDEX_FILE).read_text())


def _write_index(root: Path, name: str, index: object) -> None:
    (root / name / INDEX_FILE).write_text(json.dumps(index))


def _edit_meta(root: Path, name: str, fn: Callable[[dict], None], rehash: bool = False) -> None:
    """Change metadata.json; ``rehash`` also fixes the hash in the index (someone with write
    access to the registry, or a buggy writer: the hash no longer protects, validation must)."""
    meta = json.loads(_meta_path(root, name).read_text())
    fn(meta)
    raw = json.dumps(meta, indent=2, sort_keys=True).encode()
    _meta_path(root, name).write_bytes(raw)
    if rehash:
        index = _index(root, name)
        index["versions"][0]["metadata_sha256"] = hashlib.sha256(raw).hexdigest()
        _write_index(root, name, index)


def _replace_file(root: Path, name: str, filename: str, data: bytes) -> None:
    """New bytes for a model file with sha256/size and the manifest hash fixed up."""
    (root / name / V / filename).write_bytes(data)

    def fix(meta: dict) -> None:
        meta["files"][filename] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    _edit_meta(root, name, fix, rehash=True)


def _edit_arrays(root: Path, name: str, fn: Callable[[dict], None]) -> None:
    filename = "forest.safetensors" if name == IFOREST_MODEL_NAME else "weights.safetensors"
    arrays = load_arrays((root / name / V / filename).read_bytes())
    fn(arrays)
    _replace_file(root, name, filename, save_arrays(arrays))


def _weights(root: Path, name: str = "tcn_lbm") -> Path:
    return root / name / V / "weights.safetensors"


def _raise_if_thresholds(m: dict) -> None:
    for g in m["groups"].values():
        g["threshold"] += 0.3


def _shift_reference(m: dict) -> None:
    for r in m["reference_stats"]:
        r["mean"] += 50 * r["std"]


def _set(path: tuple, value: object) -> Callable[[dict], None]:
    def fn(m: dict) -> None:
        d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return fn


def _first_group(fn: Callable[[dict, str], None]) -> Callable[[dict], None]:
    def outer(arrays: dict) -> None:
        g = sorted({k.split("/")[0] for k in arrays})[0]
        fn(arrays, g)

    return outer


def _child_out_of_range(arrays: dict, g: str) -> None:
    left = arrays[f"{g}/left"].copy()
    left[0] = 10**6
    arrays[f"{g}/left"] = left


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _symlink_version(root: Path, name: str) -> None:
    outside = root.parent / f"outside-{name}"
    os.rename(root / name / V, outside)
    os.symlink(outside, root / name / V)


def _symlink_index(root: Path, name: str) -> None:
    outside = root.parent / f"outside-index-{name}.json"
    os.rename(root / name / INDEX_FILE, outside)
    os.symlink(outside, root / name / INDEX_FILE)


def _symlink_weights(root: Path, name: str, target: str | None = None) -> None:
    w = _weights(root, name)
    if target is None:
        target = str(root.parent / f"outside-{name}.safetensors")
        os.rename(w, target)
    else:
        w.unlink()
    os.symlink(target, w)


def _fifo_weights(root: Path, name: str) -> None:
    w = _weights(root, name)
    w.unlink()
    os.mkfifo(w)


def _header_2_62(root: Path, name: str) -> None:
    data = (2**62).to_bytes(8, "little") + b"{}"
    _replace_file(root, name, "weights.safetensors", data)


def _add_version(root: Path, name: str, fn: Callable[[dict], None]) -> None:
    index = _index(root, name)
    fn(index)
    _write_index(root, name, index)


# (id, model, mutation, regex of the refusal); every mutation targets ONE model, the others
# must keep loading
SCENARIOS: list[tuple[str, str, Callable[[Path, str], None], str]] = [
    # manifest edits caught by the hash the index recorded
    ("forest-thresholds-raised", IFOREST_MODEL_NAME, lambda r, n: _edit_meta(r, n, _raise_if_thresholds), "changed after the version was registered"),
    ("reference-means-shifted", IFOREST_MODEL_NAME, lambda r, n: _edit_meta(r, n, _shift_reference), "changed after the version was registered"),
    ("tcn-scaler-edited", "tcn_lbm", lambda r, n: _edit_meta(r, n, _set(("scaler", "mean"), 99.0)), "changed after the version was registered"),
    ("seq-len-1e9-edited", "tcn_lbm", lambda r, n: _edit_meta(r, n, _set(("architecture", "seq_len"), 1e9)), "changed after the version was registered"),
    # the same with the hash fixed: the model checks refuse
    ("seq-len-1e9", "tcn_lbm", lambda r, n: _edit_meta(r, n, _set(("architecture", "seq_len"), 1e9), True), r"architecture\.seq_len must be an integer in \[1, 4096\]"),
    ("hidden-1e6", "tcn_lbm", lambda r, n: _edit_meta(r, n, _set(("architecture", "hidden_channels"), 10**6), True), r"architecture\.hidden_channels"),
    ("seq-len-string", "tcn_lbm", lambda r, n: _edit_meta(r, n, _set(("architecture", "seq_len"), "10"), True), r"architecture\.seq_len"),
    ("kind-mismatch", "tcn_lbm", lambda r, n: _edit_meta(r, n, _set(("kind",), "isolation_forest"), True), "kind is 'isolation_forest', expected 'tcn'"),
    ("scaler-std-0", "tcn_lbm", lambda r, n: _edit_meta(r, n, _set(("scaler", "std"), 0.0), True), "scaler.std must be a finite positive"),
    ("files-empty", "tcn_lbm", lambda r, n: _edit_meta(r, n, _set(("files",), {}), True), "'files' is empty"),
    ("files-sha-not-hex", "tcn_lbm", lambda r, n: _edit_meta(r, n, lambda m: m["files"]["weights.safetensors"].update(sha256=1), True), "sha256 must be 64"),
    ("files-size-huge", "tcn_lbm", lambda r, n: _edit_meta(r, n, lambda m: m["files"]["weights.safetensors"].update(size=2**62), True), "size must be an integer"),
    ("files-path-traversal", "tcn_lbm", lambda r, n: _edit_meta(r, n, _set(("files",), {"../../index.json": {"sha256": "0" * 64, "size": 1}}), True), "invalid file name"),
    ("manifest-wrong-version", "tcn_lbm", lambda r, n: _edit_meta(r, n, _set(("version",), "2.0.0"), True), "describes"),
    ("forest-threshold-nan", IFOREST_MODEL_NAME, lambda r, n: _edit_meta(r, n, lambda m: [g.update(threshold=float("nan")) for g in m["groups"].values()], True), "threshold must be finite"),
    # weights replaced (sha256 fixed): the runtime checks refuse
    ("weights-nan", "tcn_lbm", lambda r, n: _edit_arrays(r, n, lambda a: a.update({"head.bias": np.array([np.nan], dtype=np.float32)})), "contains NaN"),
    ("weights-int32", "tcn_lbm", lambda r, n: _edit_arrays(r, n, lambda a: a.update({"head.bias": np.array([1], dtype=np.int32)})), "expected a float dtype"),
    ("weights-missing-tensor", "tcn_lbm", lambda r, n: _edit_arrays(r, n, lambda a: a.pop("head.bias")), "missing tensors"),
    ("safetensors-header-2**62", "tcn_lbm", _header_2_62, "unparsable safetensors"),
    ("forest-child-out-of-range", IFOREST_MODEL_NAME, lambda r, n: _edit_arrays(r, n, _first_group(_child_out_of_range)), "children must point forward"),
    # file damage
    ("weights-truncated", "tcn_lbm", lambda r, n: _weights(r, n).write_bytes(_weights(r, n).read_bytes()[:100]), "size mismatch"),
    ("weights-flipped-byte", "tcn_lbm", lambda r, n: _weights(r, n).write_bytes(b"\x00" + _weights(r, n).read_bytes()[1:]), "sha256 mismatch"),
    ("weights-deleted", "tcn_lbm", lambda r, n: _weights(r, n).unlink(), "missing file"),
    ("metadata-deleted", "tcn_lbm", lambda r, n: _meta_path(r, n).unlink(), "missing file"),
    ("metadata-deep-json", "tcn_lbm", lambda r, n: _meta_path(r, n).write_text(_deep(100_000)), "changed after the version was registered"),
    ("index-deep-json", "tcn_lbm", lambda r, n: (r / n / INDEX_FILE).write_text(_deep(100_000)), "nested too deeply|nested deeper"),
    ("index-garbage", "tcn_lbm", lambda r, n: (r / n / INDEX_FILE).write_text("{broken"), "unparsable JSON"),
    ("index-is-a-list", "tcn_lbm", lambda r, n: (r / n / INDEX_FILE).write_text("[]"), "expected an object"),
    # the production pointer and version entries
    ("production-traversal-sibling", "tcn_lbm", lambda r, n: _add_version(r, n, _set(("production",), "../tcn_ecpri/1.0.0")), "is not a MAJOR.MINOR.PATCH version"),
    ("production-traversal-tmp", "tcn_lbm", lambda r, n: _add_version(r, n, _set(("production",), "../../../../tmp")), "is not a MAJOR.MINOR.PATCH version"),
    ("production-missing-version", "tcn_lbm", lambda r, n: _add_version(r, n, _set(("production",), "9.9.9")), "is not a listed version"),
    ("production-dir-missing", "tcn_lbm", lambda r, n: __import__("shutil").rmtree(r / n / V), "not found: no"),
    ("production-int", "tcn_lbm", lambda r, n: _add_version(r, n, _set(("production",), 1)), "is not a MAJOR.MINOR.PATCH version"),
    ("production-list", "tcn_lbm", lambda r, n: _add_version(r, n, _set(("production",), ["1.0.0"])), "is not a MAJOR.MINOR.PATCH version"),
    ("production-newline", "tcn_lbm", lambda r, n: _add_version(r, n, _set(("production",), "1.0.0\n")), "is not a MAJOR.MINOR.PATCH version"),
    ("versions-not-a-list", "tcn_lbm", lambda r, n: _add_version(r, n, _set(("versions",), {"1.0.0": {}})), "'versions' list"),
    ("version-entry-int", "tcn_lbm", lambda r, n: _add_version(r, n, lambda i: i["versions"].append(7)), r"versions\[1\] is int"),
    ("version-entry-no-version", "tcn_lbm", lambda r, n: _add_version(r, n, lambda i: i["versions"].append({})), "is not a MAJOR.MINOR.PATCH"),
    ("version-entry-traversal", "tcn_lbm", lambda r, n: _add_version(r, n, lambda i: i["versions"].append({"version": "../x"})), "is not a MAJOR.MINOR.PATCH"),
    ("version-entry-bad-status", "tcn_lbm", lambda r, n: _add_version(r, n, lambda i: i["versions"][0].update(status=["x"])), "status"),
    ("version-entry-bad-hash", "tcn_lbm", lambda r, n: _add_version(r, n, lambda i: i["versions"][0].update(metadata_sha256=5)), "metadata_sha256"),
    ("version-listed-twice", "tcn_lbm", lambda r, n: _add_version(r, n, lambda i: i["versions"].append(dict(i["versions"][0]))), "listed twice"),
    # symlinks and special files
    ("symlinked-version-dir", "tcn_lbm", _symlink_version, "refusing symlink"),
    ("symlinked-index", "tcn_lbm", _symlink_index, "refusing symlink"),
    ("symlinked-weights", "tcn_lbm", lambda r, n: _symlink_weights(r, n), "refusing symlink"),
    ("weights-to-dev-zero", "tcn_lbm", lambda r, n: _symlink_weights(r, n, "/dev/zero"), "refusing symlink"),
    ("weights-fifo", "tcn_lbm", _fifo_weights, "not a regular file"),
    ("index-is-a-directory", "tcn_lbm", lambda r, n: ((r / n / INDEX_FILE).unlink(), (r / n / INDEX_FILE).mkdir()), "not a regular file"),
    ("index-too-large", "tcn_lbm", lambda r, n: (r / n / INDEX_FILE).write_bytes(b" " * (5 << 20)), "more than the limit"),
]


@pytest.mark.parametrize("case", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_registry_scenario_refused_and_detection_goes_on(built, tmp_path: Path, case) -> None:
    _, name, mutate, pattern = case
    root = copy_registry(built, tmp_path / "models")
    mutate(root, name)
    # promotion runs the loader's checks: the same refusal
    with pytest.raises(RegistryError, match=pattern):
        ModelRegistry(root).promote(name, V)
    # the detectors: built, the damaged model off with one message naming it, the others on
    t0 = time.perf_counter()
    det = DetectionPipeline(model_dir=root)
    assert time.perf_counter() - t0 < 20  # no hang (FIFO), no giant allocation
    assert det.model_versions[name] is None
    others = {k: v for k, v in det.model_versions.items() if k != name}
    assert all(v == V for v in others.values()), others
    assert len(det.model_errors) == 1 and name in det.model_errors[0]
    assert __import__("re").search(pattern, det.model_errors[0]), det.model_errors
    assert str(root / name) in det.model_errors[0]
    r = det.process({"timestamp_ms": 1767225600000, "endpoint_id": "o-ru-001", "udp_echo_rtt_ms": 1.0})
    assert r.status == "ok"


@pytest.mark.parametrize("case", SCENARIOS[::4], ids=[s[0] for s in SCENARIOS[::4]])
def test_cli_verify_refuses_with_one_line(built, tmp_path: Path, case, capsys: pytest.CaptureFixture[str]) -> None:
    _, name, mutate, pattern = case
    root = copy_registry(built, tmp_path / "models")
    mutate(root, name)
    code = models_main(["--root", str(root), "show", name, V, "--verify"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_production_null_is_handled(built, tmp_path: Path) -> None:
    root = copy_registry(built, tmp_path / "models")
    _add_version(root, "tcn_lbm", _set(("production",), None))
    det = DetectionPipeline(model_dir=root)
    assert det.model_versions["tcn_lbm"] is None and det.model_versions["tcn_ecpri"] == V
    assert det.model_errors == []  # nothing promoted is a state, not damage


def test_legacy_version_loads_with_one_warning(built, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Versions written before manifest hashes (no metadata_sha256) keep loading."""
    root = copy_registry(built, tmp_path / "models")
    index = _index(root, "tcn_lbm")
    del index["versions"][0]["metadata_sha256"]
    index["history"] = [{"time": "t", "action": "promote", "from": None, "to": V, "reason": "old"}]
    _write_index(root, "tcn_lbm", index)
    (root / "tcn_lbm" / "history.jsonl").unlink()
    caplog.set_level("WARNING", logger="ocad_detectors")
    det = DetectionPipeline(model_dir=root)
    assert det.model_versions["tcn_lbm"] == V and det.model_errors == []
    legacy = [r for r in caplog.records if "legacy version" in r.getMessage()]
    assert len(legacy) == 1 and "tcn_lbm" in legacy[0].getMessage()
    assert ModelRegistry(root).load_version("tcn_lbm").trust == "legacy"
    # the old in-index history is still read, and moves to the log at the next write
    reg = ModelRegistry(root)
    assert [e["reason"] for e in reg.history("tcn_lbm")] == ["old"]
    reg.promote("tcn_lbm", V, reason="again")  # no-op promotion still migrates
    assert "history" not in _index(root, "tcn_lbm")
    assert [e["reason"] for e in reg.history("tcn_lbm")] == ["old"]


# ----------------------------------------------------------------------------- signatures


def _sign_registry(built, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A registry whose tcn_lbm 1.1.0 was written with a signing key (the trainer's env var)."""
    key, pub = tmp_path / "sig.key", tmp_path / "sig.pub"
    generate_signing_key(key, pub)
    root = copy_registry(built, tmp_path / "models")
    reg = ModelRegistry(root, signing_key=key)
    lv = reg.load_version("tcn_lbm")
    meta = {k: v for k, v in lv.metadata.items() if k not in ("model_name", "version", "created_at", "files")}
    info = reg.write_version("tcn_lbm", lv.files, meta)
    reg.promote("tcn_lbm", info.version)
    return root, key, pub


def test_signed_registry_verifies_and_edit_is_refused(built, tmp_path: Path) -> None:
    root, _, pub = _sign_registry(built, tmp_path)
    cfg = DetectionConfig(trust=TrustConfig(public_key=str(pub)))
    det = DetectionPipeline(cfg, model_dir=root)
    assert det.model_versions["tcn_lbm"] == "1.1.0" and det.model_errors == []
    assert ModelRegistry(root, public_key=pub).load_version("tcn_lbm").trust == "signed"
    # someone with write access edits the manifest AND fixes every hash: the signature fails
    meta_path = root / "tcn_lbm" / "1.1.0" / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["scaler"]["std"] *= 10
    raw = json.dumps(meta, indent=2, sort_keys=True).encode()
    meta_path.write_bytes(raw)
    index = _index(root, "tcn_lbm")
    index["versions"][-1]["metadata_sha256"] = hashlib.sha256(raw).hexdigest()
    _write_index(root, "tcn_lbm", index)
    with pytest.raises(ModelIntegrityError, match="does not verify against the configured public key"):
        ModelRegistry(root, public_key=pub).load_version("tcn_lbm")
    det = DetectionPipeline(cfg, model_dir=root)
    assert det.model_versions["tcn_lbm"] is None and "signature" in det.model_errors[0]
    assert models_main(["--root", str(root), "--public-key", str(pub), "promote", "tcn_lbm", "1.1.0"]) == 2
    # without a public key the hash matches: unsigned registries keep working as before
    assert DetectionPipeline(model_dir=root).model_versions["tcn_lbm"] == "1.1.0"


def test_require_signed_refuses_unsigned_and_other_key(built, tmp_path: Path) -> None:
    root, _, pub = _sign_registry(built, tmp_path)
    cfg = DetectionConfig(trust=TrustConfig(public_key=str(pub), require_signed=True))
    det = DetectionPipeline(cfg, model_dir=root)
    # only tcn_lbm 1.1.0 is signed; the fixture's other versions are refused
    assert det.model_versions["tcn_lbm"] == "1.1.0"
    assert all(det.model_versions[k] is None for k in ("tcn_ecpri", "tcn_udp_echo", IFOREST_MODEL_NAME))
    assert len(det.model_errors) == 3 and all("not signed" in e for e in det.model_errors)
    other_key, other_pub = tmp_path / "o.key", tmp_path / "o.pub"
    generate_signing_key(other_key, other_pub)
    with pytest.raises(ModelIntegrityError, match="does not verify"):
        ModelRegistry(root, public_key=other_pub, require_signed=True).load_version("tcn_lbm")
    with pytest.raises(ValueError, match="require_signed"):
        TrustConfig(require_signed=True)


def test_signing_key_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key, pub = tmp_path / "k.key", tmp_path / "k.pub"
    assert models_main(["keygen", "--out", str(tmp_path / "k")]) == 0
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    monkeypatch.setenv("OCAD_SIGNING_KEY", str(key))
    reg = ModelRegistry(tmp_path / "m")
    reg.write_version("demo", {"a.bin": b"xyz"}, {"note": 1})
    assert (tmp_path / "m" / "demo" / V / "signature.json").is_file()
    assert ModelRegistry(tmp_path / "m", public_key=pub, require_signed=True).load_version("demo").trust == "signed"


# ----------------------------------------------------------------------------- reload


def test_reload_is_all_or_nothing(built, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = copy_registry(built, tmp_path / "models")
    cfg = DetectionConfig.from_dict({"reload": {"check_every_samples": 0}})
    det = DetectionPipeline(cfg, model_dir=root)
    assert set(det.model_versions.values()) == {V}
    reg = ModelRegistry(root)
    # a good new tcn_ecpri and a tcn_lbm whose manifest says seq_len 1e9 (registered as such:
    # written through the registry, so every hash is right), promoted by hand in the index
    for name, arch_seq in (("tcn_ecpri", None), ("tcn_lbm", 10**9)):
        lv = reg.load_version(name)
        meta = {k: v for k, v in lv.metadata.items() if k not in ("model_name", "version", "created_at", "files")}
        if arch_seq is not None:
            meta["architecture"] = {**meta["architecture"], "seq_len": arch_seq}
        reg.write_version(name, lv.files, meta)
        index = _index(root, name)
        index["production"] = "1.1.0"
        _write_index(root, name, index)
    caplog.set_level("WARNING", logger="ocad_detectors")
    versions = det.reload()
    assert versions["tcn_ecpri"] == V and versions["tcn_lbm"] == V  # the whole old set stays
    assert det.reload_failures == 1 and "seq_len" in (det.last_reload_error or "")
    assert any("reload refused" in r.getMessage() for r in caplog.records)
    assert det.process({"timestamp_ms": 1767225600000, "endpoint_id": "x", "lbm_rtt_ms": 1.0}).status == "ok"
    # a fresh pipeline on the same registry still builds, with the sound models
    fresh = DetectionPipeline(cfg, model_dir=root)
    assert fresh.model_versions["tcn_ecpri"] == "1.1.0" and fresh.model_versions["tcn_lbm"] is None
    # fix the registry (production back to the good one): the next reload applies the good set
    index = _index(root, "tcn_lbm")
    index["production"] = V
    _write_index(root, "tcn_lbm", index)
    assert det.reload()["tcn_ecpri"] == "1.1.0" and det.reload_failures == 1


# ----------------------------------------------------------------------------- crashes

_PROMOTER = """
import sys
from ocad_detectors.registry import ModelRegistry
reg = ModelRegistry(sys.argv[1], validator=lambda lv: None)
print("ready", flush=True)
i = 0
while True:
    reg.promote("tcn_lbm", ("1.0.0", "1.1.0")[i % 2], reason="x" * 200)
    i += 1
"""


def test_kill_9_during_promotion_leaves_loadable_registry(built, tmp_path: Path) -> None:
    root = copy_registry(built, tmp_path / "models")
    reg = ModelRegistry(root)
    lv = reg.load_version("tcn_lbm")
    meta = {k: v for k, v in lv.metadata.items() if k not in ("model_name", "version", "created_at", "files")}
    reg.write_version("tcn_lbm", lv.files, meta)
    rng = np.random.default_rng(14)
    mdir = root / "tcn_lbm"
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", _PROMOTER, str(root)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.0, 0.15)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # whatever moment it died at: the registry loads
        assert ModelRegistry(root).load_version("tcn_lbm").version in ("1.0.0", "1.1.0")
    target = "1.0.0" if reg.production_version("tcn_lbm") == "1.1.0" else "1.1.0"
    reg.promote("tcn_lbm", target, reason="after the kills")  # the next write cleans up
    leftovers = [p.name for p in mdir.iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    events = reg.history("tcn_lbm")
    assert events[-1]["reason"] == "after the kills" and len(events) > 8
    # history is no longer in the index; the rollback stack is bounded
    assert len(_index(root, "tcn_lbm")["production_stack"]) <= 100
    assert (mdir / INDEX_FILE).stat().st_size < 8192
    det = DetectionPipeline(model_dir=root)
    assert det.model_versions["tcn_lbm"] == target


# ----------------------------------------------------------------------------- ocad-models


def test_cli_root_is_a_file_and_broken_list(built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    for argv in (["list"], ["show", "tcn_lbm"], ["promote", "tcn_lbm", V]):
        assert models_main(["--root", str(f), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
    root = copy_registry(built, tmp_path / "models")
    (root / "tcn_lbm" / INDEX_FILE).write_text(_deep(100_000))
    assert models_main(["--root", str(root), "list"]) == 2
    cap = capsys.readouterr()
    assert "tcn_ecpri" in cap.out and "REFUSED" in cap.out and "nested" in cap.err
    assert models_main(["--root", str(root), "promote", "tcn_ecpri", "1.0.0\n"]) == 2
    assert "invalid version" in capsys.readouterr().err


def test_training_resource_signs_with_its_key(tmp_path: Path) -> None:
    from ocad_pipeline.defs.resources import ModelRegistryResource, OcadPaths

    key, pub = tmp_path / "t.key", tmp_path / "t.pub"
    generate_signing_key(key, pub)
    reg = ModelRegistryResource(paths=OcadPaths(data_dir=str(tmp_path)), root=str(tmp_path / "m"), signing_key=str(key)).get_registry()
    info = reg.write_version("demo", {"a.bin": b"1"}, {})  # a candidate (no auto-promotion)
    assert ModelRegistry(tmp_path / "m", public_key=pub, require_signed=True).load_version("demo", info.version).trust == "signed"


def test_report_dir_symlink_refused(built, tmp_path: Path) -> None:
    root = copy_registry(built, tmp_path / "models")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, root / "tcn_lbm" / V / "reports")
    with pytest.raises(ModelIntegrityError, match="refusing symlink"):
        ModelRegistry(root).write_report("tcn_lbm", V, "r.json", b"{}")
    assert list(outside.iterdir()) == []


_FULL_DISK = """
import resource, signal, sys
from ocad_detectors.registry_cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes beyond the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
sys.exit(main(sys.argv[1:]))
"""


def test_cli_write_failure_is_one_line_and_registry_intact(built, tmp_path: Path) -> None:
    """A write that fails (here: a file-size limit, like a full disk) is one error line, exit 2,
    and the registry is what it was before."""
    root = copy_registry(built, tmp_path / "models")
    reg = ModelRegistry(root)
    lv = reg.load_version("tcn_lbm")
    meta = {k: v for k, v in lv.metadata.items() if k not in ("model_name", "version", "created_at", "files")}
    reg.write_version("tcn_lbm", lv.files, meta)
    before = (root / "tcn_lbm" / INDEX_FILE).read_bytes()
    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, "--root", str(root), "promote", "tcn_lbm", "1.1.0"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert (root / "tcn_lbm" / INDEX_FILE).read_bytes() == before
    assert [p.name for p in (root / "tcn_lbm").iterdir() if ".tmp-" in p.name] == []
    assert reg.production_version("tcn_lbm") == V
