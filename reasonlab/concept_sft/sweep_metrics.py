"""What a concept-SFT sweep compares: p(correct) before and after SFT and the editing measures per child,
and the efficacy / neighbourhood-damage trade-off (its Pareto front and the best child)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasonlab import stats
from reasonlab.plots import pyplot, save_figure
from reasonlab.sweeps import Rows, SweepMetrics, table_rows

COLUMNS = ["target_cases", "base_p_correct", "sft_p_correct", "correct_gain", "efficacy", "paraphrase",
           "neighbourhood", "ppl_change"]


def child_metrics(artifacts: dict[str, Any]) -> dict[str, Any]:
    """Means over a child's `concept-sft-results` rows (case x text set x format, each already a mean over
    seeds) of the editing measures (efficacy, paraphrase, neighbourhood: ROME's scores); target cases from its
    `concept-sft-filter` table."""
    rows = table_rows(artifacts, "concept-sft-results")
    filt = artifacts.get("concept-sft-filter")

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return stats.mean(values) if values else None

    return {
        "target_cases": None if filt is None else sum(r.get("kept") == "yes" for r in table_rows(artifacts,
                                                                                                   "concept-sft-filter")),
        "base_p_correct": mean("base_p_correct"), "sft_p_correct": mean("p_correct"),
        "correct_gain": mean("correct_gain"), "efficacy": mean("efficacy_nll"), "paraphrase": mean("paraphrase_nll"),
        "neighbourhood": mean("neighbourhood_nll"), "ppl_change": mean("ppl_change"),
    }


def tradeoff(rows: Rows) -> tuple[list[str], str | None]:
    """(the children on the efficacy / neighbourhood-damage Pareto front, the best of them): best = the largest
    efficacy - damage, ties to the larger p(correct) gain. Children without both figures are left out."""
    pts = [r for r in rows if r.get("efficacy") is not None and r.get("neighbourhood") is not None]
    front = [r for r in pts if not any(o["efficacy"] >= r["efficacy"] and o["neighbourhood"] >= r["neighbourhood"]
                                       and (o["efficacy"], o["neighbourhood"]) != (r["efficacy"], r["neighbourhood"])
                                       for o in pts)]
    best = max(front, key=lambda r: (r["efficacy"] - (1 - r["neighbourhood"]), r.get("correct_gain") or 0.0),
               default=None)
    return [r["child"] for r in front], best["child"] if best else None


def notes(rows: Rows) -> list[str]:
    front, best = tradeoff(rows)
    return [f"Efficacy vs neighbourhood damage, Pareto front: {', '.join(front) or '—'}; "
            f"best trade-off (efficacy - damage): {best or '—'}"]


def _bars(fig, name: str, rows: Rows) -> None:
    ax = fig.add_subplot(2, 1, 1)
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r.get("base_p_correct") or 0.0 for r in rows], width=0.4,
           label="base p(correct)", color="#8da0cb")
    ax.bar([x + 0.2 for x in xs], [r.get("sft_p_correct") or 0.0 for r in rows], width=0.4,
           label="SFT p(correct)", color="#66c2a5")
    for x, r in zip(xs, rows):
        note = "no target cases" if r.get("target_cases") == 0 else r["state"] if r["state"] != "Completed" else None
        if note:
            ax.text(x, 0.002, note, ha="center", va="bottom", fontsize=8, rotation=90)
    ax.set_xticks(list(xs), [r["child"] for r in rows], rotation=25, ha="right", fontsize=7)
    ax.set_ylabel("mean p(correct answer), whole answer")
    ax.set_title(f"sweep {name}: base vs SFT", fontsize=10)
    ax.legend(fontsize=8)


def _tradeoff_panels(fig, rows: Rows) -> None:
    """Efficacy (and the p(correct) gain) against neighbourhood damage (1 - preservation)."""
    front, best = tradeoff(rows)
    points = [r for r in rows if r.get("efficacy") is not None and r.get("neighbourhood") is not None]
    panels = (("efficacy", "efficacy (ROME): NLL/token correct < wrong"),
              ("correct_gain", "mean gain in p(correct), whole answer"))
    for col, (key, ylabel) in enumerate(panels, start=3):
        panel = fig.add_subplot(2, 2, col)
        at: dict[tuple[float, float], list[str]] = {}
        for r in points:
            xy = (round(1 - r["neighbourhood"], 4), round(r.get(key) or 0.0, 4))
            at.setdefault(xy, []).append(r["child"].split(" | ", 1)[-1])
            panel.scatter([xy[0]], [xy[1]], s=50, zorder=3, alpha=0.8,
                          color="#e78ac3" if r["child"] == best else "#66c2a5" if r["child"] in front else "#b3b3b3")
        for (x, y), names in at.items():  # one label per point, listing every child that landed there
            panel.annotate("\n".join(names), (x, y), fontsize=6, xytext=(4, -3), textcoords="offset points",
                           va="top")
        panel.set_xlim(-0.05, 1.05)
        panel.set_xlabel("neighbourhood damage (share where the edited answer beats the true one)")
        panel.set_ylabel(ylabel, fontsize=8)
        panel.grid(alpha=0.3)
    fig.axes[1].set_ylim(-0.05, 1.1)
    fig.axes[1].set_title("efficacy vs damage" + (f" (best: {best.split(' | ', 1)[-1]}, pink; "
                                                  "Pareto front green)" if best else ""), fontsize=9)
    fig.axes[2].set_title("p(correct) gain vs damage", fontsize=9)


def plot(name: str, rows: Rows, dest: Path) -> Path:
    """Grouped bars per child (mean p(correct) before and after SFT) above the trade-off panels."""
    fig = pyplot().figure(figsize=(max(9.0, 0.9 * len(rows) + 3.0), 9.0), dpi=100)
    _bars(fig, name, rows)
    _tradeoff_panels(fig, rows)
    fig.tight_layout()
    return save_figure(fig, dest, dpi=100)


SWEEP_METRICS = SweepMetrics(columns=COLUMNS, from_artifacts=child_metrics, plot=plot, notes=notes)
