"""The study across cases: each arm against `concept`, cases paired, and a verdict on each of the concept-SFT
study's four findings. Pure functions of plain rows; the statistics are `reasonlab.stats`'.

Input: one row per case x arm x seed with the editing figures (`edit_metrics` names). Seeds are averaged within
a case first, so a case counts once; an arm is compared with `concept` on the cases both have.

    comparisons(rows)  -> one row per arm x measure: n cases, mean difference (arm - concept), bootstrap CI,
                          Wilcoxon signed-rank p, Holm-adjusted p (across every comparison of the study)
    findings(table)    -> per finding: which arm against which on which measure, n, and
                          "supports" / "contradicts" / "cannot tell"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reasonlab import stats

ARMS = ("concept", "concept_unguided", "unrelated", "direct", "prompt", "negated_wrong", "abstract")
MEASURES = {  # column -> (what it is, +1 when larger is better for the edit, -1 when smaller is)
    "correct_gain": ("gain in p(correct), whole answer", +1),
    "says_answer": ("the model says the answer after SFT (efficacy)", +1),
    "paraphrases_newly_said": ("paraphrases newly said (generalisation)", +1),
    "neighbourhood_nll": ("neighbours whose own answer still beats the edited one", +1),
    "ppl_change": ("held-out perplexity change", -1),
}
MIN_CASES = 6  # below this a two-sided signed-rank test cannot reach p < 0.05: "cannot tell", no p-value
ALPHA = 0.05


@dataclass(frozen=True)
class Finding:
    claim: str
    arm: str  # compared with "concept"
    measure: str
    concept_better: bool  # the finding holds when concept beats `arm` on `measure`


FINDINGS = (
    Finding("1. Never mention the wrong concept, not even to negate it: any mention reinforces it.",
            "negated_wrong", "correct_gain", True),
    Finding("2. Strengthening the correct concept in unrelated contexts transfers to the question.",
            "unrelated", "correct_gain", True),
    Finding("3. Abstract reasoning ('enzymes are not hormones') does not transfer.", "abstract", "correct_gain",
            True),
    Finding("4. Training on the answer directly only memorises.", "direct", "paraphrases_newly_said", True),
)


def case_means(rows: list[dict], measures: tuple[str, ...] = tuple(MEASURES)) -> dict[tuple[str, str], dict]:
    """{(case, arm): {measure: mean over that case's seeds}} (a measure missing in every seed is left out)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["arm"]), []).append(r)
    out = {}
    for key, seeds in groups.items():
        out[key] = {m: stats.mean([s[m] for s in seeds if s.get(m) is not None])
                    for m in measures if any(s.get(m) is not None for s in seeds)}
    return out


def paired(means: dict[tuple[str, str], dict], arm: str, measure: str) -> tuple[list[str], list[float], list[float]]:
    """(cases, arm values, concept values) on the cases where both arms have the measure."""
    cases = sorted(c for (c, a) in means if a == arm and measure in means[(c, a)]
                   and measure in means.get((c, "concept"), {}))
    return cases, [means[(c, arm)][measure] for c in cases], [means[(c, "concept")][measure] for c in cases]


def comparisons(rows: list[dict], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Each arm against `concept` on each measure, paired by case; Holm across all of them."""
    means = case_means(rows)
    arms = [a for a in ARMS if a != "concept" and any(k[1] == a for k in means)]
    table = []
    for arm in arms:
        for measure, (what, _) in MEASURES.items():
            cases, x, y = paired(means, arm, measure)
            diff = stats.paired_bootstrap(x, y, n_boot=n_boot, seed=seed)
            test = stats.wilcoxon(x, y) if len(cases) >= MIN_CASES else {"p_value": stats.NAN}
            table.append({"arm": arm, "measure": measure, "what": what, "n_cases": len(cases),
                          "mean_diff": diff["diff"], "ci_low": diff["low"], "ci_high": diff["high"],
                          "p_value": test["p_value"]})
    for row, adjusted in zip(table, stats.holm([r["p_value"] for r in table])):
        row["p_holm"] = adjusted
    return table


def judge(row: dict | None, finding: Finding) -> str:
    """"supports" when concept is better by the Holm-adjusted test and the CI agrees; "contradicts" when the
    arm is better so; otherwise "cannot tell" (too few cases, or no clear difference)."""
    if row is None or row["n_cases"] < MIN_CASES or row["p_holm"] != row["p_holm"]:
        return "cannot tell"
    if row["p_holm"] >= ALPHA or not (row["ci_high"] < 0 or row["ci_low"] > 0):
        return "cannot tell"
    concept_ahead = -MEASURES[finding.measure][1] * row["mean_diff"] > 0
    return "supports" if concept_ahead == finding.concept_better else "contradicts"


def findings(table: list[dict]) -> list[dict]:
    """Each finding, how it is put to the test, its comparison's figures and the verdict."""
    by_key = {(r["arm"], r["measure"]): r for r in table}
    out = []
    for f in FINDINGS:
        row = by_key.get((f.arm, f.measure))
        out.append({"finding": f.claim, "test": f"{f.arm} against concept on {MEASURES[f.measure][0]} "
                                                f"(paired by case, Wilcoxon, Holm)",
                    "n_cases": row["n_cases"] if row else 0, "mean_diff": row["mean_diff"] if row else None,
                    "p_holm": row["p_holm"] if row else None, "verdict": judge(row, f)})
    return out


def forest_plot(table: list[dict], dest: Path | str) -> Path:
    """One panel per measure: each arm's mean difference from concept (arm - concept) with its 95 % CI, n cases
    beside it; a comparison with too few cases is drawn hollow."""
    from reasonlab.plots import pyplot, save_figure

    measures = [m for m in MEASURES if any(r["measure"] == m for r in table)]
    arms = list(dict.fromkeys(r["arm"] for r in table))
    fig, axes = pyplot().subplots(1, max(len(measures), 1), figsize=(3.2 * max(len(measures), 1), 0.5 * len(arms) + 1.8),
                                  sharey=True, squeeze=False)
    for ax, measure in zip(axes[0], measures):
        for y, arm in enumerate(arms):
            r = next((r for r in table if r["arm"] == arm and r["measure"] == measure), None)
            if r is None or r["mean_diff"] != r["mean_diff"]:
                continue
            enough = r["n_cases"] >= MIN_CASES
            ax.errorbar([r["mean_diff"]], [y], xerr=[[r["mean_diff"] - r["ci_low"]], [r["ci_high"] - r["mean_diff"]]],
                        fmt="o", color="#2b6cb0", mfc="#2b6cb0" if enough else "white", capsize=3)
            ax.annotate(f"n={r['n_cases']}", (r["ci_high"], y), xytext=(4, 0), textcoords="offset points",
                        fontsize=7, va="center")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(MEASURES[measure][0], fontsize=8)
        ax.set_xlabel("arm - concept", fontsize=8)
    axes[0][0].set_yticks(range(len(arms)), arms, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle("Each arm against the attribution-guided concept texts, paired by case (95 % bootstrap CI)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, Path(dest))
