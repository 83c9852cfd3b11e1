"""Dagster resources: where data lives and the dataset parameters shared by several assets."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from ocad_detectors.registry import ModelRegistry
from ocad_pipeline.datasets import SplitConfig

DEFAULT_DATA_DIR = os.environ.get("OCAD_DATA_DIR", "data")


class OcadPaths(dg.ConfigurableResource):
    """Root of materialized data and models (default ``data/`` or ``$OCAD_DATA_DIR``)."""

    data_dir: str = DEFAULT_DATA_DIR

    @property
    def root(self) -> Path:
        return Path(self.data_dir)

    @property
    def models_dir(self) -> Path:
        return self.root / "models"


class DatasetSettings(dg.ConfigurableResource):
    """How samples become datasets; shared by every asset of the ``datasets`` group so that the
    split boundaries and window sizes agree."""

    sequence_length: int = 10
    sequence_stride: int = 2
    feature_window: int = 12
    feature_stride: int = 12
    train_fraction: float = 0.70
    val_fraction: float = 0.15
    ewma_alpha: float = 0.3
    cusum_k: float = 0.5
    train_days: float = 0.0  # > 0: first N days of each endpoint = training split (assumed healthy)

    def split_config(self) -> SplitConfig:
        return SplitConfig(
            sequence_length=self.sequence_length,
            sequence_stride=self.sequence_stride,
            feature_window=self.feature_window,
            feature_stride=self.feature_stride,
            train_fraction=self.train_fraction,
            val_fraction=self.val_fraction,
            ewma_alpha=self.ewma_alpha,
            cusum_k=self.cusum_k,
            train_days=self.train_days,
        )


class ModelRegistryResource(dg.ConfigurableResource):
    """The file-system model registry (``ocad_detectors.registry``) the training assets write
    versions to; ``root`` defaults to ``<data dir>/models``. New versions are candidates; the
    quality gate (performance_reports) and model_promotion decide what becomes production."""

    root: str = os.path.join(DEFAULT_DATA_DIR, "models")
    #: False since the quality gate exists: versions stay candidates until model_promotion
    #: (after the gate) or `ocad-models promote` makes them production
    auto_promote_first: bool = False
    #: PEM Ed25519 private key that signs every new version's manifest (None: $OCAD_SIGNING_KEY,
    #: unset = unsigned); the detectors verify with detection.trust.public_key
    signing_key: str | None = None

    def get_registry(self) -> ModelRegistry:
        return ModelRegistry(self.root, auto_promote_first=self.auto_promote_first, signing_key=self.signing_key)
