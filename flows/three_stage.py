"""Three-stage training: continued pretraining -> SFT -> Bradley-Terry reward model (-> optional DPO).

    python -m flows.three_stage                                      # the defaults: SmolLM2, CPU-sized budgets
    python -m flows.three_stage --reward-learning-rate 1e-4 --no-compare-order
    python -m flows.three_stage --config my.yaml --sft-epochs 2      # a file's sections, then the flags

Each stage is a cached gpu-tagged task whose result is a checkpoint folder; the next stage starts from that
checkpoint's fingerprint, so a rerun that changes only `reward` fields retrains only the reward model.
"Does the order matter?": with run.compare_order, the same reward model (data, budget, seed) is also trained
from the base model, and the two are compared on the same held-out pairs (McNemar, paired bootstrap).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from prefect import flow

from blocks.resolve import resolve_model_ref
from flows.cli_params import Flag, add_flow_arguments, flow_parameters
from reasonlab import paths
from reasonlab.errors import ReasonlabError
from reasonlab.models import DEFAULT_MODEL, ResolvedModel, load_tokenizer, resolve_model
from reasonlab.three_stage import job, report
from reasonlab.three_stage.params import (DPOParams, PretrainParams, RewardParams, RunParams, ScratchParams,
                                          SFTParams, read_config, resolve_groups)
from tasks import three_stage as stages


@flow(name="three-stage", log_prints=True, validate_parameters=False)  # the groups check themselves: one error
def three_stage(
    model: str | None = None,
    config: str | None = None,
    run: RunParams = RunParams(),
    pretrain: PretrainParams = PretrainParams(),
    scratch: ScratchParams = ScratchParams(),
    sft: SFTParams = SFTParams(),
    reward: RewardParams = RewardParams(),
    dpo: DPOParams = DPOParams(),
) -> dict:
    """Stage 1 (causal LM on a corpus) -> stage 2 (SFT pairs) -> stage 3 (reward model) [-> stage 4 DPO].

    Args:
        model: base model: registry name, local folder, Hub id or block:NAME (default: smollm2-135m-instruct,
            or the config file's `model`).
        config: optional YAML file with `model` and a section per group; fields given here win over it.
        run: device, dtype, and whether to also train the reward model from the base model (the order check).
        pretrain: stage 1, continued pretraining (or from scratch) on a domain corpus.
        scratch: the tiny Llama stage 1 trains when pretrain.init is scratch.
        sft: stage 2, SFT on (instruction, response) pairs.
        reward: stage 3, the Bradley-Terry reward model.
        dpo: stage 4 (optional), DPO from the stage-2 model.
    """
    inputs = check_inputs(model, config, run=run, pretrain=pretrain, scratch=scratch, sft=sft, reward=reward, dpo=dpo)
    groups, base = inputs.groups, inputs.base
    run_dir = paths.runs_dir() / "three_stage"
    dev = groups["run"].model_dump(include={"device", "dtype"})

    # Stage 1 - continued pretraining (or a tiny model from scratch) on the domain corpus
    stage1, current = None, base
    if groups["pretrain"].enabled:
        settings = groups["pretrain"].model_dump()
        arch = groups["scratch"].model_dump() if groups["pretrain"].init == "scratch" else None
        stage1 = stages.pretrain_stage(base, settings, job.stage_dir(run_dir, "pretrain", base, [settings, arch]),
                                       scratch=arch, **dev)
        current = resolve_model(stage1["checkpoint"])

    # Stage 2 - SFT on (instruction, response) pairs, loss on the response only
    stage2 = None
    if groups["sft"].enabled:
        settings = groups["sft"].model_dump()
        stage2 = stages.sft_stage(current, settings, job.stage_dir(run_dir, "sft", current, settings), **dev)
        current = resolve_model(stage2["checkpoint"])

    # Stage 3 - the reward model from the stage-2 model; with run.compare_order also from the base model
    reward_out = {}
    for name, start, settings in job.reward_runs(groups, base, current):
        reward_out[name] = stages.reward_stage(start, settings.model_dump(),
                                               job.stage_dir(run_dir, "reward", start, settings.model_dump()), **dev)

    # Stage 4 (optional) - DPO from the stage-2 model on the reward model's pairs
    stage4 = None
    if groups["dpo"].enabled:
        settings = groups["dpo"].model_dump()
        stage4 = stages.dpo_stage(current, settings, groups["reward"].model_dump(),
                                  job.stage_dir(run_dir, "dpo", current, settings), **dev)

    out = job.results(base, groups, stage1, stage2, reward_out, stage4)
    out["files"] = stages.publish_results(out, job.report_dir(run_dir, base, groups))
    print(report.headline_markdown(out))
    return out


@dataclass
class Inputs:
    groups: dict
    base: ResolvedModel


def check_inputs(model: str | None = None, config: str | None = None, **groups) -> Inputs:
    """Every group (`group.field` named), the config file, the model and every stage's data, each failure one
    `ReasonlabError` before any model work. The CLI calls it before Prefect starts a run."""
    file = read_config(paths.find_input(config) if config else None)
    parsed = resolve_groups(file, **groups)
    base = resolve_model_ref(model or file.get("model") or DEFAULT_MODEL)
    job.check_data(parsed, base.name, bool(getattr(load_tokenizer(base), "chat_template", None)))
    return Inputs(parsed, base)


FLAGS: dict[str, str | Flag] = {"run.device": "--device", "run.dtype": "--dtype",
                                "run.compare_order": "--compare-order"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flow_arguments(parser, three_stage, FLAGS)
    params = flow_parameters(parser.parse_args(argv))
    try:
        check_inputs(**params)  # bad input is one line here, before Prefect starts (and fails) a flow run
        out = three_stage(**params)
    except ReasonlabError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"files": out["files"], "reward": {k: r["heldout"] for k, r in out["reward"].items()},
                      "order": out["order"]}, indent=1, default=str)[:4000])


if __name__ == "__main__":
    main()
