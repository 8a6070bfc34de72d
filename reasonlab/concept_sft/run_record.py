"""The concept-SFT run's bookkeeping: its run key, each experiment's folder, the summary table, and the
results record written beside it. Pure functions of plain data, plus one writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasonlab.concept_sft.edit_metrics import results_markdown, summarize
from reasonlab.io import sha256_json, write_json, write_text


def run_key(base_fingerprint: str, rows: list[dict], config: dict, groups: dict[str, Any],
            text_sets: dict[str, Any]) -> str:
    """The run folder's name: everything that changes what the run measures (16 hex digits)."""
    filt, formats, exp = groups["filter"], groups["formats"], groups["experiment"]
    return sha256_json([base_fingerprint, rows, config, filt.top_k, filt.max_rank, formats.filter,
                        formats.evaluation, formats.answer_prefix,
                        exp.model_dump(exclude={"workers", "ray_address"}),  # where it runs changes nothing measured
                        {k: v.model_dump() for k, v in text_sets.items()}])[:16]


def attribution_key(case: dict, graph_args: dict) -> str:
    """A case's attribution folder name: the prompt, the format and the graph's settings (12 hex digits)."""
    a = graph_args
    return sha256_json([case["prompt"], a["fmt"], a["contrastive"], a["tau"], a["prune_mode"], a["method"],
                        a["max_nodes"], case.get("counterfactual")])[:12]


def experiment_folder(sft_dir: Path, base_fingerprint: str, trained_config: dict, experiment: dict) -> Path:
    """An experiment's folder is named by what it trains, so other runs (more text sets, more seeds) reuse it."""
    key = sha256_json([base_fingerprint, trained_config, experiment["cases"]])[:12]
    return sft_dir / f"{experiment['name']}-{key}"


def summary_rows(base_eval: dict, experiments: list[dict], formats: list[str], tolerance: float) -> list[dict]:
    """One row per experiment x case x format, every figure aggregated over the experiment's seeds."""
    return [{**row, "experiment": e["name"], "train_tokens": e["runs"][0]["train_tokens"]} for e in experiments
            for row in summarize(base_eval, e["runs"], e["cases"], formats, tolerance, e["text_set"])]


def experiments_record(experiments: list[dict]) -> list[dict]:
    """What each experiment trained and how each seed went (no per-text scores: those are files of their own)."""
    return [{k: e[k] for k in ("name", "text_set", "concept", "neuron", "texts")}
            | {"cases": [c["prompt"] for c in e["cases"]],
               "train_tokens": e["runs"][0]["train_tokens"] if e["runs"] else None,
               "seeds": [{k: r[k] for k in ("seed", "perplexity", "losses", "steps", "checkpoint")}
                         for r in e["runs"]]}
            for e in experiments]


def write_run_files(run_dir: Path, model: dict, summary: list[dict], skipped: list[dict], base_eval: dict,
                    experiments: list[dict], graphs: list[dict], diffs: list[dict]) -> dict:
    """results.json, results.md and every seed's per-text scores (eval_sft/<experiment>-seed<N>.json)."""
    results = {"model": model, "summary": summary, "skipped": skipped, "base_perplexity": base_eval["perplexity"],
               "experiments": experiments_record(experiments), "attribution": graphs, "attribution_after_sft": diffs}
    for e in experiments:
        for r in e["runs"]:
            write_json(run_dir / "eval_sft" / f"{e['name']}-seed{r['seed']}.json",
                       {"experiment": e["name"], "seed": r["seed"], "perplexity": r["perplexity"], "rows": r["rows"]})
    write_json(run_dir / "results.json", results)
    write_text(run_dir / "results.md", results_markdown(summary))
    return results
