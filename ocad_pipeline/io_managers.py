"""Tables of the IO manager for assets made of several tables (dict of DataFrames -> parquet/CSV).

The IO manager itself, ``TableSetIOManager``, is a resource in ``ocad_pipeline.defs.resources``.

Each asset names its files in definition metadata under ``ocad/files`` (table -> path relative
to the data directory), so file names such as ``processed/timeseries_train.parquet`` are part
of the asset's definition and visible in the UI. Files are written aside and renamed, so a
reader never sees half a table.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from ocad_detectors._io import atomic_write

FILES_KEY = "ocad/files"


class MissingUpstreamError(FileNotFoundError):
    """An upstream asset has not been materialized in this data directory."""


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Write one table atomically; parquet unless the name ends in .csv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        atomic_write(path, lambda tmp: df.to_csv(tmp, index=False), durable=False)
    else:
        atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False, engine="pyarrow"), durable=False)


def read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path)
    return pd.read_parquet(path, engine="pyarrow")


# --- each file read once per process ------------------------------------------------------
#
# In one process (the in-process executor, the default on small machines) several steps load
# the same upstream files: raw_metrics feeds five assets, timeseries_splits the three TCN ops.
# Tables are cached by (path, inode, size, mtime): writes replace files (new inode), so a
# rewritten file is read again. Every load gets a shallow copy (adding or replacing columns does
# not leak into the cache). The content hash of a set of cached tables (``data_version``) is
# memoized the same way, so the three TCN ops hash timeseries_splits once.

_CACHE_MAX_BYTES = int(os.environ.get("OCAD_TABLE_CACHE_MB", "512")) * 2**20
_FileKey = tuple[str, int, int, int]
_cache: OrderedDict[_FileKey, tuple[pd.DataFrame, int]] = OrderedDict()
_cache_bytes = 0
_origin: dict[int, tuple[_FileKey, weakref.ref]] = {}
_hashes: dict[tuple, str] = {}
_lock = threading.Lock()


def _file_key(path: Path) -> _FileKey:
    st = path.stat()
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def _remember_origin(df: pd.DataFrame, key: _FileKey) -> pd.DataFrame:
    ident = id(df)
    _origin[ident] = (key, weakref.ref(df, lambda _r, i=ident: _origin.pop(i, None)))
    return df


def read_table_cached(path: Path) -> pd.DataFrame:
    """``read_table`` through the per-process cache (a shallow copy of the cached table)."""
    global _cache_bytes
    key = _file_key(path)
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return _remember_origin(hit[0].copy(deep=False), key)
    df = read_table(path)
    size = int(df.memory_usage(index=True, deep=True).sum())
    with _lock:
        if size <= _CACHE_MAX_BYTES and key not in _cache:
            _cache[key] = (df, size)
            _cache_bytes += size
            while _cache_bytes > _CACHE_MAX_BYTES and _cache:
                _, (_, evicted) = _cache.popitem(last=False)
                _cache_bytes -= evicted
    return _remember_origin(df.copy(deep=False), key)


def clear_table_cache() -> None:
    """Forget every cached table and hash (tests; long-lived processes that want memory back)."""
    global _cache_bytes
    with _lock:
        _cache.clear()
        _hashes.clear()
        _cache_bytes = 0


def tables_sha256(frames: Mapping[str, pd.DataFrame], compute: Callable[[Mapping[str, pd.DataFrame]], str]) -> str:
    """``compute(frames)``, memoized when every frame came unchanged from ``read_table_cached``."""
    keys = []
    for name in sorted(frames):
        entry = _origin.get(id(frames[name]))
        if entry is None or entry[1]() is not frames[name]:
            return compute(frames)
        keys.append((name, entry[0]))
    memo = (compute.__module__, compute.__qualname__, tuple(keys))
    with _lock:
        if memo in _hashes:
            return _hashes[memo]
    value = compute(frames)
    with _lock:
        _hashes[memo] = value
    return value
