"""What an activation-baseline sweep compares (instruction-tuned against base): per child the MBPP pass rate over
the problems of the split it covered and over the generated programs only, each with its 95 % Wilson interval,
error types, completion lengths and limits hit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasonlab.plots import bars_with_ci, pyplot, save_figure
from reasonlab.sweeps import Rows, SweepMetrics, table_rows

RATES = {"pass_rate": "passed / problems", "pass_rate_generated": "passed / generated"}
COLUMNS = ["variant", "problems", "generated", "passed",
           *(c for name in RATES for c in (name, f"{name}_ci95_low", f"{name}_ci95_high")),
           "mean_completion_tokens", "hit_token_limit", "hit_time_limit", "error_types"]


def child_metrics(artifacts: dict[str, Any]) -> dict[str, Any]:
    """One child's figures from its `activation-baseline-summary` / `-errors` tables (None where missing)."""
    row = (table_rows(artifacts, "activation-baseline-summary") or [{}])[0]
    errors = {r["error_type"]: r["count"] for r in table_rows(artifacts, "activation-baseline-errors")}
    out = {c: row.get(c) for c in COLUMNS if c != "error_types"}
    out.update(excluded=row.get("excluded"), mean_completion_chars=row.get("mean_completion_chars"),
               error_types=", ".join(f"{k} {v}" for k, v in errors.items()) or None)
    return out


def notes(rows: Rows) -> list[str]:
    return ["pass_rate: passed over the problems of the split each child covered (a problem whose generation "
            "kept failing counts as not passed); pass_rate_generated: passed over the programs generated. "
            "Intervals: 95 % Wilson."]


def plot(name: str, rows: Rows, dest: Path) -> Path:
    """Both pass rates per child with their 95 % CIs as error bars (instruct green, base blue)."""
    fig, axes = pyplot().subplots(1, 2, figsize=(max(6.0, 2.4 * len(rows) + 2.5), 3.6), dpi=100, sharey=True)
    for ax, (rate, label) in zip(axes, RATES.items()):
        bars_with_ci(ax, [r["child"] for r in rows], [r.get(rate) for r in rows],
                     [r.get(f"{rate}_ci95_low") for r in rows], [r.get(f"{rate}_ci95_high") for r in rows])
        denominator = "problems" if rate == "pass_rate" else "generated"
        for patch, r in zip(ax.patches, rows):
            patch.set_color("#66c2a5" if r.get("variant") == "instruct" else "#8da0cb")
        for x, r in enumerate(rows):
            text = f"{r.get('passed')}/{r.get(denominator)}" if r["state"] == "Completed" else r["state"]
            ax.text(x, 0.01, text, ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(label, fontsize=9)
    axes[0].set_ylabel("MBPP pass rate (95 % Wilson CI)")
    fig.suptitle(f"sweep {name}: instruct vs base", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, dest, dpi=100)


SWEEP_METRICS = SweepMetrics(columns=COLUMNS, from_artifacts=child_metrics, plot=plot, notes=notes)
