"""Each Dagster run config is derived from the dataclass the library code takes (one source).

The parity check runs when a config class is created (import time); these tests pin that it
covers all seven pairs, that it catches drift, and that ``to_dataclass`` reproduces the
dataclass's own defaults field by field (apart from the declared overrides).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import dagster as dg
import pytest

from ocad_pipeline.datasets import SplitConfig
from ocad_pipeline.defs.assets.comparison import ModeComparisonConfig
from ocad_pipeline.defs.assets.data import RecordedFilesSettings, SimulatorSettings
from ocad_pipeline.defs.assets.evaluation import QualityGateConfig
from ocad_pipeline.defs.assets.models import IsolationForestConfig, TCNTrainingConfig
from ocad_pipeline.defs.configs import config_from_dataclass, config_type
from ocad_pipeline.defs.resources import DatasetSettings
from ocad_pipeline.mode_comparison import ComparisonSettings
from ocad_pipeline.recorded import RecordedConfig
from ocad_pipeline.reporting import GateTargets
from ocad_pipeline.simulator import SimulatorConfig
from ocad_pipeline.training.iforest import IsolationForestParams
from ocad_pipeline.training.tcn import TCNParams

PAIRS = [
    (SimulatorSettings, SimulatorConfig),
    (RecordedFilesSettings, RecordedConfig),
    (TCNTrainingConfig, TCNParams),
    (IsolationForestConfig, IsolationForestParams),
    (QualityGateConfig, GateTargets),
    (ModeComparisonConfig, ComparisonSettings),
    (DatasetSettings, SplitConfig),
]


@pytest.mark.parametrize("config_cls, dc", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_config_has_every_dataclass_field_and_only_declared_extras(config_cls, dc):
    assert config_cls.source is dc
    config_cls.check_parity()  # what ran at import, again: raises on any disagreement
    names = {f.name for f in dataclasses.fields(dc)}
    assert set(config_cls.model_fields) == names | set(config_cls.pipeline_only)
    assert set(config_cls.overrides) <= names
    for reason in [*config_cls.pipeline_only.values(), *config_cls.overrides.values()]:
        assert len(reason) > 10  # every difference says why


@pytest.mark.parametrize("config_cls, dc", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_defaults_round_trip_to_the_dataclass(config_cls, dc):
    cfg = config_cls(path="x.csv") if dc is RecordedConfig else config_cls()
    built = cfg.to_dataclass()
    assert isinstance(built, dc)
    reference = dc(path="x.csv") if dc is RecordedConfig else dc()
    for f in dataclasses.fields(dc):
        if f.name in config_cls.overrides:
            continue
        assert getattr(built, f.name) == getattr(reference, f.name), f.name


def test_declared_overrides_convert_as_documented():
    p = TCNTrainingConfig(max_train_windows=0, windows_per_epoch=0, dilations=[1, 2]).to_params()
    assert p.max_train_windows is None and p.windows_per_epoch is None and p.dilations == (1, 2)
    assert TCNTrainingConfig().to_params().patience == 6
    assert IsolationForestConfig(max_samples="512").to_params().max_samples == 512
    with pytest.raises(ValueError, match="max_samples must be 'auto' or an integer"):
        IsolationForestConfig(max_samples="many").to_params()
    rec = RecordedFilesSettings(path="a.csv", missing_values=[-3, -4], signal_map={"rtt": "udp_echo_rtt_ms"}).to_recorded_config()
    assert rec == RecordedConfig(path="a.csv", missing_values=(-3, -4), signal_map={"rtt": "udp_echo_rtt_ms"})
    with pytest.raises(dg.Failure, match="files.path is empty"):
        RecordedFilesSettings().to_recorded_config()


def test_descriptions_come_from_the_dataclass_comments():
    assert "profile's default mix" in SimulatorSettings.model_fields["incident_mix"].description
    assert "RIPE Atlas" in RecordedFilesSettings.model_fields["missing_values"].description


def test_drift_fails_at_class_creation():
    @dataclasses.dataclass(frozen=True)
    class Params:
        a: int = 1
        b: tuple[float, ...] = (1.0,)
        c: Optional[str] = None

    class Good(config_from_dataclass(Params)):
        pass

    assert Good(b=[2.0]).to_dataclass() == Params(b=(2.0,))
    with pytest.raises(TypeError, match="'a' differs"):
        class NewDefault(config_from_dataclass(Params)):  # noqa: F841 - the class statement is the test
            a: int = 2
    with pytest.raises(TypeError, match="not in Params"):
        class Extra(config_from_dataclass(Params)):  # noqa: F841
            d: int = 0
    with pytest.raises(TypeError, match="matches Params: drop it"):
        class StaleOverride(config_from_dataclass(Params)):  # noqa: F841
            overrides = {"a": "no longer different"}
            a: int = 1

    @dataclasses.dataclass(frozen=True)
    class Union_:
        m: str | int = "auto"

    with pytest.raises(TypeError, match=r"missing from the config: \['m'\]"):
        class Missing(config_from_dataclass(Union_)):  # noqa: F841 - no Dagster spelling: must re-declare
            pass


def test_config_types():
    assert config_type(tuple[int, ...]) == list[int]
    assert config_type(dict[str, float]) == dict[str, float]
    assert config_type(int | None) == Optional[int]
    assert config_type(str | int) is None
