"""What a sweep compares for one pipeline: each pipeline declares it in its own `sweep_metrics.py`.

    SWEEP_METRICS = SweepMetrics(
        columns=["accuracy", "accuracy_low", "accuracy_high"],   # the comparison table's figures, in order
        from_artifacts=metrics,    # {artifact key: data} of one child run -> {column: value or None}
        plot=plot,                 # (sweep name, comparison rows, dest PNG) -> the PNG, written atomically
        notes=notes,               # optional: comparison rows -> extra markdown lines under the table
    )

The orchestration (`flows/sweep_spec.py`) knows only this shape: a child's artifacts go in, a row of
figures comes out, and the pipeline draws its own picture from the rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

Rows = list[dict[str, Any]]


def _no_notes(rows: Rows) -> list[str]:
    return []


@dataclass(frozen=True)
class SweepMetrics:
    """One pipeline's sweep comparison: its columns, how a child's artifacts become them, and its plot."""

    columns: list[str]
    from_artifacts: Callable[[dict[str, Any]], dict[str, Any]]
    plot: Callable[[str, Rows, Path], Path]
    notes: Callable[[Rows], list[str]] = field(default=_no_notes)


def table_rows(artifacts: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The rows of a table artifact (an empty list when the child did not publish it)."""
    data = artifacts.get(key)
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
