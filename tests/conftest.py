"""Shared fixtures: small simulated fleets that still contain every anomaly type."""

from __future__ import annotations

import pytest

from ocad_pipeline.simulator import SimulatorConfig, simulate

# 6 endpoints x 12 h with a high incident rate: every type appears, runs in well under a second
SMALL = SimulatorConfig(n_oru=2, n_odu=2, n_transport=2, duration_hours=12.0, incidents_per_endpoint_day=30.0, seed=7)
#: the same fleet from the earlier, clean simulator (Gaussian noise, large incidents only)
SMALL_CLEAN = SimulatorConfig(**{**SMALL.__dict__, "profile": "clean"})


@pytest.fixture(scope="session")
def small_config() -> SimulatorConfig:
    return SMALL


@pytest.fixture(scope="session")
def small_sim():
    return simulate(SMALL)


@pytest.fixture(scope="session")
def default_sim():
    return simulate(SimulatorConfig())


@pytest.fixture(scope="session")
def small_clean_config() -> SimulatorConfig:
    return SMALL_CLEAN


@pytest.fixture(scope="session")
def small_clean_sim():
    return simulate(SMALL_CLEAN)


@pytest.fixture(scope="session")
def default_clean_sim():
    return simulate(SimulatorConfig(profile="clean"))
