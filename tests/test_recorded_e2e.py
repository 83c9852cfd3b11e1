"""From an operator's files to models, a report and alerts, without writing code."""

import io
import json
from pathlib import Path

import dagster as dg
import pandas as pd

from ocad_detectors.cli import main as detect_main
from ocad_detectors.registry import ModelRegistry
from ocad_pipeline.definitions import ALL_ASSETS, build_resources

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"
TINY = {
    "tcn_models": {"config": {"hidden_channels": 4, "dilations": [1, 2], "max_epochs": 2, "max_train_windows": 800}},
    "isolation_forest_model": {"config": {"n_estimators": 30, "cv_folds": 2}},
    "performance_reports": {"config": {"probe_samples": 200}},
}


def test_unlabelled_files_train_report_and_detect(tmp_path):
    run = {"ops": {"raw_metrics": {"config": {"source": "files", "files": {"path": str(FIXTURES / "recorded_wide.csv")}}}, **TINY}}
    res = dg.materialize(
        ALL_ASSETS, selection=["*model_promotion"], resources=build_resources(str(tmp_path)), run_config=run,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert res.success
    reg = ModelRegistry(tmp_path / "models")
    assert reg.production_version("tcn_ecpri") == "1.0.0"
    report = json.loads((tmp_path / "reports" / "performance_report.json").read_text())
    # no labels: the report says so instead of printing numbers
    assert report["anomaly_detection"] == {"available": False, "reason": "the data has no labels: detection metrics are not available"}
    assert report["dataset_info"]["labelled"] is False
    assert report["gate"]["bootstrap"] and "no labels" in " ".join(report["gate"]["reasons"])

    # the same file through ocad-detect: alerts as JSON lines, scores as parquet
    alerts, scores = tmp_path / "alerts.jsonl", tmp_path / "scores.parquet"
    out, err = io.StringIO(), io.StringIO()
    rc = detect_main([str(FIXTURES / "recorded_wide.csv"), "--model-dir", str(tmp_path / "models"), "--alerts", str(alerts),
                      "--scores", str(scores), "--no-progress"], stdout=out, stderr=err)
    assert rc == 0, err.getvalue()
    frame = pd.read_parquet(scores)
    assert len(frame) == len(pd.read_csv(FIXTURES / "recorded_wide.csv"))  # one result per sample
    assert (frame["status"] == "ok").all()
    lines = [json.loads(x) for x in alerts.read_text().splitlines()]
    assert lines and {"endpoint_id", "severity", "explanation"} <= set(lines[0])
    assert "OCAD detection summary" in err.getvalue()  # the summary goes to stderr, alerts may go to stdout


def test_ocad_detect_reads_long_files_with_units_and_a_signal_map(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    scores = tmp_path / "s.parquet"
    # absolute thresholds (in ms) make a unit mistake visible; relative ones would adapt to it
    cfg = tmp_path / "abs.yaml"
    cfg.write_text("detection:\n  rules: {mode: absolute}\n")
    rc = detect_main([str(FIXTURES / "recorded_rtt_long.csv"), "--config", str(cfg), "--signal-map", "rtt=udp_echo_rtt_ms",
                      "--model-dir", str(tmp_path / "none"), "--alerts", str(tmp_path / "a.jsonl"), "--scores", str(scores), "--no-progress"], stdout=out, stderr=err)
    assert rc == 0, err.getvalue()
    frame = pd.read_parquet(scores)
    assert len(frame) == 720 and (frame["status"] == "ok").all()
    assert frame["timestamp_ms"].iloc[0] == 1_767_571_200_000  # epoch seconds read as such
    # µs converted to ms: a 4 ms RTT is healthy; rules fire only around the file's incidents
    converted = (frame["score_rule"] >= 0.5).mean()
    # the same file without its unit column is read as ms: 4135 "ms" trips the rules everywhere
    raw = pd.read_csv(FIXTURES / "recorded_rtt_long.csv").drop(columns=["unit"])
    raw.to_csv(tmp_path / "no_unit.csv", index=False)
    rc = detect_main([str(tmp_path / "no_unit.csv"), "--config", str(cfg), "--signal-map", "rtt=udp_echo_rtt_ms", "--model-dir", str(tmp_path / "none"),
                      "--alerts", str(tmp_path / "b.jsonl"), "--scores", str(tmp_path / "t.parquet"), "--no-progress"],
                     stdout=io.StringIO(), stderr=io.StringIO())
    unconverted = (pd.read_parquet(tmp_path / "t.parquet")["score_rule"] >= 0.5).mean()
    assert rc == 0 and converted < 0.2 and unconverted > 0.9, (converted, unconverted)


def test_ocad_detect_rejects_a_bad_signal_map(tmp_path):
    err = io.StringIO()
    rc = detect_main([str(FIXTURES / "recorded_rtt_long.csv"), "--signal-map", "rtt"], stdout=io.StringIO(), stderr=err)
    assert rc == 2 and "--signal-map expects NAME=VALUE" in err.getvalue()


def test_single_signal_recording_with_operator_labels_trains_evaluates_and_promotes(tmp_path):
    """A file with one signal (UDP echo only) and the operator's own label types, one window with
    an outage_start: the models without data are skipped and reported, the rest is trained,
    evaluated per incident type, gated and promoted."""
    wide = pd.read_csv(FIXTURES / "recorded_wide.csv")[["timestamp", "endpoint_id", "udp_echo_rtt_ms"]]
    wide.to_csv(tmp_path / "udp_only.csv", index=False)
    names = {"drift": "fiber_degradation", "concurrent": "congestion", "spike": "microburst", "correlated": "fronthaul_skew", "loss": "probe_loss"}
    lab = pd.read_csv(FIXTURES / "recorded_labels.csv")
    lab["anomaly_type"] = lab["anomaly_type"].map(names)
    lab["outage_start"] = ""
    last = (lab["endpoint_id"] == "transport-001") & (lab["start"] == "2026-01-05T03:08:00Z")
    lab.loc[last, "outage_start"] = "2026-01-05T03:35:00Z"
    lab.to_csv(tmp_path / "labels.csv", index=False)
    run = {"ops": {"raw_metrics": {"config": {"source": "files", "files": {
        "path": str(tmp_path / "udp_only.csv"), "labels_path": str(tmp_path / "labels.csv")}}}, **TINY}}
    root = tmp_path / "data"
    res = dg.materialize(
        ALL_ASSETS, selection=["*model_promotion"], resources=build_resources(str(root)), run_config=run,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert res.success
    reg = ModelRegistry(root / "models")
    assert reg.production_version("tcn_udp_echo") == "1.0.0" and reg.production_version("isolation_forest") == "1.0.0"
    assert not (root / "models" / "tcn_ecpri").exists() and not (root / "models" / "tcn_lbm").exists()
    tcn_md = next(m for m in res.get_asset_materialization_events() if m.asset_key == dg.AssetKey("tcn_models"))
    skipped = tcn_md.materialization.metadata["skipped_models"].value
    assert set(skipped) == {"tcn_ecpri", "tcn_lbm"} and "no normal, finite ecpri windows" in skipped["tcn_ecpri"]
    incidents = pd.read_parquet(root / "raw" / "incidents.parquet")
    assert set(incidents["type"]) == set(names.values())
    assert incidents["outage_start"].notna().sum() == 1
    report = json.loads((root / "reports" / "performance_report.json").read_text())
    assert set(report["model_info"]["versions"]) == {"tcn_udp_echo", "isolation_forest"}
    by_type = report["detectors"]["alerts"]["eventwise"]["per_type"]
    assert by_type and set(by_type) <= set(names.values())
    assert report["detectors"]["alerts"]["eventwise"]["outage_incidents"] == 1  # lead time is measurable
    assert sum(v["incidents"] for v in by_type.values()) == report["detectors"]["alerts"]["eventwise"]["incidents"]
