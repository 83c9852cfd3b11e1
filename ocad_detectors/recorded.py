"""The strict mode of :mod:`ocad_detectors.reader`: recorded measurements for the training pipeline.

Accepted input, value rules and messages are those of :mod:`ocad_detectors.reader` (``ocad-detect``
reads the same files with the same rules, leniently). Here every problem in every file is
collected before failing, and the error names the file, the row (1-based line in a CSV file,
counting the header as line 1; row position in Parquet), the column, the cell, and how many rows
of each column failed. Accepted files come back as one wide frame sorted by (timestamp,
endpoint): exact duplicate rows removed, two different samples for one (endpoint, timestamp)
an error, gaps kept as gaps (no interpolation).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ocad_detectors import reader
from ocad_detectors.reader import (
    LONG_COLUMNS,
    MAX_COLUMNS,
    MAX_TIMESTAMP_MS,
    TIMESTAMP_CANDIDATES,
    UNIT_FACTORS,
    Problem,
    ReadOptions,
    RecordedDataError,
    blank_missing,
    list_files,
    to_epoch_ms,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "LONG_COLUMNS",
    "MAX_COLUMNS",
    "MAX_TIMESTAMP_MS",
    "TIMESTAMP_CANDIDATES",
    "UNIT_FACTORS",
    "Problem",
    "ReadOptions",
    "RecordedDataError",
    "blank_missing",
    "list_files",
    "read_samples",
    "to_epoch_ms",
]


def read_samples(
    path: str | Path | Iterable[str | Path], options: ReadOptions | None = None, keep_source: bool = False
) -> tuple[pd.DataFrame, dict]:
    """Read recorded files into one wide frame sorted by (timestamp_ms, endpoint_id).

    Returns ``(samples, report)``; ``samples`` has ``timestamp_ms`` (int64), ``endpoint_id`` and
    a float column per signal present (``lbm_success`` as 1.0/0.0/NaN), plus any label columns.
    ``report`` counts files, rows read and duplicates removed. ``keep_source`` keeps
    ``src_file``/``src_row`` columns so later checks can name where a row came from. Raises
    :class:`RecordedDataError` listing every problem found in every file.
    """
    return reader.read_samples(path, options, mode="strict", keep_source=keep_source)
