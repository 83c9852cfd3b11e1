"""Version pinning and champion/challenger shadow scoring."""

import json

import pytest
from model_fixtures import SAMPLE_COLUMNS, cached_model_registry, copy_registry

from ocad_detectors.pipeline import DetectionPipeline
from ocad_detectors.registry import ModelRegistry
from ocad_detectors.shadow import ShadowScoring


@pytest.fixture(scope="module")
def built():
    return cached_model_registry()


def _stream(built, n=1500):
    df = built.test[SAMPLE_COLUMNS].sort_values(["timestamp_ms", "endpoint_id"]).iloc[:n]
    return df.to_dict("records")  # process() takes mappings as well as Sample objects


def _challenger(root):
    """A second tcn_ecpri version with a 20x smaller residual scale: it flags far more."""
    reg = ModelRegistry(root)
    v = reg.load_version("tcn_ecpri")
    meta = {k: v.metadata[k] for k in v.metadata if k not in ("model_name", "version", "created_at", "files")}
    rs = meta["residual_scale"]
    meta["residual_scale"] = {"pooled": rs["pooled"] / 20, "per_endpoint": {k: x / 20 for k, x in rs["per_endpoint"].items()}}
    return reg.write_version("tcn_ecpri", v.files, meta).version


def test_pinned_versions_are_served_instead_of_production(built, tmp_path):
    root = copy_registry(built, tmp_path / "models")
    new = _challenger(root)
    assert ModelRegistry(root).production_version("tcn_ecpri") == "1.0.0"
    pinned = DetectionPipeline(model_dir=root, versions={"tcn_ecpri": new})
    assert pinned.model_versions["tcn_ecpri"] == new
    assert DetectionPipeline(model_dir=root).model_versions["tcn_ecpri"] == "1.0.0"
    with pytest.raises(ValueError, match="cannot pin unknown models"):
        DetectionPipeline(model_dir=root, versions={"tcn_bogus": "1.0.0"})


def test_shadow_records_the_challenger_but_returns_production(built, tmp_path):
    root = copy_registry(built, tmp_path / "models")
    new = _challenger(root)
    stream = _stream(built)
    plain = DetectionPipeline(model_dir=root)
    expected = [plain.process(s) for s in stream]
    shadow = ShadowScoring({"tcn_ecpri": new}, model_dir=root)
    got = [shadow.process(s) for s in stream]
    # production results are untouched by the challenger running beside them
    assert [(r.composite, r.alert is not None) for r in got] == [(r.composite, r.alert is not None) for r in expected]
    summary = shadow.summary()
    assert summary["samples"] == len(shadow.records) == sum(r.status == "ok" for r in got)
    assert summary["challenger_versions"]["tcn_ecpri"] == new and summary["production_versions"]["tcn_ecpri"] == "1.0.0"
    assert summary["alerts"]["production"] == sum(r.alert is not None for r in got)
    # the challenger's smaller residual scale raises its residual scores; its would-be alerts are only recorded
    higher = sum(rec.challenger_scores["residual"] > rec.production_scores["residual"] for rec in shadow.records)
    assert higher > 0
    assert summary["alerts"]["challenger"] >= summary["alerts"]["production"]
    json.dumps(summary)  # serializable for reports


def test_shadow_batch_counts_equal_streaming_counts(built, tmp_path):
    """ocad-detect --shadow scores a file with ShadowScoring.score_frame: same summary as streaming."""
    import pandas as pd

    root = copy_registry(built, tmp_path / "models")
    new = _challenger(root)
    stream = _stream(built)
    streamed = ShadowScoring({"tcn_ecpri": new}, model_dir=root)
    for s in stream:
        streamed.process(s)
    batched = ShadowScoring({"tcn_ecpri": new}, model_dir=root)
    prod, chal = batched.score_frame(pd.DataFrame(stream))
    a, b = streamed.summary(), batched.summary()
    assert b["samples"] == a["samples"] > 0
    assert b["alerts"] == a["alerts"] == {"production": len(prod.alerts), "challenger": len(chal.alerts)}
    assert b["alert_disagreements"] == a["alert_disagreements"] > 0
    assert b["mean_composite"] == pytest.approx(a["mean_composite"], rel=1e-9)
    assert batched.missing_versions() == {}
    assert ShadowScoring({"tcn_ecpri": "9.9.9"}, model_dir=root).missing_versions() == {"tcn_ecpri": "9.9.9"}


def test_shadow_needs_a_challenger(tmp_path):
    with pytest.raises(ValueError, match="challenger_versions is empty"):
        ShadowScoring({}, model_dir=tmp_path)


def test_ocad_detect_shadow_flag_records_challenger_columns(built, tmp_path):
    import io

    import pandas as pd

    from ocad_detectors.cli import main as detect_main

    root = copy_registry(built, tmp_path / "models")
    new = _challenger(root)
    frame = built.test[SAMPLE_COLUMNS].sort_values(["timestamp_ms", "endpoint_id"]).iloc[:1500]
    src = tmp_path / "s.parquet"
    frame.to_parquet(src)
    err = io.StringIO()
    rc = detect_main([str(src), "--model-dir", str(root), "--shadow", f"tcn_ecpri={new}", "--scores", str(tmp_path / "o.parquet"),
                      "--alerts", str(tmp_path / "a.jsonl"), "--no-progress"], stdout=io.StringIO(), stderr=err)
    assert rc == 0, err.getvalue()
    scores = pd.read_parquet(tmp_path / "o.parquet")
    assert {"challenger_composite", "challenger_alert", "challenger_score_residual"} <= set(scores.columns)
    assert (scores["challenger_score_residual"] >= scores["score_residual"]).all()
    # emitted alerts are production's only
    plain = DetectionPipeline(model_dir=root).score_frame(frame.reset_index(drop=True))
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == len(plain.alerts)
    assert "shadow scoring (champion/challenger)" in err.getvalue()
    rc = detect_main([str(src), "--model-dir", str(root), "--shadow", "tcn_ecpri=9.9.9"], stdout=io.StringIO(), stderr=(e2 := io.StringIO()))
    assert rc == 2 and "could not be loaded" in e2.getvalue()
