"""The package surface: the public API from ``ocad_detectors``, ``__version__``, ``py.typed``."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import ocad_detectors
import ocad_pipeline


def test_every_public_name_resolves_to_its_defining_module():
    for name in ocad_detectors.__all__:
        if name == "__version__":
            continue
        obj = getattr(ocad_detectors, name)
        assert obj is getattr(importlib.import_module(ocad_detectors._API[name]), name), name
    assert set(ocad_detectors.__all__) == {"__version__", *ocad_detectors._API}
    assert {"DetectionPipeline", "read_samples", "ModelRegistry", "Alert", "Resolution", "ChangeRecord", "DetectionConfig"} <= set(dir(ocad_detectors))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        ocad_detectors.NoSuchThing  # noqa: B018


def test_version_is_the_installed_distribution():
    assert ocad_detectors.__version__ == metadata.version("ocad") == ocad_pipeline.__version__


def test_py_typed_marks_the_package_typed():
    assert (Path(ocad_detectors.__file__).parent / "py.typed").is_file()


def test_import_is_light_until_a_name_is_used():
    code = (
        "import sys, ocad_detectors\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'pandas', 'torch', 'sklearn', 'dagster')))\n"
        "ocad_detectors.DetectionPipeline\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pandas', 'torch', 'sklearn', 'dagster'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.splitlines() == ["[]", "[]"], out
