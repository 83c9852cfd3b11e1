"""Group ``evaluation``: the migration comparison, online training vs inference only.

The logic lives in :mod:`ocad_pipeline.mode_comparison` (testable without Dagster); the asset
loads the test/val samples through the ``tables`` IO manager, runs both modes in fresh
subprocesses, writes ``<data dir>/reports/mode_comparison.json`` and shows the table and a
latency plot as metadata. With ``MLFLOW_TRACKING_URI`` set, the figures go to MLflow too.
"""

import json

import dagster as dg
import pandas as pd

from ocad_pipeline.defs.configs import config_from_dataclass
from ocad_pipeline.defs.resources import ExperimentTracker, ModelRegistryResource, OcadPaths
from ocad_pipeline.mode_comparison import (
    INFERENCE,
    ONLINE,
    ComparisonSettings,
    compare_modes,
    latency_figure,
    report_markdown,
    summary_metrics,
)
from ocad_pipeline.plots import figure_markdown

REPORT_FILE = "reports/mode_comparison.json"


class ModeComparisonConfig(config_from_dataclass(ComparisonSettings)):  # type: ignore[misc]
    """What to replay and how the pre-separation detectors train (the fields of ``ComparisonSettings``).

    Defaults (3 endpoints x 1500 test samples, plus as many val samples for the thresholds)
    take about 2.5 min on 2 CPU cores, almost all of it in the online-training mode
    (about 14 ms per sample including its training stalls; the inference-only mode needs ~1 s).
    ``endpoints``: explicit endpoint ids (default: the most anomalous ones of the replayed
    part, one per capability group first).
    """

    def to_settings(self) -> ComparisonSettings:
        return self.to_dataclass()


def _num(x):
    return None if x is None else float(x)


@dg.asset(
    group_name="evaluation",
    # after performance_reports: the two must not share the CPU while they time latencies
    deps=["tcn_models", "isolation_forest_model", "performance_reports"],
    kinds={"python"},
)
def mode_comparison(
    context: dg.AssetExecutionContext,
    config: ModeComparisonConfig,
    sample_splits: dict[str, pd.DataFrame],
    raw_metrics: dict[str, pd.DataFrame],
    model_registry: ModelRegistryResource,
    paths: OcadPaths,
    tracking: ExperimentTracker,
) -> dg.MaterializeResult:
    """Migration check (seed 7.2 / 8.2): the same test stream replayed sample by sample through
    the pre-separation detectors (rules + CUSUM + a TCN and an Isolation Forest that keep
    history and retrain inside detect every 50 samples: 20 epochs / 100 trees) and through the
    inference-only DetectionPipeline with the registry's production models, each mode in its own
    fresh process. Reports point-wise and event-wise F1 (thresholds from a val replay only),
    per-sample latency P50/P95/P99/worst case and stalls (training included), process memory
    (peak RSS, RSS after load), the after/before ratios next to the seed's claims (-50 % latency,
    -70 % memory), and a latency plot. Written to data/reports/mode_comparison.json."""
    settings = config.to_settings()
    registry = model_registry.get_registry()
    try:
        result = compare_modes(
            sample_splits, raw_metrics["incidents"], raw_metrics["endpoints"], registry.root, settings, log=context.log.info
        )
    except FileNotFoundError as exc:
        raise dg.Failure(
            f"{exc}\n  run the main job first: make run  (= python -m ocad_pipeline.launch --job ocad_pipeline_job)"
        ) from exc
    report = result.report
    out = paths.root / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1, default=str)
    out.write_text(text, encoding="utf-8")
    table = report_markdown(report)
    context.log.info("mode comparison:\n" + table)
    summary = summary_metrics(report)
    run_id = tracking.log_run(
        "mode_comparison",
        params={"settings": report["settings"], "endpoints": report["stream"]["endpoints"]},
        metrics=summary,
        artifacts={"mode_comparison.json": out, "mode_comparison.md": table},
        tags={"ocad/asset": "mode_comparison", "dagster_run_id": context.run_id},
    )
    old, new = report["modes"][ONLINE], report["modes"][INFERENCE]
    ratios = report["ratios_new_over_old"]
    metadata = {
        "comparison": dg.MetadataValue.md(table),
        "latency_plot": dg.MetadataValue.md(figure_markdown(latency_figure(result), "per-sample latency")),
        "report_path": dg.MetadataValue.path(str(out)),
        "report": dg.MetadataValue.json(json.loads(text)),
        "endpoints": ", ".join(report["stream"]["endpoints"]),
        "test_samples": report["stream"]["test_samples"],
        "online_training/f1_pointwise": _num(old["detection"]["composite"]["pointwise"]["f1_score"]),
        "online_training/f1_eventwise": _num(old["detection"]["composite"]["eventwise"]["f1_score"]),
        "online_training/latency_p95_ms": _num(old["latency"]["p95_ms"]),
        "online_training/latency_max_ms": _num(old["latency"]["max_ms"]),
        "online_training/stalls": _num(old["latency"]["stalls"]),
        "online_training/peak_rss_mib": _num(old["memory"]["peak_rss_mib"]),
        "inference_only/f1_pointwise": _num(new["detection"]["composite"]["pointwise"]["f1_score"]),
        "inference_only/f1_eventwise": _num(new["detection"]["composite"]["eventwise"]["f1_score"]),
        "inference_only/latency_p95_ms": _num(new["latency"]["p95_ms"]),
        "inference_only/latency_max_ms": _num(new["latency"]["max_ms"]),
        "inference_only/stalls": _num(new["latency"]["stalls"]),
        "inference_only/peak_rss_mib": _num(new["memory"]["peak_rss_mib"]),
    }
    for k, v in ratios.items():
        metadata[f"ratio/{k}"] = _num(v)
    metadata = {k: v for k, v in metadata.items() if v is not None}  # undefined figures (no incident in the stream)
    if run_id is not None:
        metadata["mlflow_run_id"] = run_id
    return dg.MaterializeResult(metadata=metadata)
