"""Group ``datasets``: leak-free, labelled train/val/test splits under data/processed/."""


import dagster as dg
import pandas as pd

from ocad_pipeline import datasets as ds
from ocad_pipeline.defs.assets.validation import checked_output, schema_check_specs
from ocad_pipeline.defs.resources import DatasetSettings
from ocad_pipeline.schemas import (
    RAW_SAMPLES,
    REFERENCE_STATS,
    multivariate_schema,
    split_disjointness_schema,
    timeseries_schema,
)

SPLITS = ds.SPLITS


def _files(prefix: str) -> dict[str, str]:
    return {s: f"processed/{prefix}_{s}.parquet" for s in SPLITS}


def _split_specs(asset: str, what: str) -> list[dg.AssetCheckSpec]:
    checks = {f"{s}_schema": f"{what} ({s}): dtypes, unit ranges, nullability, labels" for s in SPLITS}
    checks["splits_disjoint"] = "per endpoint, splits are separated in time by at least one window (no leakage)"
    return schema_check_specs(asset, checks)


def _stacked(tables: dict[str, pd.DataFrame], key_cols: list[str]) -> pd.DataFrame:
    return pd.concat([t[key_cols].assign(split=s) for s, t in tables.items()], ignore_index=True)


def _size_table(tables: dict[str, pd.DataFrame], by: str | None = None) -> str:
    rows = ["| split | " + (f"{by} | " if by else "") + "rows | anomalous | share |", "|---|" + ("---|" if by else "") + "---:|---:|---:|"]
    for s, t in tables.items():
        groups = t.groupby(by) if by else [(None, t)]
        for key, g in groups:
            rows.append(
                f"| {s} | " + (f"{key} | " if by else "") + f"{len(g)} | {int(g['is_anomaly'].sum())} | {g['is_anomaly'].mean():.2%} |"
            )
    return "\n".join(rows)


def _type_table(tables: dict[str, pd.DataFrame]) -> str:
    counts = pd.DataFrame({s: t["anomaly_type"].value_counts() for s, t in tables.items()}).fillna(0).astype(int)
    return counts.to_markdown()


@dg.asset(
    group_name="datasets",
    io_manager_key="tables",
    metadata={"ocad/files": {s: f"processed/samples_{s}.parquet" for s in SPLITS}},
    check_specs=schema_check_specs(
        "sample_splits",
        {f"{s}_schema": f"raw samples of the {s} split" for s in SPLITS}
        | {"splits_disjoint": "per endpoint, splits are separated in time by at least one window"},
    ),
    kinds={"pandas", "parquet"},
)
def sample_splits(raw_metrics: dict[str, pd.DataFrame], dataset_settings: DatasetSettings):
    """Raw samples split 70/15/15 by time per endpoint, with a gap of one window between splits
    (gap samples belong to no split). The test split is the stream that detectors replay."""
    cfg = dataset_settings.split_config()
    tables = ds.sample_splits(raw_metrics["samples"], cfg)
    gap_ms = int(cfg.gap_samples * _interval_ms(raw_metrics["samples"]))
    checks = {f"{s}_schema": (tables[s], RAW_SAMPLES) for s in SPLITS}
    checks["splits_disjoint"] = (_stacked(tables, ["endpoint_id", "timestamp_ms"]), split_disjointness_schema(gap_ms))
    metadata = {f"rows_{s}": len(t) for s, t in tables.items()} | {
        "gap_samples": cfg.gap_samples,
        "sizes": dg.MetadataValue.md(_size_table(tables)),
    }
    yield from checked_output(tables, checks, metadata)


def _interval_ms(samples: pd.DataFrame) -> float:
    """Typical sample spacing (median over endpoints), used to turn the gap into milliseconds."""
    d = samples.sort_values(["endpoint_id", "timestamp_ms"]).groupby("endpoint_id")["timestamp_ms"].diff().dropna()
    return float(d.median()) if len(d) else 0.0


@dg.asset(
    group_name="datasets",
    io_manager_key="tables",
    metadata={"ocad/files": {"stats": "processed/reference_stats.parquet"}},
    check_specs=schema_check_specs("reference_stats", {"stats_schema": "positive mean and std per endpoint and signal"}),
    kinds={"pandas", "parquet"},
)
def reference_stats(raw_metrics: dict[str, pd.DataFrame], dataset_settings: DatasetSettings):
    """Healthy-behaviour mean and std per (endpoint, signal) from normal *training* samples only,
    plus pooled rows (endpoint_id '*') for endpoints the models have never seen. CUSUM and the
    standardized features use these instead of a window's own statistics."""
    cfg = dataset_settings.split_config()
    stats = ds.reference_stats(raw_metrics["samples"], cfg)
    yield from checked_output(
        {"stats": stats},
        {"stats_schema": (stats, REFERENCE_STATS)},
        {"rows": len(stats), "preview": dg.MetadataValue.md(stats.to_markdown(index=False))},
    )


@dg.asset(
    group_name="datasets",
    io_manager_key="tables",
    metadata={"ocad/files": _files("timeseries")},
    check_specs=_split_specs("timeseries_splits", "TCN sequences"),
    kinds={"pandas", "parquet"},
)
def timeseries_splits(raw_metrics: dict[str, pd.DataFrame], dataset_settings: DatasetSettings):
    """TCN datasets in the seed's layout: per metric type (udp_echo, ecpri, lbm) the previous N
    values (``sequence``) and the next one (``target``), labelled for that metric; plus
    ``window_anomalous`` so trainers can keep normal windows only. Files:
    data/processed/timeseries_{train,val,test}.parquet."""
    cfg = dataset_settings.split_config()
    tables = ds.timeseries_splits(raw_metrics["samples"], raw_metrics["incidents"], raw_metrics["endpoints"], cfg)
    schema = timeseries_schema(cfg.sequence_length)
    interval = _interval_ms(raw_metrics["samples"])
    stacked = pd.concat(
        [t[["endpoint_id", "metric_type", "timestamp_ms"]].assign(split=s) for s, t in tables.items()], ignore_index=True
    )
    stacked["endpoint_id"] = stacked["endpoint_id"].astype(str) + "/" + stacked["metric_type"].astype(str)
    checks = {f"{s}_schema": (tables[s], schema) for s in SPLITS}
    # every window (first input .. target) lies in one split, at least one sample away from other splits
    checks["splits_disjoint"] = (_window_spans(stacked, cfg.sequence_length * interval), split_disjointness_schema(int(interval)))
    metadata = {f"rows_{s}": len(t) for s, t in tables.items()} | {
        "sequence_length": cfg.sequence_length,
        "sizes": dg.MetadataValue.md(_size_table(tables, "metric_type")),
        "anomaly_types": dg.MetadataValue.md(_type_table(tables)),
        "preview": dg.MetadataValue.md(tables["train"].head(5).astype(str).to_markdown(index=False)),
    }
    yield from checked_output(tables, checks, metadata)


def _window_spans(stacked: pd.DataFrame, span_ms: float) -> pd.DataFrame:
    """Both ends of every window (oldest sample and newest/target) as rows with their split."""
    first = stacked.assign(timestamp_ms=(stacked["timestamp_ms"] - int(span_ms)).astype("int64"))
    return pd.concat([stacked, first], ignore_index=True)[["endpoint_id", "timestamp_ms", "split"]]


@dg.asset(
    group_name="datasets",
    io_manager_key="tables",
    metadata={"ocad/files": _files("multivariate")},
    check_specs=_split_specs("multivariate_splits", "feature vectors"),
    kinds={"pandas", "parquet"},
)
def multivariate_splits(
    raw_metrics: dict[str, pd.DataFrame], reference_stats: dict[str, pd.DataFrame], dataset_settings: DatasetSettings
):
    """Feature vectors from the shared feature engine (ocad_detectors.features): per signal
    p95/p99, EWMA, slope, reference-standardized values, CUSUM, missing share, loopback failure
    run length; labelled with the newest sample's anomaly (incl. concurrent and correlated).
    Files: data/processed/multivariate_{train,val,test}.parquet."""
    cfg = dataset_settings.split_config()
    tables = ds.multivariate_splits(raw_metrics["samples"], raw_metrics["endpoints"], reference_stats["stats"], cfg)
    interval = _interval_ms(raw_metrics["samples"])
    schema = multivariate_schema()
    stacked = _stacked(tables, ["endpoint_id", "timestamp_ms"])
    checks = {f"{s}_schema": (tables[s], schema) for s in SPLITS}
    checks["splits_disjoint"] = (
        _window_spans(stacked, (cfg.feature_window - 1) * interval),
        split_disjointness_schema(int(interval)),
    )
    metadata = {f"rows_{s}": len(t) for s, t in tables.items()} | {
        "feature_window": cfg.feature_window,
        "sizes": dg.MetadataValue.md(_size_table(tables, "capabilities")),
        "anomaly_types": dg.MetadataValue.md(_type_table(tables)),
        "preview": dg.MetadataValue.md(tables["train"].head(5).round(3).astype(str).to_markdown(index=False)),
    }
    yield from checked_output(tables, checks, metadata)
