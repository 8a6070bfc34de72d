"""How an edit is judged (CounterFact's three measures plus fluency), base vs SFT. Pure functions on rows.

    efficacy          p(correct) > p(wrong) on the case's own prompt after SFT (whole answers)
    paraphrase        share of the paraphrases where p(correct) > p(wrong) after SFT
    neighbourhood     share of the neighbours whose top-1 token holds and whose answer probability stays
                      within a factor `tolerance` of the base's
    perplexity change SFT / base perplexity on general held-out text, minus 1
Seeds: `aggregate` gives mean and sd (n - 1) of each figure over the repeats; `verdict` calls a case
"learned" only when it flips on its paraphrases too and most neighbours hold, "memorised" when it flips on
its own wording only, "over-generalised" when the neighbours moved with it.
"""

from __future__ import annotations

import math
import statistics

from reasonlab.markdown import table

FIGURES = ("efficacy", "paraphrase", "neighbourhood", "ppl_change", "p_correct", "p_wrong", "correct_gain")


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def case_figures(base: list[dict], sft: list[dict], tolerance: float = 2.0) -> dict:
    """One case in one format: base rows and SFT rows from `evaluate.evaluate_cases` (the same texts)."""
    for b, t in zip(base, sft, strict=True):
        if (b["case"], b["format"], b["text"]) != (t["case"], t["format"], t["text"]):
            raise ValueError(f"rows do not line up: {b['text']!r} vs {t['text']!r}")
    [(b_prompt, s_prompt)] = [(b, t) for b, t in zip(base, sft) if b["kind"] == "prompt"]
    para = [t["p_correct"] > t["p_wrong"] for t in sft if t["kind"] == "paraphrase"]
    base_para = [b["p_correct"] > b["p_wrong"] for b in base if b["kind"] == "paraphrase"]
    held = [t["top1"] == b["top1"] and b["p_correct"] / tolerance <= t["p_correct"] <= b["p_correct"] * tolerance
            for b, t in zip(base, sft) if b["kind"] == "neighbour"]
    return {"case": b_prompt["case"], "format": b_prompt["format"], "answer": b_prompt["answer"],
            "wrong_word": b_prompt["wrong_word"],
            "base_efficacy": float(b_prompt["p_correct"] > b_prompt["p_wrong"]),
            "efficacy": float(s_prompt["p_correct"] > s_prompt["p_wrong"]),
            "base_paraphrase": _share(base_para), "paraphrase": _share(para), "neighbourhood": _share(held),
            "base_p_correct": b_prompt["p_correct"], "p_correct": s_prompt["p_correct"],
            "base_p_wrong": b_prompt["p_wrong"], "p_wrong": s_prompt["p_wrong"],
            "correct_gain": s_prompt["p_correct"] - b_prompt["p_correct"],
            "base_p_correct_first": b_prompt["p_correct_first"], "p_correct_first": s_prompt["p_correct_first"],
            "base_top1": b_prompt["top1"], "top1": s_prompt["top1"],
            "n_paraphrases": len(para), "n_neighbours": len(held)}


def ppl_change(base_ppl: float, sft_ppl: float) -> float:
    return sft_ppl / base_ppl - 1.0


def mean_sd(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample sd (None for an empty list; sd None for one value)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None


def beyond_spread(values: list[float]) -> bool | None:
    """Is the mean shift outside the seed-to-seed spread? |mean| > t(0.975, n-1) * sd / sqrt(n) (None: n < 2)."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    mean, sd = mean_sd(values)
    if sd == 0:
        return bool(mean != 0)
    return bool(abs(mean) > t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values)))


def verdict(efficacy: float | None, paraphrase: float | None, base_efficacy: float = 0.0,
            neighbourhood: float | None = None) -> str:
    """learned: flips on its prompt and on most paraphrases, most neighbours holding; memorised: flips on its
    own wording only; over-generalised: flips, but most neighbours moved too."""
    if base_efficacy >= 0.5:
        return "already right before SFT (in this format)"
    if not efficacy or efficacy < 0.5:
        return "not flipped"
    if paraphrase is None:
        return "flipped (no paraphrases to tell learned from memorised)"
    if paraphrase < 0.5:
        return "memorised"
    return "over-generalised (most neighbours moved)" if neighbourhood is not None and neighbourhood < 0.5 \
        else "learned"


def aggregate(runs: list[dict]) -> dict:
    """Per-seed figure dicts (one case, format and text set) -> mean and sd of each figure, and the verdict."""
    out = {k: runs[0][k] for k in ("case", "format", "answer", "wrong_word", "text_set", "base_efficacy",
                                   "base_paraphrase", "base_p_correct", "base_p_wrong", "base_top1") if k in runs[0]}
    out["seeds"] = len(runs)
    for fig in FIGURES:
        out[fig], out[fig + "_sd"] = mean_sd([r.get(fig) for r in runs])
    out["gain_beyond_spread"] = beyond_spread([r["correct_gain"] for r in runs])
    out["verdict"] = verdict(out["efficacy"], out["paraphrase"], out.get("base_efficacy") or 0.0, out["neighbourhood"])
    return out


def summarize(base: dict, runs: list[dict], cases: list[dict], formats: list[str], tolerance: float = 2.0,
              text_set: str | None = None) -> list[dict]:
    """Per case and format, the figures of every run (a seed) against the base, aggregated.

    `base` and each of `runs`: {"rows": evaluation rows of the same texts, "perplexity": held-out}."""
    def of(rows: list[dict], case: dict, fmt: str) -> list[dict]:
        return [r for r in rows if r["case"] == case["prompt"] and r["format"] == fmt]

    return [aggregate([{**case_figures(of(base["rows"], case, fmt), of(run["rows"], case, fmt), tolerance),
                        "ppl_change": ppl_change(base["perplexity"], run["perplexity"]), "text_set": text_set}
                       for run in runs])
            for case in cases for fmt in formats]


def _pm(mean: float | None, sd: float | None, pct: bool = True, digits: int = 0) -> str:
    if mean is None:
        return "—"
    fmt = (lambda x: f"{x:.{digits}%}") if pct else (lambda x: f"{x:+.1%}")
    return fmt(mean) + ("" if sd is None else f" ± {fmt(sd).lstrip('+')}")


COLUMNS = ["Case", "Text set", "Format", "Wrong", "Correct", "Seeds", "Base p(wrong)", "Base p(correct)",
           "SFT p(wrong)", "SFT p(correct)", "Efficacy", "Paraphrases", "Base paraphrases", "Neighbourhood",
           "Perplexity change", "Gain beyond spread", "Verdict"]


def results_markdown(summary: list[dict]) -> str:
    """One row per (case, text set, format), one column per figure: mean ± sd over the seeds."""
    rows = []
    for r in summary:
        spread = r["gain_beyond_spread"]
        rows.append([r["case"], r.get("text_set") or "—", r["format"], (r["wrong_word"] or "").strip(), r["answer"],
                     str(r["seeds"]), f"{r['base_p_wrong']:.1%}", f"{r['base_p_correct']:.1%}",
                     _pm(r["p_wrong"], r["p_wrong_sd"], digits=1), _pm(r["p_correct"], r["p_correct_sd"], digits=1),
                     _pm(r["efficacy"], r["efficacy_sd"]), _pm(r["paraphrase"], r["paraphrase_sd"]),
                     _pm(r["base_paraphrase"], None), _pm(r["neighbourhood"], r["neighbourhood_sd"]),
                     _pm(r["ppl_change"], r["ppl_change_sd"], pct=False),
                     "—" if spread is None else "yes" if spread else "no", r["verdict"]])
    return table(rows, COLUMNS)
