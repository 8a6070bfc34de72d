"""The instruction-retrieval units of work as cached Prefect tasks (model-heavy ones tagged `gpu`)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from reasonlab.io import write_json
from reasonlab.models import ResolvedModel, load_model
from reasonlab.retrieval import option_scoring, plots, report
from reasonlab.retrieval import questions as question_sources
from reasonlab.retrieval.embedders import EmbedderSpec
from reasonlab.retrieval.library import load_library
from reasonlab.retrieval.retrieve import rank_domains
from tasks.conventions import task_options


@task(name="load-questions", **task_options("1"))
def load_questions(spec: str, start: int, limit: int | None, content: Path | None = None) -> list[dict]:
    """Questions from a source (`content`: the local file behind `spec`, so an edit changes the cache key)."""
    return question_sources.load_questions(spec, start, limit)


@task(name="load-library", **task_options("1"))
def load_instruction_library(path: Path) -> dict:
    return load_library(path)


@task(name="retrieve-domains", **task_options("1"))
def retrieve_domains(questions: list[dict], library: dict, embedder: EmbedderSpec) -> dict:
    """Dense / BM25 / RRF domain rankings per question (library embeddings cached by library hash + embedder)."""
    out = rank_domains(questions, library, embedder)
    get_run_logger().info(f"ranked {len(library)} domains for {len(questions)} questions "
                          f"(library embeddings {'from the cache' if out['library_cached'] else 'computed'})")
    return out


@task(name="score-options", **task_options(option_scoring.VERSION, gpu=True, retries=1))
def score_condition(model: ResolvedModel, questions: list[dict], items: list[dict], out_file: str,
                    use_chat_template: bool = False, debias: bool = True, acc_norm: bool = True,
                    device: str = "auto", dtype: str = "auto") -> dict:
    """Score every question of one condition (its instruction before the question); writes `out_file`."""
    lm, tokenizer = load_model(model, device, dtype)
    by_id = {q["id"]: q for q in questions}
    letters = list(next(iter(by_id.values()))["options"])
    letter_tokens = option_scoring.letter_ids(tokenizer, letters)
    logger = get_run_logger()
    rows = []
    for i, item in enumerate(items, 1):
        rows.append({**option_scoring.score_question(lm, tokenizer, by_id[item["id"]], item["instruction"],
                                                     use_chat_template, debias, acc_norm, letter_tokens),
                     "domains": item["domains"]})
        if i % 50 == 0 or i == len(items):
            logger.info(f"{model.name}: scored {i}/{len(items)} -> {out_file}")
    n_params = sum(p.numel() for p in lm.parameters())
    write_json(out_file, {"model": model.to_dict(), "n_params": n_params, "rows": rows})
    return {"n_params": n_params, "rows": rows}


@task(name="summarize", **task_options("1"))
def summarize(questions: list[dict], scored: dict[str, list[dict]], out_file: str, n_boot: int = 2000,
              seed: int = 0) -> dict:
    summary = report.summarize(questions, scored, n_boot=n_boot, seed=seed)
    write_json(out_file, summary)
    return summary


@task(name="plot-results", **task_options("2"))
def plot_results(questions: list[dict], scored: dict[str, list[dict]], summary: dict, out_dir: str,
                 title: str, n_distribution_questions: int = 3) -> dict[str, str]:
    """PNG files: option distributions (first questions), information gain, reliability diagram."""
    out = Path(out_dir)
    shown = questions[:n_distribution_questions]
    files = {"option_distributions": plots.option_distributions(shown, scored, summary["distribution"],
                                                                out / "option_distributions.png",
                                                                f"{title}: distribution over options; * = gold"),
             "information_gain": plots.information_gain_hist(summary["info_gain"], out / "information_gain.png",
                                                             f"{title}: information gain vs no instruction"),
             "reliability": plots.reliability_diagram(summary["reliability"], out / "reliability.png",
                                                      f"{title}: reliability diagram")}
    return {k: str(v) for k, v in files.items()}
