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
                   shard_name: str, device: str = "auto", dtype: str = "auto", range_info: dict | None = None) -> dict:
    """Generate, capture and test one contiguous range of problems on one device; resumes from its checkpoint.

    range_info: the split and the indices the range covers, recorded in the shard's shard.json."""
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
                           progress=progress, log=logger.info, range_info=range_info,
                           warn=logger.warning)
    from reasonlab.activations.codegen import chat_prompting

    chat = chat_prompting(tokenizer, cfg.use_chat_template)
    summary.update(device=str(lm.device), dtype=str(lm.dtype).removeprefix("torch."),
                   prompt_format="chat template" if chat else "completion")
    logger.info(f"{shard_name}: {summary['rows']} rows, {summary['passed']} passed, "
                f"{len(summary['excluded'])} excluded")
    return summary


@task(name="activation-baseline-merge", **task_options(ab.VERSION))
def merge_shards(run_dir: str, variant: str, metadata: dict, shards_dir: Path | None = None) -> dict:
    """Every shard checkpoint of the run -> dataset_<variant>_temp_0_0.parquet (each task once) + metadata.json
    (every range ever merged into the run directory, read from the shards' own records).

    shards_dir: the run's shards/ folder, passed only so that the cache key holds its content: a merge is
    reused only while no range of the run directory has changed."""
    out = ab.merge_dataset(Path(run_dir), variant, metadata)
    get_run_logger().info(f"{out['tasks']} tasks, pass rate {out['pass_rate']:.1%} -> {out['dataset']}")
    return out
