"""Shared fixtures (small simulated fleets that still contain every anomaly type) and the
``pipeline`` marker: a test module that needs the training stack (the ``train`` extra: torch,
scikit-learn, optuna, pandera, dagster, ...) is marked automatically, found by reading what it
imports, directly or through ``ocad_pipeline`` modules and the test helpers. So
``pytest -m "not pipeline"`` is the fast suite; it then does not even import those modules,
and runs in an environment holding only ``pip install '.[dev]'`` (the test tools, no torch,
dagster or scikit-learn)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
#: top-level packages of the `train` extra. scipy is not one of them here: the `dev` extra
#: brings it too (with ruptures), and the simulator that the tests feed on needs it
TRAINING_STACK = frozenset(
    {"torch", "sklearn", "optuna", "pandera", "dagster", "dagster_webserver", "dagster_pandera", "dagster_dg_cli", "matplotlib"}
)


def _source(module: str) -> Path | None:
    """The file of a first-party module whose imports are followed (ocad_pipeline, test helpers)."""
    parts = module.split(".")
    if parts[0] == "ocad_pipeline":
        base = ROOT.joinpath(*parts)
    elif len(parts) == 1 and (TESTS / f"{module}.py").is_file():
        base = TESTS / module
    else:
        return None  # third-party, or ocad_detectors (light by contract: test_detectors_boundary.py)
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports anywhere (also inside functions), with its parent packages."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}


@functools.cache
def _needs_training_stack(path: Path) -> bool:
    seen: set[Path] = set()
    todo = [path]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in _imported(f):
            if name.split(".")[0] in TRAINING_STACK:
                return True
            src = _source(name)
            if src is not None:
                todo.append(src)
    return False


def _is_test_module(path: Path) -> bool:
    return path.suffix == ".py" and path.name.startswith("test_") and path.parent == TESTS


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``-m "not pipeline"``: do not import the pipeline test modules at all (no torch/dagster)."""
    if "not pipeline" in (config.option.markexpr or "") and _is_test_module(collection_path):
        return True if _needs_training_stack(collection_path) else None
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    sim_heavy = _needs_training_stack(ROOT / "ocad_pipeline" / "simulator.py")
    for item in items:
        if not _is_test_module(item.path):
            continue
        uses_sim = sim_heavy and not SIM_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
        if uses_sim or _needs_training_stack(item.path):
            item.add_marker(pytest.mark.pipeline)

# The simulator is imported by the fixtures, not here: this conftest loads in any install, and
# the tests that use these fixtures are marked ``pipeline`` should the simulator ever need the
# training stack.
SIM_FIXTURES = frozenset({"small_config", "small_sim", "default_sim", "small_clean_config", "small_clean_sim", "default_clean_sim"})
#: 6 endpoints x 12 h with a high incident rate: every type appears, runs in well under a second
SMALL = dict(n_oru=2, n_odu=2, n_transport=2, duration_hours=12.0, incidents_per_endpoint_day=30.0, seed=7)


def _sim_config(**overrides: Any) -> Any:
    from ocad_pipeline.simulator import SimulatorConfig

    return SimulatorConfig(**overrides)


def _simulate(config: Any) -> Any:
    from ocad_pipeline.simulator import simulate

    return simulate(config)


@pytest.fixture(scope="session")
def small_config():
    return _sim_config(**SMALL)


@pytest.fixture(scope="session")
def small_sim(small_config):
    return _simulate(small_config)


@pytest.fixture(scope="session")
def default_sim():
    return _simulate(_sim_config())


@pytest.fixture(scope="session")
def small_clean_config():
    """The same fleet from the earlier, clean simulator (Gaussian noise, large incidents only)."""
    return _sim_config(**SMALL, profile="clean")


@pytest.fixture(scope="session")
def small_clean_sim(small_clean_config):
    return _simulate(small_clean_config)


@pytest.fixture(scope="session")
def default_clean_sim():
    return _simulate(_sim_config(profile="clean"))
