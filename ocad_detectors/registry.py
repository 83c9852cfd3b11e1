"""File-system model registry: immutable, hash-verified versions and an atomic production pointer.

Layout under the root (``data/models`` relative to the working directory, or ``$OCAD_MODEL_DIR``)::

    <root>/<model>/<version>/      immutable once visible, e.g. tcn_udp_echo/1.0.0/
        weights.safetensors        files registered by the writer (names and metadata
                                   schema per model kind: ocad_detectors.artifacts)
        metadata.json              the manifest: caller metadata + model_name, version,
                                   created_at, files (sha256 + size of every model file)
        signature.json             optional Ed25519 signature of metadata.json's bytes
    <root>/<model>/index.json      production pointer, versions (status, sha256 of their
                                   manifest), the production stack rollback walks back
    <root>/<model>/history.jsonl   promotion / rollback events, append-only
    <root>/<model>/.lock           flock'ed by writers

Why it is safe without a database:

* a version directory is written under a temporary name and ``os.rename``-d into place, so a
  reader never sees a half-written version, and versions are never overwritten;
* ``index.json`` is replaced atomically (write temp + ``os.replace``), so a reader's single read
  sees either the old or the new production pointer;
* writers serialise on an ``fcntl.flock`` per model, so concurrent promotions cannot lose an
  update;
* every load re-checks size and sha256 of every file listed in ``metadata.json``, and the
  manifest itself against the sha256 the index recorded when the version was written (so
  thresholds, scalers, reference statistics and architecture are covered, not just weights);
* with a signing key (``$OCAD_SIGNING_KEY`` or ``signing_key=``) the writer signs the manifest
  (Ed25519); a reader given the public key verifies it before use, and ``require_signed``
  refuses unsigned versions. Hashes catch accidents, signatures catch someone who can write
  the registry and recompute hashes;
* every ``index.json`` and manifest is validated against a schema (types, ranges, bounded
  sizes) before use; symlinks and non-regular files are refused, reads are size-bounded;
* writers remove temporary files left by a writer that was killed (they hold the lock, so any
  temporary file they find is dead).

A version written before manifest hashes existed (no ``metadata_sha256`` in its index entry)
loads as ``legacy``: its files are verified, its manifest cannot be, and the loader says so.

Weights are stored as safetensors (plain bytes + JSON header); nothing here uses pickle or
imports torch, scikit-learn, pandas or dagster.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import safetensors.numpy

from ocad_detectors._io import atomic_write, json_safe

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
    "generate_signing_key",
    "load_public_key",
    "validate_index",
    "validate_manifest",
]

DEFAULT_ROOT = "data/models"
ENV_VAR = "OCAD_MODEL_DIR"
METADATA_FILE = "metadata.json"
SIGNATURE_FILE = "signature.json"
INDEX_FILE = "index.json"
HISTORY_FILE = "history.jsonl"
LOCK_FILE = ".lock"
SIGNING_KEY_ENV = "OCAD_SIGNING_KEY"
#: bounds every reader enforces before parsing (a registry is input like any other)
MAX_INDEX_BYTES = 4 << 20
MAX_METADATA_BYTES = 32 << 20
MAX_MODEL_FILE_BYTES = 512 << 20
MAX_VERSIONS = 10_000
MAX_FILES = 64
MAX_JSON_DEPTH = 64
#: rollback depth kept in the index (the full record is history.jsonl); bounds index.json
MAX_STACK = 100
_SIGN_CONTEXT = b"ocad-model-manifest-v1\n"
#: candidate: registered, never served; production: served now; archived: served before
STATUSES = ("candidate", "production", "archived")
#: metadata keys the registry writes itself
RESERVED_METADATA_KEYS = ("model_name", "version", "created_at", "files")

# used with fullmatch: "$" would also accept a trailing newline ("1.0.0\n")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION_RE = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")
_SHA_RE = re.compile(r"[0-9a-f]{64}")


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
    m = _VERSION_RE.fullmatch(version) if isinstance(version, str) else None
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


def _not_json(obj: Any) -> Any:
    """Metadata may hold numpy values, paths and datetimes (:func:`json_safe`), nothing else."""
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
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid {kind} {name!r}: use letters, digits, '.', '_' or '-', not starting with "
            "'.', '_' or '-'"
        )
    return name


# ----------------------------------------------------------------------------- safe reading


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file that is not a symlink and not larger than ``limit``.

    ``O_NOFOLLOW`` refuses a symlink (one pointing out of the registry or at ``/dev/zero``),
    ``O_NONBLOCK`` keeps a FIFO from blocking the open, ``fstat`` refuses anything that is not
    a regular file, and the size bound keeps a huge file from exhausting memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        if os.path.islink(path):
            raise ModelIntegrityError(f"refusing symlink {path} (registry files must be regular files)") from None
        raise ModelIntegrityError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelIntegrityError(f"refusing {path}: not a regular file")
        if st.st_size > limit:
            raise ModelIntegrityError(f"refusing {path}: {st.st_size} bytes, more than the limit of {limit}")
        chunks: list[bytes] = []
        left = st.st_size + 1  # one byte more: notices a file that grew while read
        while left > 0:
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        data = b"".join(chunks)
        if len(data) > limit:
            raise ModelIntegrityError(f"refusing {path}: more than the limit of {limit} bytes")
        return data
    finally:
        os.close(fd)


def _check_dir(path: Path, what: str) -> None:
    """``path`` is a real directory inside the registry (not a symlink); else refuse."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ModelNotFoundError(f"{what} not found: no {path}") from None
    if stat.S_ISLNK(st.st_mode):
        raise ModelIntegrityError(f"refusing symlink {path} ({what} must be a directory inside the registry)")
    if not stat.S_ISDIR(st.st_mode):
        raise ModelIntegrityError(f"refusing {path}: {what} is not a directory")


def _json_depth_ok(obj: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether nesting stays within ``limit`` (iterative: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            if d > limit:
                return False
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            if d > limit:
                return False
            stack.extend((v, d + 1) for v in o)
    return True


def _loads(raw: bytes, path: Path) -> Any:
    """Parse JSON; every way it can fail becomes one :class:`ModelIntegrityError` naming the file."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelIntegrityError(f"unparsable JSON in {path}: {exc}") from None
    except RecursionError:
        raise ModelIntegrityError(f"unparsable JSON in {path}: nested too deeply") from None
    except MemoryError:
        raise ModelIntegrityError(f"unparsable JSON in {path}: too large to parse") from None
    if not _json_depth_ok(obj):
        raise ModelIntegrityError(f"malformed {path}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def _is_version(v: Any) -> TypeGuard[str]:
    return isinstance(v, str) and _VERSION_RE.fullmatch(v) is not None


def validate_index(index: Any, path: Path) -> dict[str, Any]:
    """Schema of ``index.json``; returns it normalised or raises :class:`ModelIntegrityError`.

    ``versions``: list of ``{version (semver), created_at (str), status, metadata_sha256?}``,
    unique versions; ``production``: null or one of the listed versions; ``production_stack``:
    listed versions; ``history`` (legacy, before history.jsonl): list of event objects.
    """

    def bad(why: str) -> ModelIntegrityError:
        return ModelIntegrityError(f"malformed index {path}: {why}")

    if not isinstance(index, dict):
        raise bad(f"expected an object, got {type(index).__name__}")
    versions = index.get("versions")
    if not isinstance(versions, list):
        raise bad("expected an object with a 'versions' list")
    if len(versions) > MAX_VERSIONS:
        raise bad(f"{len(versions)} versions, more than {MAX_VERSIONS}")
    seen: set[str] = set()
    for i, e in enumerate(versions):
        if not isinstance(e, dict):
            raise bad(f"versions[{i}] is {type(e).__name__}, expected an object")
        v = e.get("version")
        if not _is_version(v):
            raise bad(f"versions[{i}].version {str(v)[:40]!r} is not a MAJOR.MINOR.PATCH version")
        if v in seen:
            raise bad(f"version {v} listed twice")
        seen.add(v)
        if not isinstance(e.get("created_at", ""), str) or len(e.get("created_at", "")) > 64:
            raise bad(f"versions[{i}].created_at must be a short string")
        if e.get("status", "candidate") not in STATUSES:
            raise bad(f"versions[{i}].status {str(e.get('status'))[:40]!r} is not one of {list(STATUSES)}")
        sha = e.get("metadata_sha256")
        if sha is not None and not (isinstance(sha, str) and _SHA_RE.fullmatch(sha)):
            raise bad(f"versions[{i}].metadata_sha256 must be 64 lowercase hex digits")
    prod = index.get("production")
    if prod is not None:
        if not _is_version(prod):
            raise bad(f"production {str(prod)[:60]!r} is not a MAJOR.MINOR.PATCH version")
        if prod not in seen:
            raise bad(f"production {prod} is not a listed version")
    stack = index.get("production_stack")
    if stack is not None:
        if not isinstance(stack, list) or len(stack) > MAX_VERSIONS or not all(
            _is_version(v) and v in seen for v in stack
        ):
            raise bad("production_stack must be a list of listed versions")
    history = index.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise bad("history must be a list of event objects")
    model = index.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model must be a string")
    index.setdefault("production", None)
    return index


def validate_manifest(meta: Any, path: Path, model_name: str, version: str) -> dict[str, Any]:
    """Generic schema of a version's ``metadata.json`` (model kinds check their own keys)."""

    def bad(why: str) -> ModelIntegrityError:
        return ModelIntegrityError(f"malformed metadata {path}: {why}")

    if not isinstance(meta, dict):
        raise bad(f"expected an object, got {type(meta).__name__}")
    if meta.get("model_name") != model_name or meta.get("version") != version:
        raise ModelIntegrityError(
            f"metadata {path} describes {str(meta.get('model_name'))[:60]!r} "
            f"{str(meta.get('version'))[:40]!r}, not {model_name!r} {version}"
        )
    files = meta.get("files")
    if not isinstance(files, dict):
        raise bad("expected an object with 'files'")
    if not files:
        raise bad("'files' is empty: a version without model files cannot be verified")
    if len(files) > MAX_FILES:
        raise bad(f"{len(files)} files, more than {MAX_FILES}")
    for name, spec in files.items():
        if not (isinstance(name, str) and _NAME_RE.fullmatch(name)) or name in (METADATA_FILE, SIGNATURE_FILE):
            raise bad(f"invalid file name {str(name)[:60]!r}")
        if not isinstance(spec, dict):
            raise bad(f"files[{name!r}] must be an object with sha256 and size")
        sha, size = spec.get("sha256"), spec.get("size")
        if not (isinstance(sha, str) and _SHA_RE.fullmatch(sha)):
            raise bad(f"files[{name!r}].sha256 must be 64 lowercase hex digits")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_MODEL_FILE_BYTES:
            raise bad(f"files[{name!r}].size must be an integer in [0, {MAX_MODEL_FILE_BYTES}]")
    return meta


# ----------------------------------------------------------------------------- signatures


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise RegistryError(f"signing / verification needs the 'cryptography' package: {exc}") from exc
    return serialization, ed25519


def generate_signing_key(private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]) -> str:
    """Write a new Ed25519 key pair as PEM files (private one mode 0600); returns the key id."""
    serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(priv)
    Path(public_path).write_bytes(pub)
    return _key_id(key.public_key())


def _key_id(public_key: Any) -> str:
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _load_private_key(path: str | os.PathLike[str]) -> Any:
    serialization, ed25519 = _crypto()
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except OSError as exc:
        raise RegistryError(f"cannot read signing key {p}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise RegistryError(f"signing key {p} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise RegistryError(f"signing key {p} is not an Ed25519 key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Any:
    """An Ed25519 public key from a PEM file; :class:`RegistryError` naming the file otherwise."""
    serialization, ed25519 = _crypto()
    p = Path(path)
    try:
        key = serialization.load_pem_public_key(p.read_bytes())
    except OSError as exc:
        raise RegistryError(f"cannot read public key {p}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise RegistryError(f"public key {p} is not a PEM public key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise RegistryError(f"public key {p} is not an Ed25519 key")
    return key


def _signature_doc(private_key: Any, meta_bytes: bytes) -> bytes:
    sig = private_key.sign(_SIGN_CONTEXT + meta_bytes)
    doc = {"algorithm": "ed25519", "key_id": _key_id(private_key.public_key()), "signature": base64.b64encode(sig).decode()}
    return (json.dumps(doc, indent=2) + "\n").encode()


def _verify_signature(public_key: Any, sig_path: Path, sig_raw: bytes, meta_bytes: bytes) -> None:
    from cryptography.exceptions import InvalidSignature

    doc = _loads(sig_raw, sig_path)
    if not isinstance(doc, dict) or doc.get("algorithm") != "ed25519" or not isinstance(doc.get("signature"), str):
        raise ModelIntegrityError(f"malformed signature {sig_path}: expected algorithm ed25519 and a base64 signature")
    try:
        sig = base64.b64decode(doc["signature"], validate=True)
    except ValueError:
        raise ModelIntegrityError(f"malformed signature {sig_path}: not base64") from None
    try:
        public_key.verify(sig, _SIGN_CONTEXT + meta_bytes)
    except InvalidSignature:
        kid = doc.get("key_id")
        raise ModelIntegrityError(
            f"signature {sig_path} does not verify against the configured public key "
            f"(key id {_key_id(public_key)}, signature says {str(kid)[:20]!r}): the manifest was "
            "changed after signing or signed with another key"
        ) from None


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
    #: how far the manifest is vouched for: ``signed`` (signature verified with the configured
    #: public key), ``hashed`` (matches the sha256 the index recorded at write time) or
    #: ``legacy`` (written before manifest hashes existed: files verified, manifest not)
    trust: str = "hashed"

    def arrays(self, filename: str | None = None) -> dict[str, np.ndarray]:
        """The named arrays of a safetensors file of this version (None: its only
        ``.safetensors`` file; which file a model kind uses is in :mod:`ocad_detectors.artifacts`)."""
        if filename is None:
            found = sorted(n for n in self.files if n.endswith(".safetensors"))
            if len(found) != 1:
                raise ModelNotFoundError(
                    f"{self.model_name} {self.version} ({self.path}) has {len(found)} safetensors files "
                    f"{found}: name the one to read"
                )
            filename = found[0]
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
    """Versioned model store on the local file system (see the module docstring for the layout).

    ``signing_key``: PEM Ed25519 private key the writer signs manifests with (default
    ``$OCAD_SIGNING_KEY``; unset = unsigned). ``public_key``: PEM public key readers verify
    signatures with; ``require_signed`` refuses versions without a valid signature.
    ``validator(loaded)``: the model-kind checks promotion and rollback run before moving the
    production pointer (default: :func:`ocad_detectors.modelset.validate_loaded`, the same
    checks the detectors' loader runs).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        auto_promote_first: bool = True,
        signing_key: str | os.PathLike[str] | None = None,
        public_key: str | os.PathLike[str] | None = None,
        require_signed: bool = False,
        validator: Callable[[LoadedVersion], Any] | None = None,
    ) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.auto_promote_first = auto_promote_first
        self.signing_key = signing_key
        self.public_key_path = public_key
        self.require_signed = bool(require_signed)
        if self.require_signed and public_key is None:
            raise RegistryError("require_signed needs a public key to verify signatures with")
        self._public_key = load_public_key(public_key) if public_key is not None else None
        self._validator = validator

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
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"registry root {self.root} is not a directory")
        _check_dir(path.parent, f"model {model_name!r}")
        try:
            raw = _read_regular(path, MAX_INDEX_BYTES)
        except FileNotFoundError:
            raise ModelNotFoundError(f"model {model_name!r} not found: no {path}") from None
        return validate_index(_loads(raw, path), path)

    def _write_index(self, model_name: str, index: dict[str, Any]) -> None:
        path = self._index_path(model_name)
        index = {k: v for k, v in index.items() if k != "history"}  # history lives in the log
        atomic_write(path, (json.dumps(index, indent=2) + "\n").encode(), tmp=path.with_name(f"{INDEX_FILE}.tmp-{uuid.uuid4().hex}"))
        _fsync_dir(path.parent)

    def _append_history(self, model_name: str, events: list[dict[str, Any]]) -> None:
        """Append events to ``history.jsonl`` (O_APPEND + fsync; never rewritten)."""
        path = self.model_dir(model_name) / HISTORY_FILE
        data = b"".join((json.dumps(e, sort_keys=True) + "\n").encode() for e in events)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _clean_leftovers(self, mdir: Path) -> None:
        """Remove temporary files of writers that died (caller holds the lock, so they are dead)."""
        for p in mdir.iterdir():
            name = p.name
            try:
                if name.startswith(f"{INDEX_FILE}.tmp-") and not p.is_symlink():
                    p.unlink()
                elif name.startswith(".tmp-") and p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
            except OSError:  # pragma: no cover - best effort; the next writer tries again
                pass

    @contextlib.contextmanager
    def _locked(self, model_name: str, create: bool = False) -> Iterator[None]:
        """Exclusive per-model writer lock (also between threads: one open file each)."""
        mdir = self.model_dir(model_name)
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"registry root {self.root} is not a directory")
        if create:
            mdir.mkdir(parents=True, exist_ok=True)
        _check_dir(mdir, f"model {model_name!r}")
        if not create and not os.path.lexists(mdir / INDEX_FILE):
            raise ModelNotFoundError(f"model {model_name!r} not found: no {mdir / INDEX_FILE}")
        fd = os.open(mdir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                self._clean_leftovers(mdir)
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

    def _migrate_history(self, model_name: str, index: dict[str, Any]) -> list[dict[str, Any]]:
        """Move a legacy in-index history into the log once; keep the production stack."""
        legacy = index.get("history") or []
        if "production_stack" not in index:
            index["production_stack"] = _replay_stack(legacy, index.get("production"))
        if legacy and not (self.model_dir(model_name) / HISTORY_FILE).exists():
            return list(legacy)
        return []

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
        production when ``auto_promote_first`` is set; later ones start as candidates. The
        manifest's sha256 goes into the index entry; with a signing key the manifest is signed.
        """
        _check_name("model name", model_name)
        if not files:
            raise ValueError("a version needs at least one model file")
        for name, data in files.items():
            _check_name("file name", name)
            if name in (METADATA_FILE, SIGNATURE_FILE):
                raise ValueError(f"{name} is written by the registry, not a model file")
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"file {name!r}: expected bytes, got {type(data).__name__}")
            if len(data) > MAX_MODEL_FILE_BYTES:
                raise ValueError(f"file {name!r}: {len(data)} bytes, more than {MAX_MODEL_FILE_BYTES}")
        if version is not None:
            parse_version(version)
        if bump not in ("major", "minor", "patch"):
            raise ValueError(f"bump must be 'major', 'minor' or 'patch', got {bump!r}")
        user_meta = dict(metadata or {})
        key_path = self.signing_key if self.signing_key is not None else os.environ.get(SIGNING_KEY_ENV) or None
        private_key = _load_private_key(key_path) if key_path else None

        with self._locked(model_name, create=True):
            mdir = self.model_dir(model_name)
            try:
                index = self._read_index(model_name)
            except ModelNotFoundError:
                index = {"model": model_name, "production": None, "versions": [], "production_stack": []}
            pending = self._migrate_history(model_name, index)
            taken = {e["version"] for e in index["versions"]}
            # directories count too: a crash between rename and index update leaves one behind
            taken |= {p.name for p in mdir.iterdir() if p.is_dir() and _VERSION_RE.fullmatch(p.name)}
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
                json.dumps(json_safe(meta), indent=2, sort_keys=True, default=_not_json) + "\n"
            ).encode()
            if len(meta_bytes) > MAX_METADATA_BYTES:
                raise ValueError(f"metadata of {model_name} {version}: {len(meta_bytes)} bytes, more than {MAX_METADATA_BYTES}")
            if not _json_depth_ok(json.loads(meta_bytes)):
                raise ValueError(f"metadata of {model_name} {version} is nested deeper than {MAX_JSON_DEPTH} levels")

            final = mdir / version
            tmp = mdir / f".tmp-{version}-{uuid.uuid4().hex}"
            tmp.mkdir()
            try:
                for name, data in files.items():
                    _write_file(tmp / name, bytes(data))
                _write_file(tmp / METADATA_FILE, meta_bytes)
                if private_key is not None:
                    _write_file(tmp / SIGNATURE_FILE, _signature_doc(private_key, meta_bytes))
                _fsync_dir(tmp)
                os.rename(tmp, final)  # atomic: the version appears complete or not at all
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _fsync_dir(mdir)

            entry = {
                "version": version,
                "created_at": created_at,
                "status": "candidate",
                "metadata_sha256": hashlib.sha256(meta_bytes).hexdigest(),
            }
            index["versions"].append(entry)
            index["versions"].sort(key=lambda e: parse_version(e["version"]))
            first = len(index["versions"]) == 1
            if self.auto_promote_first and first and index["production"] is None:
                pending.append(self._set_production(index, version, "promote", "first version (auto-promoted)"))
            self._commit(model_name, index, pending)
            return self._info(model_name, entry)

    def _commit(self, model_name: str, index: dict[str, Any], events: list[dict[str, Any]]) -> None:
        """Write the index (the authority), then append its events to the log. A crash in
        between loses at most the audit lines of this one change, never the pointer."""
        self._write_index(model_name, index)
        if events:
            self._append_history(model_name, events)

    @staticmethod
    def _set_production(index: dict[str, Any], version: str, action: str, reason: str) -> dict[str, Any]:
        old = index.get("production")
        for entry in index["versions"]:
            if entry["version"] == version:
                entry["status"] = "production"
            elif entry["version"] == old:
                entry["status"] = "archived"
        index["production"] = version
        stack = index.setdefault("production_stack", [])
        if action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != version:
                stack.append(version)
        else:
            stack.append(version)
        if len(stack) > MAX_STACK:
            del stack[: len(stack) - MAX_STACK]
        return {"time": _utc_now(), "action": action, "from": old, "to": version, "reason": str(reason)[:1000]}

    @staticmethod
    def _production_stack(index: Mapping[str, Any]) -> list[str]:
        """Production versions in order: promote pushes, rollback pops."""
        if "production_stack" in index:
            return list(index["production_stack"])
        return _replay_stack(index.get("history", []), index.get("production"))

    def validate(self, loaded: LoadedVersion) -> None:
        """The model-kind checks the detectors run on load (raises ``ModelIntegrityError``)."""
        validator = self._validator
        if validator is None:
            from ocad_detectors.modelset import validate_loaded

            validator = validate_loaded
        try:
            validator(loaded)
        except RegistryError:
            raise
        except Exception as exc:
            raise ModelIntegrityError(
                f"{loaded.model_name} {loaded.version} ({loaded.path}) would be refused by the "
                f"detectors: {type(exc).__name__}: {exc}"
            ) from None

    def promote(self, model_name: str, version: str, reason: str = "") -> VersionInfo:
        """Make ``version`` production after the same verification and validation the
        detectors run on load; the old one is archived."""
        parse_version(version)
        with self._locked(model_name):
            index = self._read_index(model_name)
            entry = self._entry(index, version)
            if entry is None:
                raise ModelNotFoundError(
                    f"version {version} of {model_name!r} not found in {self._index_path(model_name)}"
                )
            pending = self._migrate_history(model_name, index)
            self.validate(self.load_version(model_name, version, _index=index))
            if index.get("production") != version:
                pending.append(self._set_production(index, version, "promote", reason))
            if pending or "history" in index:
                self._commit(model_name, index, pending)
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
            pending = self._migrate_history(model_name, index)
            self.validate(self.load_version(model_name, target, _index=index))
            pending.append(self._set_production(index, target, "rollback", reason))
            self._commit(model_name, index, pending)
            return self._info(model_name, entry)

    # ---------------------------------------------------------------- reports

    def write_report(self, model_name: str, version: str, name: str, data: bytes) -> Path:
        """Attach a derived report (e.g. ``performance_report.json``) to an existing version.

        Reports live in ``<version>/reports/``; they are not model files, are not listed in
        metadata.json and never change what :meth:`load_version` verifies or returns, so the
        version's model files stay immutable. Written aside and renamed (atomic).
        """
        vdir = self.version_dir(model_name, version)
        _check_dir(vdir, f"version {version} of {model_name!r}")
        if not (vdir / METADATA_FILE).is_file():
            raise ModelNotFoundError(f"{model_name} {version} not found: no {vdir / METADATA_FILE}")
        _check_name("report name", name)
        rdir = vdir / "reports"
        rdir.mkdir(exist_ok=True)
        _check_dir(rdir, f"reports of {model_name} {version}")  # not a symlink out of the registry
        path = rdir / name
        return atomic_write(path, data, tmp=rdir / f".{name}.tmp-{uuid.uuid4().hex}")

    def read_report(self, model_name: str, version: str, name: str) -> bytes | None:
        """A report attached with :meth:`write_report`, or None."""
        path = self.version_dir(model_name, version) / "reports" / _check_name("report name", name)
        try:
            return _read_regular(path, MAX_METADATA_BYTES)
        except FileNotFoundError:
            return None

    # ---------------------------------------------------------------- reading

    def list_models(self) -> list[str]:
        """Names of all models that have an index, sorted."""
        if not self.root.is_dir():
            if self.root.exists():
                raise RegistryError(f"registry root {self.root} is not a directory")
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if _NAME_RE.fullmatch(p.name) and not p.is_symlink() and (p / INDEX_FILE).is_file()
        )

    def list_versions(self, model_name: str) -> list[VersionInfo]:
        """All versions of a model, oldest first."""
        index = self._read_index(model_name)
        return [self._info(model_name, e) for e in index["versions"]]

    def production_version(self, model_name: str) -> str | None:
        """The version served now, or None when nothing was promoted yet."""
        return self._read_index(model_name).get("production")

    def history(self, model_name: str) -> list[dict[str, Any]]:
        """Promotion and rollback events, oldest first (``history.jsonl``; a line torn by a
        crash is skipped; a registry from before the log keeps its events in ``index.json``)."""
        index = self._read_index(model_name)
        path = self.model_dir(model_name) / HISTORY_FILE
        try:
            raw = _read_regular(path, 1 << 30)
        except FileNotFoundError:
            return list(index.get("history", []))
        events = []
        for line in raw.splitlines():
            try:
                e = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(e, dict):
                events.append(e)
        return events

    def _resolve(self, model_name: str, version: str | None, index: Mapping[str, Any] | None = None) -> str:
        if version is not None:
            parse_version(version)
            return version
        production = (index if index is not None else self._read_index(model_name)).get("production")
        if production is None:
            raise ModelNotFoundError(f"model {model_name!r} has no production version")
        return production

    def _read_metadata(
        self, model_name: str, version: str, index: Mapping[str, Any] | None = None
    ) -> tuple[Path, dict[str, Any], str]:
        """The verified manifest of a listed version and its trust level
        (``signed`` / ``hashed`` / ``legacy``; see :attr:`LoadedVersion.trust`)."""
        index = index if index is not None else self._read_index(model_name)
        entry = self._entry(index, version)
        if entry is None:
            raise ModelNotFoundError(
                f"version {version} of {model_name!r} is not listed in {self._index_path(model_name)}"
            )
        vdir = self.version_dir(model_name, version)
        _check_dir(vdir, f"version {version} of {model_name!r}")
        path = vdir / METADATA_FILE
        try:
            raw = _read_regular(path, MAX_METADATA_BYTES)
        except FileNotFoundError:
            raise ModelIntegrityError(f"missing file {path}") from None
        recorded = entry.get("metadata_sha256")
        if recorded is not None:
            actual = hashlib.sha256(raw).hexdigest()
            if actual != recorded:
                raise ModelIntegrityError(
                    f"manifest {path} does not match the sha256 recorded in "
                    f"{self._index_path(model_name)} ({recorded[:16]}..., got {actual[:16]}...): "
                    "it was changed after the version was registered"
                )
            trust = "hashed"
        else:
            trust = "legacy"
        sig_path = vdir / SIGNATURE_FILE
        try:
            sig_raw: bytes | None = _read_regular(sig_path, 64 << 10)
        except FileNotFoundError:
            sig_raw = None
        if self._public_key is not None:
            if sig_raw is not None:
                _verify_signature(self._public_key, sig_path, sig_raw, raw)
                trust = "signed"
            elif self.require_signed:
                raise ModelIntegrityError(
                    f"{model_name} {version} is not signed (no {sig_path}) and require_signed is set"
                )
        meta = validate_manifest(_loads(raw, path), path, model_name, version)
        return vdir, meta, trust

    def get_metadata(self, model_name: str, version: str | None = None) -> dict[str, Any]:
        """``metadata.json`` of a version (production if None), manifest verified, files not hashed."""
        index = self._read_index(model_name)
        return self._read_metadata(model_name, self._resolve(model_name, version, index), index)[1]

    def load_version(
        self, model_name: str, version: str | None = None, *, _index: Mapping[str, Any] | None = None
    ) -> LoadedVersion:
        """Read every file of a version (production if None) and verify manifest, size and
        sha256; refuses symlinks, non-regular files and anything above the size bounds."""
        index = _index if _index is not None else self._read_index(model_name)
        version = self._resolve(model_name, version, index)
        vdir, meta, trust = self._read_metadata(model_name, version, index)
        files: dict[str, bytes] = {}
        for name, spec in meta["files"].items():
            path = vdir / name
            expected_sha, expected_size = spec["sha256"], spec["size"]
            try:
                data = _read_regular(path, expected_size)
            except FileNotFoundError:
                raise ModelIntegrityError(
                    f"missing file {path} listed in {vdir / METADATA_FILE}"
                ) from None
            except ModelIntegrityError as exc:
                if "more than the limit" in str(exc):
                    raise ModelIntegrityError(
                        f"size mismatch for {path}: expected {expected_size} bytes, the file is larger"
                    ) from None
                raise
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
            model_name=model_name, version=version, path=vdir, metadata=meta, files=files, trust=trust
        )


def _replay_stack(history: Any, production: Any) -> list[str]:
    """Production stack of a legacy index, replayed from its history: promote pushes,
    rollback pops (ends at the current production when the history is consistent)."""
    stack: list[str] = []
    for event in history if isinstance(history, list) else []:
        if not isinstance(event, dict) or not _is_version(event.get("to")):
            continue
        if event.get("action") == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != event.get("to"):
                stack.append(str(event.get("to")))
        else:
            stack.append(str(event.get("to")))
    if _is_version(production) and (not stack or stack[-1] != production):
        stack.append(production)
    return stack[-MAX_STACK:]
