"""What an instruction-retrieval sweep compares: per child (one model), the accuracy of every condition with its
Wilson 95 % CI, and the paired differences top-1 - none and oracle - none, on the child's largest question set.

The accuracy is `acc_debiased` where the child debiased (the letter-bias control), else `acc`. `oracle` is
measured on the questions with a known gold domain only: `oracle_n` says how many, and `none_on_oracle` is no
instruction on those same questions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from reasonlab.plots import bars_with_ci, pyplot, save_figure
from reasonlab.sweeps import Rows, SweepMetrics, table_rows

ACCURACY_KEY = "instruction-retrieval-accuracy"
DIFFERENCES_KEY = "instruction-retrieval-differences"
CONDITIONS = {"none": "none", "top1": "top1", "topk": None, "random_other": "random_other",
              "oracle": "oracle", "none_on_oracle": "none_on_oracle_questions"}
COMPARISONS = {"top1_vs_none": "top1 - none", "oracle_vs_none": "oracle - none"}
COLUMNS = (["questions", "n", "metric"]
           + [f"{c}{s}" for c in CONDITIONS for s in ("", "_low", "_high")] + ["oracle_n"]
           + [f"{c}{s}" for c in COMPARISONS for s in ("", "_low", "_high", "_p")])
TOPK = re.compile(r"top([2-9]|\d\d+)")


def _column(condition: str) -> str | None:
    if TOPK.fullmatch(condition):
        return "topk"
    return next((col for col, name in CONDITIONS.items() if name == condition), None)


def child_metrics(artifacts: dict[str, Any]) -> dict[str, Any]:
    """One child's figures from its accuracy and differences tables (its first model, largest question set)."""
    rows = table_rows(artifacts, ACCURACY_KEY)
    out: dict[str, Any] = dict.fromkeys(COLUMNS)
    if not rows:
        return out
    model = rows[0]["model"]
    sizes = {r["questions"]: r["n"] for r in rows if r["model"] == model and r["condition"] == "none"}
    chosen = max(sizes, key=lambda s: sizes[s]) if sizes else rows[0]["questions"]
    mine = [r for r in rows if r["model"] == model and r["questions"] == chosen]
    metric = "acc_debiased" if any(r.get("acc_debiased") is not None for r in mine) else "acc"
    out.update(questions=chosen, n=sizes.get(chosen), metric=metric)
    for r in mine:
        col = _column(r["condition"])
        if col and r["n"]:
            out.update({col: r.get(metric), f"{col}_low": r.get(f"{metric}_low"),
                        f"{col}_high": r.get(f"{metric}_high")})
        if r["condition"] == "oracle":
            out["oracle_n"] = r["n"]
    for d in table_rows(artifacts, DIFFERENCES_KEY):
        col = next((c for c, comp in COMPARISONS.items() if comp == d["comparison"]), None)
        if col and d["model"] == model and d["questions"] == chosen and d["metric"] == metric:
            out.update({col: d["diff"], f"{col}_low": d["low"], f"{col}_high": d["high"], f"{col}_p": d["p_value"]})
    return out


def plot(name: str, rows: Rows, dest: Path) -> Path:
    """One panel per child: the accuracy of each condition with its 95 % CI (oracle labelled with its n)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, max(len(rows), 1), figsize=(3.4 * max(len(rows), 1) + 0.8, 3.8), dpi=100,
                             squeeze=False, sharey=True)
    for ax, r in zip(axes[0], rows):
        labels = [f"{c} (n={r.get('oracle_n')})" if c in ("oracle", "none_on_oracle") else c for c in CONDITIONS]
        bars_with_ci(ax, labels, [r.get(c) for c in CONDITIONS], [r.get(f"{c}_low") for c in CONDITIONS],
                     [r.get(f"{c}_high") for c in CONDITIONS])
        ax.set_title(f"{r['child']}\n{r.get('questions') or r['state']} (n={r.get('n')})", fontsize=8)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel(f"{rows[0].get('metric') or 'accuracy'} (Wilson 95 % CI)" if rows else "accuracy")
    fig.suptitle(f"sweep {name}: accuracy per condition", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, dest, dpi=100)


def notes(rows: Rows) -> list[str]:
    return ["Accuracy per condition on each child's largest question set (`metric`: acc_debiased where the child "
            "debiased); `oracle` and `none_on_oracle` cover only the `oracle_n` questions with a known domain; "
            "`*_vs_none`: paired difference with its bootstrap 95 % CI and McNemar p."]


SWEEP_METRICS = SweepMetrics(columns=COLUMNS, from_artifacts=child_metrics, plot=plot, notes=notes)
