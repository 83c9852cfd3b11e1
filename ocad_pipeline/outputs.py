"""Print where the pipeline's outputs are (``python -m ocad_pipeline.outputs``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ocad_pipeline.defs.resources import DATA_DIR_ENV, DEFAULT_DATA_DIR


def describe(data_dir: Path) -> str:
    lines = [f"OCAD outputs under {data_dir.resolve()}:"]
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.name != "README.md" and not p.name.startswith("."))
    if not files:
        lines.append("  (nothing materialized yet: run `make run`)")
    for p in files:
        lines.append(f"  {p.relative_to(data_dir)!s:<52} {p.stat().st_size / 1024:>10.1f} KiB")
    lines += gate_summary(data_dir)
    home = os.environ.get("DAGSTER_HOME")
    if home:
        lines.append(f"Dagster run history: {home} (open it with `make ui`)")
    return "\n".join(lines)


def gate_summary(data_dir: Path) -> list[str]:
    """The quality gate's verdict from reports/performance_report.json: PASSED, FAILED or a
    WARNING for a bootstrap promotion that missed targets (with the missed targets)."""
    path = data_dir / "reports" / "performance_report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        gate = report["gate"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    reasons = list(gate.get("reasons") or [])
    versions = report.get("model_info", {}).get("versions")
    unchanged = bool(versions) and versions == (report.get("production") or {}).get("versions")
    if unchanged and not gate.get("passed"):
        head = "Quality gate: WARNING - no new candidate (same inputs: the production versions were reused); they miss targets:"
    elif gate.get("bootstrap"):
        head = "Quality gate: WARNING - promoted as a bootstrap (no production version yet) although targets are missed:"
    elif gate.get("passed"):
        head = "Quality gate: PASSED"
    else:
        head = "Quality gate: FAILED - nothing promoted:"
    return [head, *(f"  - {r}" for r in reasons)]


def main() -> int:
    print(describe(Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
