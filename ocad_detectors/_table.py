"""One plain-text table printer for the command-line tools (``ocad-detect``, ``ocad-models``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["text_table"]


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: bool = False, indent: str = "") -> str:
    """Columns padded to their widest cell (what terminals and logs show reliably); ``None``
    cells print as ``-``. With ``numeric`` the header is underlined and every column but the
    first is right-aligned (counts line up); otherwise everything is left-aligned."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        right = numeric and n > 0
        lines.append("  ".join(c.rjust(w) if right and i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if numeric and n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(indent + line for line in lines)
