import json

import numpy as np
import pytest

from ocad_detectors.registry import ModelNotFoundError, ModelRegistry, save_arrays


def test_reports_attach_to_a_version_without_touching_its_model_files(tmp_path):
    reg = ModelRegistry(tmp_path)
    reg.write_version("m", {"weights.safetensors": save_arrays({"w": np.ones(3, np.float32)})}, {"kind": "x"})
    before = reg.load_version("m", "1.0.0")
    path = reg.write_report("m", "1.0.0", "performance_report.json", json.dumps({"f1": 0.9}).encode())
    assert path == tmp_path / "m" / "1.0.0" / "reports" / "performance_report.json"
    assert json.loads(reg.read_report("m", "1.0.0", "performance_report.json")) == {"f1": 0.9}
    after = reg.load_version("m", "1.0.0")  # still verifies, same files
    assert after.files == before.files and after.metadata == before.metadata
    assert reg.read_report("m", "1.0.0", "other.json") is None
    with pytest.raises(ModelNotFoundError):
        reg.write_report("m", "9.9.9", "performance_report.json", b"{}")
    with pytest.raises(ValueError, match="invalid report name"):
        reg.write_report("m", "1.0.0", "../escape.json", b"{}")
