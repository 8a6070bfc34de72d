"""The activation-baseline report, answer first: one narrow line (the MBPP pass rate with its 95 % Wilson interval
over the problems, and over the generated programs only), one picture (both rates, and what became of every problem),
then the detail. `merged` is `dataset.merge_dataset`'s result. No Prefect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasonlab.markdown import table
from reasonlab.plots import bars_with_ci, pyplot, save_figure

RATES = {"pass_rate": "over problems", "pass_rate_generated": "over generated"}


def rate_text(merged: dict, name: str) -> str | None:
    """"42.0 [30.1, 55.0]" (a rate with its 95 % Wilson interval, in %), None without a rate."""
    if merged.get(name) is None:
        return None
    low, high = merged[f"{name}_ci95"]
    return f"{100 * merged[name]:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def headline_rows(merged: dict) -> list[dict[str, Any]]:
    return [{"passed": f"{merged['passed']} / {merged['problems']}", "pass_rate": rate_text(merged, "pass_rate"),
             "pass_rate_generated": rate_text(merged, "pass_rate_generated"), "excluded": merged["excluded"],
             "tokens": merged.get("mean_completion_tokens")}]


def headline_markdown(merged: dict) -> str:
    """Five short columns, so the whole line fits the UI's artifact page (about 80 characters)."""
    return table(headline_rows(merged), {"passed": "Passed", "pass_rate": "Pass rate % [95 % CI]",
                                         "pass_rate_generated": "Of generated % [CI]", "excluded": "Excluded",
                                         "tokens": "Mean tokens"}, align="rrrrr")


def plot_outcomes(merged: dict, title: str, dest: Path | str) -> Path:
    """Left: both pass rates with their 95 % Wilson intervals. Right: what became of every problem (passed, each
    error type of the failing programs, excluded)."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(9.5, 3.6), gridspec_kw={"width_ratios": [2, 3]})
    bars_with_ci(left, list(RATES.values()), [merged.get(r) for r in RATES],
                 [merged[f"{r}_ci95"][0] for r in RATES], [merged[f"{r}_ci95"][1] for r in RATES])
    for x, (rate, denominator) in enumerate([("pass_rate", "problems"), ("pass_rate_generated", "generated")]):
        left.text(x, 0.01, f"{merged['passed']}/{merged[denominator]}", ha="center", va="bottom", fontsize=8)
    left.set_ylim(0, 1)
    left.set_ylabel("MBPP pass rate (95 % Wilson CI)")
    outcomes = {"passed": merged["passed"], **merged.get("error_types", {}), "excluded": merged["excluded"]}
    labels = list(outcomes)
    colors = ["#66c2a5" if k == "passed" else "#d9d9d9" if k == "excluded" else "#fc8d62" for k in labels]
    right.barh(range(len(labels)), list(outcomes.values()), color=colors)
    right.set_yticks(range(len(labels)), labels, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("problems")
    for y, v in enumerate(outcomes.values()):
        right.text(v, y, f" {v}", va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, dest, dpi=100)


def report_markdown(model: str, variant: str, merged: dict, image: str | None = None) -> str:
    """The answer line, the picture (`image`: markdown showing it), then status counts, error types, lengths,
    limits hit and where the dataset is."""
    parts = [f"# Activation baseline: {model} ({variant})", "", f"MBPP pass rate of {model} ({variant}), 95 % Wilson "
             f"intervals:", "", headline_markdown(merged)]
    if image:
        parts += [image, ""]
    parts += ["## Details", "",
              f"Pass rate over problems: a problem whose generation kept failing ({merged['excluded']} excluded) counts "
              f"as not passed; over generated: the {merged['generated']} programs generated only. Mean completion "
              f"{merged['mean_completion_tokens']} tokens; {merged.get('hit_token_limit', 0)} hit the token limit, "
              f"{merged.get('hit_time_limit', 0)} the time limit.", "",
              table([{"status": k, "count": v} for k, v in merged["status_counts"].items()]
                    or [{"status": "—", "count": 0}], {"status": "Test status", "count": "Programs"}, align="lr"),
              table([{"error": k, "count": v} for k, v in merged["error_types"].items()]
                    or [{"error": "none", "count": 0}], {"error": "Failing programs by error type", "count": "Count"},
                    align="lr"),
              f"Dataset: `{merged['dataset']}`", "", f"Metadata: `{merged['metadata']}`"]
    return "\n".join(parts) + "\n"
