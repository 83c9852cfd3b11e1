"""Migration comparison: online training inside detect (before) vs inference only (after).

Small streams and small retrain settings keep this fast; the figures are checked for sanity,
not for values (those depend on the machine).
"""

import json
import sys
import types

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from model_fixtures import cached_model_registry

from ocad_detectors.registry import ModelRegistry
from ocad_pipeline.definitions import ALL_ASSETS, build_resources, defs
from ocad_pipeline.mode_comparison import (
    INFERENCE,
    MODES,
    ONLINE,
    ComparisonSettings,
    compare_modes,
    latency_figure,
    main,
    report_markdown,
    resolve_versions,
    select_streams,
    summary_metrics,
)
from ocad_pipeline.online_baseline import OnlineTrainingMultivariateDetector, OnlineTrainingResidualDetector

SMALL = ComparisonSettings(n_endpoints=2, samples_per_endpoint=200, tcn_epochs=2, if_trees=10, stall_ms=5.0)


def _halves(test: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The fixture's held-out 30 %: first half per endpoint = val, second half = test."""
    rank = test.groupby("endpoint_id").cumcount()
    size = test.groupby("endpoint_id")["timestamp_ms"].transform("size")
    return {"val": test[rank < size // 2].reset_index(drop=True), "test": test[rank >= size // 2].reset_index(drop=True)}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    built = cached_model_registry()
    splits = _halves(built.test)
    res = compare_modes(
        splits, built.sim.incidents, built.sim.endpoints, built.root, SMALL, workdir=tmp_path_factory.mktemp("modes")
    )
    return built, res


def test_both_modes_replay_the_same_stream(compared):
    _, res = compared
    n = len(res.test_stream)
    assert n == SMALL.n_endpoints * SMALL.samples_per_endpoint
    assert len(res.val_stream) == n
    assert res.test_stream["timestamp_ms"].is_monotonic_increasing  # arrival order, endpoints interleaved
    for mode in MODES:
        for split in ("val", "test"):
            r = res.runs[mode][split]
            assert len(r.latency_ns) == len(r.composite) == len(r.scores) == n
            assert (r.latency_ns > 0).all() and r.ok.all()
            assert ((r.composite >= 0) & (r.composite <= 1)).all()
            assert ((r.scores >= 0) & (r.scores <= 1)).all()
    # each mode and split ran in its own process
    pids = {res.runs[m][s].info["pid"] for m in MODES for s in ("val", "test")}
    assert len(pids) == 4


def test_figures_are_sane(compared):
    _, res = compared
    rep = res.report
    for mode in MODES:
        m = rep["modes"][mode]
        for block in ("composite", "builtin_decision"):
            for kind in ("pointwise", "eventwise"):
                f1 = m["detection"][block][kind]["f1_score"]
                assert f1 is None or 0.0 <= f1 <= 1.0
        assert 0.0 <= m["detection"]["composite"]["pointwise"]["f1_score"] <= 1.0
        for d in ("residual", "multivariate"):
            assert 0.0 <= m["detection"]["per_detector"][d]["pointwise"]["f1_score"] <= 1.0
        lat = m["latency"]
        assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        mem = m["memory"]
        assert mem["peak_rss_mib"] > 0 and mem["peak_rss_mib"] >= mem["rss_after_load_mib"] > 0
    old, new = rep["modes"][ONLINE], rep["modes"][INFERENCE]
    # the old mode trains inside detect, and those calls are stalls
    assert old["training"]["fits"]["residual"] > 0 and old["training"]["fits"]["multivariate"] > 0
    assert old["latency"]["training_calls"] > 0
    assert old["latency"]["stalls"] > 0 and old["latency"]["stalls_on_training_calls"] > 0
    assert new["latency"]["training_calls"] == 0
    assert old["latency"]["max_ms"] > new["latency"]["max_ms"]
    # the inference-only process needs neither torch nor scikit-learn (nor pandas)
    assert new["heavy_modules_loaded"] == []
    assert {"torch", "sklearn"} <= set(old["heavy_modules_loaded"])
    assert old["memory"]["peak_rss_mib"] > new["memory"]["peak_rss_mib"]
    assert set(new["model_versions"].values()) == {"1.0.0"}
    assert rep["ratios_new_over_old"]["latency_p95_ms"] > 0
    assert rep["seed_claims"] == {"latency_change": -0.5, "memory_change": -0.7}
    json.dumps(rep)  # plain JSON, no custom encoder needed


def test_report_table_plot_and_summary(compared):
    _, res = compared
    table = report_markdown(res.report)
    for word in ("point-wise F1", "event-wise F1", "P50", "P95", "P99", "worst case", "stalls", "peak RSS", "-50 %", "-70 %"):
        assert word in table, word
    fig = latency_figure(res)
    assert fig.axes[0].get_yscale() == "log"
    summary = summary_metrics(res.report)
    assert set(summary) == {ONLINE, INFERENCE, "ratio"}


def test_select_streams_is_deterministic_and_interleaved():
    built = cached_model_registry()
    splits = _halves(built.test)
    a = select_streams(splits, built.sim.endpoints, ComparisonSettings(n_endpoints=3, samples_per_endpoint=50))
    b = select_streams(splits, built.sim.endpoints, ComparisonSettings(n_endpoints=3, samples_per_endpoint=50))
    assert a[2] == b[2] and len(set(a[2])) == 3
    test, val, chosen = a
    assert test.groupby("endpoint_id").size().to_dict() == {e: 50 for e in chosen}
    assert val["timestamp_ms"].max() < test["timestamp_ms"].min()
    explicit = select_streams(splits, built.sim.endpoints, ComparisonSettings(endpoints=["transport-002"], samples_per_endpoint=10))
    assert explicit[2] == ["transport-002"] and len(explicit[0]) == 10
    with pytest.raises(ValueError, match="not in both"):
        select_streams(splits, built.sim.endpoints, ComparisonSettings(endpoints=["nope"]))


def test_resolve_versions_prefers_production(tmp_path):
    built = cached_model_registry()
    assert set(resolve_versions(built.root, "production").values()) == {"1.0.0"}
    empty = tmp_path / "models"
    empty.mkdir()
    assert resolve_versions(empty, "auto") == {}
    with pytest.raises(ValueError):
        resolve_versions(built.root, "newest")


def test_online_detectors_retrain_inside_detect():
    res = OnlineTrainingResidualDetector(seq_len=5, retrain_every=10, epochs=1, hidden_channels=4)
    rng = np.random.default_rng(0)
    x = 5.0 + np.cumsum(rng.normal(0, 0.05, 120))
    scores = [res.score_one("ep", "udp_echo", float(v)) for v in x]
    # first training at 50 samples, then every 10: 50, 60, ..., 120
    assert res.clock.fits == 8 and res.clock.fit_seconds > 0
    assert all(s == 0.0 for s in scores[:49]) and all(0.0 <= s < 1.0 for s in scores)
    assert res.score_one("ep", "udp_echo", float("nan")) == 0.0  # a lost reply is not scored
    mv = OnlineTrainingMultivariateDetector(retrain_every=25, n_estimators=5)
    for i in range(100):
        s = mv.score_one("ep", "lbm+udp_echo", 5.0 * i, {"udp_echo": 5.0 + 0.01 * (i % 7), "lbm": 3.0}, 1.0)
        assert 0.0 <= s <= 1.0
    # 89 feature vectors (window 12): first fit at 50, then every 25 -> 50, 75
    assert mv.clock.fits == 2


def test_worker_entry_point_needs_a_spec():
    assert main(["--help"]) == 2


# ----------------------------------------------------------------------------- the asset

SIM = {"n_oru": 1, "n_odu": 1, "n_transport": 1, "duration_hours": 6.0, "incidents_per_endpoint_day": 40.0, "seed": 5}
UPSTREAM = {
    "ops": {
        "raw_metrics": {"config": {"simulator": SIM}},
        "tcn_models": {"config": {"hidden_channels": 4, "dilations": [1, 2], "max_epochs": 1, "max_train_windows": 300, "batch_size": 128}},
        "isolation_forest_model": {"config": {"n_estimators": 10, "cv_folds": 2}},
    }
}
COMPARISON = {"ops": {"mode_comparison": {"config": {"n_endpoints": 2, "samples_per_endpoint": 150, "tcn_epochs": 2, "if_trees": 10}}}}


def test_mode_comparison_asset(tmp_path, monkeypatch):
    def run(selection, config):
        return dg.materialize(
            ALL_ASSETS, selection=selection, resources=build_resources(str(tmp_path)), run_config=config,
            instance=dg.DagsterInstance.ephemeral(),
        )

    assert run(["*tcn_models", "*isolation_forest_model", "sample_splits"], UPSTREAM).success
    # with MLFLOW_TRACKING_URI set, the figures also go to (a fake) MLflow
    calls = []

    class _Run:
        info = types.SimpleNamespace(run_id="run-123")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    fake = types.ModuleType("mlflow")
    fake.start_run = lambda **kw: calls.append(("start_run", kw)) or _Run()
    fake.log_params = lambda p: calls.append(("log_params", p))
    fake.log_metrics = lambda m: calls.append(("log_metrics", m))
    fake.log_artifact = lambda path: calls.append(("log_artifact", path))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///nowhere")
    result = run(["mode_comparison"], COMPARISON)
    assert result.success
    report = json.loads((tmp_path / "reports" / "mode_comparison.json").read_text())
    assert set(report["modes"]) == set(MODES)
    assert report["stream"]["test_samples"] == 300
    # the fresh registry's versions are candidates (no production yet): "auto" serves the newest
    reg = ModelRegistry(tmp_path / "models")
    assert set(report["modes"][INFERENCE]["model_versions"].values()) == {reg.list_versions("isolation_forest")[-1].version}
    md = result.get_asset_materialization_events()[0].materialization.metadata
    assert "data:image/png;base64" in md["latency_plot"].value
    assert "seed claim" in md["comparison"].value
    assert md["online_training/stalls"].value > 0
    assert md["mlflow_run_id"].value == "run-123"
    assert calls[0] == ("start_run", {"run_name": "mode_comparison", "tags": {"ocad/asset": "mode_comparison", "dagster_run_id": result.run_id}})
    metrics = dict(calls)["log_metrics"]
    assert "online_training.latency.p95_ms" in metrics and "ratio.memory_peak_rss_mib" in metrics


def test_asset_is_grouped_and_described():
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    spec = specs["mode_comparison"]
    assert spec.group_name == "evaluation"
    assert spec.description and "-50 %" in spec.description
    deps = {d.asset_key.to_user_string() for d in spec.deps}
    assert deps == {"sample_splits", "raw_metrics", "tcn_models", "isolation_forest_model", "performance_reports"}
