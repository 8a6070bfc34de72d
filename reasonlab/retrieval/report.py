"""Turn scored conditions into the experiment's tables (plain data + markdown). No Prefect, no models.

`summarize(questions, scored)` with `scored = {condition: [score rows]}` gives, for one group of questions:
  conditions   one row per condition: n, acc / acc_debiased / acc_option_text_norm with Wilson 95 % CIs
               (reasonlab.stats.rate), the predicted-letter shares, mean entropy, information gain and KL against
               `none`, Brier, ECE (on the main distribution)
  differences  every condition against `none` (and top-1 against the random-other control), paired on the shared
               questions: difference (condition - reference), paired-bootstrap 95 % CI, exact McNemar p
  info_gain    per-question H(none) - H(condition), for the histogram
  reliability  reliability-diagram bins per condition
The main distribution is the debiased one when the run debiased, else the plain letter softmax.

`oracle` only covers the questions with a known gold domain, so it has its own n; when that is fewer than all
questions, `none_on_oracle_questions` (no instruction, on exactly those questions) is reported beside it, and
`oracle - none` is paired on those questions.
"""

from __future__ import annotations

from typing import Any

from reasonlab import stats
from reasonlab.markdown import table
from reasonlab.retrieval import metrics

VARIANTS = {"acc": "pred", "acc_debiased": "debiased_pred", "acc_option_text_norm": "option_text_pred"}
ORACLE_SUBSET = "none_on_oracle_questions"
LETTER_ORDER = "ABCDEFGH"


def main_distribution(rows: list[dict]) -> str:
    return "debiased_probs" if rows and "debiased_probs" in rows[0] else "probs"


def variants(rows: list[dict]) -> list[str]:
    return [v for v, pred in VARIANTS.items() if rows and pred in rows[0]]


def with_oracle_subset(scored: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """`scored` plus `none` on the oracle's questions (before `oracle`) when the oracle covers fewer questions."""
    oracle_ids = {r["id"] for r in scored.get("oracle", [])}
    none = scored.get("none", [])
    if not oracle_ids or oracle_ids == {r["id"] for r in none}:
        return dict(scored)
    out = {}
    for condition, rows in scored.items():
        if condition == "oracle":
            out[ORACLE_SUBSET] = [r for r in none if r["id"] in oracle_ids]
        out[condition] = rows
    return out


def accuracies(rows: list[dict]) -> dict[str, Any]:
    """Each accuracy variant the rows have, as a rate with its Wilson 95 % CI."""
    out: dict[str, Any] = {}
    for v in variants(rows):
        share = stats.rate(sum(r[VARIANTS[v]] == r["answer"] for r in rows), len(rows))
        out[v], out[f"{v}_ci"] = share["rate"], [share["low"], share["high"]]
    return out


def condition_row(condition: str, rows: list[dict], letters_of: dict[str, list[str]], dist: str,
                  base: dict[str, dict], letters: str) -> tuple[dict, list[float] | None]:
    """(one condition's figures, its per-question information gains against `none` or None)."""
    answers = [letters_of[r["id"]].index(r["answer"]) for r in rows]
    row: dict[str, Any] = {"condition": condition, "n": len(rows), **accuracies(rows)}
    row["pred_letters"] = metrics.letter_distribution([r["pred"] for r in rows], letters)
    if "debiased_pred" in rows[0]:
        row["debiased_pred_letters"] = metrics.letter_distribution([r["debiased_pred"] for r in rows], letters)
    row["gold_letters"] = metrics.letter_distribution([r["answer"] for r in rows], letters)
    probs = [r[dist] for r in rows]
    row["entropy_bits"] = stats.mean([metrics.entropy(p) for p in probs])
    row["letter_mass"] = stats.mean([r["letter_mass"] for r in rows])
    row["brier"] = metrics.brier(_padded(probs), answers)
    row["ece"] = metrics.expected_calibration_error(_padded(probs), answers)
    paired = [(base[r["id"]], r) for r in rows if r["id"] in base]
    if condition in ("none", ORACLE_SUBSET) or not paired:
        return row, None
    gains = [metrics.information_gain(b[dist], r[dist]) for b, r in paired]
    row["info_gain_bits"] = stats.mean(gains)
    row["kl_bits"] = stats.mean([metrics.kl_divergence(r[dist], b[dist]) for b, r in paired])
    return row, gains


def _padded(probs: list[list[float]]) -> list[list[float]]:
    """Distributions over different numbers of options as equal-length rows (zeros after the last option)."""
    width = max(len(p) for p in probs)
    return [list(p) + [0.0] * (width - len(p)) for p in probs]


def differences(scored: dict[str, list[dict]], n_boot: int, seed: int) -> list[dict]:
    """Each condition minus its reference on the questions both scored: paired bootstrap CI and exact McNemar."""
    pairs = [(c, "none") for c in scored if c not in ("none", ORACLE_SUBSET)]
    if "top1" in scored and "random_other" in scored:
        pairs.append(("top1", "random_other"))
    out = []
    for cond, ref in pairs:
        ref_rows = {r["id"]: r for r in scored.get(ref, [])}
        paired = [(r, ref_rows[r["id"]]) for r in scored.get(cond, []) if r["id"] in ref_rows]
        if not paired:
            continue
        for v in variants(scored[cond]):
            key = VARIANTS[v]
            a = [x[key] == x["answer"] for x, _ in paired]
            b = [y[key] == y["answer"] for _, y in paired]
            diff, test = stats.paired_bootstrap(a, b, n_boot, seed), stats.mcnemar(a, b)
            out.append({"comparison": f"{cond} - {ref}", "metric": v, "n": len(paired), "diff": diff["diff"],
                        "low": diff["low"], "high": diff["high"], "only_condition": test["only_a"],
                        "only_reference": test["only_b"], "p_value": test["p_value"]})
    return out


def summarize(questions: list[dict], scored: dict[str, list[dict]], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    letters_of = {q["id"]: list(q["options"]) for q in questions}
    letters = "".join(x for x in LETTER_ORDER if any(x in ls for ls in letters_of.values()))
    scored = with_oracle_subset(scored)
    base = {r["id"]: r for r in scored.get("none", [])}
    dist = main_distribution(scored.get("none") or next(iter(scored.values()), []))
    conditions, info_gain, reliability = [], {}, {}
    for condition, rows in scored.items():
        if not rows:
            conditions.append({"condition": condition, "n": 0})
            continue
        row, gains = condition_row(condition, rows, letters_of, dist, base, letters)
        conditions.append(row)
        if gains is not None:
            info_gain[condition] = gains
        reliability[condition] = metrics.reliability_bins(_padded([r[dist] for r in rows]),
                                                          [letters_of[r["id"]].index(r["answer"]) for r in rows])
    return {"distribution": dist, "conditions": conditions, "differences": differences(scored, n_boot, seed),
            "info_gain": info_gain, "reliability": reliability}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _ci(c: list[float] | None) -> str:
    return "" if not c else f" [{100 * c[0]:.1f}, {100 * c[1]:.1f}]"


def _letters(d: dict | None) -> str:
    return "—" if not d else " ".join(f"{k}{100 * v:.0f}" for k, v in d.items())


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


NOTES = [
    "Accuracies in % with Wilson 95 % CIs, each over its own n. `acc`: the option letter read after \"Answer:\"; "
    "`acc_debiased`: the letter distribution averaged over the cyclic orders of the options; "
    "`acc_option_text_norm`: the option *text* with the highest log-likelihood per character after the prompt "
    "that lists the options (not lm-eval's acc_norm, which on MedQA scores the letters and equals acc).",
    "`oracle` covers only the questions with a known gold domain; `none_on_oracle_questions` is `none` on exactly "
    "those questions, and `oracle - none` below is paired on them.",
]


def condition_table(summary: dict) -> list[str]:
    lines = ["| condition | n | acc | acc_debiased | acc_option_text_norm | predicted letters | debiased letters "
             "| gold letters | entropy | info gain | KL | Brier | ECE | letter mass |",
             "|---|---:|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in summary["conditions"]:
        if not c["n"]:
            lines.append(f"| {c['condition']} | 0 | n/a (no question with a known domain) |||||||||||")
            continue
        lines.append("| " + " | ".join([
            c["condition"], str(c["n"]), *(_pct(c.get(v)) + _ci(c.get(f"{v}_ci")) for v in VARIANTS),
            _letters(c.get("pred_letters")), _letters(c.get("debiased_pred_letters")), _letters(c.get("gold_letters")),
            *(_num(c.get(k)) for k in ("entropy_bits", "info_gain_bits", "kl_bits", "brier", "ece", "letter_mass"))])
            + " |")
    return lines


def main_metric(summary: dict) -> str:
    """The accuracy the answer is read from: `acc_debiased` when the run debiased (the letter-bias control)."""
    return "acc_debiased" if summary["distribution"] == "debiased_probs" else "acc"


def headline_rows(summary: dict) -> list[dict[str, Any]]:
    """The paired differences on the main accuracy, top-1 against no instruction first."""
    metric = main_metric(summary)
    diffs = sorted((d for d in summary["differences"] if d["metric"] == metric),
                   key=lambda d: d["comparison"] != "top1 - none")
    return [{"comparison": d["comparison"], "diff": f"{100 * d['diff']:+.1f}",
             "ci": f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]", "p": f"{d['p_value']:.3g}", "n": d["n"],
             "won_lost": f"{d['only_condition']} / {d['only_reference']}"} for d in diffs]


def headline_markdown(summary: dict) -> str:
    """Six short columns, so the whole line fits the UI's artifact page (about 80 characters)."""
    rows = headline_rows(summary) or [{"comparison": "no paired comparison (one condition only)"}]
    return (f"Does an instruction help? `{main_metric(summary)}`, condition − reference on the same questions, in "
            f"points (95 % CI: paired bootstrap; won / lost: questions right only with / only without it):\n\n"
            + table(rows, {"comparison": "Comparison", "diff": "Δ points", "ci": "95 % CI", "p": "McNemar p",
                           "n": "n", "won_lost": "Won / lost"}, align="lrrrrr"))


def summary_markdown(title: str, summary: dict, retrieval: list[dict] | None = None, image: str | None = None) -> str:
    """The answer (paired differences on the main accuracy), the picture (`image`: markdown showing it), then every
    condition's figures, every difference and the retrieval accuracy."""
    lines = [f"# Instruction retrieval: {title}", "", headline_markdown(summary)]
    if image:
        lines += [image, ""]
    lines += ["### Every condition", "", *NOTES, "", f"Entropy, information gain (vs none) and KL in bits on "
             f"`{summary['distribution']}`.", "", *condition_table(summary), "",
             "| comparison | metric | n | difference (pp) | paired bootstrap 95 % CI | only condition / only reference "
             "right | McNemar p |", "|---|---|---:|---:|---|---|---:|"]
    for d in summary["differences"]:
        lines.append(f"| {d['comparison']} | {d['metric']} | {d['n']} | {100 * d['diff']:+.1f} | "
                     f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] | {d['only_condition']}/{d['only_reference']} "
                     f"| {d['p_value']:.3g} |")
    if retrieval:
        lines += ["", "| retriever | top-k | questions with a known domain | retrieval accuracy (Wilson 95 % CI) |",
                  "|---|---:|---:|---|"]
        lines += [f"| {r['method']} | {r['k']} | {r['n_known']} | {_pct(r['accuracy'])}"
                  f"{_ci([r['low'], r['high']]) if r['accuracy'] is not None else ''} |" for r in retrieval]
    return "\n".join(lines) + "\n"
