"""Run pandera schemas inside an asset and report them as (blocking) asset checks.

A table that fails its schema is never written: the asset yields failing check results (visible
in the UI with the failing columns and rows) and then fails, so nothing downstream runs on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import dagster as dg
import pandas as pd
import pandera.pandas as pa

from ocad_pipeline.schemas import DataValidationError, validate


def schema_check_specs(asset: str, checks: Mapping[str, str]) -> list[dg.AssetCheckSpec]:
    """One blocking check per table: {check_name: description}."""
    return [dg.AssetCheckSpec(name, asset=asset, blocking=True, description=desc) for name, desc in checks.items()]


def checked_output(
    tables: dict[str, pd.DataFrame],
    checks: Mapping[str, tuple[pd.DataFrame, pa.DataFrameSchema]],
    metadata: Mapping[str, object],
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Validate every (frame, schema) pair; yield check results, then the output or a Failure."""
    failures: list[str] = []
    results: list[dg.AssetCheckResult] = []
    for check_name, (frame, schema) in checks.items():
        try:
            validate(frame, schema, check_name)
            results.append(dg.AssetCheckResult(check_name=check_name, passed=True, metadata={"rows": len(frame)}))
        except DataValidationError as e:
            failures.append(str(e))
            fc = e.failure_cases
            md = {"error": dg.MetadataValue.text(str(e))}
            if fc is not None:
                md["failure_cases"] = dg.MetadataValue.md(fc.head(20).astype(str).to_markdown(index=False))
                md["failures"] = len(fc)
            results.append(
                dg.AssetCheckResult(check_name=check_name, passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=md)
            )
    if failures:
        yield from results
        raise dg.Failure(description="\n".join(failures), allow_retries=False)
    yield dg.Output(tables, metadata=dict(metadata))
    yield from results
