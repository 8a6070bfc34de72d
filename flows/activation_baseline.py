"""The activation baseline (the seed's Phase 7.3): greedy MBPP code generation with residual capture at the
best layers, every program tested in the sandbox, one dataset in the seed's file layout for later steering
analysis.

    python -m flows.activation_baseline --model qwen2.5-coder-0.5b-instruct --start 0 --end 19 \
        --layers 12 18 --max-new-tokens 384 --output-dir data/phase7_3
    python -m flows.activation_baseline                  # gemma-2-2b-it, all 388 validation problems, GPU
    python -m flows.activation_baseline --shards 4 --task-runner ray     # 4 shards fanned out on local Ray

Stages: load the split -> choose the layers and the prompt format (instruct: chat template, base:
completion) -> one gpu-tagged shard task per device (submitted, so any task runner fans them out; each
checkpoints and resumes) -> merge into dataset_<instruct|base>_temp_0_0.parquet + metadata.json.
The parameters come in typed groups (pydantic; the UI renders each as a nested form).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from blocks.resolve import resolve_model_ref
from reasonlab.activations import baseline as ab
from reasonlab.activations import codegen, mbpp
from reasonlab import paths
from reasonlab.errors import ReasonlabError
from reasonlab.sandbox import require_confinement
from reasonlab.io import sha256_json
from reasonlab.models import REGISTRY, ResolvedModel, load_tokenizer
from tasks.activation_baseline import generate_shard, merge_shards

DEFAULT_MODEL = "gemma-2-2b-it"


# ---------------------------------------------------------------- typed parameter groups

class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problems(_Group):
    """Which MBPP problems: a split, and a range of it."""

    mbpp_source: str | None = Field(None, description="a .parquet/.jsonl path (a ready split such as the seed's "
                                    "validation_mbpp.parquet, or the full MBPP to split), 'hub', or empty for "
                                    "the full MBPP from reasonlab.datasets (stored, mirror, else the Hub)")
    split: Literal["validation", "hyperparams", "sae", "all"] = Field(
        "validation", description="validation (388 problems), hyperparams (97), sae (489) or all")
    start: int = Field(0, ge=0, description="first index into the split (0-based, inclusive)")
    end: int | None = Field(None, ge=0, description="last index into the split, inclusive (empty: to the last)")


class Capture(_Group):
    """Where residuals are captured."""

    top_features: str | None = Field(None, description="a top_20_features.json whose best correct/incorrect "
                                     "layers are captured (empty: data/phase2_10 or data/phase2_5 of the seed)")
    layers: list[int] | None = Field(None, description="capture these decoder layers instead of top_features'")
    capture_generated: bool = Field(False, description="also save the residual at every generated token "
                                    "([T, D] per layer), not only at the last prompt token")


class Generation(_Group):
    """How each problem is generated (greedy, temperature 0)."""

    max_new_tokens: int = Field(2000, ge=1, description="token limit per completion (the seed: 2000)")
    batch_size: int = Field(8, ge=1, description="problems per generate call (left-padded)")
    system_prompt: str = Field("", description="system turn under the chat template (empty: none)")
    generation_timeout_s: float | None = Field(None, gt=0, description="wall-clock limit of one generate call, "
                                               "seconds (empty: none); cut rows get hit_time_limit")


class Robustness(_Group):
    """Checkpoints, retries, limits and memory watch."""

    checkpoint_every: int = Field(50, ge=1, description="tasks between checkpoints, exactly (the seed: 50)")
    max_attempts: int = Field(2, ge=1, description="tries per problem whose generation fails")
    sandbox_timeout_s: float = Field(10.0, gt=0, description="wall-clock limit per program in the sandbox, seconds")
    memory_warn_fraction: float = Field(0.85, gt=0, le=1, description="warn when the machine's RAM in use "
                                        "passes this share at a checkpoint (the seed: 0.85)")
    allow_unconfined_reads: bool = Field(False, description="UNSAFE: run generated code even where the sandbox "
                                         "cannot keep it from reading the host's files (no bubblewrap and not root); "
                                         "off: such a machine refuses, saying what to install")


class Placement(_Group):
    """Devices and shards."""

    shards: int = Field(1, ge=1, description="ranges processed as separate gpu-tagged tasks, then merged")
    device: str = Field("auto", description="auto, cpu or cuda:N for every shard")
    devices: list[str] | None = Field(None, description="one device per shard (overrides device and shards)")
    dtype: str = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32")


def _help(group: type[BaseModel], name: str) -> str:
    """A field's description, for the CLI: one text documents the form and the flag."""
    return group.model_fields[name].description or ""


# ---------------------------------------------------------------- helpers

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


def resolve_variant(variant: str, resolved: ResolvedModel, has_template: bool) -> tuple[str, bool]:
    """(variant, use_chat_template): instruct models are prompted under their chat template, base models as a
    plain completion. "auto": the registry's word where the model is registered (gemma-2-2b is base even if
    its tokenizer ships a template), else whether the tokenizer has a chat template."""
    if variant not in ("auto", *ab.VARIANTS):
        raise ReasonlabError(f"unknown variant {variant!r}: use auto, instruct or base")
    if variant == "auto":
        spec = REGISTRY.get(resolved.name)
        variant = "instruct" if has_template and (spec is None or spec.chat) else "base"
    if variant == "instruct" and not has_template:
        raise ReasonlabError(f"variant=instruct, but {resolved.name}'s tokenizer has no chat template: "
                             "use variant=base (completion prompts) or a model with a template")
    return variant, variant == "instruct"


@flow(name="activation-baseline", log_prints=True)
def activation_baseline(
    model: str = DEFAULT_MODEL,
    variant: Literal["auto", "instruct", "base"] = "auto",
    problems: Problems = Problems(),
    capture: Capture = Capture(),
    generation: Generation = Generation(),
    robustness: Robustness = Robustness(),
    placement: Placement = Placement(),
    output_dir: str | None = None,
) -> dict:
    """Generate at temperature 0 with activation capture, test every program, save the dataset.

    Args:
        model: registry name, local HF folder, Hub id, or block:NAME (the seed: gemma-2-2b-it).
        variant: instruct (chat-template prompts, dataset_instruct_temp_0_0.parquet) or base (completion
            prompts, dataset_base_temp_0_0.parquet); auto: the registry's word, else the tokenizer's template.
        problems: the split and the range of it (start..end, inclusive).
        capture: the layers (from top_features, or given) and whether generated tokens are captured too.
        generation: token and time limits, batch size, system prompt.
        robustness: checkpoint interval, retries, sandbox limit, memory warning threshold.
        placement: shards and devices, dtype.
        output_dir: the run directory (the seed's layout; reruns resume there); empty: a folder under
            $REASONLAB_HOME/runs/activation_baseline named by the run's key.
    """
    # 1 - problems
    split_rows = mbpp.load_split(problems.split, problems.mbpp_source)
    chosen = select_range(split_rows, problems.start, problems.end)
    # 2 - layers, model, prompt format (all checked before any model work)
    layer_info = ab.extraction_layers(capture.layers, capture.top_features)
    require_confinement(robustness.allow_unconfined_reads)  # generated code never reads the host's files unasked
    resolved = resolve_model_ref(model)  # a name, folder, Hub id, or block:NAME
    variant, use_template = resolve_variant(variant, resolved, codegen.uses_chat_template(load_tokenizer(resolved)))
    config = ab.BaselineConfig(max_new_tokens=generation.max_new_tokens, batch_size=generation.batch_size,
                               capture_generated=capture.capture_generated, system_prompt=generation.system_prompt,
                               checkpoint_every=robustness.checkpoint_every, max_attempts=robustness.max_attempts,
                               sandbox_timeout_s=robustness.sandbox_timeout_s,
                               generation_timeout_s=generation.generation_timeout_s, use_chat_template=use_template,
                               memory_warn_fraction=robustness.memory_warn_fraction,
                               allow_unconfined_reads=robustness.allow_unconfined_reads)
    identity = {"fingerprint": resolved.fingerprint, "variant": variant, "split": problems.split,
                # the split's content, not its path: the split parquet written into the run directory (or the
                # seed's own) reads back as the same split
                "split_sha256": sha256_json([[r["task_id"], r["text"], r["test_list"], r["test_setup_code"]]
                                             for r in split_rows])[:16],
                "layers": layer_info["layers"],
                "max_new_tokens": generation.max_new_tokens, "capture_generated": capture.capture_generated,
                "system_prompt": generation.system_prompt, "codegen": codegen.VERSION, "baseline": ab.VERSION}
    key = sha256_json(identity)[:16]
    run_dir = Path(output_dir).expanduser().resolve() if output_dir else paths.runs_dir() / "activation_baseline" / key
    ab.claim_run_dir(run_dir, identity)
    ab.write_split(run_dir, problems.split, split_rows)
    # 3 - shards, one device each
    devs = placement.devices or default_devices(placement.shards, placement.device)
    plan = plan_shards(chosen, max(placement.shards, len(placement.devices or [])), devs)
    print(f"{len(chosen)} problems ({problems.split} {problems.start}..{problems.end}) of {resolved.name} "
          f"({variant}) in {len(plan)} shard(s), layers {layer_info['layers']} ({layer_info['source']}) -> {run_dir}")
    futures = []
    for shard in plan:
        dev = shard["device"]
        ids = [p["task_id"] for p in shard["problems"]]
        first = problems.start + next(i for i, p in enumerate(chosen) if p["task_id"] == ids[0])
        range_info = {"split": problems.split, "start": first, "end": first + len(ids) - 1,
                      "call_start": problems.start, "call_end": problems.end}
        args = dict(model=resolved, problems=shard["problems"], layers=layer_info["layers"],
                    config=config.to_dict(), run_dir=str(run_dir), shard_name=shard["name"], dtype=placement.dtype,
                    range_info=range_info)
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
        "fingerprint": resolved.fingerprint, "variant": variant, "dtype": sorted({r["dtype"] for r in results}),
        "devices": sorted({r["device"] for r in results}), "temperature": 0.0,
        "prompt_format": "chat template" if use_template else "completion",
        "layers": layer_info["layers"], "best_layers": layer_info["best_layers"],
        "layers_source": layer_info["source"], "hooks": [f"blocks.{layer}.hook_resid_post" for layer in
                                                         layer_info["layers"]],
        "split": {"name": problems.split, "source": str(problems.mbpp_source or mbpp.default_mbpp_path()),
                  "seed": mbpp.DEFAULT_SEED, "problems_in_split": len(split_rows),
                  "file": ab.split_file(run_dir, problems.split).name},
        "generation": config.to_dict(), "versions": ab.versions(),
    }
    merged = merge_shards(str(run_dir), variant, metadata, shards_dir=run_dir / "shards")
    publish(resolved.name, variant, merged, results)
    return {"run_dir": str(run_dir), "variant": variant, **merged}


SUMMARY_KEY = "activation-baseline-summary"  # one row: what a sweep compares (flows/sweep_spec.baseline_metrics)
ERRORS_KEY = "activation-baseline-errors"


def publish(model: str, variant: str, merged: dict, shards: list[dict]) -> None:
    table = [{"shard": s["shard"], "device": s["device"], "tasks": s["tasks"], "resumed": s["resumed"],
              "passed": s["passed"], "excluded": len(s["excluded"]),
              "peak_rss_mib": round(max(c["memory"]["rss_bytes"] for c in s["checkpoints"]) / 2**20, 1)
              if s.get("checkpoints") else None} for s in shards]
    create_table_artifact(table, key="activation-baseline-shards",
                          description="Activation baseline: this call's shards")
    low, high = merged["pass_rate_ci95"]
    create_table_artifact([{
        "model": model, "variant": variant, "tasks": merged["tasks"], "passed": merged["passed"],
        "pass_rate": merged["pass_rate"], "pass_rate_ci95_low": low, "pass_rate_ci95_high": high,
        "excluded": merged["excluded"], "mean_completion_tokens": merged["mean_completion_tokens"],
        "mean_completion_chars": merged["mean_completion_chars"], "hit_token_limit": merged["hit_token_limit"],
        "hit_time_limit": merged["hit_time_limit"], "dataset": merged["dataset"],
    }], key=SUMMARY_KEY, description="Activation baseline: the whole run directory's dataset")
    create_table_artifact([{"error_type": k, "count": v} for k, v in merged["error_types"].items()],
                          key=ERRORS_KEY, description="Activation baseline: failing programs by error type")
    create_markdown_artifact(
        f"# Activation baseline: {model} ({variant})\n\n{merged['tasks']} tasks, {merged['passed']} passed "
        f"(pass rate {merged['pass_rate']:.1%}, 95 % CI {low:.1%}–{high:.1%}), {merged['excluded']} excluded; "
        f"test status {merged['status_counts']}; error types {merged['error_types']}; mean completion "
        f"{merged['mean_completion_tokens']} tokens.\n\nDataset: `{merged['dataset']}`\n\n"
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


def build_parser() -> argparse.ArgumentParser:
    """The CLI: the flow's flags as they always were, each with its help (from the typed groups) and default."""
    intro = __doc__.split("\n\n")[0].replace("\n", " ")
    ap = argparse.ArgumentParser(prog="python -m flows.activation_baseline", description=intro,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="registry name, local HF folder, Hub id, or block:NAME")
    ap.add_argument("--variant", default="auto", choices=["auto", *ab.VARIANTS],
                    help="instruct: chat-template prompts, dataset_instruct_*; base: completion prompts, "
                         "dataset_base_*; auto: the registry's word, else the tokenizer's chat template")
    ap.add_argument("--output-dir", default=None,
                    help="run directory in the seed's layout (reruns resume there); None: a folder under "
                         "$REASONLAB_HOME/runs/activation_baseline named by the run's key")
    g = ap.add_argument_group("problems")
    g.add_argument("--mbpp", default=None, help=_help(Problems, "mbpp_source"))
    g.add_argument("--split", default="validation", choices=[*mbpp.SPLITS, "all"], help=_help(Problems, "split"))
    g.add_argument("--start", type=int, default=0, help=_help(Problems, "start"))
    g.add_argument("--end", type=int, default=None, help=_help(Problems, "end"))
    g = ap.add_argument_group("capture")
    g.add_argument("--top-features", default=None, help=_help(Capture, "top_features"))
    g.add_argument("--layers", type=int, nargs="+", default=None, help=_help(Capture, "layers"))
    g.add_argument("--capture-generated", action="store_true", help=_help(Capture, "capture_generated"))
    g = ap.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=2000, help=_help(Generation, "max_new_tokens"))
    g.add_argument("--batch-size", type=int, default=8, help=_help(Generation, "batch_size"))
    g.add_argument("--system-prompt", default="", help=_help(Generation, "system_prompt"))
    g.add_argument("--generation-timeout", type=float, default=None, help=_help(Generation, "generation_timeout_s"))
    g = ap.add_argument_group("robustness")
    g.add_argument("--checkpoint-every", type=int, default=50, help=_help(Robustness, "checkpoint_every"))
    g.add_argument("--max-attempts", type=int, default=2, help=_help(Robustness, "max_attempts"))
    g.add_argument("--sandbox-timeout", type=float, default=10.0, help=_help(Robustness, "sandbox_timeout_s"))
    g.add_argument("--memory-warn-fraction", type=float, default=0.85, help=_help(Robustness, "memory_warn_fraction"))
    g.add_argument("--unsafe-allow-host-reads", action="store_true", help=_help(Robustness, "allow_unconfined_reads"))
    g = ap.add_argument_group("placement")
    g.add_argument("--shards", type=int, default=1, help=_help(Placement, "shards"))
    g.add_argument("--device", default="auto", help=_help(Placement, "device"))
    g.add_argument("--devices", nargs="+", default=None, help=_help(Placement, "devices"))
    g.add_argument("--dtype", default="auto", help=_help(Placement, "dtype"))
    g = ap.add_argument_group("task runner")
    g.add_argument("--task-runner", default="thread", choices=["thread", "ray"],
                   help="thread: Prefect's default; ray: shards fanned out on (local or remote) Ray")
    g.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    g.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    return ap


def main(argv: list[str] | None = None) -> None:
    from prefect.exceptions import ParameterTypeError

    args = build_parser().parse_args(argv)
    ray_init = {"num_cpus": args.ray_num_cpus} if args.ray_num_cpus else None
    try:
        run = with_task_runner(args.task_runner, args.ray_address, ray_init)
        out = run(
            model=args.model, variant=args.variant, output_dir=args.output_dir,
            problems=Problems(mbpp_source=args.mbpp, split=args.split, start=args.start, end=args.end),
            capture=Capture(top_features=args.top_features, layers=args.layers,
                            capture_generated=args.capture_generated),
            generation=Generation(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                  system_prompt=args.system_prompt, generation_timeout_s=args.generation_timeout),
            robustness=Robustness(checkpoint_every=args.checkpoint_every, max_attempts=args.max_attempts,
                                  sandbox_timeout_s=args.sandbox_timeout,
                                  memory_warn_fraction=args.memory_warn_fraction,
                                  allow_unconfined_reads=args.unsafe_allow_host_reads),
            placement=Placement(shards=args.shards, device=args.device, devices=args.devices, dtype=args.dtype))
    except ReasonlabError as e:
        raise SystemExit(f"error: {e}") from None
    except (ValidationError, ParameterTypeError) as e:
        raise SystemExit(f"error: bad parameter: {e}") from None
    print(json.dumps({k: out[k] for k in ("run_dir", "dataset", "variant", "tasks", "passed", "pass_rate",
                                          "pass_rate_ci95", "excluded")}))


if __name__ == "__main__":
    main()
