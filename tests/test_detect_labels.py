"""ocad-detect on an operator's labelled file: event lines (alert / resolved / change), missing
reply codes, and the labelled summary with false alerts per endpoint-day."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd

from ocad_detectors.cli import main as detect_main
from ocad_detectors.events import read_incidents

T0 = 1_767_225_600_000


def _file(tmp_path):
    rng = np.random.default_rng(5)
    n = 24 * 15  # 24 h of 240 s probes
    ts = T0 + 240_000 * np.arange(n)
    rtt = 100.0 * (1 + 0.02 * rng.standard_normal(n))
    rtt[120:165] *= 3.0  # 3 h at 3x: a labelled degradation
    rtt[[30, 200, 300]] = -3  # timeouts written as the probe's code
    pd.DataFrame({"timestamp": ts // 1000, "endpoint_id": 11119, "rtt": rtt}).to_csv(tmp_path / "trace.csv", index=False)
    pd.DataFrame({"endpoint_id": ["11119"], "start": [int(ts[120])], "end": [int(ts[165])], "anomaly_type": ["congestion"]}).to_csv(
        tmp_path / "labels.csv", index=False)
    return tmp_path / "trace.csv", tmp_path / "labels.csv"


def test_events_missing_codes_and_the_labelled_summary(tmp_path):
    data, labels = _file(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    rc = detect_main([str(data), "--signal-map", "rtt=udp_echo_rtt_ms", "--missing-value", "-3",
                      "--model-dir", str(tmp_path / "none"), "--labels", str(labels), "--no-progress",
                      "--scores", str(tmp_path / "s.parquet")], stdout=out, stderr=err)
    text = err.getvalue()
    assert rc in (0, 4), text
    scores = pd.read_parquet(tmp_path / "s.parquet")
    assert (scores["status"] == "ok").all()  # -3 is a missing reply, not a negative delay
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    kinds = [x["event"] for x in lines]
    assert kinds.count("alert") == 1 and kinds.count("resolved") == 1
    assert [x["direction"] for x in lines if x["event"] == "change"] == ["up", "down"]
    times = [x.get("timestamp_ms") or x.get("resolved_ms") or x.get("detected_ms") for x in lines]
    assert times == sorted(times)
    alert = next(x for x in lines if x["event"] == "alert")
    assert alert["endpoint_id"] == "11119" and alert["time"].startswith("2026-01-01T")
    assert "false alerts per endpoint-day" in text and "incident recall" in text and "congestion" in text
    row = next(line for line in text.splitlines() if "false alerts per endpoint-day" in line)
    assert row.split()[-1] == "0"


def test_read_incidents_windows_and_per_sample_labels(tmp_path):
    (tmp_path / "w.csv").write_text("endpoint_id,start,end,type,outage_start\na,2026-01-01T00:00:00Z,2026-01-01T00:10:00Z,,2026-01-01T00:08:00Z\n")
    w = read_incidents(tmp_path / "w.csv")
    assert w[["start", "end"]].iloc[0].tolist() == [T0, T0 + 600_000] and w["type"].iloc[0] == "unknown"
    assert w["outage_start"].iloc[0] == T0 + 480_000
    (tmp_path / "p.csv").write_text("endpoint_id,timestamp,is_anomaly,anomaly_type\n" + "".join(
        f"b,{T0 // 1000 + 5 * i},{int(3 <= i < 6)},mine\n" for i in range(10)))
    p = read_incidents(tmp_path / "p.csv")
    assert p[["start", "end", "type"]].values.tolist() == [[T0 + 15_000, T0 + 30_000, "mine"]]
    (tmp_path / "bad.csv").write_text("endpoint_id,start,end\na,10,5\n")
    import pytest

    with pytest.raises(ValueError, match="ends before it starts"):
        read_incidents(tmp_path / "bad.csv")
