"""Group ``data``: raw measurements, from the simulator (default) or from recorded files."""


import dagster as dg
import pandas as pd

from ocad_pipeline.defs.assets.validation import checked_output, schema_check_specs
from ocad_pipeline.defs.configs import config_from_dataclass
from ocad_pipeline.plots import figure_markdown, series_with_incidents
from ocad_pipeline.recorded import RecordedConfig, load_recorded
from ocad_pipeline.schemas import ANOMALY_LABELS, ENDPOINTS, INCIDENTS, RAW_SAMPLES
from ocad_pipeline.simulator import SimulatorConfig, simulate


class SimulatorSettings(config_from_dataclass(SimulatorConfig)):  # type: ignore[misc]
    """Fleet, duration and incident settings of the simulator (the fields of ``SimulatorConfig``).
    Same settings -> same data."""

    def to_simulator_config(self) -> SimulatorConfig:
        try:
            return self.to_dataclass()
        except ValueError as e:
            raise dg.Failure(f"raw_metrics: bad simulator settings: {e}") from None


class RecordedFilesSettings(config_from_dataclass(RecordedConfig)):  # type: ignore[misc]
    """An operator's exported measurements (the fields of ``RecordedConfig``; README, "Recorded data")."""

    overrides = {"path": "required by the reader; empty here so that source 'simulator' needs no path"}
    path: str = ""  # a CSV/Parquet file or a directory of them

    def to_recorded_config(self) -> RecordedConfig:
        if not self.path:
            raise dg.Failure("raw_metrics: source is 'files' but files.path is empty")
        return self.to_dataclass()


class RawMetricsConfig(dg.Config):
    """Where raw metrics come from: ``simulator`` (default) or ``files``."""

    source: str = "simulator"
    simulator: SimulatorSettings = SimulatorSettings()
    files: RecordedFilesSettings = RecordedFilesSettings()


RAW_FILES = {
    "samples": "raw/samples.parquet",
    "incidents": "raw/incidents.parquet",
    "endpoints": "raw/endpoints.parquet",
    "labels": "processed/anomaly_labels.csv",
    "source": "raw/source.parquet",
    "benign": "raw/benign_events.parquet",
}


def anomaly_share_table(samples: pd.DataFrame) -> str:
    n = len(samples)
    counts = samples["anomaly_type"].value_counts()
    rows = ["| anomaly_type | samples | share |", "|---|---:|---:|"]
    for t, c in counts.items():
        rows.append(f"| {t} | {c} | {c / n:.2%} |")
    rows.append(f"| **any** | {int(samples['is_anomaly'].sum())} | {samples['is_anomaly'].mean():.2%} |")
    return "\n".join(rows)


@dg.asset(
    group_name="data",
    io_manager_key="tables",
    metadata={"ocad/files": RAW_FILES},
    check_specs=schema_check_specs(
        "raw_metrics",
        {
            "samples_schema": "samples: signal units and ranges, one row per (endpoint, timestamp), labels consistent",
            "incidents_schema": "incidents: every episode ends; outages only after drifts, inside the episode",
            "endpoints_schema": "endpoints: known roles and capability sets",
            "labels_schema": "anomaly_labels.csv in the seed's columns",
        },
    ),
    kinds={"pandas", "parquet"},
)
def raw_metrics(context: dg.AssetExecutionContext, config: RawMetricsConfig):
    """CFM-lite samples (udp_echo_rtt_ms, ecpri_ow_us [µs], lbm_rtt_ms, lbm_success) per endpoint
    with per-sample labels and an incident table. Source ``simulator`` (default): a seeded fleet
    of O-RU / O-DU / transport endpoints; profile ``realistic`` (default: heavy-tailed queueing,
    benign spikes and route steps, small and large incidents of nine types) or ``clean``. Source ``files``: recorded CSV/Parquet files (wide or long), labels optional.
    Written to data/raw/ and data/processed/anomaly_labels.csv."""
    if config.source == "simulator":
        sim = simulate(config.simulator.to_simulator_config())
        source = {"source": "simulator", "labelled": True, "files": "", "rows_read": len(sim.samples), "duplicates_removed": 0}
        context.log.info(f"simulated {len(sim.samples)} samples, {len(sim.incidents)} incidents on {len(sim.endpoints)} endpoints")
    elif config.source == "files":
        sim, report = load_recorded(config.files.to_recorded_config())
        source = {
            "source": "files",
            "labelled": bool(report["labelled"]),
            "files": ", ".join(report["files"]),
            "rows_read": int(report["rows_read"]),
            "duplicates_removed": int(report["duplicates_removed"]),
        }
        if report.get("window"):
            context.log.info(f"rolling window: {report['window']}")
        context.log.info(f"read {report['rows_read']} rows from {len(report['files'])} file(s); labelled: {report['labelled']}")
        if not report["labelled"]:
            context.log.warning("recorded data has no labels: training treats it as normal; detection metrics are not available")
    else:
        raise dg.Failure(f"raw_metrics: unknown source {config.source!r}; use 'simulator' or 'files'")
    tables = {
        "samples": sim.samples,
        "incidents": sim.incidents,
        "endpoints": sim.endpoints,
        "labels": sim.labels,
        "source": pd.DataFrame([source]),
        # unlabelled benign events (realistic simulator; empty otherwise): count false alerts on them
        "benign": sim.benign.astype({"endpoint_id": "string", "kind": "string", "start": "int64", "end": "int64", "magnitude": float}),
    }
    # plot the endpoint that shows the most incident types
    types_per_ep = sim.incidents.groupby("endpoint_id")["type"].nunique()
    ep = str(types_per_ep.idxmax()) if len(types_per_ep) else str(sim.endpoints["endpoint_id"].iloc[0])
    metadata = {
        "source": source["source"],
        "labelled": source["labelled"],
        "rows": len(sim.samples),
        "endpoints": len(sim.endpoints),
        "incidents": len(sim.incidents),
        "anomaly_share": float(sim.samples["is_anomaly"].mean()),
        # unlabelled benign events of the realistic simulator (route steps, single-sample spikes)
        "benign_events": dg.MetadataValue.json(
            {str(k): int(v) for k, v in sim.benign["kind"].str.split(":").str[0].value_counts().items()} if len(sim.benign) else {}
        ),
        "anomaly_share_by_type": dg.MetadataValue.md(anomaly_share_table(sim.samples)),
        "incidents_by_type": dg.MetadataValue.md(
            sim.incidents.groupby(["type", "severity"]).size().unstack(fill_value=0).to_markdown()
        ),
        "endpoints_table": dg.MetadataValue.md(sim.endpoints[["endpoint_id", "role", "capabilities"]].to_markdown(index=False)),
        "preview": dg.MetadataValue.md(sim.samples.head(10).to_markdown(index=False)),
        "plot": dg.MetadataValue.md(figure_markdown(series_with_incidents(sim.samples, sim.incidents, ep), ep)),
    }
    yield from checked_output(
        tables,
        {
            "samples_schema": (sim.samples, RAW_SAMPLES),
            "incidents_schema": (sim.incidents, INCIDENTS),
            "endpoints_schema": (sim.endpoints, ENDPOINTS),
            "labels_schema": (sim.labels, ANOMALY_LABELS),
        },
        metadata,
    )
