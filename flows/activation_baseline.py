"""The activation baseline: greedy MBPP code generation with residual capture at the chosen layers, every program
tested in the sandbox, one dataset (dataset_<instruct|base>_temp_0_0.parquet + metadata.json + one .npz per task
and layer) for later steering analysis.

    python -m flows.activation_baseline --model qwen2.5-coder-0.5b-instruct --start 0 --end 19 \\
        --layers 12 18 --max-new-tokens 384 --output-dir data/phase7_3
    python -m flows.activation_baseline                  # gemma-2-2b-it, all 388 validation problems, GPU
    python -m flows.activation_baseline --shards 4 --task-runner ray     # 4 shards fanned out on local Ray

Stages: check the inputs (groups, split, range, layers) -> resolve the model and its prompt format (instruct:
chat template, base: completion) -> plan the run directory and one gpu-tagged shard task per device (each
checkpoints and resumes) -> merge -> publish the summary (both pass rates with their 95 % Wilson intervals).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Literal

from prefect import flow

from blocks.resolve import resolve_model_ref
from flows.cli_params import Flag, add_flow_arguments, flow_parameters
from reasonlab import paths
from reasonlab.activations.codegen import uses_chat_template
from reasonlab.activations.params import GROUPS, Capture, Generation, Placement, Problems, Robustness
from reasonlab.activations.run_plan import check_inputs, dataset_metadata, open_run_dir, plan_run
from reasonlab.errors import ReasonlabError
from reasonlab.models import load_tokenizer
from tasks.activation_baseline import merge_shards, publish_baseline, submit_shards


@flow(name="activation-baseline", log_prints=True, validate_parameters=False)  # the groups check themselves
def activation_baseline(
    model: str = "gemma-2-2b-it",
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
        model: registry name, local HF folder, Hub id, or block:NAME.
        variant: instruct (chat-template prompts, dataset_instruct_temp_0_0.parquet) or base (completion
            prompts, dataset_base_temp_0_0.parquet); auto: the registry's word, else the tokenizer's template.
        problems: the split and the range of it (start..end, inclusive).
        capture: the layers (from top_features, or given) and whether generated tokens are captured too.
        generation: token and time limits, batch size, system prompt.
        robustness: checkpoint interval, retries, sandbox limit, memory warning threshold.
        placement: shards and devices, dtype.
        output_dir: the run directory (reruns resume there); empty: a folder under
            $REASONLAB_HOME/runs/activation_baseline named by the run's key.
    """
    inputs = check_inputs(variant, problems=problems, capture=capture, generation=generation,
                          robustness=robustness, placement=placement)  # one error naming the field, no model work
    resolved = resolve_model_ref(model)  # a name, folder, Hub id, or block:NAME
    plan = plan_run(inputs, resolved, variant, uses_chat_template(load_tokenizer(resolved)), output_dir)
    open_run_dir(plan)
    print(plan.describe())
    results = [future.result() for future in submit_shards(plan)]
    merged = merge_shards(str(plan.run_dir), plan.variant, dataset_metadata(plan, results),
                          shards_dir=plan.run_dir / "shards")
    publish_baseline(resolved.name, plan.variant, merged, results)
    return {"run_dir": str(plan.run_dir), "variant": plan.variant, **merged}


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
                                      "HF_HUB_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM") if k in os.environ}
    env.setdefault("REASONLAB_HOME", str(paths.home()))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.project_root()), os.environ.get("PYTHONPATH")]))
    init = {"include_dashboard": False, "runtime_env": {"env_vars": env}, **(ray_init or {})}
    return activation_baseline.with_options(task_runner=RayTaskRunner(address=ray_address, init_kwargs=init))


# The CLI's flags as researchers know them; help and defaults come from the parameter schema
FLAGS: dict[str, str | Flag] = {
    "problems.mbpp_source": "--mbpp", "problems.split": "--split", "problems.start": "--start",
    "problems.end": "--end",
    "capture.top_features": "--top-features", "capture.layers": "--layers",
    "capture.capture_generated": "--capture-generated",
    "generation.max_new_tokens": "--max-new-tokens", "generation.batch_size": "--batch-size",
    "generation.system_prompt": "--system-prompt", "generation.generation_timeout_s": "--generation-timeout",
    "robustness.checkpoint_every": "--checkpoint-every", "robustness.max_attempts": "--max-attempts",
    "robustness.sandbox_timeout_s": "--sandbox-timeout", "robustness.memory_warn_fraction": "--memory-warn-fraction",
    "robustness.allow_unconfined_reads": "--unsafe-allow-host-reads",
    "placement.shards": "--shards", "placement.device": "--device", "placement.devices": "--devices",
    "placement.dtype": "--dtype",
}


def build_parser() -> argparse.ArgumentParser:
    """The flow's flags (generated from its parameters) plus the task runner's, which are not flow parameters."""
    parser = argparse.ArgumentParser(prog="python -m flows.activation_baseline",
                                     description=" ".join(__doc__.split("\n\n")[0].split()))
    add_flow_arguments(parser, activation_baseline, FLAGS)
    runner = parser.add_argument_group("task runner")
    runner.add_argument("--task-runner", default="thread", choices=["thread", "ray"],
                        help="thread: Prefect's default; ray: shards fanned out on (local or remote) Ray "
                             "(default: thread)")
    runner.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    runner.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    ray_init = {"num_cpus": args.ray_num_cpus} if args.ray_num_cpus else None
    runner = {k: vars(args).pop(k) for k in ("task_runner", "ray_address", "ray_num_cpus")}
    params = flow_parameters(args)
    try:
        # bad input is one line here, before Prefect starts (and fails) a flow run
        check_inputs(params.get("variant", "auto"), **{name: params.get(name) for name in GROUPS})
        out = with_task_runner(runner["task_runner"], runner["ray_address"], ray_init)(**params)
    except ReasonlabError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({k: out[k] for k in ("run_dir", "dataset", "variant", "problems", "generated", "passed",
                                          "pass_rate", "pass_rate_ci95", "pass_rate_generated",
                                          "pass_rate_generated_ci95", "excluded")}))


if __name__ == "__main__":
    main()
