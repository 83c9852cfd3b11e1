"""Load the production models from the registry into ready-to-score numpy objects.

A model that is missing, fails sha256 verification or has unusable contents is reported once
(``logging`` warning on the ``ocad_detectors`` logger) and left out; the detectors that need
it then contribute score 0 and no evidence, everything else keeps running. What each artifact
holds (names, files, metadata schema) is the contract in :mod:`ocad_detectors.artifacts`; this
module turns a verified artifact into the objects the detectors score with.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ocad_detectors.artifacts import (
    IFOREST_MODEL_NAME,
    MODEL_NAMES,
    TCN_MODEL_NAMES,
    IFMetadata,
    IForestArtifact,
    TCNArtifact,
    TCNMetadata,
    read_artifact,
    tcn_metric,
)
from ocad_detectors.features import FeatureConfig, ReferenceStats
from ocad_detectors.iforest import NumpyIsolationForest
from ocad_detectors.registry import INDEX_FILE, LoadedVersion, ModelRegistry
from ocad_detectors.signals import SIGNAL_METRIC
from ocad_detectors.tcn import NumpyTCN

__all__ = ["IFOREST_MODEL_NAME", "TCN_MODEL_NAMES", "IFGroup", "IFModel", "ModelLoader", "ModelSet", "TCNModel", "validate_loaded"]

logger = logging.getLogger("ocad_detectors")


@dataclass(frozen=True)
class TCNModel:
    """One metric's forecaster plus what turns its output into a residual in σ."""

    name: str
    version: str
    metric: str
    signal: str
    net: NumpyTCN
    mean: float
    std: float
    residual_pooled: float
    residual_per_endpoint: Mapping[str, float]
    #: the exported arrays and architecture (the streaming path fuses same-shaped TCNs)
    weights: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)
    architecture: Mapping[str, Any] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return self.net.seq_len

    #: residual thresholds (σ) calibrated to a false-alert budget on healthy validation windows;
    #: None: a registry written before calibration existed (the configured default applies)
    threshold_pooled: float | None = None
    threshold_per_endpoint: Mapping[str, float] = field(default_factory=dict)

    def threshold_for(self, endpoint_id: str, per_endpoint: bool = True) -> float | None:
        if per_endpoint and endpoint_id in self.threshold_per_endpoint:
            return self.threshold_per_endpoint[endpoint_id]
        return self.threshold_pooled

    def residual_scale(self, endpoint_id: str, per_endpoint: bool = True) -> float:
        if per_endpoint:
            return self.residual_per_endpoint.get(endpoint_id, self.residual_pooled)
        return self.residual_pooled

    @classmethod
    def from_artifact(cls, art: TCNArtifact, version: str) -> TCNModel:
        """The scoring object of a contract-checked artifact (builds the numpy forecaster)."""
        meta = art.metadata
        rs = meta.residual_scale
        cal = rs.calibration
        return cls(
            name=art.name,
            version=version,
            metric=meta.metric_type,
            signal=meta.signal,
            net=art.build(),
            mean=meta.scaler.mean,
            std=meta.scaler.std,
            residual_pooled=rs.pooled,
            residual_per_endpoint=dict(rs.per_endpoint),
            weights=dict(art.weights),
            architecture=meta.architecture.to_dict(),
            threshold_pooled=cal.pooled if cal is not None else None,
            threshold_per_endpoint=dict(cal.per_endpoint) if cal is not None else {},
        )

    @classmethod
    def from_version(cls, name: str, version: str, metadata: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> TCNModel:
        """From a manifest and its weights (validated against the contract)."""
        return cls.from_artifact(TCNArtifact(TCNMetadata.from_dict(metadata, name), arrays), version)


@dataclass(frozen=True)
class IFGroup:
    """The forest of one capability group, its feature order, scaler and threshold."""

    key: str
    capabilities: frozenset[str]
    features: tuple[str, ...]
    forest: NumpyIsolationForest
    mean: np.ndarray
    std: np.ndarray
    threshold: float
    #: thresholds calibrated for single endpoints (budget calibration); others use ``threshold``
    endpoint_thresholds: Mapping[str, float] = field(default_factory=dict)

    def threshold_for(self, endpoint_id: str) -> float:
        return self.endpoint_thresholds.get(endpoint_id, self.threshold)


@dataclass(frozen=True)
class IFModel:
    """All capability groups of one Isolation Forest version and the statistics they assume."""

    name: str
    version: str
    feature_config: FeatureConfig
    groups: Mapping[str, IFGroup]
    reference: ReferenceStats

    @classmethod
    def from_artifact(cls, art: IForestArtifact, version: str) -> IFModel:
        """The scoring object of a contract-checked artifact (builds every group's forest)."""
        meta = art.metadata
        forests = art.build()
        groups = {
            key: IFGroup(
                key, spec.capabilities, spec.features, forests[key],
                np.asarray(spec.scaler_mean, dtype=np.float64), np.asarray(spec.scaler_std, dtype=np.float64),
                spec.threshold, dict(spec.endpoint_thresholds),
            )
            for key, spec in meta.groups.items()
        }
        return cls(art.name, version, meta.feature_config, groups, meta.reference)

    @classmethod
    def from_version(cls, name: str, version: str, metadata: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> IFModel:
        """From a manifest and the flat ``"<group>/<array>"`` arrays (validated against the contract)."""
        meta = IFMetadata.from_dict(metadata, name)
        forests = {key: {k[len(key) + 1:]: v for k, v in arrays.items() if k.startswith(f"{key}/")} for key in meta.groups}
        return cls.from_artifact(IForestArtifact(meta, forests), version)


@dataclass(frozen=True)
class ModelSet:
    """The models one detector generation scores with (immutable: a reload builds a new one)."""

    tcn: Mapping[str, TCNModel] = field(default_factory=dict)
    iforest: IFModel | None = None

    @property
    def versions(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {name: None for name in MODEL_NAMES}
        for m in self.tcn.values():
            out[m.name] = m.version
        if self.iforest is not None:
            out[IFOREST_MODEL_NAME] = self.iforest.version
        return out

    def reference(self) -> ReferenceStats:
        """Reference statistics (rules baselines, explanations): the Isolation Forest's (per endpoint), with the
        TCN scalers (training mean/std of all endpoints) as pooled fallback per signal."""
        ref = ReferenceStats()
        for m in self.tcn.values():
            ref.pooled[m.signal] = (m.mean, ReferenceStats.floor_std(m.mean, m.std))
        if self.iforest is not None:
            ref.per_endpoint.update(self.iforest.reference.per_endpoint)
            ref.pooled.update(self.iforest.reference.pooled)
        return ref

    def known_capabilities(self) -> dict[str, frozenset[str]]:
        """Capabilities of the endpoints the models were trained on (from reference statistics
        and per-endpoint residual scales)."""
        caps: dict[str, set[str]] = {}
        if self.iforest is not None:
            for ep, sig in self.iforest.reference.per_endpoint:
                if sig in SIGNAL_METRIC:
                    caps.setdefault(ep, set()).add(SIGNAL_METRIC[sig])
        for m in self.tcn.values():
            for ep in m.residual_per_endpoint:
                caps.setdefault(ep, set()).add(m.metric)
        return {ep: frozenset(c) for ep, c in caps.items()}


def _release_freed_memory() -> None:
    """Hand the heap freed by parsing (file bytes, intermediate arrays) back to the OS.

    glibc keeps freed heap pages mapped, so the one-off peak of loading would otherwise stay
    in the resident set of a long-running detector; ``malloc_trim`` is a no-op elsewhere.
    """
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, ImportError):  # not glibc: nothing to do
        pass


def build_model(lv: LoadedVersion) -> TCNModel | IFModel | None:
    """The ready-to-score model of a verified version, by model name (None: not a detector model)."""
    art = read_artifact(lv)
    if isinstance(art, IForestArtifact):
        return IFModel.from_artifact(art, lv.version)
    if isinstance(art, TCNArtifact):
        return TCNModel.from_artifact(art, lv.version)
    return None


def validate_loaded(lv: LoadedVersion) -> None:
    """What promotion runs: exactly the checks the loader applies before a model is served
    (kind, architecture bounds, tensor names/shapes/dtypes/finiteness, forest structure,
    scalers, thresholds). Names that are not detector models only get the registry checks."""
    build_model(lv)


class ModelLoader:
    """Reads production versions from one or two registry roots and warns once per problem.

    ``public_key`` / ``require_signed``: the registry's trust settings (see
    :class:`~ocad_detectors.registry.ModelRegistry`). :attr:`errors` holds the problems of the
    latest :meth:`load`, one message per refused model.
    """

    def __init__(
        self,
        tcn_root: Path | None,
        iforest_root: Path | None,
        pinned: Mapping[str, str] | None = None,
        *,
        public_key: str | os.PathLike[str] | None = None,
        require_signed: bool = False,
    ) -> None:
        self.tcn_root = tcn_root
        self.iforest_root = iforest_root
        self.public_key = public_key
        self.require_signed = require_signed
        if require_signed and public_key is None:
            raise ValueError("trust.require_signed needs trust.public_key")
        self.errors: list[str] = []
        #: model name -> version to serve instead of production (evaluation, shadow scoring)
        self.pinned = dict(pinned or {})
        unknown = set(self.pinned) - set(MODEL_NAMES)
        if unknown:
            raise ValueError(f"cannot pin unknown models {sorted(unknown)}; known: {list(MODEL_NAMES)}")
        self._warned: set[tuple[str, str]] = set()

    def _warn(self, name: str, message: str) -> None:
        key = (name, message)
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("model %s unavailable, detectors that need it are off: %s", name, message)

    def _entries(self) -> list[tuple[str, Path]]:
        out: list[tuple[str, Path]] = []
        if self.tcn_root is not None:
            out += [(n, self.tcn_root) for n in TCN_MODEL_NAMES.values()]
        if self.iforest_root is not None:
            out.append((IFOREST_MODEL_NAME, self.iforest_root))
        return out

    def fingerprint(self) -> tuple[Any, ...]:
        """Cheap change detector: (mtime_ns, size, inode) of every model's index.json."""
        fp: list[tuple[int, int, int] | None] = []
        for name, root in self._entries():
            try:
                st = os.stat(root / name / INDEX_FILE)
                fp.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                fp.append(None)
        return tuple(fp)

    def load(self, current: ModelSet | None = None) -> ModelSet:
        """Production versions of every model; an unchanged version is reused from ``current``;
        a version that cannot be loaded keeps the model of ``current`` (if any). Problems are
        in :attr:`errors` afterwards (a reload uses them to keep the whole old set)."""
        self.errors = []
        tcn: dict[str, TCNModel] = {}
        iforest: IFModel | None = None
        for name, root in self._entries():
            old: TCNModel | IFModel | None
            if name == IFOREST_MODEL_NAME:
                old = current.iforest if current else None
            else:
                old = current.tcn.get(tcn_metric(name) or "") if current else None
            model = self._load_one(name, root, old)
            if model is None:
                continue
            if isinstance(model, IFModel):
                iforest = model
            else:
                tcn[model.metric] = model
        _release_freed_memory()
        return ModelSet(tcn=tcn, iforest=iforest)

    def _load_one(self, name: str, root: Path, old: TCNModel | IFModel | None) -> TCNModel | IFModel | None:
        absent = not os.path.lexists(root / name / INDEX_FILE)  # never registered: not a refusal
        try:
            reg = ModelRegistry(root, public_key=self.public_key, require_signed=self.require_signed)
            version = self.pinned.get(name) or reg.production_version(name)
            if version is None:
                raise ValueError("no production version")
            if old is not None and old.version == version:
                return old
            lv = reg.load_version(name, version)  # verifies manifest, size and sha256 of every file
            if lv.trust == "legacy":
                key = (name, f"legacy {version}")
                if key not in self._warned:
                    self._warned.add(key)
                    logger.warning(
                        "model %s %s is a legacy version: its files are verified, its metadata.json "
                        "is not (no manifest hash recorded); re-register it to cover thresholds and scalers",
                        name, version,
                    )
            model = build_model(lv)
            assert model is not None
        except (Exception, RecursionError) as exc:
            where = f"{root / name}"
            msg = f"{type(exc).__name__}: {exc} ({where})"
            if not absent and not (isinstance(exc, ValueError) and str(exc) == "no production version"):
                self.errors.append(f"{name}: {msg}")
            self._warn(name, msg)
            if old is not None:
                logger.warning("keeping %s %s in service", name, old.version)
            return old
        if old is not None:
            logger.info("model %s switched from %s to %s", name, old.version, model.version)
        else:
            logger.info("model %s %s loaded", name, model.version)
        return model
