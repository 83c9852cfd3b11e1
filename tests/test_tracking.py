"""Optional MLflow tracking: a no-op without MLFLOW_TRACKING_URI, never a hard dependency."""

import importlib.abc
import logging
import math
import sys
import types
from pathlib import Path

import pytest

from ocad_detectors._util import WarnOnce
from ocad_pipeline import tracking


class _ImportSpy(importlib.abc.MetaPathFinder):
    """Records every attempt to import mlflow (installed or not)."""

    def __init__(self):
        self.attempts = []

    def find_spec(self, name, path=None, target=None):
        if name == "mlflow" or name.startswith("mlflow."):
            self.attempts.append(name)
        return None


class _FakeMlflow(types.ModuleType):
    def __init__(self, fail: bool = False):
        super().__init__("mlflow")
        self.calls = []
        self.artifacts = {}
        self.fail = fail

    def start_run(self, **kw):
        self.calls.append(("start_run", kw))
        fake = self

        class _Run:
            info = types.SimpleNamespace(run_id="abc123")

            def __enter__(self):
                if fake.fail:
                    raise ConnectionError("tracking server unreachable")
                return self

            def __exit__(self, *exc):
                return False

        return _Run()

    def log_params(self, params):
        self.calls.append(("log_params", params))

    def log_metrics(self, metrics):
        self.calls.append(("log_metrics", metrics))

    def log_artifact(self, path):
        self.calls.append(("log_artifact", Path(path).name))
        self.artifacts[Path(path).name] = Path(path).read_bytes()


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(tracking, "_warn_once", WarnOnce(tracking.logger))


def test_without_tracking_uri_nothing_is_imported(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delitem(sys.modules, "mlflow", raising=False)
    spy = _ImportSpy()
    monkeypatch.setattr(sys, "meta_path", [spy, *sys.meta_path])
    assert tracking.log_run("x", {"a": 1}, {"f1": 0.5}, {"r.json": b"{}"}) is None
    assert spy.attempts == [] and "mlflow" not in sys.modules
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "   ")  # blank counts as unset
    assert tracking.log_run("x", {}, {}) is None and spy.attempts == []


def test_logs_flattened_params_metrics_and_artifacts(monkeypatch, tmp_path):
    fake = _FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    existing = tmp_path / "report.json"
    existing.write_text('{"ok": true}')
    run_id = tracking.log_run(
        "training",
        params={"tcn": {"lr": 0.001, "dilations": [1, 2, 4]}, "seed": 0, "skip": None},
        metrics={
            "detection": {"f1": 0.9, "auc": None, "bad": math.nan, "inf": math.inf},
            "latency": {"p95 (ms)": 1.5},
            "gate_passed": True,
            "name": "text",
            "versions": [1, 2],
        },
        artifacts={"inline.json": b'{"a": 1}', "text.md": "| a |\n|---|", "from_disk.json": existing, "path_as_str": str(existing)},
        tags={"kind": "test"},
    )
    assert run_id == "abc123"
    calls = dict((k, v) for k, v in fake.calls if k != "log_artifact")
    assert calls["start_run"] == {"run_name": "training", "tags": {"kind": "test"}}
    assert calls["log_params"] == {"tcn.lr": "0.001", "tcn.dilations": "[1, 2, 4]", "seed": "0"}
    assert calls["log_metrics"] == {"detection.f1": 0.9, "latency.p95 _ms_": 1.5, "gate_passed": 1.0}
    assert fake.artifacts == {"inline.json": b'{"a": 1}', "text.md": b"| a |\n|---|", "report.json": b'{"ok": true}'}


def test_missing_mlflow_warns_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    with caplog.at_level(logging.WARNING, logger="ocad_pipeline.tracking"):
        assert tracking.log_run("a", {}, {"x": 1}) is None
        assert tracking.log_run("b", {}, {"x": 1}) is None
    warnings = [r for r in caplog.records if "mlflow is not installed" in r.getMessage()]
    assert len(warnings) == 1


def test_tracking_errors_do_not_break_the_caller(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "mlflow", _FakeMlflow(fail=True))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    with caplog.at_level(logging.WARNING, logger="ocad_pipeline.tracking"):
        assert tracking.log_run("a", {"p": 1}, {"m": 1.0}) is None
    assert any("unreachable" in r.getMessage() for r in caplog.records)


def test_flatten():
    assert tracking.flatten({"a": {"b": {"c": 1}}, "d": 2, "e/f": {"g h": 3}}) == {"a.b.c": 1, "d": 2, "e/f.g h": 3}
