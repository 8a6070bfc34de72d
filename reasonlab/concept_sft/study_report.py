"""The study across cases as rows and a report: one row per case x arm x seed from the evaluations, then the
answer first (a verdict per finding), the forest plot, the paired comparisons, and what was skipped or rejected.
Pure functions of plain data; `study` does the statistics."""

from __future__ import annotations

from collections import Counter

from reasonlab.concept_sft.edit_metrics import case_figures, ppl_change
from reasonlab.concept_sft.study import MEASURES, MIN_CASES
from reasonlab.markdown import table


def study_rows(base_eval: dict, experiments: list[dict], fmt: str, tolerance: float) -> list[dict]:
    """One row per case x arm x seed in format `fmt`: the editing figures of that seed against the base model."""
    rows = []
    for e in experiments:
        [case] = e["cases"]
        base = [r for r in base_eval["rows"] if r["case"] == case["prompt"] and r["format"] == fmt]
        for run in e["runs"]:
            sft = [r for r in run["rows"] if r["case"] == case["prompt"] and r["format"] == fmt]
            figures = case_figures(base, sft, tolerance)
            rows.append({"case": case["prompt"], "arm": e["text_set"], "seed": run["seed"],
                         "train_tokens": run["train_tokens"], **{m: figures.get(m) for m in MEASURES
                                                                 if m != "ppl_change"},
                         "ppl_change": ppl_change(base_eval["perplexity"], run["perplexity"])})
    return rows


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or value != value else f"{value:+.{digits}f}"


def _p(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.3g}"


def findings_markdown(verdicts: list[dict]) -> str:
    rows = [{"Finding": f["finding"], "Verdict": f["verdict"], "n cases": f["n_cases"],
             "Δ (arm − concept)": _num(f["mean_diff"]), "p (Holm)": _p(f["p_holm"])} for f in verdicts]
    tests = "\n".join(f"- {f['finding'].split('.')[0]}: {f['test']}" for f in verdicts)
    return table(rows, list(rows[0])) + "\nHow each finding is put to the test:\n\n" + tests + "\n"


def comparisons_markdown(comparisons: list[dict]) -> str:
    rows = [{"Arm": r["arm"], "Measure": r["measure"], "n": r["n_cases"],
             "Δ mean [95 % CI]": f"{_num(r['mean_diff'])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}]",
             "Wilcoxon p": _p(r["p_value"]), "Holm p": _p(r["p_holm"])} for r in comparisons]
    if not rows:
        return "(no case has texts for both concept and another arm: nothing to pair)\n"
    return table(rows, list(rows[0]))


def rejections_markdown(text_records: list[dict]) -> str:
    """Rejected LLM texts counted per rule and arm, and the requests made."""
    per_rule = Counter((r["rule"], t["arm"]) for t in text_records for r in t.get("rejected", []))
    requests = sum(t.get("attempts", 0) for t in text_records)
    if not per_rule:
        return f"No text was rejected ({requests} LLM requests).\n"
    rows = [{"Rule": rule, "Arm": arm, "Rejected": n} for (rule, arm), n in sorted(per_rule.items())]
    return f"{sum(per_rule.values())} texts rejected over {requests} LLM requests:\n\n" + table(rows, list(rows[0]))


def study_markdown(verdicts: list[dict], comparisons: list[dict], image: str | None, summary: dict,
                   text_records: list[dict], skipped: list[dict]) -> str:
    """The report: the verdicts first, then the picture, the comparisons, the texts' rejections and the skips."""
    head = (f"# Concept SFT across cases: {summary['cases']} target cases, arms {', '.join(summary['arms'])}, "
            f"{summary['seeds']} seeds, {summary['experiments']} experiments ({summary['model']})\n\n")
    few = (f"A comparison needs at least {MIN_CASES} cases with both arms; below that the verdict is "
           "\"cannot tell\" and no p-value is given.\n\n")
    skips = "".join(f"- `{s['case']}` / {s['arm']}: {s['reason']}\n" for s in skipped) or "(none)\n"
    return (head + findings_markdown(verdicts) + "\n" + few + (image + "\n\n" if image else "")
            + "## Each arm against concept, paired by case (seeds averaged within a case; Δ = arm − concept)\n\n"
            + comparisons_markdown(comparisons) + "\n## Texts written by the LLM\n\n" + rejections_markdown(text_records)
            + "\n## Skipped\n\n" + skips + f"\nWall time: {summary['wall_s']:.0f} s.\n")
