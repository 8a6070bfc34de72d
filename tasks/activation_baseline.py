"""The activation-baseline units of work as Prefect tasks: one gpu-tagged task per shard, one merge."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from reasonlab.activations import baseline as ab
from reasonlab.models import ResolvedModel, load_model
from tasks.conventions import task_options


@task(name="activation-baseline-shard", **task_options(ab.VERSION, gpu=True, retries=1))
def generate_shard(model: ResolvedModel, problems: list[dict], layers: list[int], config: dict, run_dir: str,
                   shard_name: str, device: str = "auto", dtype: str = "auto") -> dict:
    """Generate, capture and test one contiguous range of problems on one device; resumes from its checkpoint."""
    from reasonlab.activations.capture import check_layers

    logger = get_run_logger()
    cfg = ab.BaselineConfig(**config)
    lm, tokenizer = load_model(model, device, dtype)
    layers = check_layers(lm, layers)
    logger.info(f"{shard_name}: {len(problems)} problems on {lm.device} ({lm.dtype}), layers {layers}")
    progress_id = create_progress_artifact(0.0, description=f"activation baseline {shard_name}: tasks done")

    def progress(done: int, total: int) -> None:
        update_progress_artifact(progress_id, 100.0 * done / max(total, 1))

    summary = ab.run_range(lm, tokenizer, problems, layers, cfg, Path(run_dir), shard_name,
                           progress=progress, log=logger.info)
    from reasonlab.activations.codegen import uses_chat_template

    summary.update(device=str(lm.device), dtype=str(lm.dtype).removeprefix("torch."),
                   prompt_format="chat template" if uses_chat_template(tokenizer) else "completion")
    logger.info(f"{shard_name}: {summary['rows']} rows, {summary['passed']} passed, "
                f"{len(summary['excluded'])} excluded")
    return summary


@task(name="activation-baseline-merge", **task_options(ab.VERSION))
def merge_shards(run_dir: str, model_name: str, shards: list[dict], metadata: dict) -> dict:
    """Every shard checkpoint of the run -> dataset parquet (each task once) + metadata.json."""
    out = ab.merge_dataset(Path(run_dir), model_name, {**metadata, "shards": shards})
    get_run_logger().info(f"{out['tasks']} tasks, pass rate {out['pass_rate']:.1%} -> {out['dataset']}")
    return out
