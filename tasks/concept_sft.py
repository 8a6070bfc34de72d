"""The concept-SFT units of work as Prefect tasks, and what the flow publishes of them."""

from __future__ import annotations

import os
import re
from pathlib import Path

from prefect import get_run_logger, task
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)

from reasonlab import console, paths
from reasonlab.concept_sft import evaluate, experiment, prompts, sft_trainer, topk_filter, training_texts
from reasonlab.concept_sft import report
from reasonlab.concept_sft.run_record import experiment_folder
from reasonlab.concept_sft.sft_config import SFTConfig, parse_sft_config
from reasonlab.errors import ReasonlabError
from reasonlab.io import write_json
from reasonlab.models import ResolvedModel, load_model
from reasonlab.models.scoring import text_perplexity
from tasks.artifacts import image_markdown, publish_image, publish_run_folder
from tasks.conventions import task_options
from tasks.prompt_generation import generate_prompts, resolve_endpoint


@task(name="load-prompts", **task_options("1"))
def load_prompts(path: Path) -> list[dict]:
    """Stage 1 (until prompt generation lands): validated `{prompt, answer, topic}` rows from a file."""
    return [item.to_dict() for item in prompts.load_prompts(path)]


@task(name="topk-filter", **task_options(topk_filter.VERSION, gpu=True, retries=1))
def filter_prompts(model: ResolvedModel, rows: list[dict], out_file: str, k: int = 10, max_rank: int = 5,
                   fmt: str = "completion", system_prompt: str = "", answer_prefix: str = " Answer:",
                   device: str = "auto", dtype: str = "auto", batch_size: int = topk_filter.BATCH_SIZE) -> dict:
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
    the held-out perplexity; the checkpoint is kept only when asked. Torch uses $REASONLAB_TORCH_THREADS threads
    when set (a fan-out's share of the cores; not an input, so not in the cache key)."""
    cfg = parse_sft_config(config)
    use_torch_threads()
    logger = get_run_logger()
    run = re.sub(r"[^a-z0-9-]+", "-", f"{Path(output_dir).parent.name}-{Path(output_dir).name}".lower())
    progress_id = create_progress_artifact(0.0, key=f"sft-progress-{run}"[:100],
                                           description=f"SFT optimizer steps ({run})")

    def report(step: int, total: int, loss: float | None) -> None:
        update_progress_artifact(progress_id, 100.0 * step / max(total, 1))
        quarter = step == total or step * 4 // max(total, 1) != (step - 1) * 4 // max(total, 1)
        if loss is not None and (quarter or console.verbose()):  # four loss lines a run; every step when verbose
            logger.info(f"step {step}/{total} loss {loss:.4f}")

    result = experiment.run_experiment(model, cfg, cases, formats, output_dir, heldout=evaluate.load_heldout(heldout),
                                       keep_checkpoint=keep_checkpoint, k=k, answer_prefix=answer_prefix,
                                       progress=report)
    t = result["timings"]
    logger.info(f"seed {cfg.seed}: {result['steps']} steps, held-out perplexity {result['perplexity']:.2f}; "
                f"{t['total']:.1f} s, of which training steps {t['train']:.1f} s")
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


def generate_prompt_file(generation, llm) -> Path:
    """Stage 1 by an LLM: the generated prompts file (one clear error if no endpoint is configured or none passed)."""
    endpoint = resolve_endpoint(llm.endpoint, llm.local_model)
    prompts_path = paths.runs_dir() / "prompt_generation" / f"{generation.domain}_prompts.json"
    generated = generate_prompts(endpoint, {"n": generation.n, "batches": generation.batches,
                                            "domain": generation.domain}, str(prompts_path), key_block=llm.endpoint)
    if generated["accepted"] == 0:
        raise ReasonlabError(f"prompt generation accepted no prompts; see the reasons in {prompts_path}")
    return prompts_path


def run_experiments(base: ResolvedModel, experiments: list[dict], config: SFTConfig, heldout: Path, formats,
                    k: int, settings) -> None:
    """Stages 6-7 for every experiment and seed, all submitted at once (each a cached task); waits for them and
    sets each experiment's `runs` (in seed order).

    experiments: [{name, cases, text_set, concept, neuron, texts}, ...]; formats: `evaluation`, `answer_prefix`;
    settings: `seeds`, `attribution_after`, `workers`, `ray_address` (`ExperimentParams`)."""
    sft_dir = Path(config.output_dir) if config.output_dir else paths.runs_dir() / "concept_sft" / "sft"
    with experiment_runner(settings.workers, settings.ray_address) as runner:
        futures = []
        for e in experiments:
            trained = config.model_copy(update={"texts": e["texts"], "output_dir": None})
            folder = experiment_folder(sft_dir, base.fingerprint, trained.model_dump(), e)
            keep = e["text_set"] == "concept" and settings.attribution_after
            futures.append([runner.submit(sft_experiment, {
                "model": base, "config": trained.model_copy(update={"seed": seed}).model_dump(), "cases": e["cases"],
                "formats": formats.evaluation, "output_dir": str(folder / f"seed{seed}"), "heldout": heldout,
                "answer_prefix": formats.answer_prefix, "k": k, "keep_checkpoint": keep and seed == 0})
                for seed in range(settings.seeds)])
        for e, runs in zip(experiments, futures):
            e["runs"] = [future.result() for future in runs]
    experiment.BASES.clear()  # the in-process runner's base model and its weights' copy


TORCH_THREADS = "REASONLAB_TORCH_THREADS"


def use_torch_threads() -> None:
    """torch.set_num_threads($REASONLAB_TORCH_THREADS) when the variable is set."""
    threads = os.environ.get(TORCH_THREADS)
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _start_worker(threads: int) -> None:
    """Each worker process of a fan-out: its share of the cores for torch."""
    os.environ[TORCH_THREADS] = str(threads)


def experiment_runner(workers: int = 1, ray_address: str | None = None):
    """The task runner the experiments are submitted to (used as a context manager):

    workers 1: one at a time, in this process (the base model stays loaded across experiments);
    workers N > 1: N worker processes, each with cores // N torch threads (unless $REASONLAB_TORCH_THREADS says);
    ray_address: Ray ("local" starts one here), one experiment per Ray worker; the `gpu` tag limit still applies."""
    if ray_address:
        from prefect_ray.task_runners import RayTaskRunner

        env = {k: os.environ[k] for k in ("REASONLAB_HOME", "REASONLAB_MODEL_CACHE", "REASONLAB_RESULT_STORAGE",
                                          "HF_HUB_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM", TORCH_THREADS)
               if k in os.environ}
        env.setdefault("REASONLAB_HOME", str(paths.home()))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.project_root()), os.environ.get("PYTHONPATH")]))
        return RayTaskRunner(address=None if ray_address == "local" else ray_address,
                             init_kwargs={"include_dashboard": False, "runtime_env": {"env_vars": env}})
    if workers <= 1:
        return ThreadPoolTaskRunner(max_workers=1)
    threads = int(os.environ.get(TORCH_THREADS) or max(1, (os.cpu_count() or 1) // workers))
    return ProcessPoolTaskRunner(max_workers=workers, initializer=_start_worker, initargs=(threads,))


def publish_filter(filtered: dict) -> None:
    rows = [{"prompt": c["prompt"], "wrong (greedy)": f"{c['wrong_word'].strip()!r} {c['p_wrong']:.1%}",
             "correct": f"{c['answer']!r} {c['p_correct']:.1%} (first token {c['p_correct_first']:.1%})",
             "rank": c["correct_rank"], "kept": "yes"}
            for c in filtered["target_cases"]]
    rows += [{"prompt": r["prompt"], "wrong (greedy)": f"{(r.get('wrong_word') or r['top_k'][0]['token']).strip()!r}",
              "correct": r["answer"], "rank": r["correct_rank"], "kept": f"no: {r['reason']}"}
             for r in filtered["rejected"]]
    create_table_artifact(rows, key="concept-sft-filter", description="Top-k filter (whole answers): target cases "
                                                                      "and rejections")


def publish_results(summary: list[dict], experiments: list[dict], skipped: list[dict], run_dir: Path) -> None:
    """The report (verdicts first, then the picture, then every figure), the results table, the run folder's
    link, and the verdicts on the console."""
    create_table_artifact([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in summary],
                          key="concept-sft-results",
                          description="Per case, text set and format: every editing figure (mean and sd over seeds)")
    lines = [f"- `{e['name']}`: concept {e['concept'] or '(none named)'!r}, neuron {e['neuron'] or 'none chosen'}, "
             f"{len(e['texts'])} texts, {e['runs'][0]['train_tokens'] if e['runs'] else '?'} tokens per epoch, "
             f"seeds {[r['seed'] for r in e['runs']]}" for e in experiments]
    skips = [f"- skipped `{s['case']}` ({s['text_set']}): {s['reason']}" for s in skipped]
    image = None
    if summary:
        png = report.plot_results(summary, run_dir / "results.png")
        publish_image(png, key="concept-sft-results-plot", description="p(correct) base vs SFT, neighbourhood damage")
        image = image_markdown(png, "base vs SFT")
    create_markdown_artifact(report.report_markdown(summary, image, lines, skips), key="concept-sft-report")
    publish_run_folder(run_dir, key="concept-sft-run-folder", description="The run's files: tables, graphs, checkpoint")
    print("\n" + (report.headline_markdown(summary) if summary else "no experiment ran") + "\n".join(skips))
