"""The activation-baseline units of work as Prefect tasks: one gpu-tagged task per shard (submitted, so any task
runner fans them out; on Ray each CUDA shard gets one GPU), one merge, and the run's artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.context import get_run_context

from reasonlab.activations import baseline, dataset, report
from reasonlab.activations.params import BaselineConfig
from reasonlab.activations.run_plan import RunPlan
from reasonlab.models import ResolvedModel, load_model
from tasks.artifacts import image_markdown
from tasks.conventions import task_options

SUMMARY_KEY = "activation-baseline-summary"  # one row: what a sweep compares (reasonlab/activations/sweep_metrics)
ERRORS_KEY = "activation-baseline-errors"
SHARDS_KEY = "activation-baseline-shards"
REPORT_KEY = "activation-baseline-report"


@task(name="activation-baseline-shard", **task_options(baseline.VERSION, gpu=True, retries=1))
def generate_shard(model: ResolvedModel, problems: list[dict], layers: list[int], config: dict, run_dir: str,
                   shard_name: str, device: str = "auto", dtype: str = "auto", range_info: dict | None = None) -> dict:
    """Generate, capture and test one contiguous range of problems on one device; resumes from its checkpoint.

    range_info: the split and the indices the range covers, recorded in the shard's shard.json."""
    from reasonlab.activations.capture import check_layers
    from reasonlab.activations.codegen import chat_prompting

    logger = get_run_logger()
    cfg = BaselineConfig(**config)
    lm, tokenizer = load_model(model, device, dtype)
    layers = check_layers(lm, layers)
    logger.info(f"{shard_name}: {len(problems)} problems on {lm.device} ({lm.dtype}), layers {layers}")
    progress_id = create_progress_artifact(0.0, description=f"activation baseline {shard_name}: tasks done")

    def progress(done: int, total: int) -> None:
        update_progress_artifact(progress_id, 100.0 * done / max(total, 1))

    summary = baseline.run_range(lm, tokenizer, problems, layers, cfg, Path(run_dir), shard_name,
                                 progress=progress, log=logger.info, range_info=range_info, warn=logger.warning)
    chat = chat_prompting(tokenizer, cfg.use_chat_template)
    summary.update(device=str(lm.device), dtype=str(lm.dtype).removeprefix("torch."),
                   prompt_format="chat template" if chat else "completion")
    logger.info(f"{shard_name}: {summary['rows']} rows, {summary['passed']} passed, "
                f"{len(summary['excluded'])} excluded")
    return summary


def submit_shards(plan: RunPlan) -> list:
    """One `generate_shard` future per planned shard; under Ray a CUDA shard asks for one GPU (its cuda:0)."""
    futures = []
    on_ray = type(getattr(get_run_context(), "task_runner", None)).__name__ == "RayTaskRunner"
    for shard in plan.shards:
        args = dict(model=plan.model, problems=shard["problems"], layers=plan.inputs.layer_info["layers"],
                    config=plan.config.to_dict(), run_dir=str(plan.run_dir), shard_name=shard["name"],
                    dtype=plan.inputs.groups["placement"].dtype, range_info=shard["range_info"])
        if on_ray and shard["device"].startswith("cuda"):
            from prefect_ray.context import remote_options

            with remote_options(num_gpus=1):  # Ray gives the worker one GPU, visible to it as cuda:0
                futures.append(generate_shard.submit(**args, device="cuda"))
        else:
            futures.append(generate_shard.submit(**args, device=shard["device"]))
    return futures


@task(name="activation-baseline-merge", **task_options(f"{baseline.VERSION}.{dataset.VERSION}"))
def merge_shards(run_dir: str, variant: str, metadata: dict, shards_dir: Path | None = None) -> dict:
    """Every shard checkpoint of the run -> dataset_<variant>_temp_0_0.parquet (each task once) + metadata.json
    (every range ever merged into the run directory, read from the shards' own records).

    shards_dir: the run's shards/ folder, passed only so that the cache key holds its content: a merge is
    reused only while no range of the run directory has changed."""
    out = dataset.merge_dataset(Path(run_dir), variant, metadata)
    get_run_logger().info(f"{out['passed']} of {out['problems']} problems passed ({out['generated']} generated) "
                          f"-> {out['dataset']}")
    return out


def summary_row(model: str, variant: str, merged: dict) -> dict:
    """The run's one-row summary table: both pass rates with their Wilson intervals, lengths, limits hit."""
    row = {"model": model, "variant": variant}
    row.update({k: merged[k] for k in ("problems", "generated", "excluded", "passed")})
    for name in ("pass_rate", "pass_rate_generated"):
        low, high = merged[f"{name}_ci95"]
        row.update({name: merged[name], f"{name}_ci95_low": low, f"{name}_ci95_high": high})
    row.update({k: merged[k] for k in ("mean_completion_tokens", "mean_completion_chars", "hit_token_limit",
                                       "hit_time_limit", "dataset")})
    return row


def publish_baseline(model: str, variant: str, merged: dict, shards: list[dict]) -> None:
    """The run's artifacts: this call's shards, the summary row (what a sweep compares), errors, and the report
    (the pass rate first, then the outcomes picture, then the detail)."""
    create_table_artifact([{
        "shard": s["shard"], "device": s["device"], "tasks": s["tasks"], "resumed": s["resumed"],
        "passed": s["passed"], "excluded": len(s["excluded"]),
        "peak_rss_mib": round(max(c["memory"]["rss_bytes"] for c in s["checkpoints"]) / 2**20, 1)
        if s.get("checkpoints") else None} for s in shards],
        key=SHARDS_KEY, description="Activation baseline: this call's shards")
    create_table_artifact([summary_row(model, variant, merged)], key=SUMMARY_KEY,
                          description="Activation baseline: the whole run directory's dataset")
    create_table_artifact([{"error_type": k, "count": v} for k, v in merged["error_types"].items()],
                          key=ERRORS_KEY, description="Activation baseline: failing programs by error type")
    picture = report.plot_outcomes(merged, f"{model} ({variant}): MBPP pass rate and outcomes",
                                   Path(merged["dataset"]).parent / "outcomes.png")
    markdown = report.report_markdown(model, variant, merged, image_markdown(picture, "pass rate and outcomes"))
    create_markdown_artifact(markdown, key=REPORT_KEY)
    print(f"\n{model} ({variant})\n" + report.headline_markdown(merged))
