"""What a DSPy-compile sweep compares: per child (one student model) the accuracy of every approach with its 95 %
bootstrap CI and its cost per example, the best approach, and the reference model's accuracy; the picture is
accuracy against cost, one point per child x approach with its CI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasonlab.plots import pyplot, save_figure
from reasonlab.sweeps import Rows, SweepMetrics, table_rows

REFERENCE = " (reference)"
COLUMNS = ["best_approach", "accuracy", "accuracy_ci95_low", "accuracy_ci95_high", "accuracy_strict",
           "extracted_flexible", "extracted_strict", "cost_per_example", "cost_unit", "reference_accuracy",
           "pct_of_reference_score", "pct_of_reference_cost", "approaches"]
FIGURES = ("accuracy", "ci95_low", "ci95_high", "cost")  # per approach: "<approach>_<figure>" in each row


def _headline(row: dict[str, Any]) -> float | None:
    return row.get("accuracy", row.get("EM"))  # GSM8K accuracy (flexible-extract) or HotPotQA EM


def _pct(part: float | None, whole: float | None) -> float | None:
    return None if part is None or not whole else round(100 * part / whole, 1)


def child_metrics(artifacts: dict[str, Any]) -> dict[str, Any]:
    """One child's figures from its `dspy-compile-table` rows (one per approach, the reference's marked)."""
    rows = [r for r in table_rows(artifacts, "dspy-compile-table") if _headline(r) is not None]
    usd = bool(rows) and all((r.get("cost_usd/ex") or 0) > 0 for r in rows)
    unit = "usd" if usd else "compute_s"
    cost = (lambda r: r.get("cost_usd/ex")) if usd else (lambda r: r.get("compute_s/ex"))
    students = [r for r in rows if not str(r.get("approach", "")).endswith(REFERENCE)]
    reference = next((r for r in rows if str(r.get("approach", "")).endswith(REFERENCE)), None)
    out: dict[str, Any] = {c: None for c in COLUMNS}
    for r in students:
        for figure, value in zip(FIGURES, (_headline(r), r.get("ci95_low"), r.get("ci95_high"), cost(r))):
            out[f"{r['approach']}_{figure}"] = value
    if reference is not None:
        out.update(reference_accuracy=_headline(reference), reference_cost=cost(reference))
    if not students:
        return out
    best = max(students, key=lambda r: (_headline(r), -(cost(r) or 0.0)))
    out.update(best_approach=best["approach"], accuracy=_headline(best), accuracy_ci95_low=best.get("ci95_low"),
               accuracy_ci95_high=best.get("ci95_high"), accuracy_strict=best.get("accuracy_strict"),
               extracted_flexible=best.get("extracted_flexible"), extracted_strict=best.get("extracted_strict"),
               cost_per_example=cost(best), cost_unit=unit,
               approaches="; ".join(f"{r['approach']} {_headline(r):.3f} [{r.get('ci95_low', 0):.3f}, "
                                    f"{r.get('ci95_high', 0):.3f}]" for r in students))
    if reference is not None:
        out.update(pct_of_reference_score=_pct(_headline(best), _headline(reference)),
                   pct_of_reference_cost=_pct(cost(best), cost(reference)))
    return out


def _approach_points(row: dict[str, Any]) -> list[tuple[str, float, float, float, float]]:
    """(approach, cost, accuracy, CI low, CI high) for every approach the child measured."""
    names = [k[: -len("_accuracy")] for k in row if k.endswith("_accuracy") and k != "reference_accuracy"]
    out = []
    for name in names:
        acc, low, high, cost = (row.get(f"{name}_{f}") for f in FIGURES)
        if acc is not None and cost is not None:
            out.append((name, cost, acc, low if low is not None else acc, high if high is not None else acc))
    return out


def plot(name: str, rows: Rows, dest: Path) -> Path:
    """Accuracy against cost per example: one colour per child, one point per approach with its 95 % CI,
    the reference model as a star."""
    fig, ax = pyplot().subplots(figsize=(8.0, 5.0), dpi=100)
    for i, row in enumerate(rows):
        points = _approach_points(row)
        color = f"C{i % 10}"
        if not points:
            ax.plot([], [], "o", color=color, label=f"{row['child']} ({row['state']}: no figures)")
            continue
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        err = [[p[2] - p[3] for p in points], [p[4] - p[2] for p in points]]
        ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, color=color, alpha=0.85, label=row["child"])
        for approach, x, y, _, _ in points:
            ax.annotate(approach, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
        if row.get("reference_accuracy") is not None and row.get("reference_cost") is not None:
            ax.plot([row["reference_cost"]], [row["reference_accuracy"]], "*", markersize=12, color=color)
    unit = next((r["cost_unit"] for r in rows if r.get("cost_unit")), "compute_s")
    ax.set_xlabel("cost per example (USD)" if unit == "usd" else "compute seconds per example")
    ax.set_ylabel("accuracy (95 % bootstrap CI)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"sweep {name}: accuracy vs cost per approach (* = reference model)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_figure(fig, dest, dpi=100)


SWEEP_METRICS = SweepMetrics(columns=COLUMNS, from_artifacts=child_metrics, plot=plot)
