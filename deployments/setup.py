"""Create reasonlab's work pools, GPU concurrency limit and blocks on a Prefect server, idempotently.

    python -m deployments.setup                          # against $PREFECT_API_URL; run it twice: no change
    python -m deployments.setup --home /mnt/shared/reasonlab --gpu-devices 0 --model qwen=qwen2.5-coder-0.5b-instruct

What it makes (created, or updated in place when they exist):
  work pools   `cpu` and `gpu` (type process). Their job variables' env carries the shared storage
               (REASONLAB_HOME, REASONLAB_RESULT_STORAGE) and, on `gpu`, CUDA_VISIBLE_DEVICES.
  limits       tag `gpu` -> `--gpu-limit` (1): two model-heavy tasks never share a GPU, whatever worker runs them.
  blocks       the block types of `blocks/` registered; `reasonlab-storage/default` (StorageLocation),
               `local-file-system/reasonlab-results` (task results + cache records under HOME/results),
               and one `reasonlab-model/NAME` per `--model NAME=MODEL`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from reasonlab import paths

RESULTS_BLOCK = "reasonlab-results"
STORAGE_BLOCK = "default"


@dataclass
class SetupConfig:
    """What `python -m deployments.setup` creates."""

    home: str = field(default_factory=lambda: str(paths.home()))  # shared REASONLAB_HOME of every flow run
    cpu_pool: str = "cpu"
    gpu_pool: str = "gpu"
    gpu_devices: str = "0"  # CUDA_VISIBLE_DEVICES of flow runs on the gpu pool (one GPU per worker machine)
    gpu_limit: int = 1  # concurrent task runs tagged `gpu`, across all workers
    pool_concurrency: int | None = None  # optional global cap on flow runs per pool
    models: dict[str, str] = field(default_factory=dict)  # block name -> model (registry name / Hub id / folder)
    model_cache: str | None = None  # REASONLAB_MODEL_CACHE for flow runs, if not HOME/models


def process_job_template(env: dict[str, str]) -> dict:
    """The process worker's default base job template with `env` as the default job variables' env."""
    from prefect.workers.process import ProcessWorker

    template = copy.deepcopy(ProcessWorker.get_default_base_job_template())
    template["variables"]["properties"]["env"]["default"] = env
    return template


def pool_envs(config: SetupConfig, storage_env: dict[str, str]) -> dict[str, dict[str, str]]:
    return {config.cpu_pool: dict(storage_env),
            config.gpu_pool: {**storage_env, "CUDA_VISIBLE_DEVICES": config.gpu_devices}}


async def setup(config: SetupConfig) -> dict:
    """Create or update everything; returns a summary (pool envs, limit, blocks)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.filesystems import LocalFileSystem

    from blocks import BLOCKS, ModelSpecBlock, StorageLocation

    for block in BLOCKS:  # the async form: the sync one only returns a coroutine inside this event loop
        await block.aregister_type_and_schema()
    results_dir = Path(config.home) / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    await LocalFileSystem(basepath=str(results_dir)).save(RESULTS_BLOCK, overwrite=True)
    storage = StorageLocation(home=config.home, result_storage=f"local-file-system/{RESULTS_BLOCK}",
                              model_cache=config.model_cache)
    await storage.save(STORAGE_BLOCK, overwrite=True)
    for name, model in config.models.items():
        await ModelSpecBlock(model=model).save(name, overwrite=True)

    envs = pool_envs(config, storage.env())
    async with get_client() as client:
        for pool, env in envs.items():
            await client.create_work_pool(
                WorkPoolCreate(name=pool, type="process", base_job_template=process_job_template(env),
                               concurrency_limit=config.pool_concurrency,
                               description=f"reasonlab {pool} pool (process workers); set up by deployments.setup"),
                overwrite=True)
        await client.create_concurrency_limit(tag="gpu", concurrency_limit=config.gpu_limit)  # upsert
        limit = await client.read_concurrency_limit_by_tag("gpu")
    return {"pools": envs, "gpu_tag_limit": limit.concurrency_limit,
            "blocks": [f"local-file-system/{RESULTS_BLOCK}", f"reasonlab-storage/{STORAGE_BLOCK}",
                       *(f"reasonlab-model/{n}" for n in config.models)]}


def parse_models(items: list[str]) -> dict[str, str]:
    from reasonlab.errors import ReasonlabError

    out = {}
    for item in items:
        name, sep, model = item.partition("=")
        if not sep or not name.strip() or not model.strip():
            raise ReasonlabError(f"--model {item!r}: use NAME=MODEL (e.g. qwen=qwen2.5-coder-0.5b-instruct)")
        out[name.strip()] = model.strip()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(paths.home()), help="shared REASONLAB_HOME for every flow run")
    parser.add_argument("--model-cache", default=None, help="REASONLAB_MODEL_CACHE for flow runs")
    parser.add_argument("--cpu-pool", default="cpu", help="name of the cpu pool")
    parser.add_argument("--gpu-pool", default="gpu", help="name of the gpu pool (one per GPU: gpu-1 --gpu-devices 1)")
    parser.add_argument("--gpu-devices", default="0", help="CUDA_VISIBLE_DEVICES on the gpu pool")
    parser.add_argument("--gpu-limit", type=int, default=1, help="concurrent tasks tagged gpu")
    parser.add_argument("--pool-concurrency", type=int, default=None, help="cap on flow runs per pool")
    parser.add_argument("--model", action="append", default=["default-model=smollm2-135m-instruct"],
                        metavar="NAME=MODEL", help="save a reasonlab-model block (repeatable)")
    args = parser.parse_args(argv)
    from reasonlab.errors import ReasonlabError

    try:
        config = SetupConfig(home=str(Path(args.home).expanduser().resolve()), cpu_pool=args.cpu_pool,
                             gpu_pool=args.gpu_pool, gpu_devices=args.gpu_devices,
                             gpu_limit=args.gpu_limit, pool_concurrency=args.pool_concurrency,
                             models=parse_models(args.model), model_cache=args.model_cache)
    except ReasonlabError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(asyncio.run(setup(config)), indent=2))


if __name__ == "__main__":
    main()
