"""IO manager for assets made of several tables (dict of DataFrames -> parquet/CSV files).

Each asset names its files in definition metadata under ``ocad/files`` (table -> path relative
to the data directory), so file names such as ``processed/timeseries_train.parquet`` are part
of the asset's definition and visible in the UI. Files are written aside and renamed, so a
reader never sees half a table.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd

FILES_KEY = "ocad/files"


class MissingUpstreamError(FileNotFoundError):
    """An upstream asset has not been materialized in this data directory."""


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Write one table atomically; parquet unless the name ends in .csv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False, engine="pyarrow")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path)
    return pd.read_parquet(path, engine="pyarrow")


class TableSetIOManager(dg.ConfigurableIOManager):
    """Stores ``dict[str, DataFrame]`` outputs as the files the asset declares."""

    data_dir: str = "data"

    def _files(self, metadata, asset_key: dg.AssetKey) -> dict[str, Path]:
        files = (metadata or {}).get(FILES_KEY)
        if not files:
            raise dg.DagsterInvariantViolationError(f"asset {asset_key.to_user_string()} declares no {FILES_KEY!r} metadata")
        files = files.value if hasattr(files, "value") else files
        return {name: Path(self.data_dir) / rel for name, rel in files.items()}

    def handle_output(self, context: dg.OutputContext, obj: dict[str, pd.DataFrame]) -> None:
        files = self._files(context.definition_metadata, context.asset_key)
        unknown = set(obj) - set(files)
        if unknown:
            raise KeyError(f"asset {context.asset_key.to_user_string()} produced undeclared tables {sorted(unknown)}")
        for name, path in files.items():
            write_table(obj[name], path)
        context.add_output_metadata({f"path/{n}": dg.MetadataValue.path(str(p)) for n, p in files.items()})

    def load_input(self, context: dg.InputContext) -> dict[str, pd.DataFrame]:
        upstream = context.upstream_output
        key = context.asset_key
        files = self._files(upstream.definition_metadata if upstream else None, key)
        missing = [str(p) for p in files.values() if not p.exists()]
        if missing:
            name = key.to_user_string()
            raise MissingUpstreamError(
                f"upstream asset {name!r} has not been materialized (missing {', '.join(missing)}). "
                f"Materialize it first with the same DAGSTER_HOME and data directory, e.g.\n"
                f"  DAGSTER_HOME=$PWD/dagster_home dagster asset materialize -m ocad_pipeline.definitions --select '*{name}'"
            )
        return {name: read_table(p) for name, p in files.items()}
