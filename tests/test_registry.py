"""Model registry: versioning, promotion/rollback, integrity checks, atomicity, CLI."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

import ocad_detectors.registry as registry_mod
from ocad_detectors.registry import (
    ModelIntegrityError,
    ModelNotFoundError,
    ModelRegistry,
    RegistryError,
    VersionInfo,
    bump_version,
    load_arrays,
    parse_version,
    save_arrays,
)
from ocad_detectors.registry_cli import main
from ocad_detectors.tcn import NumpyTCN, tcn_weight_shapes

ARCH = {"seq_len": 10, "hidden_channels": 4, "dilations": [1, 2], "kernel_size": 3}


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: rng.normal(size=shape).astype(np.float32)
        for name, shape in tcn_weight_shapes(ARCH).items()
    }


def _write(
    reg: ModelRegistry, name: str = "tcn_udp_echo", seed: int = 0, **kw: object
) -> VersionInfo:
    meta = {
        "architecture": ARCH,
        "training_date": "2024-05-01",
        "data_version": f"sha-{seed}",
        "dagster_run_id": f"run-{seed}",
        "code_version": "abc123",
        "scaler": {"mean": 1.5, "std": 0.25},
        "residual_scale": {"pooled": 1.0},
        "validation_metrics": {"mae": 0.1 + seed, "baseline_mae": 0.2, "beats_baseline": True},
    }
    files = {"weights.safetensors": save_arrays(_weights(seed))}
    return reg.write_version(name, files, meta, **kw)  # type: ignore[arg-type]


@pytest.fixture()
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


# ----------------------------------------------------------------------------- basics


def test_round_trip_arrays_and_metadata(reg: ModelRegistry) -> None:
    info = _write(reg, seed=3)
    assert info.version == "1.0.0" and info.path == reg.root / "tcn_udp_echo" / "1.0.0"
    loaded = reg.load_version("tcn_udp_echo")
    assert loaded.version == "1.0.0" and loaded.path == info.path
    arrays = loaded.arrays("weights.safetensors")
    for name, arr in _weights(3).items():
        assert arrays[name].dtype == np.float32 and np.array_equal(arrays[name], arr)
    meta = loaded.metadata
    # caller keys pass through unchanged, registry keys are added
    assert meta["scaler"] == {"mean": 1.5, "std": 0.25} and meta["dagster_run_id"] == "run-3"
    assert meta["validation_metrics"]["mae"] == 3.1
    assert meta["model_name"] == "tcn_udp_echo" and meta["version"] == "1.0.0"
    assert meta["created_at"].endswith("+00:00")
    size = (info.path / "weights.safetensors").stat().st_size
    assert meta["files"]["weights.safetensors"]["size"] == size
    assert len(meta["files"]["weights.safetensors"]["sha256"]) == 64
    assert reg.get_metadata("tcn_udp_echo", "1.0.0") == meta
    # the loaded arrays drive the numpy model directly
    assert NumpyTCN(arrays, meta["architecture"]).predict(np.zeros(10)).shape == (1,)
    # nothing temporary left behind
    assert sorted(p.name for p in (reg.root / "tcn_udp_echo").iterdir()) == [".lock", "1.0.0", "history.jsonl", "index.json"]


def test_save_load_arrays_dtypes() -> None:
    arrays = {
        "f": np.arange(6, dtype=np.float32).reshape(2, 3),
        "i": np.array([-1, 5], dtype=np.int64),
        "u": np.array([0, 1], dtype=np.uint8),
        "s": np.array([2.5]),
        "t": np.arange(12, dtype=np.float64).reshape(3, 4).T,  # non-contiguous input
    }
    back = load_arrays(save_arrays(arrays))
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)
    with pytest.raises(ValueError, match="safetensors"):
        load_arrays(b"not safetensors at all")


def test_semantic_versions(reg: ModelRegistry) -> None:
    assert [_write(reg, seed=i).version for i in range(3)] == ["1.0.0", "1.1.0", "1.2.0"]
    assert _write(reg, bump="patch").version == "1.2.1"
    assert _write(reg, bump="major").version == "2.0.0"
    assert _write(reg, version="1.10.0").version == "1.10.0"
    assert _write(reg).version == "2.1.0"  # bumps the highest, not the latest written
    assert [v.version for v in reg.list_versions("tcn_udp_echo")] == [
        "1.0.0", "1.1.0", "1.2.0", "1.2.1", "1.10.0", "2.0.0", "2.1.0"
    ]
    with pytest.raises(RegistryError, match="already exists"):
        _write(reg, version="1.1.0")
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
        _write(reg, version="1.2")
    with pytest.raises(ValueError, match="bump"):
        _write(reg, bump="huge")
    assert parse_version("10.0.3") == (10, 0, 3) and bump_version("1.9.9") == "1.10.0"


def test_invalid_names_and_reserved_metadata(reg: ModelRegistry) -> None:
    with pytest.raises(ValueError, match="model name"):
        reg.write_version("../evil", {"a.bin": b"x"}, {})
    with pytest.raises(ValueError, match="file name"):
        reg.write_version("m", {"sub/a.bin": b"x"}, {})
    with pytest.raises(ValueError, match="metadata.json"):
        reg.write_version("m", {"metadata.json": b"{}"}, {})
    with pytest.raises(ValueError, match="'files'"):
        reg.write_version("m", {"a.bin": b"x"}, {"files": {}})
    with pytest.raises(TypeError, match="bytes"):
        reg.write_version("m", {"a.bin": "text"}, {})  # type: ignore[dict-item]
    # numpy values in metadata are converted, not rejected
    meta = {"validation_metrics": {"mae": np.float32(0.5)}, "n": np.int64(3)}
    info = reg.write_version("m", {"a.bin": b"x"}, meta)
    assert reg.get_metadata("m", info.version)["n"] == 3


def test_root_from_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OCAD_MODEL_DIR", raising=False)
    assert ModelRegistry().root == Path("data/models")
    _write(ModelRegistry(), name="iforest_ecpri")
    assert (tmp_path / "data/models/iforest_ecpri/1.0.0/metadata.json").is_file()
    monkeypatch.setenv("OCAD_MODEL_DIR", str(tmp_path / "elsewhere"))
    assert ModelRegistry().root == tmp_path / "elsewhere"
    assert ModelRegistry().list_models() == []
    assert ModelRegistry(tmp_path / "data/models").list_models() == ["iforest_ecpri"]


# ----------------------------------------------------------------------------- promotion


def test_auto_promote_first_promote_and_rollback(reg: ModelRegistry) -> None:
    _write(reg, seed=0)
    assert reg.production_version("tcn_udp_echo") == "1.0.0"
    _write(reg, seed=1)
    _write(reg, seed=2)
    # later versions are candidates until explicitly promoted
    assert reg.production_version("tcn_udp_echo") == "1.0.0"
    statuses = [v.status for v in reg.list_versions("tcn_udp_echo")]
    assert statuses == ["production", "candidate", "candidate"]

    reg.promote("tcn_udp_echo", "1.1.0", reason="better mae")
    reg.promote("tcn_udp_echo", "1.2.0", reason="even better")
    assert reg.load_version("tcn_udp_echo").version == "1.2.0"
    assert np.array_equal(reg.load_version("tcn_udp_echo").arrays()["head.bias"], _weights(2)["head.bias"])
    assert [v.stage for v in reg.list_versions("tcn_udp_echo")] == ["archived", "archived", "production"]

    assert reg.rollback("tcn_udp_echo", reason="alarms").version == "1.1.0"
    assert reg.rollback("tcn_udp_echo").version == "1.0.0"  # walks further back
    assert reg.production_version("tcn_udp_echo") == "1.0.0"
    with pytest.raises(RegistryError, match="no earlier production"):
        reg.rollback("tcn_udp_echo")
    # promoting the current production is a no-op, not a history event
    n_events = len(reg.history("tcn_udp_echo"))
    reg.promote("tcn_udp_echo", "1.0.0")
    assert len(reg.history("tcn_udp_echo")) == n_events

    history = reg.history("tcn_udp_echo")
    assert [(e["action"], e["from"], e["to"]) for e in history] == [
        ("promote", None, "1.0.0"),
        ("promote", "1.0.0", "1.1.0"),
        ("promote", "1.1.0", "1.2.0"),
        ("rollback", "1.2.0", "1.1.0"),
        ("rollback", "1.1.0", "1.0.0"),
    ]
    assert history[1]["reason"] == "better mae" and history[3]["reason"] == "alarms"
    assert all(e["time"].endswith("+00:00") for e in history)
    index = json.loads((reg.root / "tcn_udp_echo" / "index.json").read_text())
    assert index["model"] == "tcn_udp_echo" and index["production"] == "1.0.0"


def test_no_auto_promote(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, auto_promote_first=False)
    _write(reg)
    assert reg.production_version("tcn_udp_echo") is None
    with pytest.raises(ModelNotFoundError, match="no production version"):
        reg.load_version("tcn_udp_echo")
    assert reg.load_version("tcn_udp_echo", "1.0.0").version == "1.0.0"
    with pytest.raises(RegistryError, match="cannot roll back"):
        reg.rollback("tcn_udp_echo")
    reg.promote("tcn_udp_echo", "1.0.0")
    assert reg.production_version("tcn_udp_echo") == "1.0.0"


def test_missing_model_and_version(reg: ModelRegistry) -> None:
    with pytest.raises(ModelNotFoundError, match="'nope' not found"):
        reg.load_version("nope")
    with pytest.raises(ModelNotFoundError):
        reg.promote("nope", "1.0.0")
    with pytest.raises(ModelNotFoundError):
        reg.rollback("nope")
    with pytest.raises(ModelNotFoundError):
        reg.list_versions("nope")
    assert not (reg.root / "nope").exists()  # failed lookups create nothing
    _write(reg)
    with pytest.raises(ModelNotFoundError, match="9.9.9"):
        reg.load_version("tcn_udp_echo", "9.9.9")
    with pytest.raises(ModelNotFoundError, match="9.9.9"):
        reg.promote("tcn_udp_echo", "9.9.9")
    with pytest.raises(ModelNotFoundError, match="other.bin"):
        reg.load_version("tcn_udp_echo").arrays("other.bin")
    assert issubclass(ModelNotFoundError, RegistryError) and issubclass(ModelIntegrityError, RegistryError)


# ----------------------------------------------------------------------------- integrity


def test_flipped_byte_is_detected(reg: ModelRegistry) -> None:
    info = _write(reg)
    path = info.path / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    pattern = (
        r"sha256 mismatch for .*tcn_udp_echo/1\.0\.0/weights\.safetensors: "
        r"expected [0-9a-f]{16}\.\.\., got [0-9a-f]{16}"
    )
    with pytest.raises(ModelIntegrityError, match=pattern) as exc:
        reg.load_version("tcn_udp_echo")
    assert str(path) in str(exc.value)


def test_truncated_and_missing_files(reg: ModelRegistry) -> None:
    info = _write(reg)
    path = info.path / "weights.safetensors"
    original = path.read_bytes()
    path.write_bytes(original[:-10])
    n = len(original)
    with pytest.raises(
        ModelIntegrityError,
        match=rf"size mismatch for {path}: expected {n} bytes, got {n - 10} \(truncated\)",
    ):
        reg.load_version("tcn_udp_echo")
    path.unlink()
    with pytest.raises(ModelIntegrityError, match=f"missing file {path}"):
        reg.load_version("tcn_udp_echo", "1.0.0")


def test_tampered_metadata(reg: ModelRegistry) -> None:
    info = _write(reg)
    meta_path = info.path / "metadata.json"
    good = meta_path.read_bytes()
    meta_path.write_bytes(good[: len(good) // 2])
    # the index recorded the manifest's sha256: any edit is caught before parsing
    with pytest.raises(ModelIntegrityError, match="changed after the version was registered"):
        reg.load_version("tcn_udp_echo")
    # a legacy index (no recorded manifest hash) still gets the structural checks
    index_path = reg.root / "tcn_udp_echo" / "index.json"
    index = json.loads(index_path.read_text())
    del index["versions"][0]["metadata_sha256"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(ModelIntegrityError, match=f"unparsable JSON in {meta_path}"):
        reg.load_version("tcn_udp_echo")
    with pytest.raises(ModelIntegrityError, match="unparsable JSON"):
        reg.get_metadata("tcn_udp_echo")
    meta = json.loads(good)
    meta["files"]["weights.safetensors"]["sha256"] = "0" * 64  # edited hash: file no longer matches
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelIntegrityError, match="sha256 mismatch"):
        reg.load_version("tcn_udp_echo")
    meta = json.loads(good)
    meta["version"] = "2.0.0"  # a version directory copied under the wrong name
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelIntegrityError, match="describes"):
        reg.load_version("tcn_udp_echo")
    meta_path.unlink()
    with pytest.raises(ModelIntegrityError, match=f"missing file {meta_path}"):
        reg.load_version("tcn_udp_echo")
    index_path.write_text("{broken")
    with pytest.raises(ModelIntegrityError, match=f"unparsable JSON in {index_path}"):
        reg.production_version("tcn_udp_echo")


def test_unparsable_safetensors_and_corrupt_promotion(reg: ModelRegistry) -> None:
    _write(reg)
    info = reg.write_version("tcn_udp_echo", {"weights.safetensors": b"\x10\x00garbage"}, {})
    loaded = reg.load_version("tcn_udp_echo", info.version)  # hashes fine: bytes are as written
    where = info.path / "weights.safetensors"
    with pytest.raises(ModelIntegrityError, match=f"unparsable safetensors in {where}"):
        loaded.arrays()
    # promoting a version whose files were damaged is refused and production stays put
    info = _write(reg, seed=5)
    (info.path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(ModelIntegrityError):
        reg.promote("tcn_udp_echo", info.version)
    assert reg.production_version("tcn_udp_echo") == "1.0.0"


def test_failed_write_leaves_nothing(reg: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(reg)
    index_before = (reg.root / "tcn_udp_echo" / "index.json").read_bytes()
    real_write = registry_mod._write_file
    calls = {"n": 0}

    def failing_write(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(registry_mod, "_write_file", failing_write)
    with pytest.raises(OSError, match="disk full"):
        reg.write_version("tcn_udp_echo", {"a.bin": b"1", "b.bin": b"2"}, {})
    monkeypatch.undo()
    assert sorted(p.name for p in (reg.root / "tcn_udp_echo").iterdir()) == [".lock", "1.0.0", "history.jsonl", "index.json"]
    assert (reg.root / "tcn_udp_echo" / "index.json").read_bytes() == index_before
    assert _write(reg).version == "1.1.0"


def test_load_never_uses_pickle(reg: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(reg)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used on the model load path")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    loaded = reg.load_version("tcn_udp_echo")
    net = NumpyTCN(loaded.arrays(), loaded.metadata["architecture"])
    assert np.isfinite(net.predict(np.ones(10))[0])


# ----------------------------------------------------------------------------- concurrency


def test_reader_sees_complete_versions_during_promotions(reg: ModelRegistry) -> None:
    _write(reg, seed=0)
    _write(reg, seed=1)
    expected = {"1.0.0": _weights(0), "1.1.0": _weights(1)}
    stop = threading.Event()
    failures: list[str] = []
    seen: set[str] = set()

    def promoter() -> None:
        try:
            for i in range(60):
                reg.promote("tcn_udp_echo", "1.1.0" if i % 2 == 0 else "1.0.0", reason=f"flip {i}")
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(f"promoter: {exc!r}")
        finally:
            stop.set()

    def reader() -> None:
        reader_reg = ModelRegistry(reg.root)
        while not stop.is_set():
            try:
                loaded = reader_reg.load_version("tcn_udp_echo")
                arrays = loaded.arrays()
                want = expected[loaded.version]
                if not all(np.array_equal(arrays[k], v) for k, v in want.items()):
                    failures.append(f"wrong arrays for {loaded.version}")
                seen.add(loaded.version)
            except Exception as exc:
                failures.append(f"reader: {exc!r}")

    threads = [threading.Thread(target=promoter), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    assert seen <= {"1.0.0", "1.1.0"} and seen
    assert len(reg.history("tcn_udp_echo")) == 61


def test_concurrent_writers_threads(reg: ModelRegistry) -> None:
    _write(reg)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        try:
            for _ in range(4):
                _write(ModelRegistry(reg.root), seed=seed)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    versions = [v.version for v in reg.list_versions("tcn_udp_echo")]
    assert versions == [f"1.{i}.0" for i in range(13)]  # no lost index update, no duplicate
    for v in versions:
        reg.load_version("tcn_udp_echo", v)


def _process_write_and_promote(root: str, seed: int, start: object, n: int) -> None:
    start.wait(10)  # type: ignore[attr-defined]
    reg = ModelRegistry(root)
    for _ in range(n):
        info = _write(reg, seed=seed)
        reg.promote("tcn_udp_echo", info.version, reason=f"process {seed}")


def test_concurrent_writes_and_promotions_across_processes(reg: ModelRegistry) -> None:
    """flock serialises writers in different processes: no version or event is lost."""
    _write(reg, seed=0)
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [
        ctx.Process(target=_process_write_and_promote, args=(str(reg.root), seed, start, 6))
        for seed in (1, 2)
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    index = json.loads((reg.root / "tcn_udp_echo" / "index.json").read_text())
    assert [v["version"] for v in index["versions"]] == [f"1.{i}.0" for i in range(13)]
    history = reg.history("tcn_udp_echo")
    assert "history" not in index  # the index stays small: events go to history.jsonl
    assert len(history) == 13  # auto-promotion + 12 promotions of fresh versions
    prev = None
    for event in history:  # every event chains from the previous production
        assert event["from"] == prev
        prev = event["to"]
    assert prev == index["production"]
    statuses = [v["status"] for v in index["versions"]]
    assert statuses.count("production") == 1 and statuses.count("archived") == 12


# ----------------------------------------------------------------------------- CLI


def test_cli_list_show_promote_rollback(reg: ModelRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(reg.root)
    assert main(["--root", root, "list"]) == 0
    assert "no models" in capsys.readouterr().out
    _write(reg, seed=0)
    _write(reg, seed=1)
    reg.write_version("iforest_ecpri", {"forest.safetensors": save_arrays({"a": np.zeros(3)})}, {})

    assert main(["--root", root, "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MODEL", "PRODUCTION", "VERSIONS", "LATEST", "LATEST", "CREATED_AT"]
    assert lines[1].split()[:4] == ["iforest_ecpri", "1.0.0", "1", "1.0.0"]
    assert lines[2].split()[:4] == ["tcn_udp_echo", "1.0.0", "2", "1.1.0"]
    assert lines[1].index("1.0.0") == lines[2].index("1.0.0")  # aligned columns

    assert main(["--root", root, "show", "tcn_udp_echo", "1.1.0", "--verify"]) == 0
    out = capsys.readouterr().out
    sha = reg.get_metadata("tcn_udp_echo", "1.1.0")["files"]["weights.safetensors"]["sha256"]
    assert "version:" in out and "1.1.0" in out and "candidate" in out
    assert "weights.safetensors" in out and sha[:12] in out
    assert "integrity:" in out and "OK" in out
    assert "mae" in out and "1.1" in out and "baseline_mae" in out
    assert "data_version:" in out and "sha-1" in out
    assert "*  1.0.0    production" in out

    assert main(["--root", root, "promote", "tcn_udp_echo", "1.1.0", "--reason", "better"]) == 0
    assert "1.0.0 -> 1.1.0" in capsys.readouterr().out
    assert reg.production_version("tcn_udp_echo") == "1.1.0"
    assert reg.history("tcn_udp_echo")[-1]["reason"] == "better"
    assert main(["--root", root, "show", "tcn_udp_echo"]) == 0
    assert "stage:" in (out := capsys.readouterr().out) and "production" in out and "1.1.0" in out

    assert main(["--root", root, "rollback", "tcn_udp_echo", "--reason", "alarms"]) == 0
    assert "1.1.0 -> 1.0.0" in capsys.readouterr().out
    assert reg.production_version("tcn_udp_echo") == "1.0.0"


def test_cli_errors_exit_2(
    reg: ModelRegistry, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(reg.root)
    assert main(["--root", root, "show", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and err.count("\n") == 1
    info = _write(reg)
    assert main(["--root", root, "rollback", "tcn_udp_echo"]) == 2
    assert "cannot roll back" in capsys.readouterr().err
    assert main(["--root", root, "promote", "tcn_udp_echo", "1.2"]) == 2
    assert "MAJOR.MINOR.PATCH" in capsys.readouterr().err
    (info.path / "weights.safetensors").write_bytes(b"tampered")
    assert main(["--root", root, "show", "tcn_udp_echo", "--verify"]) == 2
    assert "size mismatch" in capsys.readouterr().err
    monkeypatch.setenv("OCAD_MODEL_DIR", root)
    assert main(["list"]) == 0  # --root defaults to $OCAD_MODEL_DIR
    assert "tcn_udp_echo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "promote" in capsys.readouterr().out
