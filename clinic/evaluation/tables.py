"""Markdown tables for evaluation reports.

Undefined metrics arrive as ``None`` (or NaN) and are shown as "–", never as a number, so a
reader cannot mistake a label without both classes for one that scored zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

MISSING = "–"


def _cell(value: object) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else MISSING
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """GitHub-flavoured table of ``columns`` for each row: floats to 3 decimals, None as "–".

    A column a row lacks is shown as "–" too, so rows from different runs can share one table.
    """
    if not columns:
        raise ValueError("a table needs at least one column")
    lines = [
        "| " + " | ".join(_cell(name) for name in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines.extend("| " + " | ".join(_cell(row.get(name)) for name in columns) + " |" for row in rows)
    return "\n".join(lines) + "\n"
