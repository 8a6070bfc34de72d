"""Turn scored conditions into the experiment's tables (plain data + markdown). No Prefect, no models.

`summarize(questions, scored)` with `scored = {condition: [score rows]}` gives, for one group of questions:
  conditions   one row per condition: n, acc / acc (debiased) / acc_norm with bootstrap 95 % CIs, the predicted-letter
               shares, mean entropy, information gain and KL against `none`, Brier, ECE (on the main distribution)
  differences  every condition against `none` (and top-1 against the random-other control), paired on the shared
               questions: difference condition − reference with its paired-bootstrap 95 % CI (`diff`, `low`, `high`),
               exact McNemar p with `only_a` / `only_b` = questions right only under the condition / only under the
               reference
  info_gain    per-question H(none) - H(condition), for the histogram
  reliability  reliability-diagram bins per condition
The main distribution is the debiased one when the run debiased, else the plain letter softmax.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from reasonlab import stats
from reasonlab.markdown import cell, table
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
            row[v] = stats.mean(correct)
            row[f"{v}_ci"] = list(stats.bootstrap_ci(correct, n_boot=n_boot, seed=seed))
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
            ref_correct = [x[key] == x["answer"] for x, _ in paired]
            cond_correct = [y[key] == y["answer"] for _, y in paired]
            diff = stats.paired_bootstrap(cond_correct, ref_correct, n_boot=n_boot, seed=seed)
            differences.append({"comparison": f"{cond} - {ref}", "metric": v, **diff,
                                **stats.mcnemar(cond_correct, ref_correct)})
    return {"distribution": dist, "conditions": conditions, "differences": differences, "info_gain": info_gain,
            "reliability": reliability}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _ci(c: list[float] | None) -> str:
    return "" if not c else f" [{100 * c[0]:.1f}, {100 * c[1]:.1f}]"


def _letters(d: dict | None) -> str:
    return "—" if not d else " ".join(f"{k}{100 * v:.0f}" for k, v in d.items())


CONDITION_COLUMNS = ["condition", "n", "acc", "acc (debiased)", "acc_norm", "predicted letters", "debiased letters",
                     "gold letters", "entropy", "info gain", "KL", "Brier", "ECE", "letter mass"]
DIFFERENCE_COLUMNS = ["comparison", "metric", "n", "difference (pp)", "95 % CI",
                      "McNemar: right only in first / only in second", "p"]


def _condition_cells(c: dict) -> list:
    if not c["n"]:
        return [c["condition"], 0, "n/a (no question with a known domain)"] + [""] * (len(CONDITION_COLUMNS) - 3)
    num = partial(cell, fmt=".3f")
    return [c["condition"], c["n"], _pct(c.get("acc")) + _ci(c.get("acc_ci")),
            _pct(c.get("acc_debiased")) + _ci(c.get("acc_debiased_ci")), _pct(c.get("acc_norm")) + _ci(c.get("acc_norm_ci")),
            _letters(c.get("pred_letters")), _letters(c.get("debiased_pred_letters")), _letters(c.get("gold_letters")),
            num(c.get("entropy_bits")), num(c.get("info_gain_bits")), num(c.get("kl_bits")), num(c.get("brier")),
            num(c.get("ece")), num(c.get("letter_mass"))]


def summary_markdown(title: str, summary: dict, retrieval: list[dict] | None = None) -> str:
    lines = [f"## {title}", "", f"Accuracy in % with bootstrap 95 % CIs; predicted-letter shares in %; entropy, "
             f"information gain (vs none) and KL in bits on `{summary['distribution']}`. A comparison `x - y` is "
             f"x minus y.", "",
             table([_condition_cells(c) for c in summary["conditions"]], CONDITION_COLUMNS,
                   align="lrllllllrrrrrr").rstrip("\n"), "",
             table([[d["comparison"], d["metric"], d["n"], f"{100 * d['diff']:+.1f}",
                     f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]", f"{d['only_a']}/{d['only_b']}",
                     f"{d['p_value']:.3g}"] for d in summary["differences"]], DIFFERENCE_COLUMNS,
                   align="llrrllr").rstrip("\n")]
    if retrieval:
        lines += ["", table([[r["method"], r["k"], r["n_known"], _pct(r["accuracy"])] for r in retrieval],
                            ["retriever", "top-k", "questions with a known domain", "retrieval accuracy"],
                            align="lrrr").rstrip("\n")]
    return "\n".join(lines) + "\n"
