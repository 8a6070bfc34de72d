"""Reading a report back as its reader sees it: the first markdown table's header and first row."""

from __future__ import annotations


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in line.strip().strip("|").split(" | ")]


def first_table_row(markdown: str) -> dict[str, str]:
    """{header: cell} of the first table's first row, and the lines before the table must hold no other table."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    header, rule, row = lines[start], lines[start + 1], lines[start + 2]
    assert set(rule) <= set("|-: "), f"not a table rule: {rule!r}"
    return dict(zip(_cells(header), _cells(row)))


def lines_before_first_table(markdown: str) -> list[str]:
    lines = markdown.splitlines()
    return lines[:next(i for i, line in enumerate(lines) if line.startswith("|"))]
