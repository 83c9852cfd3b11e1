"""``ocad-detect`` end to end on wide CSV and long Parquet files."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pandas as pd
import pytest
from model_fixtures import SAMPLE_COLUMNS, cached_model_registry

from ocad_detectors.cli import main


@pytest.fixture(scope="module")
def built():
    return cached_model_registry()


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    rc = main([str(a) for a in argv], stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_wide_csv_with_bad_rows(built, tmp_path):
    f = built.test[SAMPLE_COLUMNS].head(3000).astype({"udp_echo_rtt_ms": object})
    f.loc[10, "udp_echo_rtt_ms"] = "oops"
    f = pd.concat([f, f.iloc[[20]]])  # an old sample again at the end: out of order
    p = tmp_path / "in.csv"
    f.to_csv(p, index=False)
    scores = tmp_path / "out" / "scores.parquet"
    rc, out, err = _run([p, "--model-dir", built.root, "--scores", scores, "--no-progress"])
    assert rc == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert {e["event"] for e in events} <= {"alert", "resolved", "change"}
    alerts = [e for e in events if e["event"] == "alert"]
    assert alerts and {"endpoint_id", "timestamp_ms", "time", "severity", "evidence", "explanation", "message"} <= alerts[0].keys()
    assert all(a["explanation"] and {"signal", "expected", "observed", "sigma"} <= a["explanation"][0].keys() for a in alerts)
    df = pd.read_parquet(scores)
    assert len(df) == len(f)
    assert df["status"].value_counts().to_dict() == {"ok": len(f) - 2, "invalid": 1, "out_of_order": 1}
    assert "udp_echo_rtt_ms: expected a number in ms, got str 'oops'" in df["error"].dropna().tolist()
    assert int(df["alert"].sum()) == len(alerts)
    assert "OCAD detection summary" in err and "invalid" in err and "alerts per endpoint" in err
    assert f"{len(f):,}" in err


def test_long_parquet_to_alerts_file(built, tmp_path):
    wide = built.test[SAMPLE_COLUMNS].head(2000)
    long = wide.melt(id_vars=["timestamp_ms", "endpoint_id"], var_name="metric_name", value_name="value").dropna(subset=["value"])
    long = long.rename(columns={"timestamp_ms": "timestamp"})
    long["value"] = long["value"].astype(float)
    p = tmp_path / "long.parquet"
    long.to_parquet(p)
    alerts = tmp_path / "alerts.jsonl"
    rc, out, err = _run([p, "--model-dir", built.root, "--alerts", alerts, "--quiet"])
    assert rc == 0, err
    assert out == "" and err == ""
    # same alerts as scoring the wide frame directly
    rc2, out2, _ = _run([_save(wide, tmp_path / "w.parquet"), "--model-dir", built.root, "-q"])
    assert rc2 == 0
    got = [json.loads(x) for x in alerts.read_text().splitlines()]
    want = [json.loads(x) for x in out2.splitlines()]
    assert got == want and any(e["event"] == "alert" for e in got)


def _save(df, path):
    df.to_parquet(path)
    return path


def test_usage_errors_exit_2(tmp_path):
    rc, _, err = _run([tmp_path / "missing.csv"])
    assert rc == 2 and err.startswith("error:")
    bad = tmp_path / "c.yaml"
    bad.write_text("detection:\n  nonsense: 1\n")
    p = tmp_path / "x.csv"
    p.write_text("timestamp,endpoint_id,udp_echo_rtt_ms\n1767225600000,a,5\n")
    rc, _, err = _run([p, "--config", bad])
    assert rc == 2 and "nonsense" in err


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "ocad_detectors.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "--model-dir" in proc.stdout and "--format {auto,wide,long}" in proc.stdout and "examples:" in proc.stdout
