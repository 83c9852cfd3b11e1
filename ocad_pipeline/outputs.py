"""Print where the pipeline's outputs are (``python -m ocad_pipeline.outputs``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ocad_pipeline.resources import DEFAULT_DATA_DIR


def describe(data_dir: Path) -> str:
    lines = [f"OCAD outputs under {data_dir.resolve()}:"]
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.name != "README.md" and not p.name.startswith("."))
    if not files:
        lines.append("  (nothing materialized yet: run `make run`)")
    for p in files:
        lines.append(f"  {p.relative_to(data_dir)!s:<52} {p.stat().st_size / 1024:>10.1f} KiB")
    home = os.environ.get("DAGSTER_HOME")
    if home:
        lines.append(f"Dagster run history: {home} (open it with `make ui`)")
    return "\n".join(lines)


def main() -> int:
    print(describe(Path(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DATA_DIR)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
