"""The one-of-each helpers both sides share: atomic_write, json_safe, text_table, WarnOnce."""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from ocad_detectors._io import atomic_write, json_safe
from ocad_detectors._table import text_table
from ocad_detectors._util import WarnOnce


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "index.json"
    atomic_write(p, b"old")
    assert atomic_write(p, lambda t: Path(t).write_text("new"), durable=True) == p
    assert p.read_text() == "new"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["index.json"]


def test_a_failed_atomic_write_keeps_the_old_content(tmp_path):
    p = tmp_path / "table.parquet"
    p.write_bytes(b"old")

    def half_then_fail(t: Path) -> None:
        t.write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, half_then_fail)
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["table.parquet"]


def test_atomic_write_uses_the_temporary_name_it_is_given(tmp_path):
    p = tmp_path / "r.json"
    seen: list[str] = []

    def writer(t: Path) -> None:
        seen.append(t.name)
        t.write_bytes(b"{}")

    atomic_write(p, writer, tmp=tmp_path / "r.json.tmp-1", durable=False)
    assert seen == ["r.json.tmp-1"] and p.read_bytes() == b"{}"


def test_json_safe_gives_strict_json():
    obj = {
        "nan": float("nan"), "inf": -math.inf, "np": np.float32(1.5), "i": np.int64(3), "b": np.bool_(True),
        "arr": np.array([1.0, np.nan]), "t": (1, 2), 7: "int key", "p": Path("/a/b"),
        "d": datetime(2026, 1, 1, tzinfo=timezone.utc), "nested": [{"x": np.float64("inf")}],
    }
    out = json_safe(obj)
    assert out == {
        "nan": None, "inf": None, "np": 1.5, "i": 3, "b": True, "arr": [1.0, None], "t": [1, 2], "7": "int key",
        "p": "/a/b", "d": "2026-01-01T00:00:00+00:00", "nested": [{"x": None}],
    }
    json.dumps(out, allow_nan=False)
    assert type(out["i"]) is int and type(out["b"]) is bool


def test_text_table_both_layouts():
    rows = [("alerts", 12), ("endpoints", None)]
    assert text_table(("what", "count"), rows).splitlines() == ["what       count", "alerts     12", "endpoints  -"]
    assert text_table(("what", "count"), rows, numeric=True).splitlines() == [
        "what       count", "---------  -----", "alerts        12", "endpoints      -",
    ]
    assert text_table(("a",), [("b",)], indent="  ") == "  a\n  b"


def test_warn_once_per_key_to_the_given_logger(caplog):
    log = logging.getLogger("ocad_test.warn_once")
    warn = WarnOnce(log)
    with caplog.at_level(logging.WARNING, logger="ocad_test.warn_once"):
        for _ in range(3):
            warn("k1", "model %s refused", "a")
        warn("k2", "model %s refused", "b")
    assert [r.getMessage() for r in caplog.records if r.name == "ocad_test.warn_once"] == ["model a refused", "model b refused"]
