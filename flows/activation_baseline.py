"""The activation baseline (the seed's Phase 7.3): greedy MBPP code generation with residual capture at the
best layers, every program tested in the sandbox, one dataset for later steering analysis.

    python -m flows.activation_baseline --model qwen2.5-coder-0.5b-instruct --start 0 --end 19 \
        --layers 12 18 --max-new-tokens 384
    python -m flows.activation_baseline                  # gemma-2-2b-it, all 388 validation problems, GPU
    python -m flows.activation_baseline --shards 4 --task-runner ray     # 4 shards fanned out on local Ray

Stages: load the split -> choose the layers -> one gpu-tagged shard task per device (submitted, so any
task runner fans them out; each checkpoints and resumes) -> merge into one dataset + metadata.json.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context

from blocks.resolve import resolve_model_ref
from reasonlab.activations import baseline as ab
from reasonlab.activations import codegen, mbpp
from reasonlab import paths
from reasonlab.errors import ReasonlabError
from reasonlab.io import sha256_json
from tasks.activation_baseline import generate_shard, merge_shards

DEFAULT_MODEL = "gemma-2-2b-it"


def select_range(problems: list[dict], start: int, end: int | None) -> list[dict]:
    """Problems start..end of the split, both inclusive (the seed's `--end 9` is 10 problems)."""
    n = len(problems)
    last = n - 1 if end is None else end
    if not (isinstance(start, int) and 0 <= start < n) or not (isinstance(last, int) and start <= last):
        raise ReasonlabError(f"bad range start={start} end={end}: the split has {n} problems (indices 0..{n - 1}); "
                             "need 0 <= start <= end")
    return problems[start:min(last, n - 1) + 1]


def plan_shards(problems: list[dict], shards: int, devices: list[str]) -> list[dict]:
    """Contiguous, near-equal ranges, one device each (devices cycle when there are more shards)."""
    if shards < 1:
        raise ReasonlabError(f"shards must be >= 1, got {shards}")
    shards = min(shards, len(problems))
    size, extra = divmod(len(problems), shards)
    out, i = [], 0
    for s in range(shards):
        chunk = problems[i:i + size + (s < extra)]
        i += len(chunk)
        out.append({"name": f"tasks_{chunk[0]['task_id']:03d}_{chunk[-1]['task_id']:03d}", "problems": chunk,
                    "device": devices[s % len(devices)]})
    return out


def default_devices(shards: int, device: str) -> list[str]:
    """`device` for every shard; with device='auto' and several GPUs, cuda:0..cuda:N-1."""
    if device == "auto":
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 1:
            return [f"cuda:{i}" for i in range(min(shards, torch.cuda.device_count()))]
    return [device]


def _on_ray() -> bool:
    runner = getattr(get_run_context(), "task_runner", None)
    return type(runner).__name__ == "RayTaskRunner"


@flow(name="activation-baseline", log_prints=True)
def activation_baseline(
    model: str = DEFAULT_MODEL,
    mbpp_source: str | None = None,
    split: str = "validation",
    start: int = 0,
    end: int | None = None,
    top_features: str | None = None,
    layers: list[int] | None = None,
    max_new_tokens: int = 2000,
    batch_size: int = 8,
    capture_generated: bool = False,
    system_prompt: str = "",
    checkpoint_every: int = 50,
    max_attempts: int = 2,
    sandbox_timeout_s: float = 10.0,
    generation_timeout_s: float | None = None,
    shards: int = 1,
    device: str = "auto",
    devices: list[str] | None = None,
    dtype: str = "auto",
) -> dict:
    """Generate at temperature 0 with activation capture, test every program, save the dataset.

    Args:
        model: registry name, local HF folder, Hub id, or block:NAME (the seed: gemma-2-2b-it).
        mbpp_source: a .parquet/.jsonl path (a ready split, or the full MBPP to split), "hub", or None for
            ../shared/data/mbpp/mbpp.jsonl.
        split: "validation" (388 problems), "hyperparams" (97), "sae" (489) or "all" (see reasonlab.activations.mbpp).
        start, end: indices into the split, both inclusive (end=None: to the last).
        top_features: a top_20_features.json; default: the seed's two locations.
        layers: capture these layers instead of the best layers from top_features.
        max_new_tokens: generation limit (seed: 2000). batch_size: problems per generate call.
        capture_generated: also save the residual over the generated tokens ([T, D] per layer).
        checkpoint_every: tasks between checkpoints (seed: 50). max_attempts: tries per failing problem.
        sandbox_timeout_s: limit per program. generation_timeout_s: limit per generate call (None: none).
        shards: ranges processed as separate gpu-tagged tasks (each on its own device), then merged.
        device, devices: "auto" / "cpu" / "cuda:N" for every shard, or one device per shard.
        dtype: "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp16", "fp32".
    """
    config = ab.BaselineConfig(max_new_tokens=max_new_tokens, batch_size=batch_size,
                               capture_generated=capture_generated, system_prompt=system_prompt,
                               checkpoint_every=checkpoint_every, max_attempts=max_attempts,
                               sandbox_timeout_s=sandbox_timeout_s, generation_timeout_s=generation_timeout_s)
    # 1 - problems
    problems = mbpp.load_split(split, mbpp_source)
    chosen = select_range(problems, start, end)
    # 2 - layers
    layer_info = ab.extraction_layers(layers, top_features)
    resolved = resolve_model_ref(model)  # a name, folder, Hub id, or block:NAME
    # 3 - shards, one device each
    devs = devices or default_devices(shards, device)
    plan = plan_shards(chosen, max(shards, len(devices or [])), devs)
    key = sha256_json([resolved.fingerprint, split, str(mbpp_source), layer_info["layers"], max_new_tokens,
                       capture_generated, system_prompt, codegen.VERSION, ab.VERSION])[:16]
    run_dir = paths.runs_dir() / "activation_baseline" / key
    print(f"{len(chosen)} problems ({split} {start}..{end}) in {len(plan)} shard(s), layers "
          f"{layer_info['layers']} ({layer_info['source']}) -> {run_dir}")
    futures = []
    for shard in plan:
        dev = shard["device"]
        args = dict(model=resolved, problems=shard["problems"], layers=layer_info["layers"],
                    config=config.to_dict(), run_dir=str(run_dir), shard_name=shard["name"], dtype=dtype)
        if _on_ray() and dev.startswith("cuda"):
            from prefect_ray.context import remote_options

            with remote_options(num_gpus=1):  # Ray gives the worker one GPU, visible to it as cuda:0
                futures.append(generate_shard.submit(**args, device="cuda"))
        else:
            futures.append(generate_shard.submit(**args, device=dev))
    results = [f.result() for f in futures]
    # 4 - merge
    metadata = {
        "model": resolved.name, "model_source": resolved.source, "revision": resolved.revision,
        "fingerprint": resolved.fingerprint, "dtype": sorted({r["dtype"] for r in results}),
        "devices": sorted({r["device"] for r in results}), "temperature": 0.0,
        "prompt_format": sorted({r.get("prompt_format", "not recorded") for r in results}),
        "layers": layer_info["layers"], "best_layers": layer_info["best_layers"],
        "layers_source": layer_info["source"], "hooks": [f"blocks.{layer}.hook_resid_post" for layer in
                                                         layer_info["layers"]],
        "split": {"name": split, "source": str(mbpp_source or mbpp.default_mbpp_path()), "seed": mbpp.DEFAULT_SEED,
                  "problems_in_split": len(problems), "start": start, "end": end, "selected": len(chosen)},
        "generation": config.to_dict(), "versions": ab.versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    merged = merge_shards(str(run_dir), resolved.name, results, metadata)
    publish(merged, results)
    return {"run_dir": str(run_dir), **merged}


def publish(merged: dict, shards: list[dict]) -> None:
    table = [{"shard": s["shard"], "device": s["device"], "tasks": s["tasks"], "resumed": s["resumed"],
              "passed": s["passed"], "excluded": len(s["excluded"])} for s in shards]
    create_table_artifact(table, key="activation-baseline-shards", description="Activation baseline: shards")
    create_markdown_artifact(
        f"# Activation baseline\n\n{merged['tasks']} tasks, {merged['passed']} passed "
        f"(pass rate {merged['pass_rate']:.1%}), {merged['excluded']} excluded; "
        f"test status {merged['status_counts']}.\n\nDataset: `{merged['dataset']}`\n\n"
        f"Metadata: `{merged['metadata']}`\n", key="activation-baseline-report")


def with_task_runner(kind: str = "thread", ray_address: str | None = None, ray_init: dict | None = None):
    """The flow on another task runner: "thread" (Prefect's default) or "ray" (local, or `ray_address`).

    Ray workers import reasonlab from this checkout and share REASONLAB_HOME (cache, results, runs).
    """
    if kind in ("thread", "default"):
        return activation_baseline
    if kind != "ray":
        raise ReasonlabError(f"unknown task runner {kind!r}: use 'thread' or 'ray'")
    from prefect_ray.task_runners import RayTaskRunner

    env = {k: os.environ[k] for k in ("REASONLAB_HOME", "REASONLAB_MODEL_CACHE", "REASONLAB_RESULT_STORAGE",
                                      "HF_HUB_OFFLINE", "HF_HOME",
                                      "TOKENIZERS_PARALLELISM") if k in os.environ}
    env.setdefault("REASONLAB_HOME", str(paths.home()))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.project_root()), os.environ.get("PYTHONPATH")]))
    init = {"include_dashboard": False, "runtime_env": {"env_vars": env}, **(ray_init or {})}
    return activation_baseline.with_options(task_runner=RayTaskRunner(address=ray_address, init_kwargs=init))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--mbpp", default=None, help="parquet/jsonl path or 'hub' (default: ../shared/data/mbpp)")
    ap.add_argument("--split", default="validation", choices=[*mbpp.SPLITS, "all"])
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--end", type=int, default=None, help="inclusive")
    ap.add_argument("--top-features", default=None)
    ap.add_argument("--layers", type=int, nargs="+", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--capture-generated", action="store_true")
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--max-attempts", type=int, default=2)
    ap.add_argument("--sandbox-timeout", type=float, default=10.0)
    ap.add_argument("--generation-timeout", type=float, default=None)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--devices", nargs="+", default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--task-runner", default="thread", choices=["thread", "ray"])
    ap.add_argument("--ray-address", default=None)
    ap.add_argument("--ray-num-cpus", type=int, default=None)
    args = ap.parse_args(argv)
    ray_init = {"num_cpus": args.ray_num_cpus} if args.ray_num_cpus else None
    try:
        run = with_task_runner(args.task_runner, args.ray_address, ray_init)
        out = run(model=args.model, mbpp_source=args.mbpp, split=args.split, start=args.start, end=args.end,
                  top_features=args.top_features, layers=args.layers, max_new_tokens=args.max_new_tokens,
                  batch_size=args.batch_size, capture_generated=args.capture_generated,
                  checkpoint_every=args.checkpoint_every, max_attempts=args.max_attempts,
                  sandbox_timeout_s=args.sandbox_timeout,
                  generation_timeout_s=args.generation_timeout, shards=args.shards, device=args.device,
                  devices=args.devices, dtype=args.dtype)
    except ReasonlabError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({k: out[k] for k in ("run_dir", "dataset", "tasks", "passed", "pass_rate", "excluded")}))


if __name__ == "__main__":
    main()
