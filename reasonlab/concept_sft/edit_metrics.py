"""How an edit is judged, base vs SFT: CounterFact's measures (ROME, Meng et al. 2022) and plain ones beside
them, plus fluency. Pure functions on `evaluate` rows. Each figure is named by what it computes:

    says_answer            the model's greedy answer to the case's prompt is the answer (it would say it)
    efficacy_prob          p(correct) > p(wrong), whole answers (the product of token probabilities: a
                           three-token answer at 0.5 a token, 12.5 %, loses to a one-token wrong word at 20 %)
    efficacy_nll           ROME's efficacy score: mean per-token NLL of the answer < that of the wrong word
    paraphrase_nll         ROME's paraphrase score: the same comparison, share of the paraphrases
    paraphrases_newly_said share of the paraphrases the model did not say before SFT that it says after
    neighbourhood_nll      ROME's neighbourhood score: share of the neighbours whose own answer still beats the
                           edited answer (mean per-token NLL)
    neighbours_leaked      share of the neighbours whose own answer beat the edited answer before SFT and no
                           longer does: the edit leaked into them
    neighbours_moved       share of the neighbours whose top-1 token changed or whose own answer's probability
                           left a factor `tolerance` of the base's, either way (a move, not necessarily damage)
    ppl_change             SFT / base perplexity on general held-out text, minus 1
Seeds: `aggregate` gives mean and sd (n - 1) of each figure over the repeats. `verdict`: "already said the
answer" when the base model said it; else "learned" when, after SFT, the model says the answer on its prompt
and on most of the paraphrases it did not say before, "memorised" when only on its own wording,
"over-generalised" when the edited answer also took over most neighbours.
"""

from __future__ import annotations

import math
import statistics

from reasonlab.markdown import table

FIGURES = ("says_answer", "efficacy_prob", "efficacy_nll", "paraphrase_nll", "paraphrases_newly_said",
           "neighbourhood_nll", "neighbours_leaked", "neighbours_moved", "ppl_change", "p_correct", "p_wrong",
           "correct_gain")
BASE_FIGURES = ("base_answer", "base_says_answer", "base_efficacy_prob", "base_efficacy_nll", "base_paraphrase_nll",
                "base_neighbourhood_nll", "base_p_correct", "base_p_wrong", "base_top1")


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _beats(row: dict, rival: str) -> bool:
    """ROME's comparison: the row's answer has a lower mean per-token NLL than `rival` ("wrong" or "edited")."""
    return row["nll_correct"] < row[f"nll_{rival}"]


def _moved(base: dict, sft: dict, tolerance: float) -> bool:
    low, high = base["p_correct"] / tolerance, base["p_correct"] * tolerance
    return sft["top1"] != base["top1"] or not low <= sft["p_correct"] <= high


def paraphrase_figures(pairs: list[tuple[dict, dict]]) -> dict:
    """(base row, SFT row) of each paraphrase -> ROME's paraphrase score before and after, and the newly said."""
    return {"base_paraphrase_nll": _share([_beats(b, "wrong") for b, _ in pairs]),
            "paraphrase_nll": _share([_beats(t, "wrong") for _, t in pairs]),
            "paraphrases_newly_said": _share([t["says_answer"] for b, t in pairs if not b["says_answer"]]),
            "n_paraphrases": len(pairs)}


def neighbour_figures(pairs: list[tuple[dict, dict]], tolerance: float) -> dict:
    """(base row, SFT row) of each neighbour -> ROME's neighbourhood score before and after, leaks and moves."""
    return {"base_neighbourhood_nll": _share([_beats(b, "edited") for b, _ in pairs]),
            "neighbourhood_nll": _share([_beats(t, "edited") for _, t in pairs]),
            "neighbours_leaked": _share([not _beats(t, "edited") for b, t in pairs if _beats(b, "edited")]),
            "neighbours_moved": _share([_moved(b, t, tolerance) for b, t in pairs]),
            "n_neighbours": len(pairs)}


def case_figures(base: list[dict], sft: list[dict], tolerance: float = 2.0) -> dict:
    """One case in one format: base rows and SFT rows from `evaluate.evaluate_cases` (the same texts)."""
    for b, t in zip(base, sft, strict=True):
        if (b["case"], b["format"], b["text"]) != (t["case"], t["format"], t["text"]):
            raise ValueError(f"rows do not line up: {b['text']!r} vs {t['text']!r}")
    pairs = list(zip(base, sft))
    [(b, t)] = [(b, t) for b, t in pairs if b["kind"] == "prompt"]
    return {"case": b["case"], "format": b["format"], "answer": b["answer"], "wrong_word": b["wrong_word"],
            "base_answer": b["greedy"], "answer_after": t["greedy"],
            "base_says_answer": float(b["says_answer"]), "says_answer": float(t["says_answer"]),
            "base_efficacy_prob": float(b["p_correct"] > b["p_wrong"]),
            "efficacy_prob": float(t["p_correct"] > t["p_wrong"]),
            "base_efficacy_nll": float(_beats(b, "wrong")), "efficacy_nll": float(_beats(t, "wrong")),
            **paraphrase_figures([(b, t) for b, t in pairs if b["kind"] == "paraphrase"]),
            **neighbour_figures([(b, t) for b, t in pairs if b["kind"] == "neighbour"], tolerance),
            "base_p_correct": b["p_correct"], "p_correct": t["p_correct"],
            "base_p_wrong": b["p_wrong"], "p_wrong": t["p_wrong"], "correct_gain": t["p_correct"] - b["p_correct"],
            "base_p_correct_first": b["p_correct_first"], "p_correct_first": t["p_correct_first"],
            "base_top1": b["top1"], "top1": t["top1"]}


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


def verdict(says_answer: float | None, paraphrases_newly_said: float | None, base_says_answer: float = 0.0,
            neighbours_leaked: float | None = None) -> str:
    """What happened to a case, from the shares above (each a mean over seeds)."""
    leaked = neighbours_leaked is not None and neighbours_leaked > 0.5
    if base_says_answer >= 0.5:
        return "already said the answer before SFT (in this format)"
    if not says_answer or says_answer < 0.5:
        return "not learned (it does not say the answer after SFT)" + ("; yet it took over most neighbours"
                                                                        if leaked else "")
    if paraphrases_newly_said is None:
        return "says it on its prompt (no paraphrase it did not already say, to tell learned from memorised)"
    if paraphrases_newly_said < 0.5:
        return "memorised"
    return "over-generalised (the answer took over most neighbours)" if leaked else "learned"


def aggregate(runs: list[dict]) -> dict:
    """Per-seed figure dicts (one case, format and text set) -> mean and sd of each figure, and the verdict."""
    out = {k: runs[0][k] for k in ("case", "format", "answer", "wrong_word", "text_set", *BASE_FIGURES)
           if k in runs[0]}
    out["seeds"] = len(runs)
    for fig in FIGURES:
        out[fig], out[fig + "_sd"] = mean_sd([r.get(fig) for r in runs])
    out["gain_beyond_spread"] = beyond_spread([r["correct_gain"] for r in runs])
    out["verdict"] = verdict(out["says_answer"], out["paraphrases_newly_said"], out.get("base_says_answer") or 0.0,
                             out["neighbours_leaked"])
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


COLUMNS = ["Case", "Text set", "Format", "Wrong", "Correct", "Seeds", "Base answer (greedy)", "Base p(wrong)",
           "Base p(correct)", "SFT p(wrong)", "SFT p(correct)", "SFT says the answer",
           "Efficacy: p(correct) > p(wrong)", "Efficacy (ROME): NLL/token correct < wrong",
           "Base paraphrases (ROME)", "Paraphrases (ROME)", "Paraphrases newly said", "Base neighbourhood (ROME)",
           "Neighbourhood (ROME)", "Neighbours leaked", "Neighbours moved", "Perplexity change",
           "Gain beyond spread", "Verdict"]


def results_markdown(summary: list[dict]) -> str:
    """One row per (case, text set, format), one column per figure: mean ± sd over the seeds."""
    rows = []
    for r in summary:
        spread = r["gain_beyond_spread"]
        cells = [r["case"], r.get("text_set") or "—", r["format"], (r["wrong_word"] or "").strip(), r["answer"],
                 str(r["seeds"]), repr((r.get("base_answer") or "").strip()), f"{r['base_p_wrong']:.1%}",
                 f"{r['base_p_correct']:.1%}", _pm(r["p_wrong"], r["p_wrong_sd"], digits=1),
                 _pm(r["p_correct"], r["p_correct_sd"], digits=1), _pm(r["says_answer"], r["says_answer_sd"]),
                 _pm(r["efficacy_prob"], r["efficacy_prob_sd"]), _pm(r["efficacy_nll"], r["efficacy_nll_sd"]),
                 _pm(r["base_paraphrase_nll"], None), _pm(r["paraphrase_nll"], r["paraphrase_nll_sd"]),
                 _pm(r["paraphrases_newly_said"], r["paraphrases_newly_said_sd"]),
                 _pm(r["base_neighbourhood_nll"], None), _pm(r["neighbourhood_nll"], r["neighbourhood_nll_sd"]),
                 _pm(r["neighbours_leaked"], r["neighbours_leaked_sd"]),
                 _pm(r["neighbours_moved"], r["neighbours_moved_sd"]),
                 _pm(r["ppl_change"], r["ppl_change_sd"], pct=False),
                 "—" if spread is None else "yes" if spread else "no", r["verdict"]]
        rows.append(cells)
    return table(rows, COLUMNS)
