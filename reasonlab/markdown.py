"""Markdown tables, written one way for every report.

    table([{"model": "a", "acc": 0.5}], ["model", "acc"], fmt={"acc": ".3f"}, align="lr")
    -> "| model | acc |\n|---|---:|\n| a | 0.500 |\n"

A missing value (None or NaN) shows as "—"; a `|` inside a cell is escaped and a newline becomes a space, so a
cell never breaks the table.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

MISSING = "—"

Format = Callable[[Any], str] | str


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def cell(value: Any, fmt: Format | None = None) -> str:
    """One cell's text: "—" when missing, else `fmt(value)` (a callable) or `format(value, fmt)` (a format spec
    such as ".3f"), else str(value); escaped for a table."""
    if is_missing(value):
        return MISSING
    if fmt is None:
        text = str(value)
    elif isinstance(fmt, str):
        text = format(value, fmt)
    else:
        text = fmt(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: Sequence[Mapping[str, Any] | Sequence[Any]], columns: Sequence[str] | Mapping[str, str],
          fmt: Format | Mapping[str, Format] | None = None, align: str | None = None) -> str:
    """A markdown table with one line per row.

    rows: dicts (read at each column's key) or sequences (one value per column, in order).
    columns: the keys, which are also the headers, or {key: header}.
    fmt: one format for every cell, or {key: format} (keys not named use str).
    align: one letter per column, "l" or "r" (right-aligned, for numbers); default all left."""
    keys = list(columns)
    headers = [columns[k] for k in keys] if isinstance(columns, Mapping) else keys
    if align is not None and len(align) != len(keys):
        raise ValueError(f"align has {len(align)} letters for {len(keys)} columns")
    formats = [fmt.get(k) if isinstance(fmt, Mapping) else fmt for k in keys]
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "".join("---:|" if a == "r" else "---|" for a in (align or "l" * len(keys)))]
    for row in rows:
        values = [row.get(k) for k in keys] if isinstance(row, Mapping) else list(row)
        if len(values) != len(keys):
            raise ValueError(f"a row has {len(values)} cells for {len(keys)} columns")
        lines.append("| " + " | ".join(cell(v, f) for v, f in zip(values, formats)) + " |")
    return "\n".join(lines) + "\n"
