"""Start `dg dev` like a user would (`make ui`), ask its GraphQL API for the assets, shut it down."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.pipeline  # runs `dagster dev` as a subprocess: needs the training stack

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {"raw_metrics", "sample_splits", "reference_stats", "timeseries_splits", "multivariate_splits"}

LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"
ASSETS = "{ assetNodes { assetKey { path } groupName } }"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    """Is a live (not zombie) process left in the group? An orphan that exited but that this
    machine's init has not reaped yet is a zombie: it holds no resources and cannot be stopped."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp
            return True
    return False


def _gql(url: str, query: str) -> dict:
    r = requests.post(url, json={"query": query}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]


def test_dg_dev_serves_the_assets(tmp_path):
    port = _free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    env = dict(os.environ, DAGSTER_HOME=str(home), OCAD_DATA_DIR=str(tmp_path / "data"))
    dg_cli = Path(sys.executable).with_name("dg")
    log = open(tmp_path / "dagster_dev.log", "wb")
    proc = subprocess.Popen(
        [str(dg_cli), "dev", "--host", "127.0.0.1", "--port", str(port)],  # the project and location from dg.toml
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: we signal the whole group on shutdown
    )
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        deadline = time.monotonic() + 150
        loaded = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                entries = _gql(url, LOCATIONS)["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
                    assert not errors, errors
                    assert [e["name"] for e in entries] == ["ocad"]
                    loaded = True
                    break
            except (requests.ConnectionError, requests.Timeout, KeyError, TypeError):
                pass
            time.sleep(1.0)
        assert loaded, f"code location never loaded; log:\n{(tmp_path / 'dagster_dev.log').read_text()[-3000:]}"
        nodes = _gql(url, ASSETS)["assetNodes"]
        groups = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in nodes}
        assert EXPECTED <= set(groups), groups
        assert groups["raw_metrics"] == "data" and groups["timeseries_splits"] == "datasets"
    finally:
        pgid = os.getpgid(proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait()
            pytest.fail("dagster dev did not stop on SIGTERM to its process group")
        log.close()
        # no stray child (webserver, daemon, code server) survives in the group
        for attempt in range(2):  # up to 2 x 30 s: on a loaded 2-core machine the children take a while
            for _ in range(150):
                if not _group_alive(pgid):
                    break
                time.sleep(0.2)
            if not _group_alive(pgid) or attempt:
                break
            # a straggler (a code server busy loading) may have missed the first signal: the
            # documented shutdown is "signal the group", so signal what is left once more
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                break
        alive = _group_alive(pgid)
        if alive:
            os.killpg(pgid, signal.SIGKILL)
        assert not alive, "processes of dagster dev's group were still running after shutdown"
