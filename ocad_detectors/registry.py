"""File-system model registry: immutable, hash-verified versions and an atomic production pointer.

Layout under the root (``data/models`` relative to the working directory, or ``$OCAD_MODEL_DIR``)::

    <root>/<model>/<version>/      immutable once visible, e.g. tcn_udp_echo/1.0.0/
        weights.safetensors        files registered by the writer
        metadata.json              caller metadata + model_name, version, created_at, files
    <root>/<model>/index.json      production pointer, version list with status, history
    <root>/<model>/.lock           flock'ed by writers

Why it is safe without a database:

* a version directory is written under a temporary name and ``os.rename``-d into place, so a
  reader never sees a half-written version, and versions are never overwritten;
* ``index.json`` is replaced atomically (write temp + ``os.replace``), so a reader's single read
  sees either the old or the new production pointer;
* writers serialise on an ``fcntl.flock`` per model, so concurrent promotions cannot lose an
  update;
* every load re-checks size and sha256 of every file listed in ``metadata.json``.

Weights are stored as safetensors (plain bytes + JSON header); nothing here uses pickle or
imports torch, scikit-learn, pandas or dagster.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

__all__ = [
    "DEFAULT_ROOT",
    "ENV_VAR",
    "METADATA_FILE",
    "INDEX_FILE",
    "STATUSES",
    "RESERVED_METADATA_KEYS",
    "RegistryError",
    "ModelNotFoundError",
    "ModelIntegrityError",
    "VersionInfo",
    "LoadedVersion",
    "ModelRegistry",
    "save_arrays",
    "load_arrays",
    "parse_version",
    "bump_version",
    "default_root",
]

DEFAULT_ROOT = "data/models"
ENV_VAR = "OCAD_MODEL_DIR"
METADATA_FILE = "metadata.json"
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
#: candidate: registered, never served; production: served now; archived: served before
STATUSES = ("candidate", "production", "archived")
#: metadata keys the registry writes itself
RESERVED_METADATA_KEYS = ("model_name", "version", "created_at", "files")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_RE = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")


class RegistryError(Exception):
    """Base class of every registry failure (the CLI turns these into exit code 2)."""


class ModelNotFoundError(RegistryError):
    """The model, version, production version or file does not exist."""


class ModelIntegrityError(RegistryError):
    """Stored bytes do not match what was registered: hash/size mismatch, truncation, bad JSON."""


def default_root() -> Path:
    """``$OCAD_MODEL_DIR`` if set, else ``data/models`` relative to the working directory."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_ROOT)


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.2.3" -> (1, 2, 3)``; only plain MAJOR.MINOR.PATCH is accepted."""
    m = _VERSION_RE.match(version) if isinstance(version, str) else None
    if m is None:
        raise ValueError(f"invalid version {version!r}: expected MAJOR.MINOR.PATCH, e.g. 1.0.0")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def bump_version(version: str, bump: str = "minor") -> str:
    """Next semantic version: ``bump`` is ``major``, ``minor`` or ``patch``."""
    major, minor, patch = parse_version(version)
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    if bump == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise ValueError(f"bump must be 'major', 'minor' or 'patch', got {bump!r}")


def save_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Serialise named arrays as safetensors bytes (no pickle, readable without torch)."""
    return safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in arrays.items()})


def load_arrays(data: bytes) -> dict[str, np.ndarray]:
    """Parse safetensors bytes into named numpy arrays; raises ``ValueError`` when malformed."""
    try:
        return safetensors.numpy.load(bytes(data))
    except Exception as exc:  # SafetensorError is not importable in a stable place
        raise ValueError(f"not a valid safetensors payload: {exc}") from exc


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _json_default(obj: Any) -> Any:
    """Let callers pass numpy scalars/arrays and paths in metadata."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, datetime)):
        return str(obj) if isinstance(obj, Path) else obj.isoformat()
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON serialisable")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid {kind} {name!r}: use letters, digits, '.', '_' or '-', not starting with "
            "'.', '_' or '-'"
        )
    return name


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as listed in the model's index."""

    model_name: str
    version: str
    path: Path
    created_at: str
    status: str

    @property
    def stage(self) -> str:
        """Alias of ``status`` (candidate / production / archived)."""
        return self.status


@dataclass
class LoadedVersion:
    """A fully read and verified version: every listed file's bytes matched its sha256 and size."""

    model_name: str
    version: str
    path: Path
    metadata: dict[str, Any]
    files: dict[str, bytes] = field(repr=False)

    def arrays(self, filename: str = "weights.safetensors") -> dict[str, np.ndarray]:
        """The named arrays of a safetensors file of this version."""
        if filename not in self.files:
            raise ModelNotFoundError(
                f"{self.path / filename} is not part of {self.model_name} {self.version}; "
                f"files: {sorted(self.files)}"
            )
        try:
            return load_arrays(self.files[filename])
        except ValueError as exc:
            raise ModelIntegrityError(
                f"unparsable safetensors in {self.path / filename}: {exc}"
            ) from exc


class ModelRegistry:
    """Versioned model store on the local file system (see the module docstring for the layout)."""

    def __init__(
        self, root: str | os.PathLike[str] | None = None, *, auto_promote_first: bool = True
    ) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.auto_promote_first = auto_promote_first

    # ---------------------------------------------------------------- paths & index

    def model_dir(self, model_name: str) -> Path:
        return self.root / _check_name("model name", model_name)

    def version_dir(self, model_name: str, version: str) -> Path:
        parse_version(version)
        return self.model_dir(model_name) / version

    def _index_path(self, model_name: str) -> Path:
        return self.model_dir(model_name) / INDEX_FILE

    def _read_index(self, model_name: str) -> dict[str, Any]:
        """One read of ``index.json``: the consistent snapshot every reader works from."""
        path = self._index_path(model_name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ModelNotFoundError(f"model {model_name!r} not found: no {path}") from None
        try:
            index = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelIntegrityError(f"unparsable JSON in {path}: {exc}") from exc
        if not isinstance(index, dict) or not isinstance(index.get("versions"), list):
            raise ModelIntegrityError(
                f"malformed index {path}: expected an object with 'versions'"
            )
        index.setdefault("history", [])
        index.setdefault("production", None)
        return index

    def _write_index(self, model_name: str, index: dict[str, Any]) -> None:
        path = self._index_path(model_name)
        tmp = path.with_name(f"{INDEX_FILE}.tmp-{uuid.uuid4().hex}")
        try:
            _write_file(tmp, (json.dumps(index, indent=2) + "\n").encode())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    @contextlib.contextmanager
    def _locked(self, model_name: str, create: bool = False) -> Iterator[None]:
        """Exclusive per-model writer lock (also between threads: one open file each)."""
        mdir = self.model_dir(model_name)
        if create:
            mdir.mkdir(parents=True, exist_ok=True)
        elif not (mdir / INDEX_FILE).is_file():
            raise ModelNotFoundError(f"model {model_name!r} not found: no {mdir / INDEX_FILE}")
        with open(mdir / LOCK_FILE, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _info(self, model_name: str, entry: Mapping[str, Any]) -> VersionInfo:
        return VersionInfo(
            model_name=model_name,
            version=str(entry["version"]),
            path=self.model_dir(model_name) / str(entry["version"]),
            created_at=str(entry.get("created_at", "")),
            status=str(entry.get("status", "candidate")),
        )

    @staticmethod
    def _entry(index: Mapping[str, Any], version: str) -> dict[str, Any] | None:
        for entry in index["versions"]:
            if entry.get("version") == version:
                return entry
        return None

    # ---------------------------------------------------------------- writing

    def write_version(
        self,
        model_name: str,
        files: Mapping[str, bytes],
        metadata: Mapping[str, Any] | None = None,
        version: str | None = None,
        bump: str = "minor",
    ) -> VersionInfo:
        """Register a new immutable version holding ``files`` and ``metadata.json``.

        The version is ``version`` if given, else 1.0.0 for a new model and otherwise the
        highest existing version bumped by ``bump``. The first version of a model becomes
        production when ``auto_promote_first`` is set; later ones start as candidates.
        """
        _check_name("model name", model_name)
        for name, data in files.items():
            _check_name("file name", name)
            if name == METADATA_FILE:
                raise ValueError(f"{METADATA_FILE} is written by the registry, not a model file")
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"file {name!r}: expected bytes, got {type(data).__name__}")
        if version is not None:
            parse_version(version)
        if bump not in ("major", "minor", "patch"):
            raise ValueError(f"bump must be 'major', 'minor' or 'patch', got {bump!r}")
        user_meta = dict(metadata or {})

        with self._locked(model_name, create=True):
            mdir = self.model_dir(model_name)
            try:
                index = self._read_index(model_name)
            except ModelNotFoundError:
                index = {"model": model_name, "production": None, "versions": [], "history": []}
            taken = {e["version"] for e in index["versions"]}
            # directories count too: a crash between rename and index update leaves one behind
            taken |= {p.name for p in mdir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)}
            if version is None:
                version = (
                    bump_version(max(taken, key=parse_version), bump) if taken else "1.0.0"
                )
            elif version in taken:
                raise RegistryError(
                    f"version {version} of {model_name!r} already exists at {mdir / version}; "
                    "versions are immutable"
                )
            for key in RESERVED_METADATA_KEYS:
                ours = {"model_name": model_name, "version": version}.get(key)
                if key in user_meta and (ours is None or user_meta[key] != ours):
                    raise ValueError(f"metadata key {key!r} is set by the registry")

            created_at = _utc_now()
            meta = {
                **user_meta,
                "model_name": model_name,
                "version": version,
                "created_at": created_at,
                "files": {
                    name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                    for name, data in files.items()
                },
            }
            meta_bytes = (
                json.dumps(meta, indent=2, sort_keys=True, default=_json_default) + "\n"
            ).encode()

            final = mdir / version
            tmp = mdir / f".tmp-{version}-{uuid.uuid4().hex}"
            tmp.mkdir()
            try:
                for name, data in files.items():
                    _write_file(tmp / name, bytes(data))
                _write_file(tmp / METADATA_FILE, meta_bytes)
                _fsync_dir(tmp)
                os.rename(tmp, final)  # atomic: the version appears complete or not at all
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _fsync_dir(mdir)

            entry = {"version": version, "created_at": created_at, "status": "candidate"}
            index["versions"].append(entry)
            index["versions"].sort(key=lambda e: parse_version(e["version"]))
            first = len(index["versions"]) == 1
            if self.auto_promote_first and first and index["production"] is None:
                self._set_production(index, version, "promote", "first version (auto-promoted)")
            self._write_index(model_name, index)
            return self._info(model_name, entry)

    @staticmethod
    def _set_production(index: dict[str, Any], version: str, action: str, reason: str) -> None:
        old = index.get("production")
        for entry in index["versions"]:
            if entry["version"] == version:
                entry["status"] = "production"
            elif entry["version"] == old:
                entry["status"] = "archived"
        index["production"] = version
        index["history"].append(
            {"time": _utc_now(), "action": action, "from": old, "to": version, "reason": reason}
        )

    @staticmethod
    def _production_stack(index: Mapping[str, Any]) -> list[str]:
        """Production versions in order, replayed from history: promote pushes, rollback pops."""
        stack: list[str] = []
        for event in index.get("history", []):
            if event.get("action") == "rollback":
                if stack:
                    stack.pop()
                if not stack or stack[-1] != event.get("to"):
                    stack.append(str(event.get("to")))
            else:
                stack.append(str(event.get("to")))
        return stack

    def promote(self, model_name: str, version: str, reason: str = "") -> VersionInfo:
        """Make ``version`` production (after verifying its files); the old one is archived."""
        parse_version(version)
        with self._locked(model_name):
            index = self._read_index(model_name)
            entry = self._entry(index, version)
            if entry is None:
                raise ModelNotFoundError(
                    f"version {version} of {model_name!r} not found in {self._index_path(model_name)}"
                )
            self.load_version(model_name, version)  # refuse to serve a corrupted version
            if index.get("production") != version:
                self._set_production(index, version, "promote", reason)
                self._write_index(model_name, index)
            return self._info(model_name, entry)

    def rollback(self, model_name: str, reason: str = "") -> VersionInfo:
        """Put the previous production version back (repeatable: walks further back each time)."""
        with self._locked(model_name):
            index = self._read_index(model_name)
            stack = self._production_stack(index)
            if len(stack) < 2:
                raise RegistryError(
                    f"cannot roll back {model_name!r}: no earlier production version in its history"
                )
            target = stack[-2]
            entry = self._entry(index, target)
            if entry is None:
                raise ModelNotFoundError(
                    f"previous production version {target} of {model_name!r} is not in the index"
                )
            self.load_version(model_name, target)
            self._set_production(index, target, "rollback", reason)
            self._write_index(model_name, index)
            return self._info(model_name, entry)

    # ---------------------------------------------------------------- reading

    # ---------------------------------------------------------------- reports

    def write_report(self, model_name: str, version: str, name: str, data: bytes) -> Path:
        """Attach a derived report (e.g. ``performance_report.json``) to an existing version.

        Reports live in ``<version>/reports/``; they are not model files, are not listed in
        metadata.json and never change what :meth:`load_version` verifies or returns, so the
        version's model files stay immutable. Written aside and renamed (atomic).
        """
        vdir = self.version_dir(model_name, version)
        if not (vdir / METADATA_FILE).is_file():
            raise ModelNotFoundError(f"{model_name} {version} not found: no {vdir / METADATA_FILE}")
        _check_name("report name", name)
        rdir = vdir / "reports"
        rdir.mkdir(exist_ok=True)
        path = rdir / name
        tmp = rdir / f".{name}.tmp-{uuid.uuid4().hex}"
        try:
            _write_file(tmp, data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def read_report(self, model_name: str, version: str, name: str) -> bytes | None:
        """A report attached with :meth:`write_report`, or None."""
        path = self.version_dir(model_name, version) / "reports" / _check_name("report name", name)
        return path.read_bytes() if path.is_file() else None

    def list_models(self) -> list[str]:
        """Names of all models that have an index, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if _NAME_RE.match(p.name) and (p / INDEX_FILE).is_file()
        )

    def list_versions(self, model_name: str) -> list[VersionInfo]:
        """All versions of a model, oldest first."""
        index = self._read_index(model_name)
        return [self._info(model_name, e) for e in index["versions"]]

    def production_version(self, model_name: str) -> str | None:
        """The version served now, or None when nothing was promoted yet."""
        return self._read_index(model_name).get("production")

    def history(self, model_name: str) -> list[dict[str, Any]]:
        """Promotion and rollback events, oldest first."""
        return list(self._read_index(model_name)["history"])

    def _resolve(self, model_name: str, version: str | None) -> str:
        if version is not None:
            parse_version(version)
            return version
        production = self.production_version(model_name)
        if production is None:
            raise ModelNotFoundError(f"model {model_name!r} has no production version")
        return production

    def _read_metadata(self, model_name: str, version: str) -> tuple[Path, dict[str, Any]]:
        vdir = self.version_dir(model_name, version)
        path = vdir / METADATA_FILE
        if not vdir.is_dir():
            raise ModelNotFoundError(f"version {version} of {model_name!r} not found: no {vdir}")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ModelIntegrityError(f"missing file {path}") from None
        try:
            meta = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelIntegrityError(f"unparsable JSON in {path}: {exc}") from exc
        if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
            raise ModelIntegrityError(
                f"malformed metadata {path}: expected an object with 'files'"
            )
        if meta.get("model_name") != model_name or meta.get("version") != version:
            raise ModelIntegrityError(
                f"metadata {path} describes {meta.get('model_name')!r} {meta.get('version')!r}, "
                f"not {model_name!r} {version}"
            )
        return vdir, meta

    def get_metadata(self, model_name: str, version: str | None = None) -> dict[str, Any]:
        """``metadata.json`` of a version (production if None), without hashing the files."""
        return self._read_metadata(model_name, self._resolve(model_name, version))[1]

    def load_version(self, model_name: str, version: str | None = None) -> LoadedVersion:
        """Read every file of a version (production if None) and verify size and sha256."""
        version = self._resolve(model_name, version)
        vdir, meta = self._read_metadata(model_name, version)
        files: dict[str, bytes] = {}
        for name, spec in meta["files"].items():
            path = vdir / name
            try:
                expected_sha, expected_size = str(spec["sha256"]), int(spec["size"])
                _check_name("file name", name)
            except (TypeError, KeyError, ValueError) as exc:
                raise ModelIntegrityError(
                    f"malformed entry for {path} in {vdir / METADATA_FILE}: {exc}"
                ) from exc
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise ModelIntegrityError(
                    f"missing file {path} listed in {vdir / METADATA_FILE}"
                ) from None
            if len(data) != expected_size:
                raise ModelIntegrityError(
                    f"size mismatch for {path}: expected {expected_size} bytes, got {len(data)}"
                    + (" (truncated)" if len(data) < expected_size else "")
                )
            actual_sha = hashlib.sha256(data).hexdigest()
            if actual_sha != expected_sha:
                raise ModelIntegrityError(
                    f"sha256 mismatch for {path}: expected {expected_sha[:16]}..., "
                    f"got {actual_sha[:16]}..."
                )
            files[name] = data
        return LoadedVersion(
            model_name=model_name, version=version, path=vdir, metadata=meta, files=files
        )
