"""Turn scored conditions into the experiment's tables (plain data + markdown). No Prefect, no models.

`summarize(questions, scored)` with `scored = {condition: [score rows]}` gives, for one group of questions:
  conditions   one row per condition: n, acc / acc (debiased) / acc_norm with bootstrap 95 % CIs, the predicted-letter
               shares, mean entropy, information gain and KL against `none`, Brier, ECE (on the main distribution)
  differences  every condition against `none` (and top-1 against the random-other control), paired on the shared
               questions: difference, paired-bootstrap 95 % CI, exact McNemar p
  info_gain    per-question H(none) - H(condition), for the histogram
  reliability  reliability-diagram bins per condition
The main distribution is the debiased one when the run debiased, else the plain letter softmax.
"""

from __future__ import annotations

from typing import Any

from reasonlab.retrieval import metrics

VARIANTS = {"acc": ("pred", "probs"), "acc_debiased": ("debiased_pred", "debiased_probs"),
            "acc_norm": ("norm_pred", None)}


def main_distribution(rows: list[dict]) -> str:
    return "debiased_probs" if rows and "debiased_probs" in rows[0] else "probs"


def _variants(rows: list[dict]) -> list[str]:
    return [v for v, (pred, _) in VARIANTS.items() if rows and pred in rows[0]]


def summarize(questions: list[dict], scored: dict[str, list[dict]], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    letters_of = {q["id"]: list(q["options"]) for q in questions}
    base = {r["id"]: r for r in scored.get("none", [])}
    dist = main_distribution(scored.get("none") or next(iter(scored.values()), []))
    conditions, differences, info_gain, reliability = [], [], {}, {}
    for condition, rows in scored.items():
        if not rows:
            conditions.append({"condition": condition, "n": 0})
            continue
        answers = [letters_of[r["id"]].index(r["answer"]) for r in rows]
        row: dict[str, Any] = {"condition": condition, "n": len(rows)}
        for v in _variants(rows):
            correct = [r[VARIANTS[v][0]] == r["answer"] for r in rows]
            lo, hi = metrics.bootstrap_ci(correct, n_boot, seed)
            row[v] = metrics.accuracy(correct)
            row[f"{v}_ci"] = [lo, hi]
        row["pred_letters"] = metrics.letter_distribution([r["pred"] for r in rows])
        if "debiased_pred" in rows[0]:
            row["debiased_pred_letters"] = metrics.letter_distribution([r["debiased_pred"] for r in rows])
        row["gold_letters"] = metrics.letter_distribution([r["answer"] for r in rows])
        probs = [r[dist] for r in rows]
        row["entropy_bits"] = sum(metrics.entropy(p) for p in probs) / len(probs)
        row["letter_mass"] = sum(r["letter_mass"] for r in rows) / len(rows)
        row["brier"] = metrics.brier(probs, answers)
        row["ece"] = metrics.expected_calibration_error(probs, answers)
        reliability[condition] = metrics.reliability_bins(probs, answers)
        paired = [(base[r["id"]], r) for r in rows if r["id"] in base]
        if condition != "none" and paired:
            gains = [metrics.information_gain(b[dist], r[dist]) for b, r in paired]
            info_gain[condition] = gains
            row["info_gain_bits"] = sum(gains) / len(gains)
            row["kl_bits"] = sum(metrics.kl_divergence(r[dist], b[dist]) for b, r in paired) / len(paired)
        conditions.append(row)
    pairs = [(c, "none") for c in scored if c != "none"]
    if "top1" in scored and "random_other" in scored:
        pairs.append(("top1", "random_other"))
    for cond, ref in pairs:
        ref_rows = {r["id"]: r for r in scored.get(ref, [])}
        paired = [(ref_rows[r["id"]], r) for r in scored.get(cond, []) if r["id"] in ref_rows]
        if not paired:
            continue
        for v in _variants(scored[cond]):
            key = VARIANTS[v][0]
            a = [x[key] == x["answer"] for x, _ in paired]
            b = [y[key] == y["answer"] for _, y in paired]
            diff = metrics.paired_bootstrap_diff(a, b, n_boot, seed)
            differences.append({"comparison": f"{cond} - {ref}", "metric": v, "n": len(paired), **diff,
                                **metrics.mcnemar(a, b)})
    return {"distribution": dist, "conditions": conditions, "differences": differences, "info_gain": info_gain,
            "reliability": reliability}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _ci(c: list[float] | None) -> str:
    return "" if not c else f" [{100 * c[0]:.1f}, {100 * c[1]:.1f}]"


def _letters(d: dict | None) -> str:
    return "—" if not d else " ".join(f"{k}{100 * v:.0f}" for k, v in d.items())


def summary_markdown(title: str, summary: dict, retrieval: list[dict] | None = None) -> str:
    conds = summary["conditions"]
    lines = [f"## {title}", "", f"Accuracy in % with bootstrap 95 % CIs; predicted-letter shares in %; entropy, "
             f"information gain (vs none) and KL in bits on `{summary['distribution']}`.", "",
             "| condition | n | acc | acc (debiased) | acc_norm | predicted letters | debiased letters | gold letters "
             "| entropy | info gain | KL | Brier | ECE | letter mass |",
             "|---|---:|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]

    def num(v):
        return "—" if v is None else f"{v:.3f}"

    for c in conds:
        if not c["n"]:
            lines.append(f"| {c['condition']} | 0 | n/a (no question with a known domain) |||||||||||")
            continue
        lines.append("| " + " | ".join([
            c["condition"], str(c["n"]), _pct(c.get("acc")) + _ci(c.get("acc_ci")),
            _pct(c.get("acc_debiased")) + _ci(c.get("acc_debiased_ci")), _pct(c.get("acc_norm")) + _ci(c.get("acc_norm_ci")),
            _letters(c.get("pred_letters")), _letters(c.get("debiased_pred_letters")), _letters(c.get("gold_letters")),
            num(c.get("entropy_bits")), num(c.get("info_gain_bits")), num(c.get("kl_bits")), num(c.get("brier")),
            num(c.get("ece")), num(c.get("letter_mass"))]) + " |")
    lines += ["", "| comparison | metric | n | difference (pp) | 95 % CI | McNemar b01/b10 | p |", "|---|---|---:|---:|---|---|---:|"]
    for d in summary["differences"]:
        lines.append(f"| {d['comparison']} | {d['metric']} | {d['n']} | {100 * d['diff']:+.1f} | "
                     f"[{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] | {d['b01']}/{d['b10']} | {d['p_value']:.3g} |")
    if retrieval:
        lines += ["", "| retriever | top-k | questions with a known domain | retrieval accuracy |", "|---|---:|---:|---:|"]
        lines += [f"| {r['method']} | {r['k']} | {r['n_known']} | {_pct(r['accuracy'])} |" for r in retrieval]
    return "\n".join(lines) + "\n"
