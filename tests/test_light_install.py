"""`pip install ocad` (no extras) is the detector side alone: a fresh virtual environment gets
no torch, dagster or scikit-learn, and still runs ``ocad-detect``, ``ocad-models`` and
``ocad-serve`` on a real model registry with the same results as the full install.

The venv gets ``pip install .`` of this source tree from this environment's pip (``--python``),
so the packages come from pip's usual indexes and cache (about 20 s when cached).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from model_fixtures import SAMPLE_COLUMNS, _close, cached_model_registry
from serve_harness import free_port, wait_until

from ocad_detectors.pipeline import DetectionPipeline

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parents[1]
#: what the `train` extra brings and the detector side must never need
TRAINING_STACK = ("torch", "dagster", "sklearn", "optuna", "pandera", "scipy", "matplotlib")


def _run(cmd: list[str], timeout: float = 300, **kw: object) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} -> {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding only ``pip install .`` of a copy of this tree (the build leaves no
    build/ or egg-info here), with pip's build isolation, as a user's install would run."""
    tmp = tmp_path_factory.mktemp("light")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in ("ocad_detectors", "ocad_pipeline"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp / "venv"
    python = str(venv / "bin" / "python")
    if importlib.util.find_spec("pip") is not None:
        # this environment's pip installs into the new one: same indexes, same cache, no ensurepip
        _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
        pip = [sys.executable, "-m", "pip", "--python", python]
    else:  # an environment made without pip: the new venv brings its own
        _run([sys.executable, "-m", "venv", str(venv)])
        pip = [python, "-m", "pip"]
    _run([*pip, "install", "-q", str(src)], timeout=600)
    return venv


def test_light_install_has_no_training_stack(light_venv):
    code = (
        "import importlib.util, json, ocad_detectors\n"
        f"print(json.dumps([m for m in {TRAINING_STACK!r} if importlib.util.find_spec(m)]))\n"
        "print(ocad_detectors.__version__)\n"
    )
    out = _run([str(light_venv / "bin" / "python"), "-c", code]).stdout.splitlines()
    assert json.loads(out[0]) == [], f"the light install pulled in {out[0]}"
    from importlib import metadata

    assert out[1] == metadata.version("ocad")


def test_light_install_scores_a_registry_like_the_full_install(light_venv, tmp_path):
    built = cached_model_registry()
    frame = built.test[SAMPLE_COLUMNS].sort_values(["timestamp_ms", "endpoint_id"]).reset_index(drop=True).iloc[:4000]
    src = tmp_path / "samples.parquet"
    frame.to_parquet(src)
    bin_ = light_venv / "bin"
    p = _run([str(bin_ / "ocad-detect"), str(src), "--model-dir", str(built.root), "--alerts", str(tmp_path / "alerts.jsonl"),
              "--scores", str(tmp_path / "scores.parquet"), "--no-progress"], cwd=tmp_path)
    assert "not loaded" not in p.stderr, p.stderr  # every model of the registry was used
    expected = DetectionPipeline(model_dir=built.root).score_frame(frame)
    got = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert len(expected.alerts) > 0
    alerts = sorted((d for d in got if d["event"] == "alert"), key=lambda d: (d["timestamp_ms"], d["endpoint_id"]))
    want = sorted(expected.alerts, key=lambda a: (a.timestamp_ms, a.endpoint_id))
    # the same alerts; floats to the last bits (matrix products may block differently per process)
    assert [(d["endpoint_id"], d["timestamp_ms"], d["severity"]) for d in alerts] == [
        (a.endpoint_id, a.timestamp_ms, a.severity) for a in want
    ]
    assert all(_close(d, a.to_dict(), 1e-9) for d, a in zip(alerts, want))
    listing = _run([str(bin_ / "ocad-models"), "--root", str(built.root), "list"]).stdout
    assert all(name in listing for name in built.versions), listing


def test_light_install_serves(light_venv, tmp_path):
    built = cached_model_registry()
    _run([str(light_venv / "bin" / "ocad-serve"), "--help"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(light_venv / "bin" / "ocad-serve"), "--listen", f"127.0.0.1:{port}", "--model-dir", str(built.root)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "OCAD_SERVE_TOKEN"})
    try:
        wait_until(lambda: proc.poll() is None and httpx.get(url + "/readyz").status_code == 200, timeout=30,
                   what=f"ocad-serve from the light install ({(tmp_path / 'serve.log').read_text()[-500:]})")
        row = built.test[SAMPLE_COLUMNS].iloc[0].to_dict()
        r = httpx.post(url + "/v1/samples", json={k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
        assert r.status_code in (200, 202), r.text
        assert r.json()["accepted"] == 1, r.text
        status = httpx.get(url + "/v1/status").json()
        assert json.dumps(status)  # answers with its model versions, queue, endpoints
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        log.close()
    assert rc == 0, (tmp_path / "serve.log").read_text()[-2000:]
