"""What a three-stage sweep compares per child: the reward model's held-out accuracy with its Wilson 95 % CI and
mean margin, stage 1's held-out perplexity and stage 2's held-out SFT loss before and after, and the paired
order comparison (accuracy staged − base, its CI and McNemar's p); the picture is the accuracy with its CI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasonlab.plots import bars_with_ci, pyplot, save_figure
from reasonlab.sweeps import Rows, SweepMetrics, table_rows

SUMMARY_KEY = "three-stage-summary"  # the one-row table artifact each run publishes (tasks/three_stage.py)
COLUMNS = ["reward_from", "rm_pairs", "rm_accuracy", "rm_accuracy_low", "rm_accuracy_high", "rm_margin",
           "ppl_before", "ppl_after", "sft_loss_before", "sft_loss_after", "order_diff", "order_diff_low",
           "order_diff_high", "order_p"]


def child_metrics(artifacts: dict[str, Any]) -> dict[str, Any]:
    """One child's figures from its summary table (None where the child did not publish them)."""
    row = (table_rows(artifacts, SUMMARY_KEY) or [{}])[0]
    return {column: row.get(column) for column in COLUMNS}


def plot(name: str, rows: Rows, dest: Path) -> Path:
    """The reward model's held-out accuracy per child with its 95 % Wilson CI; chance (0.5) dashed."""
    fig, ax = pyplot().subplots(figsize=(max(4.0, 1.3 * len(rows) + 1.5), 3.8), dpi=100)
    bars_with_ci(ax, [r["child"] for r in rows], [r.get("rm_accuracy") for r in rows],
                 [r.get("rm_accuracy_low") for r in rows], [r.get("rm_accuracy_high") for r in rows],
                 missing_note="no reward model")
    for x, r in enumerate(rows):
        if r.get("rm_pairs") is not None:
            ax.text(x, 0.01, f"n={r['rm_pairs']}", ha="center", va="bottom", fontsize=8)
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out pairwise accuracy (95 % Wilson CI)", fontsize=8)
    ax.set_title(f"sweep {name}: reward model", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, dest, dpi=100)


SWEEP_METRICS = SweepMetrics(columns=COLUMNS, from_artifacts=child_metrics, plot=plot)
