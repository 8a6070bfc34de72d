"""The concept-SFT units of work as Prefect tasks."""

from __future__ import annotations

import re
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from reasonlab.concept_sft import evaluate, experiment, prompts, sft_trainer, topk_filter, training_texts
from reasonlab.io import write_json
from reasonlab.models import ResolvedModel, load_model
from reasonlab.models.scoring import text_perplexity
from reasonlab.concept_sft.sft_config import parse_sft_config
from tasks.conventions import task_options


@task(name="load-prompts", **task_options("1"))
def load_prompts(path: Path) -> list[dict]:
    """Stage 1 (until prompt generation lands): validated `{prompt, answer, topic}` rows from a file."""
    return [item.to_dict() for item in prompts.load_prompts(path)]


@task(name="topk-filter", **task_options(topk_filter.VERSION, gpu=True, retries=1))
def filter_prompts(model: ResolvedModel, rows: list[dict], out_file: str, k: int = 10, max_rank: int = 5,
                   fmt: str = "completion", system_prompt: str = "", answer_prefix: str = " Answer:",
                   device: str = "auto", dtype: str = "auto", batch_size: int = 8) -> dict:
    """Stage 2: target cases (top-1 clearly wrong, answer at rank 2..max_rank); writes `out_file`."""
    lm, tokenizer = load_model(model, device, dtype)
    items = [prompts.PromptItem(**r) for r in rows]
    result = topk_filter.filter_prompts(lm, tokenizer, items, k=k, max_rank=max_rank, fmt=fmt,
                                        system_prompt=system_prompt, answer_prefix=answer_prefix,
                                        batch_size=batch_size)
    write_json(out_file, {"model": model.to_dict(), **result})
    get_run_logger().info(f"{len(result['target_cases'])} of {len(items)} prompts are target cases -> {out_file}")
    return result


@task(name="check-training-texts", **task_options("1"))
def check_training_texts(texts: list[str], target_cases: list[dict], extra_terms: list[str]) -> list[str]:
    """Stage 5: refuse any text that names a target's wrong answer or topic."""
    return training_texts.check_texts(texts, target_cases, extra_terms)


@task(name="sft-experiment", **task_options(experiment.VERSION + "." + sft_trainer.VERSION + "." + evaluate.VERSION,
                                            gpu=True, retries=1))
def sft_experiment(model: ResolvedModel, config: dict, cases: list[dict], formats: list[str], output_dir: str,
                   heldout: Path, answer_prefix: str = " Answer:", k: int = 10, keep_checkpoint: bool = False) -> dict:
    """Stages 6-7 for one text set and seed: fine-tune, score the cases (prompt, paraphrases, neighbours) and
    the held-out perplexity; the checkpoint is kept only when asked."""
    cfg = parse_sft_config(config)
    logger = get_run_logger()
    run = re.sub(r"[^a-z0-9-]+", "-", f"{Path(output_dir).parent.name}-{Path(output_dir).name}".lower())
    progress_id = create_progress_artifact(0.0, key=f"sft-progress-{run}"[:100],
                                           description=f"SFT optimizer steps ({run})")

    def report(step: int, total: int, loss: float | None) -> None:
        update_progress_artifact(progress_id, 100.0 * step / max(total, 1))
        if loss is not None:
            logger.info(f"step {step}/{total} loss {loss:.4f}")

    result = experiment.run_experiment(model, cfg, cases, formats, output_dir, heldout=evaluate.load_heldout(heldout),
                                       keep_checkpoint=keep_checkpoint, k=k, answer_prefix=answer_prefix,
                                       progress=report)
    logger.info(f"seed {cfg.seed}: {result['steps']} steps, held-out perplexity {result['perplexity']:.2f}")
    return result


@task(name="evaluate", **task_options(evaluate.VERSION, gpu=True, retries=1))
def evaluate_model(model: ResolvedModel, cases: list[dict], formats: list[str], out_file: str, heldout: Path,
                   system_prompt: str = "", answer_prefix: str = " Answer:", device: str = "auto",
                   dtype: str = "auto", k: int = 10) -> dict:
    """Stage 7 on the base model: every case's prompt, paraphrases and neighbours, and the held-out perplexity."""
    lm, tokenizer = load_model(model, device, dtype)
    rows = evaluate.evaluate_cases(lm, tokenizer, cases, formats, k=k, system_prompt=system_prompt,
                                   answer_prefix=answer_prefix)
    result = {"rows": rows, "perplexity": text_perplexity(lm, tokenizer, evaluate.load_heldout(heldout))}
    write_json(out_file, {"model": model.to_dict(), **result})
    return result
