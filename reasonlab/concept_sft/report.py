"""The concept-SFT report, answer first: one narrow line per case, text set and format (the verdict and the
three editing measures), one picture (p(correct) base against SFT, and neighbourhood damage), then the detail."""

from __future__ import annotations

from pathlib import Path

from reasonlab.concept_sft.edit_metrics import results_markdown
from reasonlab.plots import pyplot, save_figure


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _short(text: str, n: int = 38) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


SHORT_VERDICTS = (("already said", "already said"), ("not learned", "not learned"), ("memorised", "memorised"),
                  ("over-generalised", "over-generalised"), ("says it on its prompt", "says it"),
                  ("learned", "learned"))


def short_verdict(verdict: str) -> str:
    """The verdict's first words, for a table cell; the legend under the table says what each means."""
    short = next((short for start, short in SHORT_VERDICTS if verdict.startswith(start)), verdict)
    return short + ", leaked" if short == "not learned" and "took over" in verdict else short


def headline_markdown(summary: list[dict]) -> str:
    """About 80 characters a line, so the UI's artifact page shows every column: case, text set, format, the
    short verdict, efficacy, paraphrases, neighbourhood; the long verdicts follow the table."""
    lines = ["| Case | Set | Format | Verdict | Says answer | Paraphrases | Neighbours |",
             "|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {_short(r['case'], 20)} | {r.get('text_set') or '—'} | {r['format']} | "
                     f"{short_verdict(r['verdict'])} | {_pct(r.get('says_answer'))} | "
                     f"{_pct(r.get('paraphrases_newly_said'))} | {_pct(r.get('neighbourhood_nll'))} |")
    legend = sorted({r["verdict"] for r in summary if short_verdict(r["verdict"]) != r["verdict"]})
    notes = "".join(f"\n- *{short_verdict(v)}*: {v}" for v in legend)
    return ("\n".join(lines) + "\n\nSays answer: the greedy answer after SFT; Paraphrases: newly said; "
            "Neighbours: kept, ROME's neighbourhood score." + notes + "\n")


def plot_results(summary: list[dict], dest: Path | str) -> Path:
    """Left: p(correct) before and after SFT per case x text set x format (mean over seeds, sd as error bar).
    Right: neighbourhood damage, the share of neighbours whose own answer no longer beats the edited one."""
    labels = [f"{_short(r['case'], 24)}\n{r.get('text_set') or '—'}, {r['format']}" for r in summary]
    ys = list(range(len(summary)))
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(10, 1.0 + 0.55 * max(len(summary), 2)), sharey=True,
                                           gridspec_kw={"width_ratios": [3, 2]})
    left.barh([y - 0.2 for y in ys], [r["base_p_correct"] for r in summary], height=0.4, color="#8da0cb",
              label="base")
    left.barh([y + 0.2 for y in ys], [r["p_correct"] or 0.0 for r in summary], height=0.4, color="#66c2a5",
              xerr=[r.get("p_correct_sd") or 0.0 for r in summary], label="after SFT")
    left.set_xlabel("p(correct answer), whole answer")
    left.legend(fontsize=8, loc="lower right")
    damage = [None if r.get("neighbourhood_nll") is None else 1 - r["neighbourhood_nll"] for r in summary]
    base_damage = [None if r.get("base_neighbourhood_nll") is None else 1 - r["base_neighbourhood_nll"]
                   for r in summary]
    right.barh([y - 0.2 for y in ys], [d or 0.0 for d in base_damage], height=0.4, color="#d9d9d9", label="base")
    right.barh([y + 0.2 for y in ys], [d or 0.0 for d in damage], height=0.4, color="#e78ac3", label="after SFT")
    right.set_xlim(0, 1)
    right.set_xlabel("neighbours where the edited answer wins")
    right.legend(fontsize=8, loc="lower right")
    left.set_yticks(ys, labels, fontsize=7)
    left.invert_yaxis()
    fig.suptitle("Concept SFT: did the answer move, and what else moved with it", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, dest)


def report_markdown(summary: list[dict], image: str | None, experiments: list[str], skipped: list[str]) -> str:
    """The verdict lines, the picture (`image`: markdown showing it), the detailed table, what each experiment
    trained and what was skipped and why."""
    parts = ["# Concept SFT", "", headline_markdown(summary)]
    if image:
        parts += [image, ""]
    parts += ["## Every figure (mean ± sd over seeds)", "", results_markdown(summary), "## Experiments", "",
              *experiments, *skipped]
    return "\n".join(parts) + "\n"
