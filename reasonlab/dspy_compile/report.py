"""The comparison report: table rows (approach x model), paired bootstrap CIs, the reference row,
an accuracy-vs-cost plot and error-analysis samples. Pure functions over evaluation results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasonlab import stats
from reasonlab.dspy_compile import metrics
from reasonlab.io import atomic_path
from reasonlab.markdown import table as markdown_table


def cost_unit(results: list[dict]) -> str:
    """Dollars when every row has a price (endpoint prices or a local $/hour), else compute seconds."""
    return "usd" if results and all(r["summary"]["cost_usd_per_ex"] > 0 for r in results) else "compute_s"


def _cost(summary: dict, unit: str) -> float:
    return summary["cost_usd_per_ex"] if unit == "usd" else summary["compute_s_per_ex"]


def table(results: list[dict], task: str, baseline: str = "cot") -> list[dict[str, Any]]:
    """One row per (model, approach): score + CI, parse failures, tokens, cost, latency, and the paired
    bootstrap difference against the same model's `baseline` approach (same test examples)."""
    base = {r["model"]: r for r in results if r["approach"] == baseline and not r.get("reference")}
    rows = []
    for r in results:
        s = r["summary"]
        row = {"model": r["model"], "approach": r["approach"] + (" (reference)" if r.get("reference") else ""),
               metrics.headline(task): round(s["score"], 4), "ci95_low": round(s["ci_low"], 4),
               "ci95_high": round(s["ci_high"], 4), **_strict_columns(s), "n": s["n"],
               "parse_failures": s["parse_failures"], "errors": s["errors"],
               "tokens_in/ex": round(s["prompt_tokens_per_ex"], 1), "tokens_out/ex": round(s["completion_tokens_per_ex"], 1),
               "compute_s/ex": round(s["compute_s_per_ex"], 3), "cost_usd/ex": round(s["cost_usd_per_ex"], 6),
               "latency_s/ex": round(s["latency_s_per_ex"], 3), "demos": r.get("demos", 0),
               "compile_cost": round(r.get("compile_cost", 0.0), 4)}
        if task == "hotpotqa":
            row["F1"] = round(s["f1"], 4)
        b = base.get(r["model"])
        if b is not None and b is not r and [x["id"] for x in b["rows"]] == [x["id"] for x in r["rows"]]:
            d = stats.paired_bootstrap([x["score"] for x in r["rows"]], [x["score"] for x in b["rows"]])
            row[f"vs {baseline}"] = _difference(d)
        else:
            row[f"vs {baseline}"] = ""
        rows.append(row)
    return rows


def _strict_columns(summary: dict) -> dict[str, Any]:
    """GSM8K: accuracy under lm-eval's strict-match with its CI, and the share of answers each rule extracts."""
    if "strict_score" not in summary:
        return {}
    return {"accuracy_strict": round(summary["strict_score"], 4),
            "strict_ci95_low": round(summary["strict_ci_low"], 4),
            "strict_ci95_high": round(summary["strict_ci_high"], 4),
            "extracted_strict": round(summary["strict_extracted"], 4),
            "extracted_flexible": round(summary["flexible_extracted"], 4)}


def reference_rows(results: list[dict], task: str) -> list[dict[str, Any]]:
    """Each small-model approach's score as % of the reference's, at % of its cost."""
    refs = [r for r in results if r.get("reference")]
    if not refs:
        return []
    ref = refs[0]
    unit = cost_unit(results)
    ref_score, ref_cost = ref["summary"]["score"], _cost(ref["summary"], unit)
    out = []
    for r in results:
        if r.get("reference"):
            continue
        s = r["summary"]
        d = (stats.paired_bootstrap([x["score"] for x in r["rows"]], [x["score"] for x in ref["rows"]])
             if [x["id"] for x in r["rows"]] == [x["id"] for x in ref["rows"]] else None)
        out.append({"model": r["model"], "approach": r["approach"], "reference": f"{ref['model']} ({ref['approach']})",
                    "% of reference score": None if ref_score == 0 else round(100 * s["score"] / ref_score, 1),
                    "% of reference cost": None if ref_cost == 0 else round(100 * _cost(s, unit) / ref_cost, 1),
                    "cost unit": unit, "score - reference": "" if d is None else _difference(d)})
    return out


def _difference(d: dict) -> str:
    """A paired difference (this row − the other) with its bootstrap 95 % CI."""
    return f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def markdown(rows: list[dict]) -> str:
    return markdown_table(rows, list(rows[0])) if rows else ""


def _cost_text(row: dict, unit: str) -> str:
    return f"${row['cost_usd/ex']:.2g}" if unit == "usd" else f"{row['compute_s/ex']:.2f} s"


def _short(text: str, n: int = 18) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def headline_rows(rows: list[dict], task: str, baseline: str = "cot") -> list[dict[str, Any]]:
    """`table`'s rows, best first: the small models' approaches by score, then the reference; each with its
    score and CI, the paired difference against the baseline approach with its CI, the cost per example, n."""
    score = metrics.headline(task)
    unit = cost_unit_of(rows)
    ordered = sorted(rows, key=lambda r: (r["approach"].endswith("(reference)"), -r[score]))
    return [{"model": _short(r["model"]), "approach": r["approach"],
             "score": f"{r[score]:.3f} [{r['ci95_low']:.3f}, {r['ci95_high']:.3f}]",
             "vs": r.get(f"vs {baseline}") or None, "cost": _cost_text(r, unit), "n": r["n"]} for r in ordered]


def cost_unit_of(rows: list[dict]) -> str:
    """`cost_unit` read from `table`'s rows."""
    return "usd" if rows and all(r["cost_usd/ex"] > 0 for r in rows) else "compute_s"


def headline_markdown(rows: list[dict], task: str, baseline: str = "cot") -> str:
    """The approaches, best first, in columns short enough for the UI's artifact page (about 80 characters);
    the model column only when there are several models."""
    columns = {"model": "Model", "approach": "Approach", "score": f"{metrics.headline(task).capitalize()} [95 % CI]",
               "vs": f"vs {baseline} [95 % CI]", "cost": "Cost / ex", "n": "n"}
    if len({r["model"] for r in rows}) == 1:
        del columns["model"]
    cost = "USD" if cost_unit_of(rows) == "usd" else "compute seconds"
    return (f"Every approach, best first (95 % CIs: bootstrap; vs {baseline}: paired on the same examples; cost: "
            f"{cost} per example):\n\n"
            + markdown_table(headline_rows(rows, task, baseline), columns, align="l" * (len(columns) - 4) + "rrrr"))


def error_samples(results: list[dict], per_row: int = 3) -> list[dict[str, Any]]:
    """Wrong answers with the model's reasoning (and failures with their reason), a few per (model, approach)."""
    out = []
    for r in results:
        wrong = [x for x in r["rows"] if x["score"] < 1.0][:per_row]
        for x in wrong:
            out.append({"model": r["model"], "approach": r["approach"], "id": x["id"], "status": x["status"],
                        "question": x["question"][:300], "gold": x["gold"], "answer": x["answer"][:120],
                        "reasoning": (x["reasoning"] or x["reason"])[:600], "reason": x["reason"][:200]})
    return out


def plot(results: list[dict], task: str, dest: str | Path) -> Path:
    """Accuracy vs cost per example, one marker per model, one label per approach, CI as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = cost_unit(results)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = "osD^vP*X"
    models = list(dict.fromkeys(r["model"] for r in results))
    for i, model in enumerate(models):
        rs = [r for r in results if r["model"] == model]
        xs = [_cost(r["summary"], unit) for r in rs]
        ys = [r["summary"]["score"] for r in rs]
        err = [[y - r["summary"]["ci_low"] for y, r in zip(ys, rs)],
               [r["summary"]["ci_high"] - y for y, r in zip(ys, rs)]]
        ax.errorbar(xs, ys, yerr=err, fmt=markers[i % len(markers)], capsize=3, label=model, alpha=0.85,
                    color=f"C{i}")
        for j, (x, y, r) in enumerate(zip(xs, ys, rs)):  # staggered: coinciding points stay readable
            ax.annotate(r["approach"] + ("*" if r.get("reference") else ""), (x, y), textcoords="offset points",
                        xytext=(5, 4 + 10 * (j % 4) - 15 * i), fontsize=8, color=f"C{i}")
    ax.set_xlabel("cost per example (USD)" if unit == "usd" else "compute seconds per example (local CPU)")
    ax.set_ylabel(f"{task} {metrics.headline(task)} (95% bootstrap CI)")
    n = results[0]["summary"]["n"] if results else 0
    ax.set_title(f"{task}: accuracy vs cost (n={n} test examples; * = reference)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return dest
