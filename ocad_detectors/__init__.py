"""OCAD online side: inference-only detectors, the shared feature engine and the model registry reader.

The public API is importable from here::

    from ocad_detectors import DetectionPipeline, read_samples
    pipe = DetectionPipeline(model_dir="data/models")       # production versions of the registry
    result = pipe.score_frame(read_samples("samples.csv"))  # or pipe.process(sample) per sample

Names are resolved on first use (PEP 562), so ``import ocad_detectors`` stays light: a
streaming service never loads pandas, and nothing here ever imports torch, scikit-learn or
dagster (``tests/test_detectors_boundary.py``).
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

try:
    __version__: str = metadata.version("ocad")
except metadata.PackageNotFoundError:  # a source tree on sys.path, not an installed distribution
    __version__ = "0+unknown"

#: public name -> module that defines it
_API: dict[str, str] = {
    # scoring
    "DetectionPipeline": "ocad_detectors.pipeline",
    "DetectionResult": "ocad_detectors.pipeline",
    "BatchResult": "ocad_detectors.pipeline",
    "ShadowScoring": "ocad_detectors.shadow",
    # input
    "Sample": "ocad_detectors.samples",
    "read_samples": "ocad_detectors.samples",
    "iter_samples": "ocad_detectors.samples",
    # output
    "Alert": "ocad_detectors.alerts",
    "Explanation": "ocad_detectors.alerts",
    "Resolution": "ocad_detectors.alerts",
    "ChangeRecord": "ocad_detectors.levels",
    "read_incidents": "ocad_detectors.events",
    "eventwise": "ocad_detectors.events",
    # models
    "ModelRegistry": "ocad_detectors.registry",
    "RegistryError": "ocad_detectors.registry",
    "ModelNotFoundError": "ocad_detectors.registry",
    "ModelIntegrityError": "ocad_detectors.registry",
    "ModelLoader": "ocad_detectors.modelset",
    "ModelSet": "ocad_detectors.modelset",
    # configuration
    "load_config": "ocad_detectors.config",
    "DetectionConfig": "ocad_detectors.config",
    "RuleConfig": "ocad_detectors.config",
    "ChangePointConfig": "ocad_detectors.config",
    "ResidualConfig": "ocad_detectors.config",
    "MultivariateConfig": "ocad_detectors.config",
    "FusionConfig": "ocad_detectors.config",
    "AlertConfig": "ocad_detectors.config",
    "ReloadConfig": "ocad_detectors.config",
    "TrustConfig": "ocad_detectors.config",
    "LimitsConfig": "ocad_detectors.config",
    "LevelShiftConfig": "ocad_detectors.levels",
    "FeatureConfig": "ocad_detectors.features",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'ocad_detectors' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ does the import
    from ocad_detectors.alerts import Alert, Explanation, Resolution
    from ocad_detectors.config import (
        AlertConfig,
        ChangePointConfig,
        DetectionConfig,
        FusionConfig,
        LimitsConfig,
        MultivariateConfig,
        ReloadConfig,
        ResidualConfig,
        RuleConfig,
        TrustConfig,
        load_config,
    )
    from ocad_detectors.events import eventwise, read_incidents
    from ocad_detectors.features import FeatureConfig
    from ocad_detectors.levels import ChangeRecord, LevelShiftConfig
    from ocad_detectors.modelset import ModelLoader, ModelSet
    from ocad_detectors.pipeline import BatchResult, DetectionPipeline, DetectionResult
    from ocad_detectors.registry import ModelIntegrityError, ModelNotFoundError, ModelRegistry, RegistryError
    from ocad_detectors.samples import Sample, iter_samples, read_samples
    from ocad_detectors.shadow import ShadowScoring
