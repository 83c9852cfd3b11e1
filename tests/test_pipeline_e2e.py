"""Materialize the data assets end to end with a small config in a temporary directory."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from ocad_pipeline.definitions import ALL_ASSETS, build_resources
from ocad_pipeline.defs.assets import data as data_assets

SMALL_RUN = {
    "ops": {
        "raw_metrics": {
            "config": {
                "simulator": {"n_oru": 1, "n_odu": 1, "n_transport": 1, "duration_hours": 6.0, "incidents_per_endpoint_day": 30.0, "seed": 3}
            }
        }
    }
}
DATA_GROUPS = dg.AssetSelection.groups("data", "datasets")


def _materialize(tmp_path: Path, **kw):
    return dg.materialize(
        ALL_ASSETS,
        selection=DATA_GROUPS,
        resources=build_resources(str(tmp_path)),
        run_config=SMALL_RUN,
        instance=dg.DagsterInstance.ephemeral(),
        **kw,
    )


def test_data_assets_materialize_validated_files(tmp_path):
    result = _materialize(tmp_path)
    assert result.success
    for name in ("timeseries", "multivariate", "samples"):
        for split in ("train", "val", "test"):
            df = pd.read_parquet(tmp_path / "processed" / f"{name}_{split}.parquet")
            assert len(df) > 0, (name, split)
    labels = pd.read_csv(tmp_path / "processed" / "anomaly_labels.csv")
    assert list(labels.columns)[:4] == ["endpoint_id", "timestamp_ms", "is_anomaly", "anomaly_type"]
    evals = result.get_asset_check_evaluations()
    assert len(evals) >= 15 and all(e.passed for e in evals)
    mats = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
    md = mats["raw_metrics"].materialization.metadata
    assert "plot" in md and "anomaly_share_by_type" in md and md["rows"].value == 3 * 6 * 720
    # the default (realistic) simulator's benign events are counted, and never labelled
    assert md["benign_events"].value["spike"] > 0
    benign = pd.read_parquet(tmp_path / "raw" / "benign_events.parquet")
    assert len(benign) == sum(md["benign_events"].value.values()) and benign["start"].dtype == "int64"
    ts = pd.read_parquet(tmp_path / "processed" / "timeseries_train.parquet")
    assert len(ts.loc[0, "sequence"]) == 10


def test_invalid_raw_table_stops_everything_downstream(tmp_path, monkeypatch):
    real = data_assets.simulate

    def corrupted(cfg):
        sim = real(cfg)
        sim.samples.loc[[4, 9], "ecpri_ow_us"] = -1.0
        return sim

    monkeypatch.setattr(data_assets, "simulate", corrupted)
    result = _materialize(tmp_path, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert len(failure) == 1 and failure[0].step_key == "raw_metrics"
    text = str(failure[0].event_specific_data.error)
    assert "ecpri_ow_us" in text and "[4, 9]" in text
    failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert [c.check_name for c in failed_checks] == ["samples_schema"]
    # nothing written, nothing downstream ran
    assert not (tmp_path / "raw" / "samples.parquet").exists()
    assert not (tmp_path / "processed").exists()
    assert {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()} == set()


def test_downstream_alone_explains_how_to_materialize_upstream(tmp_path):
    with pytest.raises(Exception, match=r"(?s)has not been materialized.*dg launch --assets"):
        dg.materialize(
            ALL_ASSETS,
            selection=dg.AssetSelection.assets("timeseries_splits"),
            resources=build_resources(str(tmp_path)),
            instance=dg.DagsterInstance.ephemeral(),
        )
