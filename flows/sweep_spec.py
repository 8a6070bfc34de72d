"""Sweep definitions and their comparison: plain data in, plain data (and a PNG) out. No Prefect here.

A sweep runs one deployment once per (model x parameter set) and compares the runs:

    name: concept-sft-models
    deployment: concept-sft/concept-sft      # "flow name/deployment name"
    model_parameter: model                    # the flow parameter that takes the model
    base_parameters: {formats: {evaluation: [completion]}}
    models: [smollm2-135m-instruct, block:qwen]
    parameter_sets:                           # optional; default: one set named "default"
      - {name: default}
      - {name: top5, filter: {top_k: 5}}      # a parameter group merges field by field with the base's

`flows/sweep.py` fans the children out and waits; `metrics_from_artifacts` reads each child's numbers from
its own artifacts (concept-sft: p(correct) before/after SFT, efficacy, paraphrases, neighbourhood, perplexity change;
activation-baseline: pass rate with its 95 %
CI, error types, mean completion length), and `comparison_rows` and `plot_comparison` turn them into the
one table + plot the sweep publishes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reasonlab.errors import ReasonlabError
from reasonlab.io import atomic_path, read_structured
from tasks.artifacts import image_markdown

SWEEP_FIELDS = {"name", "deployment", "model_parameter", "base_parameters", "models", "parameter_sets"}


@dataclass(frozen=True)
class SweepSpec:
    """One sweep: `deployment` run for every model x parameter set."""

    name: str
    deployment: str
    models: list[str]
    parameter_sets: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "default"}])
    base_parameters: dict[str, Any] = field(default_factory=dict)
    model_parameter: str = "model"

    def children(self) -> list[dict[str, Any]]:
        """[{label, model, set, parameters}] in model-major order; labels are unique."""
        out = []
        for model in self.models:
            for pset in self.parameter_sets:
                overrides = {k: v for k, v in pset.items() if k != "name"}
                out.append({"label": f"{short_model(model)} | {pset['name']}", "model": model, "set": pset["name"],
                            "parameters": {**merge_parameters(self.base_parameters, overrides),
                                           self.model_parameter: model}})
        return out


def merge_parameters(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` over `base`; a parameter group (a mapping in both) merges field by field."""
    out = dict(base)
    for key, value in overrides.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = {**base[key], **value} if both else value
    return out


def short_model(model: str) -> str:
    """A readable name for a model reference (a folder's name, a Hub id's repo, a block's name)."""
    return Path(model.rstrip("/")).name if model.startswith(("/", ".", "~")) else model


def parse_sweep(data: dict[str, Any], where: str = "sweep") -> SweepSpec:
    """Validate a sweep definition; one ReasonlabError naming the field otherwise."""
    if not isinstance(data, dict):
        raise ReasonlabError(f"{where}: a sweep definition is a mapping, got {type(data).__name__}")
    unknown = set(data) - SWEEP_FIELDS
    if unknown:
        raise ReasonlabError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(SWEEP_FIELDS)}")
    deployment = data.get("deployment", "concept-sft/concept-sft")
    if not isinstance(deployment, str) or deployment.count("/") != 1:
        raise ReasonlabError(f"{where}: deployment must be 'flow name/deployment name', got {deployment!r}")
    models = data.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        raise ReasonlabError(f"{where}: models must be a non-empty list of model names, got {models!r}")
    if len(set(models)) != len(models):
        raise ReasonlabError(f"{where}: models has duplicates: {models}")
    sets = data.get("parameter_sets") or [{"name": "default"}]
    if not isinstance(sets, list) or not all(isinstance(s, dict) for s in sets):
        raise ReasonlabError(f"{where}: parameter_sets must be a list of mappings, got {sets!r}")
    for i, s in enumerate(sets):
        if not isinstance(s.get("name"), str) or not s["name"]:
            raise ReasonlabError(f"{where}: parameter_sets[{i}] needs a name")
    if len({s["name"] for s in sets}) != len(sets):
        raise ReasonlabError(f"{where}: parameter set names repeat: {[s['name'] for s in sets]}")
    base = data.get("base_parameters") or {}
    if not isinstance(base, dict):
        raise ReasonlabError(f"{where}: base_parameters must be a mapping, got {base!r}")
    model_parameter = data.get("model_parameter", "model")
    for i, s in enumerate(sets):
        if model_parameter in s:
            raise ReasonlabError(f"{where}: parameter_sets[{i}] sets {model_parameter!r}: models come from `models`")
    return SweepSpec(name=str(data.get("name") or "sweep"), deployment=deployment, models=list(models),
                     parameter_sets=[dict(s) for s in sets], base_parameters=dict(base),
                     model_parameter=model_parameter)


def load_sweep(path: Path | str) -> SweepSpec:
    return parse_sweep(read_structured(path), where=str(path))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def child_metrics(filter_table: list[dict] | None, results_table: list[dict] | None) -> dict[str, Any]:
    """The concept-SFT numbers of one child, from its `concept-sft-filter` / `concept-sft-results` tables: means
    over its result rows (case x text set x format, each already a mean over seeds) of the editing measures."""
    rows = results_table or []
    mean = lambda key: _mean([r[key] for r in rows if r.get(key) is not None])  # noqa: E731
    return {
        "target_cases": None if filter_table is None else sum(r.get("kept") == "yes" for r in filter_table),
        "base_p_correct": mean("base_p_correct"), "sft_p_correct": mean("p_correct"),
        "correct_gain": mean("correct_gain"), "efficacy": mean("efficacy"), "paraphrase": mean("paraphrase"),
        "neighbourhood": mean("neighbourhood"), "ppl_change": mean("ppl_change"),
    }


def tradeoff(rows: list[dict[str, Any]]) -> tuple[list[str], str | None]:
    """(the children on the efficacy / neighbourhood-damage Pareto front, the best of them): best = the largest
    efficacy - damage, ties to the larger p(correct) gain. Children without both figures are left out."""
    pts = [r for r in rows if r.get("efficacy") is not None and r.get("neighbourhood") is not None]
    front = [r for r in pts if not any(o["efficacy"] >= r["efficacy"] and o["neighbourhood"] >= r["neighbourhood"]
                                       and (o["efficacy"], o["neighbourhood"]) != (r["efficacy"], r["neighbourhood"])
                                       for o in pts)]
    best = max(front, key=lambda r: (r["efficacy"] - (1 - r["neighbourhood"]), r.get("correct_gain") or 0.0),
               default=None)
    return [r["child"] for r in front], best["child"] if best else None


def baseline_metrics(summary_table: list[dict] | None, errors_table: list[dict] | None) -> dict[str, Any]:
    """The activation-baseline numbers of one child, from its `activation-baseline-summary` / `-errors` tables."""
    row = (summary_table or [{}])[0]
    errors = {r["error_type"]: r["count"] for r in errors_table or []}
    return {
        "variant": row.get("variant"), "problems": row.get("tasks"), "passed": row.get("passed"),
        "pass_rate": row.get("pass_rate"), "pass_rate_ci95_low": row.get("pass_rate_ci95_low"),
        "pass_rate_ci95_high": row.get("pass_rate_ci95_high"), "excluded": row.get("excluded"),
        "mean_completion_tokens": row.get("mean_completion_tokens"),
        "mean_completion_chars": row.get("mean_completion_chars"), "hit_token_limit": row.get("hit_token_limit"),
        "hit_time_limit": row.get("hit_time_limit"),
        "error_types": ", ".join(f"{k} {v}" for k, v in errors.items()) or None,
    }


def metrics_from_artifacts(artifacts: dict[str, Any], deployment: str = "concept-sft/concept-sft") -> dict[str, Any]:
    """A child's metrics from its artifacts, by the pipeline its deployment runs (None where not published)."""
    if deployment.split("/")[0] == "activation-baseline":
        return baseline_metrics(artifacts.get("activation-baseline-summary"),
                                artifacts.get("activation-baseline-errors"))
    return child_metrics(artifacts.get("concept-sft-filter"), artifacts.get("concept-sft-results"))


def comparison_rows(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per child: label, state, duration, task reuse, metrics (None where not measured)."""
    out = []
    for c in children:
        tasks = c.get("task_states", {})
        out.append({"child": c["label"], "model": c["model"], "set": c["set"], "state": c["state"],
                    "flow_run": c.get("flow_run_name"), "flow_run_id": c.get("flow_run_id"), "duration_s": c.get("duration_s"),
                    "tasks": len(tasks), "tasks_cached": sum(s == "Cached" for s in tasks.values()),
                    **c.get("metrics", {})})
    return out


CONCEPT_COLUMNS = ["target_cases", "base_p_correct", "sft_p_correct", "correct_gain", "efficacy", "paraphrase",
                   "neighbourhood", "ppl_change"]
BASELINE_COLUMNS = ["variant", "problems", "passed", "pass_rate", "pass_rate_ci95_low", "pass_rate_ci95_high",
                    "mean_completion_tokens", "hit_token_limit", "hit_time_limit", "error_types"]


def _is_baseline(rows: list[dict[str, Any]]) -> bool:
    return any("pass_rate" in r for r in rows)


def metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    return BASELINE_COLUMNS if _is_baseline(rows) else CONCEPT_COLUMNS


def comparison_markdown(name: str, rows: list[dict[str, Any]], png: Path | None) -> str:
    def fmt(v: Any) -> str:
        return "—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v).replace("|", "\\|")

    cols = ["child", "state", "duration_s", "tasks_cached", "tasks", *metric_columns(rows)]
    lines = [f"# Sweep `{name}`", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    if not _is_baseline(rows):
        front, best = tradeoff(rows)
        lines += ["", f"Efficacy vs neighbourhood damage, Pareto front: {', '.join(front) or '—'}; "
                      f"best trade-off (efficacy - damage): {best or '—'}"]
    if png is not None:
        lines += ["", image_markdown(png, "sweep comparison"), "", f"Plot file: `{png}`"]
    return "\n".join(lines) + "\n"


def plot_comparison(name: str, rows: list[dict[str, Any]], dest: Path | str) -> Path:
    """Concept SFT: grouped bars per child (mean p(correct) before and after SFT; none: an empty slot) above
    the trade-off: efficacy, and the p(correct) gain, against neighbourhood damage (Pareto front green, the
    best pink, children at the same point listed together);
    activation-baseline children: the pass rate with its 95 % CI as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if _is_baseline(rows):
        return _plot_pass_rates(plt, name, rows, dest)

    labels = [r["child"] for r in rows]
    base = [r.get("base_p_correct") or 0.0 for r in rows]
    tuned = [r.get("sft_p_correct") or 0.0 for r in rows]
    xs = range(len(rows))
    fig = plt.figure(figsize=(max(9.0, 0.9 * len(rows) + 3.0), 9.0), dpi=100)
    ax = fig.add_subplot(2, 1, 1)
    ax.bar([x - 0.2 for x in xs], base, width=0.4, label="base p(correct)", color="#8da0cb")
    ax.bar([x + 0.2 for x in xs], tuned, width=0.4, label="SFT p(correct)", color="#66c2a5")
    for x, r in zip(xs, rows):
        note = "no target cases" if r.get("target_cases") == 0 else r["state"] if r["state"] != "Completed" else None
        if note:
            ax.text(x, 0.002, note, ha="center", va="bottom", fontsize=8, rotation=90)
    ax.set_xticks(list(xs), labels, rotation=25, ha="right", fontsize=7)
    ax.set_ylabel("mean p(correct answer), whole answer")
    ax.set_title(f"sweep {name}: base vs SFT", fontsize=10)
    ax.legend(fontsize=8)
    # the editing trade-off: efficacy (and the p(correct) gain) up, neighbourhood damage (1 - preservation) down
    front, best = tradeoff(rows)
    points = [r for r in rows if r.get("efficacy") is not None and r.get("neighbourhood") is not None]
    for col, (key, ylabel) in enumerate((("efficacy", "efficacy: share of seeds with p(correct) > p(wrong)"),
                                         ("correct_gain", "mean gain in p(correct), whole answer")), start=3):
        panel = fig.add_subplot(2, 2, col)
        at: dict[tuple[float, float], list[str]] = {}
        for r in points:
            xy = (round(1 - r["neighbourhood"], 4), round(r.get(key) or 0.0, 4))
            at.setdefault(xy, []).append(r["child"].split(" | ", 1)[-1])
            panel.scatter([xy[0]], [xy[1]], s=50, zorder=3, alpha=0.8,
                          color="#e78ac3" if r["child"] == best else "#66c2a5" if r["child"] in front else "#b3b3b3")
        for (x, y), names in at.items():  # one label per point, listing every child that landed there
            panel.annotate("\n".join(names), (x, y), fontsize=6, xytext=(4, -3), textcoords="offset points",
                           va="top")
        panel.set_xlim(-0.05, 1.05)
        panel.set_xlabel("neighbourhood damage (share of neighbours moved)")
        panel.set_ylabel(ylabel, fontsize=8)
        panel.grid(alpha=0.3)
    fig.axes[1].set_ylim(-0.05, 1.1)
    fig.axes[1].set_title("efficacy vs damage" + (f" (best: {best.split(' | ', 1)[-1]}, pink; "
                                                  "Pareto front green)" if best else ""), fontsize=9)
    fig.axes[2].set_title("p(correct) gain vs damage", fontsize=9)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(dest)


def _plot_pass_rates(plt, name: str, rows: list[dict[str, Any]], dest: Path | str) -> Path:
    labels = [r["child"] for r in rows]
    rates = [r.get("pass_rate") or 0.0 for r in rows]
    low = [max(0.0, rate - (r.get("pass_rate_ci95_low") or 0.0)) for rate, r in zip(rates, rows)]
    high = [max(0.0, (r.get("pass_rate_ci95_high") or 0.0) - rate) for rate, r in zip(rates, rows)]
    xs = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(rows) + 1.5), 3.6), dpi=100)
    colors = ["#66c2a5" if r.get("variant") == "instruct" else "#8da0cb" for r in rows]
    ax.bar(xs, rates, yerr=[low, high], capsize=4, color=colors)
    for x, r in zip(xs, rows):
        ax.text(x, 0.01, f"{r.get('passed')}/{r.get('problems')}" if r["state"] == "Completed" else r["state"],
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, labels, rotation=15, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("MBPP pass rate (95 % Wilson CI)")
    ax.set_title(f"sweep {name}: instruct vs base", fontsize=10)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(dest)
