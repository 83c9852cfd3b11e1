"""The model artifact contract between training and serving: one class per model kind.

Training (``ocad_pipeline.training``), the test fixtures and the detectors' loader
(:mod:`ocad_detectors.modelset`) all go through this module, so a model's registry name, its
file names and its metadata schema are written down once, here, and a trainer cannot write
what the loader would refuse (``write`` runs the loader's checks first).

=====================  ======================  ===============================================
kind                   registry name           files
=====================  ======================  ===============================================
``tcn``                ``tcn_<metric_type>``   ``weights.safetensors``: the forecaster's
                                               tensors by ``state_dict`` name (float)
``isolation_forest``   ``isolation_forest``    ``forest.safetensors``: ``"<group>/<array>"``
                                               per capability group (see
                                               ``ocad_pipeline.models.iforest_export``)
=====================  ======================  ===============================================

Metadata (``metadata.json``; the registry adds ``model_name``, ``version``, ``created_at`` and
``files``):

* TCN (:class:`TCNMetadata`): ``kind``, ``format_version``, ``metric_type``, ``signal``,
  ``architecture`` ``{seq_len, hidden_channels, dilations, kernel_size}``, ``scaler``
  ``{mean, std}`` and ``residual_scale`` ``{pooled, per_endpoint, calibration?}`` (signal
  units; ``calibration`` holds the residual thresholds in σ, ``pooled`` and ``per_endpoint``);
* Isolation Forest (:class:`IFMetadata`): ``kind``, ``format_version``, ``feature_config``,
  ``groups`` ``{<group>: {features, scaler {mean, std}, threshold, endpoint_thresholds}}`` and
  ``reference_stats`` records;
* every other key (provenance, config, metrics, training fingerprint) is kept as it is in the
  ``info`` mapping: reports read it, the detectors do not depend on it.

Format versions: ``format_version`` 1 is the current layout; metadata without the key is
format 0, written before this module existed with the same keys, and loads unchanged. A newer
format is refused with a message saying so (not misread).

Integrity is the registry's: :meth:`TCNArtifact.read` / :func:`read_artifact` take a
:class:`~ocad_detectors.registry.LoadedVersion`, whose manifest, sizes and sha256 (and
signature) :meth:`ModelRegistry.load_version` has verified. Weights are safetensors, never
pickle. Bad metadata raises :class:`ArtifactError` (a ``ValueError``) naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, TypeAlias

import numpy as np

from ocad_detectors.features import FeatureConfig, ReferenceStats, model_feature_names
from ocad_detectors.iforest import NumpyIsolationForest
from ocad_detectors.registry import (
    RESERVED_METADATA_KEYS,
    LoadedVersion,
    ModelRegistry,
    VersionInfo,
    save_arrays,
)
from ocad_detectors.signals import METRIC_SIGNAL, METRIC_TYPES
from ocad_detectors.tcn import NumpyTCN, check_architecture, tcn_weight_shapes

__all__ = [
    "FORMAT_VERSION",
    "FORMAT_KEY",
    "ModelKind",
    "TCN_PREFIX",
    "TCN_MODEL_NAMES",
    "IFOREST_MODEL_NAME",
    "MODEL_NAMES",
    "TCN_WEIGHTS_FILE",
    "IFOREST_FILE",
    "ArtifactError",
    "tcn_model_name",
    "tcn_metric",
    "model_kind",
    "read_format_version",
    "TCNArchitecture",
    "Scaler",
    "ResidualCalibration",
    "ResidualScale",
    "TCNMetadata",
    "IFGroupSpec",
    "IFMetadata",
    "TCNArtifact",
    "IForestArtifact",
    "Artifact",
    "ModelMetadata",
    "artifact_type",
    "parse_metadata",
    "read_artifact",
    "verify_version",
]

#: layout of the metadata this code writes; readers accept 0 (no key, before issue 12) up to this
FORMAT_VERSION = 1
FORMAT_KEY = "format_version"


class ModelKind(str, Enum):
    """The model kinds the detectors serve (the ``kind`` metadata value)."""

    TCN = "tcn"
    ISOLATION_FOREST = "isolation_forest"


TCN_PREFIX = "tcn_"
#: metric type -> registry name of its forecaster
TCN_MODEL_NAMES: dict[str, str] = {m: f"{TCN_PREFIX}{m}" for m in METRIC_TYPES}
IFOREST_MODEL_NAME = "isolation_forest"
#: every model the detectors load, in display order
MODEL_NAMES: tuple[str, ...] = (*TCN_MODEL_NAMES.values(), IFOREST_MODEL_NAME)
TCN_WEIGHTS_FILE = "weights.safetensors"
IFOREST_FILE = "forest.safetensors"


class ArtifactError(ValueError):
    """Metadata or arrays that do not satisfy the contract; the message names the field."""


def tcn_model_name(metric_type: str) -> str:
    """Registry name of a metric type's forecaster, e.g. ``tcn_udp_echo``."""
    if metric_type not in TCN_MODEL_NAMES:
        raise ValueError(f"unknown metric type {metric_type!r}; expected one of {METRIC_TYPES}")
    return TCN_MODEL_NAMES[metric_type]


def tcn_metric(model_name: str) -> str | None:
    """The metric type of a TCN model name (``tcn_lbm`` -> ``lbm``); None for other names."""
    metric = model_name.removeprefix(TCN_PREFIX)
    return metric if model_name.startswith(TCN_PREFIX) and metric in TCN_MODEL_NAMES else None


def model_kind(model_name: str) -> ModelKind | None:
    """The kind a registry name holds; None for names that are not detector models."""
    if model_name == IFOREST_MODEL_NAME:
        return ModelKind.ISOLATION_FOREST
    return ModelKind.TCN if tcn_metric(model_name) is not None else None


# ----------------------------------------------------------------------------- field checks


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ArtifactError(f"{where} must be an object, got {type(value).__name__}")
    return value


def _get(d: Mapping[str, Any], key: str, where: str = "") -> Any:
    if key not in d:
        raise ArtifactError(f"metadata field {where + '.' if where else ''}{key} is missing")
    return d[key]


def _number(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise ArtifactError(f"{what} must be a number, got {str(x)[:60]!r}")
    return float(x)


def _finite(x: Any, what: str) -> float:
    f = _number(x, what)
    if not math.isfinite(f):
        raise ArtifactError(f"{what} must be finite, got {x!r}")
    return f


def _finite_positive(x: Any, what: str) -> float:
    f = _number(x, what)
    if not (math.isfinite(f) and f > 0):
        raise ArtifactError(f"{what} must be a finite positive number, got {x!r}")
    return f


def _float_map(value: Any, what: str, positive: bool) -> dict[str, float]:
    check = _finite_positive if positive else _finite
    return {str(k): check(v, f"{what}[{k}]") for k, v in dict(_obj(value or {}, what)).items()}


def read_format_version(metadata: Mapping[str, Any]) -> int:
    """``format_version`` of a manifest: 0 when absent (written before the contract existed);
    refuses a non-integer and a format newer than this code understands."""
    v = metadata.get(FORMAT_KEY, 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ArtifactError(f"{FORMAT_KEY} must be a non-negative integer, got {str(v)[:40]!r}")
    if v > FORMAT_VERSION:
        raise ArtifactError(
            f"{FORMAT_KEY} {v} is newer than this code reads (up to {FORMAT_VERSION}): "
            "upgrade ocad_detectors to serve this version"
        )
    return v


def _check_kind(metadata: Mapping[str, Any], kind: ModelKind) -> None:
    got = metadata.get("kind", kind.value)  # format 0 fixtures may omit it
    if got != kind.value:
        raise ArtifactError(f"kind is {got!r}, expected {kind.value!r}")


def _info(metadata: Mapping[str, Any], contract_keys: tuple[str, ...]) -> dict[str, Any]:
    """The free-form keys: neither the kind's contract nor what the registry writes itself."""
    return {k: v for k, v in metadata.items() if k not in contract_keys and k not in RESERVED_METADATA_KEYS}


def _check_info(info: Mapping[str, Any], contract_keys: tuple[str, ...]) -> None:
    clash = sorted(set(info) & (set(contract_keys) | set(RESERVED_METADATA_KEYS)))
    if clash:
        raise ArtifactError(f"info keys {clash} are contract or registry fields; set them through the typed fields")


# ----------------------------------------------------------------------------- TCN


@dataclass(frozen=True)
class TCNArchitecture:
    """Shape of a TCN forecaster: everything besides the weights that ``NumpyTCN`` needs."""

    seq_len: int
    hidden_channels: int
    dilations: tuple[int, ...]
    kernel_size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        try:
            check_architecture(self.to_dict())
        except ValueError as exc:
            raise ArtifactError(str(exc)) from None

    @classmethod
    def from_dict(cls, d: Any) -> TCNArchitecture:
        try:
            check_architecture(d)  # bounds first: a manifest is input
        except ValueError as exc:
            raise ArtifactError(str(exc)) from None
        return cls(int(d["seq_len"]), int(d["hidden_channels"]), tuple(int(x) for x in d["dilations"]), int(d["kernel_size"]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq_len": self.seq_len,
            "hidden_channels": self.hidden_channels,
            "dilations": list(self.dilations),
            "kernel_size": self.kernel_size,
        }

    @property
    def receptive_field(self) -> int:
        return 1 + sum((self.kernel_size - 1) * d for d in self.dilations)

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """The exact tensor names and shapes the weights file must hold."""
        return tcn_weight_shapes(self.to_dict())


@dataclass(frozen=True)
class Scaler:
    """``(x - mean) / std`` of one signal, in its unit (the TCN's input and output scaling)."""

    mean: float
    std: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _finite(self.mean, "scaler.mean"))
        object.__setattr__(self, "std", _finite_positive(self.std, "scaler.std"))

    @classmethod
    def from_dict(cls, d: Any) -> Scaler:
        d = _obj(d, "scaler")
        return cls(_get(d, "mean", "scaler"), _get(d, "std", "scaler"))

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class ResidualCalibration:
    """Residual thresholds (σ) calibrated to a false-alert budget; ``details`` is the rest of
    the calibration record (method, target rate, row counts: reported, not used)."""

    pooled: float | None
    per_endpoint: Mapping[str, float] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    WHERE: ClassVar[str] = "residual_scale.calibration"

    def __post_init__(self) -> None:
        if self.pooled is not None:
            object.__setattr__(self, "pooled", _finite_positive(self.pooled, f"{self.WHERE}.pooled"))
        object.__setattr__(self, "per_endpoint", _float_map(self.per_endpoint, f"{self.WHERE}.per_endpoint", True))
        object.__setattr__(self, "details", {k: v for k, v in dict(self.details).items() if k not in ("pooled", "per_endpoint")})

    @classmethod
    def from_dict(cls, d: Any) -> ResidualCalibration:
        d = _obj(d, cls.WHERE)
        return cls(d.get("pooled"), d.get("per_endpoint") or {}, {k: v for k, v in d.items() if k not in ("pooled", "per_endpoint")})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.details)
        if self.pooled is not None:
            out["pooled"] = self.pooled
        out["per_endpoint"] = dict(self.per_endpoint)
        return out


@dataclass(frozen=True)
class ResidualScale:
    """Std of ``target - forecast`` on healthy windows (signal units): pooled and per endpoint;
    ``calibration`` None: written before budget calibration (the configured default applies)."""

    pooled: float
    per_endpoint: Mapping[str, float] = field(default_factory=dict)
    calibration: ResidualCalibration | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pooled", _finite_positive(self.pooled, "residual_scale.pooled"))
        object.__setattr__(self, "per_endpoint", _float_map(self.per_endpoint, "residual_scale.per_endpoint", True))

    @classmethod
    def from_dict(cls, d: Any) -> ResidualScale:
        d = _obj(d, "residual_scale")
        cal = d.get("calibration")
        return cls(
            _get(d, "pooled", "residual_scale"),
            d.get("per_endpoint") or {},
            ResidualCalibration.from_dict(cal) if cal else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pooled": self.pooled, "per_endpoint": dict(self.per_endpoint)}
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict()
        return out


@dataclass(frozen=True)
class TCNMetadata:
    """The metadata schema of one metric type's forecaster (see the module docstring)."""

    metric_type: str
    architecture: TCNArchitecture
    scaler: Scaler
    residual_scale: ResidualScale
    #: provenance, training config, metrics, fingerprint: free-form JSON kept as written
    info: Mapping[str, Any] = field(default_factory=dict)
    #: the format it was read as (:meth:`to_dict` always writes :data:`FORMAT_VERSION`)
    format_version: int = FORMAT_VERSION

    KIND: ClassVar[ModelKind] = ModelKind.TCN
    KEYS: ClassVar[tuple[str, ...]] = ("kind", FORMAT_KEY, "metric_type", "signal", "architecture", "scaler", "residual_scale")

    def __post_init__(self) -> None:
        if self.metric_type not in METRIC_SIGNAL:
            raise ArtifactError(f"metric_type {self.metric_type!r} is not one of {list(METRIC_TYPES)}")
        object.__setattr__(self, "info", dict(self.info))
        _check_info(self.info, self.KEYS)

    @property
    def signal(self) -> str:
        return METRIC_SIGNAL[self.metric_type]

    @property
    def model_name(self) -> str:
        return tcn_model_name(self.metric_type)

    @classmethod
    def from_dict(cls, metadata: Any, model_name: str | None = None) -> TCNMetadata:
        """Validate a manifest (format 0 or current); ``model_name`` supplies a missing
        ``metric_type`` and must agree with a present one."""
        meta = _obj(metadata, "metadata")
        fmt = read_format_version(meta)
        _check_kind(meta, cls.KIND)
        from_name = tcn_metric(model_name) if model_name is not None else None
        metric = meta.get("metric_type", from_name)
        if metric is None:
            raise ArtifactError("metadata field metric_type is missing")
        if not isinstance(metric, str) or metric not in METRIC_SIGNAL:
            raise ArtifactError(f"metric_type {metric!r} is not one of {list(METRIC_TYPES)}")
        if model_name is not None and metric != from_name:
            raise ArtifactError(f"metadata metric_type {metric!r} does not match the model name {model_name!r}")
        signal = meta.get("signal", METRIC_SIGNAL[metric])
        if signal != METRIC_SIGNAL[metric]:
            raise ArtifactError(f"signal {signal!r} does not belong to metric type {metric!r}")
        return cls(
            metric_type=metric,
            architecture=TCNArchitecture.from_dict(_get(meta, "architecture")),
            scaler=Scaler.from_dict(_get(meta, "scaler")),
            residual_scale=ResidualScale.from_dict(_get(meta, "residual_scale")),
            info=_info(meta, cls.KEYS),
            format_version=fmt,
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest keys (registry keys excluded), in the current format."""
        return {
            **self.info,
            "kind": self.KIND.value,
            FORMAT_KEY: FORMAT_VERSION,
            "metric_type": self.metric_type,
            "signal": self.signal,
            "architecture": self.architecture.to_dict(),
            "scaler": self.scaler.to_dict(),
            "residual_scale": self.residual_scale.to_dict(),
        }


# ----------------------------------------------------------------------------- Isolation Forest


@dataclass(frozen=True)
class IFGroupSpec:
    """One capability group's forest inputs: feature order, scaler and thresholds."""

    key: str
    features: tuple[str, ...]
    scaler_mean: tuple[float, ...]
    scaler_std: tuple[float, ...]
    threshold: float
    #: thresholds calibrated for single endpoints; the others use ``threshold``
    endpoint_thresholds: Mapping[str, float] = field(default_factory=dict)
    #: threshold_method, calibration record, n_train, cv: reported, not used by the detectors
    info: Mapping[str, Any] = field(default_factory=dict)

    KEYS: ClassVar[tuple[str, ...]] = ("features", "scaler", "threshold", "endpoint_thresholds")

    def __post_init__(self) -> None:
        key = self.key
        feats = tuple(str(f) for f in self.features)
        expected = model_feature_names(self.capabilities)
        if list(feats) != expected:
            raise ArtifactError(f"group {key!r}: features {list(feats)} differ from the feature engine's {expected}")
        object.__setattr__(self, "features", feats)
        try:
            mean = np.asarray(self.scaler_mean, dtype=np.float64)
            std = np.asarray(self.scaler_std, dtype=np.float64)
        except (TypeError, ValueError):
            raise ArtifactError(f"group {key!r}: scaler mean and std must be lists of numbers") from None
        if mean.shape != (len(feats),) or std.shape != (len(feats),):
            raise ArtifactError(f"group {key!r}: scaler needs {len(feats)} means and stds")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ArtifactError(f"group {key!r}: scaler must be finite with std > 0")
        object.__setattr__(self, "scaler_mean", tuple(float(v) for v in mean))
        object.__setattr__(self, "scaler_std", tuple(float(v) for v in std))
        try:
            object.__setattr__(self, "threshold", _finite(self.threshold, "threshold"))
            object.__setattr__(self, "endpoint_thresholds", _float_map(self.endpoint_thresholds, "endpoint_thresholds", False))
        except ArtifactError as exc:
            raise ArtifactError(f"group {key!r}: {exc}") from None
        object.__setattr__(self, "info", dict(self.info))
        _check_info(self.info, self.KEYS)

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(self.key.split("+"))

    @classmethod
    def from_dict(cls, key: str, d: Any) -> IFGroupSpec:
        where = f"groups.{key}"
        d = _obj(d, where)
        sc = _obj(_get(d, "scaler", where), f"{where}.scaler")
        feats = _get(d, "features", where)
        if not isinstance(feats, list):
            raise ArtifactError(f"{where}.features must be a list of feature names")
        return cls(
            key=str(key),
            features=tuple(feats),
            scaler_mean=_get(sc, "mean", f"{where}.scaler"),
            scaler_std=_get(sc, "std", f"{where}.scaler"),
            threshold=_get(d, "threshold", where),
            endpoint_thresholds=d.get("endpoint_thresholds") or {},
            info={k: v for k, v in d.items() if k not in cls.KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.info,
            "features": list(self.features),
            "scaler": {"mean": list(self.scaler_mean), "std": list(self.scaler_std)},
            "threshold": self.threshold,
            "endpoint_thresholds": dict(self.endpoint_thresholds),
        }


@dataclass(frozen=True)
class IFMetadata:
    """The metadata schema of the Isolation Forest (see the module docstring)."""

    feature_config: FeatureConfig
    groups: Mapping[str, IFGroupSpec]
    #: per-endpoint (and pooled '*') signal statistics the features are computed against
    reference: ReferenceStats
    info: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    KIND: ClassVar[ModelKind] = ModelKind.ISOLATION_FOREST
    KEYS: ClassVar[tuple[str, ...]] = ("kind", FORMAT_KEY, "feature_config", "groups", "reference_stats")

    def __post_init__(self) -> None:
        if not self.groups:
            raise ArtifactError("no capability groups")
        for key, spec in self.groups.items():
            if spec.key != key:
                raise ArtifactError(f"groups[{key!r}] holds the spec of group {spec.key!r}")
        object.__setattr__(self, "groups", dict(self.groups))
        object.__setattr__(self, "info", dict(self.info))
        _check_info(self.info, self.KEYS)

    @property
    def model_name(self) -> str:
        return IFOREST_MODEL_NAME

    @classmethod
    def from_dict(cls, metadata: Any, model_name: str | None = None) -> IFMetadata:
        meta = _obj(metadata, "metadata")
        fmt = read_format_version(meta)
        _check_kind(meta, cls.KIND)
        if model_name is not None and model_name != IFOREST_MODEL_NAME:
            raise ArtifactError(f"model name {model_name!r} does not hold an Isolation Forest ({IFOREST_MODEL_NAME!r})")
        try:
            fcfg = FeatureConfig.from_dict(_obj(_get(meta, "feature_config"), "feature_config"))
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"feature_config: {exc}") from None
        records = _get(meta, "reference_stats")
        if not isinstance(records, list):
            raise ArtifactError("reference_stats must be a list of {endpoint_id, signal, mean, std} records")
        try:
            reference = ReferenceStats.from_records(records)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"reference_stats: {type(exc).__name__}: {exc}") from None
        groups = {str(k): IFGroupSpec.from_dict(str(k), v) for k, v in _obj(_get(meta, "groups"), "groups").items()}
        return cls(fcfg, groups, reference, _info(meta, cls.KEYS), fmt)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.info,
            "kind": self.KIND.value,
            FORMAT_KEY: FORMAT_VERSION,
            "feature_config": self.feature_config.to_dict(),
            "groups": {k: g.to_dict() for k, g in self.groups.items()},
            "reference_stats": self.reference.to_records(),
        }


# ----------------------------------------------------------------------------- artifacts


class _Artifact:
    """What every model kind does the same way: verify with the loader's own checks (its
    ``build``), then hand ``(files, metadata)`` to the registry."""

    metadata: Any  # TCNMetadata / IFMetadata (set by the dataclass below)

    @property
    def name(self) -> str:
        raise NotImplementedError

    def build(self) -> Any:
        raise NotImplementedError

    def files(self) -> dict[str, bytes]:
        raise NotImplementedError

    def verify(self) -> None:
        """Exactly the checks the detectors' loader applies (raises ``ValueError``)."""
        self.build()

    def payload(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        """``(files, metadata)`` for ``ModelRegistry.write_version``, verified first."""
        self.verify()
        return self.files(), self.metadata.to_dict()

    def write(self, registry: ModelRegistry, *, version: str | None = None, bump: str = "minor") -> VersionInfo:
        """Verify, then register as a new immutable version of :attr:`name`."""
        files, metadata = self.payload()
        return registry.write_version(self.name, files, metadata, version=version, bump=bump)


@dataclass(frozen=True)
class TCNArtifact(_Artifact):
    """One metric type's forecaster: metadata + weights, as stored in the registry."""

    metadata: TCNMetadata
    weights: Mapping[str, np.ndarray] = field(repr=False)

    KIND: ClassVar[ModelKind] = ModelKind.TCN
    FILES: ClassVar[tuple[str, ...]] = (TCN_WEIGHTS_FILE,)

    @property
    def name(self) -> str:
        return self.metadata.model_name

    def build(self) -> NumpyTCN:
        """The numpy forecaster; checks tensor names, shapes, dtypes and finiteness."""
        return NumpyTCN(self.weights, self.metadata.architecture.to_dict())

    def files(self) -> dict[str, bytes]:
        return {TCN_WEIGHTS_FILE: save_arrays(self.weights)}

    @classmethod
    def from_loaded(cls, lv: LoadedVersion) -> TCNArtifact:
        """From a version the registry has read and hash-verified."""
        meta = TCNMetadata.from_dict(lv.metadata, lv.model_name)
        return cls(meta, lv.arrays(TCN_WEIGHTS_FILE))

    @classmethod
    def read(cls, registry: ModelRegistry, metric_type: str, version: str | None = None) -> TCNArtifact:
        """Load (and hash-verify) a version of ``tcn_<metric_type>`` (production if None)."""
        return cls.from_loaded(registry.load_version(tcn_model_name(metric_type), version))


@dataclass(frozen=True)
class IForestArtifact(_Artifact):
    """The Isolation Forest: metadata + one exported forest per capability group."""

    metadata: IFMetadata
    #: group -> the arrays of ``ocad_pipeline.models.iforest_export`` (stored as ``"<group>/<array>"``)
    forests: Mapping[str, Mapping[str, np.ndarray]] = field(repr=False)

    KIND: ClassVar[ModelKind] = ModelKind.ISOLATION_FOREST
    FILES: ClassVar[tuple[str, ...]] = (IFOREST_FILE,)

    @property
    def name(self) -> str:
        return IFOREST_MODEL_NAME

    def build(self) -> dict[str, NumpyIsolationForest]:
        """The numpy forest of every group; checks structure and feature count."""
        out: dict[str, NumpyIsolationForest] = {}
        for key, spec in self.metadata.groups.items():
            arrays = self.forests.get(key)
            if not arrays:
                raise ArtifactError(f"group {key!r}: no arrays '{key}/...' in {IFOREST_FILE}")
            forest = NumpyIsolationForest(arrays)
            if forest.n_features != len(spec.features):
                raise ArtifactError(f"group {key!r}: forest has {forest.n_features} features, metadata lists {len(spec.features)}")
            out[key] = forest
        return out

    def files(self) -> dict[str, bytes]:
        flat = {f"{g}/{k}": v for g, arrays in self.forests.items() for k, v in arrays.items()}
        return {IFOREST_FILE: save_arrays(flat)}

    @classmethod
    def from_loaded(cls, lv: LoadedVersion) -> IForestArtifact:
        meta = IFMetadata.from_dict(lv.metadata, lv.model_name)
        arrays = lv.arrays(IFOREST_FILE)
        forests = {
            key: {k[len(key) + 1:]: v for k, v in arrays.items() if k.startswith(f"{key}/")} for key in meta.groups
        }
        return cls(meta, forests)

    @classmethod
    def read(cls, registry: ModelRegistry, version: str | None = None) -> IForestArtifact:
        """Load (and hash-verify) a version of ``isolation_forest`` (production if None)."""
        return cls.from_loaded(registry.load_version(IFOREST_MODEL_NAME, version))


Artifact: TypeAlias = TCNArtifact | IForestArtifact
ModelMetadata: TypeAlias = TCNMetadata | IFMetadata

_TYPES: dict[ModelKind, type[TCNArtifact] | type[IForestArtifact]] = {
    ModelKind.TCN: TCNArtifact,
    ModelKind.ISOLATION_FOREST: IForestArtifact,
}


def artifact_type(model_name: str) -> type[TCNArtifact] | type[IForestArtifact] | None:
    """The artifact class a registry name holds (None: not a detector model)."""
    kind = model_kind(model_name)
    return _TYPES[kind] if kind is not None else None


def parse_metadata(model_name: str, metadata: Mapping[str, Any]) -> ModelMetadata | None:
    """The typed metadata of a manifest by model name (None: not a detector model)."""
    kind = model_kind(model_name)
    if kind is ModelKind.TCN:
        return TCNMetadata.from_dict(metadata, model_name)
    if kind is ModelKind.ISOLATION_FOREST:
        return IFMetadata.from_dict(metadata, model_name)
    return None


def read_artifact(lv: LoadedVersion) -> Artifact | None:
    """The typed artifact of a verified version, by model name (None: not a detector model)."""
    cls = artifact_type(lv.model_name)
    return cls.from_loaded(lv) if cls is not None else None


def verify_version(registry: ModelRegistry, model_name: str, version: str | None = None) -> Artifact:
    """Everything a detector checks before serving a version: the registry's manifest, size,
    sha256 (and signature) verification, then the kind's metadata schema and array checks."""
    art = read_artifact(registry.load_version(model_name, version))
    if art is None:
        raise ArtifactError(f"{model_name!r} is not a detector model; known: {list(MODEL_NAMES)}")
    art.verify()
    return art
