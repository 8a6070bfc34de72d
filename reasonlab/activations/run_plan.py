"""One activation-baseline call, planned before any model work: the checked inputs, the prompt format
(variant), the run directory named by the run's key, one shard per device, and the metadata the merge
records. No Prefect here: the flow calls these in order.

    inputs = check_inputs("auto", problems={"end": 9}, capture={"layers": [12]})   # one error per bad field
    plan = plan_run(inputs, resolved_model, "auto", has_chat_template, output_dir=None)
    open_run_dir(plan)                            # run.json (refuses another run's folder) + the split parquet
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasonlab import paths
from reasonlab.activations import baseline, codegen, mbpp
from reasonlab.activations.capture import hook_name
from reasonlab.activations.dataset import versions
from reasonlab.activations.layers import extraction_layers
from reasonlab.activations.params import GROUPS, VARIANTS, BaselineConfig, parse_group
from reasonlab.activations.run_files import claim_run_dir, split_file, write_split
from reasonlab.errors import ReasonlabError
from reasonlab.io import sha256_json
from reasonlab.models import REGISTRY, ResolvedModel
from reasonlab.sandbox import require_confinement


@dataclass
class Inputs:
    """What is checked before any model work: the parsed groups, the split and its chosen range, the layers."""

    groups: dict[str, Any]
    split_rows: list[dict]
    chosen: list[dict]
    layer_info: dict


@dataclass
class RunPlan:
    """Everything a call needs after the model is resolved: the shards each get one device and one range."""

    inputs: Inputs
    model: ResolvedModel
    variant: str
    use_chat_template: bool
    config: BaselineConfig
    identity: dict
    run_dir: Path
    shards: list[dict]  # {name, problems, device, range_info}

    def describe(self) -> str:
        p, layers = self.inputs.groups["problems"], self.inputs.layer_info
        return (f"{len(self.inputs.chosen)} problems ({p.split} {p.start}..{p.end}) of {self.model.name} "
                f"({self.variant}) in {len(self.shards)} shard(s), layers {layers['layers']} ({layers['source']}) "
                f"-> {self.run_dir}")


def check_inputs(variant: str = "auto", **groups: Any) -> Inputs:
    """The groups (one error naming `group.field`), the variant, the split and range, the layers and the
    sandbox's confinement, each failure one `ReasonlabError`. The CLI calls it before Prefect starts a run."""
    if variant not in ("auto", *VARIANTS):
        raise ReasonlabError(f"unknown variant {variant!r}: use auto, instruct or base")
    parsed = {name: parse_group(name, groups.get(name)) for name in GROUPS}
    problems, capture = parsed["problems"], parsed["capture"]
    split_rows = mbpp.load_split(problems.split, problems.mbpp_source)
    chosen = select_range(split_rows, problems.start, problems.end)
    layer_info = extraction_layers(capture.layers, capture.top_features)
    require_confinement(parsed["robustness"].allow_unconfined_reads)  # generated code never reads the host's files
    return Inputs(parsed, split_rows, chosen, layer_info)


def select_range(problems: list[dict], start: int, end: int | None) -> list[dict]:
    """Problems start..end of the split, both inclusive (`end=9` is 10 problems)."""
    n = len(problems)
    last = n - 1 if end is None else end
    if not (isinstance(start, int) and 0 <= start < n) or not (isinstance(last, int) and start <= last):
        raise ReasonlabError(f"bad range start={start} end={end}: the split has {n} problems (indices 0..{n - 1}); "
                             "need 0 <= start <= end")
    return problems[start:min(last, n - 1) + 1]


def resolve_variant(variant: str, resolved: ResolvedModel, has_template: bool) -> tuple[str, bool]:
    """(variant, use_chat_template): instruct models are prompted under their chat template, base models as a
    plain completion. "auto": the registry's word where the model is registered (gemma-2-2b is base even if
    its tokenizer ships a template), else whether the tokenizer has a chat template."""
    if variant not in ("auto", *VARIANTS):
        raise ReasonlabError(f"unknown variant {variant!r}: use auto, instruct or base")
    if variant == "auto":
        spec = REGISTRY.get(resolved.name)
        variant = "instruct" if has_template and (spec is None or spec.chat) else "base"
    if variant == "instruct" and not has_template:
        raise ReasonlabError(f"variant=instruct, but {resolved.name}'s tokenizer has no chat template: "
                             "use variant=base (completion prompts) or a model with a template")
    return variant, variant == "instruct"


def default_devices(shards: int, device: str) -> list[str]:
    """`device` for every shard; with device='auto' and GPUs, cuda:0..cuda:N-1 (one GPU: cuda:0, named, so that a
    Ray runner reserves it for the shard)."""
    if device == "auto":
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() >= 1:
            return [f"cuda:{i}" for i in range(min(shards, torch.cuda.device_count()))]
    return [device]


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


def shard_jobs(inputs: Inputs) -> list[dict]:
    """The call's shards, each with the split indices it covers (recorded in its shard.json)."""
    problems, placement = inputs.groups["problems"], inputs.groups["placement"]
    devices = placement.devices or default_devices(placement.shards, placement.device)
    jobs = plan_shards(inputs.chosen, max(placement.shards, len(placement.devices or [])), devices)
    offset = 0
    for job in jobs:
        first = problems.start + offset
        offset += len(job["problems"])
        job["range_info"] = {"split": problems.split, "start": first, "end": first + len(job["problems"]) - 1,
                             "call_start": problems.start, "call_end": problems.end}
    return jobs


def run_identity(inputs: Inputs, model: ResolvedModel, variant: str) -> dict:
    """What decides the rows (and so names the run directory): weights, variant, the split's content (not
    its path: the split parquet written into the run directory reads back as the same split), layers,
    generation settings, code versions. Not the range, so ranges of one run add up."""
    generation, capture = inputs.groups["generation"], inputs.groups["capture"]
    split = [[r["task_id"], r["text"], r["test_list"], r["test_setup_code"]] for r in inputs.split_rows]
    return {"fingerprint": model.fingerprint, "variant": variant, "split": inputs.groups["problems"].split,
            "split_sha256": sha256_json(split)[:16], "layers": inputs.layer_info["layers"],
            "max_new_tokens": generation.max_new_tokens, "capture_generated": capture.capture_generated,
            "system_prompt": generation.system_prompt, "codegen": codegen.VERSION, "baseline": baseline.VERSION}


def plan_run(inputs: Inputs, model: ResolvedModel, variant: str, has_template: bool,
             output_dir: str | None) -> RunPlan:
    """The call's plan: variant and prompt format, settings, run directory (`output_dir`, else a folder under
    $REASONLAB_HOME/runs/activation_baseline named by the run's key) and shards."""
    variant, use_template = resolve_variant(variant, model, has_template)
    g = inputs.groups
    config = BaselineConfig.from_groups(g["generation"], g["robustness"], g["capture"], use_template)
    identity = run_identity(inputs, model, variant)
    run_dir = (Path(output_dir).expanduser().resolve() if output_dir
               else paths.runs_dir() / "activation_baseline" / sha256_json(identity)[:16])
    return RunPlan(inputs, model, variant, use_template, config, identity, run_dir, shard_jobs(inputs))


def open_run_dir(plan: RunPlan) -> None:
    """Claim the run directory (another run's folder is refused) and write the split its ranges index into."""
    claim_run_dir(plan.run_dir, plan.identity)
    write_split(plan.run_dir, plan.inputs.groups["problems"].split, plan.inputs.split_rows)


def dataset_metadata(plan: RunPlan, shard_results: list[dict]) -> dict:
    """The keys of metadata.json the caller knows (the merge adds the ranges and counts)."""
    m, layers, problems = plan.model, plan.inputs.layer_info, plan.inputs.groups["problems"]
    return {
        "model": m.name, "model_source": m.source, "revision": m.revision, "fingerprint": m.fingerprint,
        "variant": plan.variant, "dtype": sorted({r["dtype"] for r in shard_results}),
        "devices": sorted({r["device"] for r in shard_results}), "temperature": 0.0,
        "prompt_format": "chat template" if plan.use_chat_template else "completion",
        "layers": layers["layers"], "best_layers": layers["best_layers"], "layers_source": layers["source"],
        "hooks": [hook_name(layer) for layer in layers["layers"]],
        "split": {"name": problems.split, "source": str(problems.mbpp_source or mbpp.default_mbpp_path()),
                  "seed": mbpp.DEFAULT_SEED, "problems_in_split": len(plan.inputs.split_rows),
                  "file": split_file(plan.run_dir, problems.split).name},
        "generation": plan.config.to_dict(), "versions": versions(),
    }
