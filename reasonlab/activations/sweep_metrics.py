"""What an activation-baseline sweep compares: the MBPP pass rate with its 95 % Wilson interval per child
(instruction-tuned against base), error types, completion lengths and limits hit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasonlab.plots import bars_with_ci, pyplot, save_figure
from reasonlab.sweeps import Rows, SweepMetrics, table_rows

COLUMNS = ["variant", "problems", "passed", "pass_rate", "pass_rate_ci95_low", "pass_rate_ci95_high",
           "mean_completion_tokens", "hit_token_limit", "hit_time_limit", "error_types"]


def child_metrics(artifacts: dict[str, Any]) -> dict[str, Any]:
    """One child's figures from its `activation-baseline-summary` / `-errors` tables."""
    row = (table_rows(artifacts, "activation-baseline-summary") or [{}])[0]
    errors = {r["error_type"]: r["count"] for r in table_rows(artifacts, "activation-baseline-errors")}
    return {
        "variant": row.get("variant"), "problems": row.get("tasks"), "passed": row.get("passed"),
        "pass_rate": row.get("pass_rate"), "pass_rate_ci95_low": row.get("pass_rate_ci95_low"),
        "pass_rate_ci95_high": row.get("pass_rate_ci95_high"), "excluded": row.get("excluded"),
        "mean_completion_tokens": row.get("mean_completion_tokens"),
        "mean_completion_chars": row.get("mean_completion_chars"), "hit_token_limit": row.get("hit_token_limit"),
        "hit_time_limit": row.get("hit_time_limit"),
        "error_types": ", ".join(f"{k} {v}" for k, v in errors.items()) or None,
    }


def plot(name: str, rows: Rows, dest: Path) -> Path:
    """The pass rate per child with its 95 % CI as an error bar (instruct green, base blue)."""
    fig, ax = pyplot().subplots(figsize=(max(4.0, 1.4 * len(rows) + 1.5), 3.6), dpi=100)
    bars_with_ci(ax, [r["child"] for r in rows], [r.get("pass_rate") for r in rows],
                 [r.get("pass_rate_ci95_low") for r in rows], [r.get("pass_rate_ci95_high") for r in rows])
    for patch, r in zip(ax.patches, rows):
        patch.set_color("#66c2a5" if r.get("variant") == "instruct" else "#8da0cb")
    for x, r in enumerate(rows):
        ax.text(x, 0.01, f"{r.get('passed')}/{r.get('problems')}" if r["state"] == "Completed" else r["state"],
                ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("MBPP pass rate (95 % Wilson CI)")
    ax.set_title(f"sweep {name}: instruct vs base", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, dest, dpi=100)


SWEEP_METRICS = SweepMetrics(columns=COLUMNS, from_artifacts=child_metrics, plot=plot)
