"""The three-stage job's parameters in typed groups, one documented field per knob: the only defaults. No Prefect.

The flow (`flows/three_stage.py`) takes `model` and an optional YAML `config` plus one argument per group
below, so the Prefect UI shows one nested form per group and the CLI's flags come from the same fields
(`flows/cli_params.py`). A config file sets any group's fields (a section per group, and `model`); fields
given to the flow win over the file's, and whatever neither sets is the default here. A bad value is one
`ReasonlabError` naming `group.field`, raised before any model work.

The defaults are the CPU-sized default job on SmolLM2-135M-Instruct (well under an hour on a laptop CPU);
raise the `max_*` caps and `epochs` on a GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from reasonlab.errors import ReasonlabError
from reasonlab.io import read_structured
from reasonlab.params import Group, one_of, parse_group as parse_any_group

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
INITS = ("continue", "scratch")
STARTS = ("staged", "base")
TRUNCATIONS = ("keep_end", "drop")

Dtype = Annotated[Literal[DTYPE_CHOICES], one_of("dtype", DTYPE_CHOICES)]
Init = Annotated[Literal[INITS], one_of("pretrain init", INITS)]
Start = Annotated[Literal[STARTS], one_of("reward start", STARTS)]
Truncation = Annotated[Literal[TRUNCATIONS], one_of("truncation", TRUNCATIONS)]


@dataclass(frozen=True)
class Lora:
    """A stage's LoRA settings, as the training code reads them."""

    r: int
    alpha: int
    dropout: float
    target_modules: list[str]


class LoraFields(Group):
    """LoRA adapters instead of all weights (merged into the stage's checkpoint); off unless lora_r is set."""

    lora_r: int | None = Field(None, ge=1, description="LoRA rank; none: train all weights (default)")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    lora_target_modules: list[str] = Field(["q_proj", "v_proj"], min_length=1,
                                           description="module names that get LoRA adapters")

    @property
    def lora(self) -> Lora | None:
        if self.lora_r is None:
            return None
        return Lora(self.lora_r, self.lora_alpha, self.lora_dropout, list(self.lora_target_modules))


class RunParams(Group):
    """Where the job runs, and whether it answers "does the order matter?"."""

    device: str = Field("auto", description="auto (CUDA if present), cpu, cuda, cuda:N")
    dtype: Dtype = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    compare_order: bool = Field(True, description="also train the same reward model (data, budget, seed) from "
                                                  "the base model and compare the two on the same held-out pairs")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ReasonlabError(f"unknown device {value!r}: use auto, cpu, cuda or cuda:N")
        return value


class PretrainParams(LoraFields):
    """Stage 1: causal-LM cross-entropy on packed blocks of a domain corpus; held-out perplexity before/after."""

    enabled: bool = Field(True, description="run stage 1 (off: stage 2 starts from the base model)")
    init: Init = Field("continue", description="continue the base model, or train a tiny Llama from scratch "
                                               "(the scratch group) with the base model's tokenizer")
    corpus: str = Field("pubmedqa", min_length=1, description="pubmedqa (contexts + long answers, its test ids "
                                                              "held out), a .txt/.md/.json/.jsonl file or a folder")
    text_field: str = Field("text", min_length=1, description="the text column of a JSON/JSONL corpus")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="share of documents held out (not PubMedQA: "
                                                                 "its test ids are)")
    block_size: int = Field(128, ge=2, description="tokens per packed block")
    max_train_blocks: int | None = Field(32, ge=1, description="cap on training blocks (none: all)")
    max_eval_blocks: int | None = Field(16, ge=1, description="cap on held-out blocks for the perplexity")
    epochs: float = Field(1.0, gt=0, description="passes over the training blocks")
    learning_rate: float = Field(5e-5, gt=0, description="peak learning rate (linear decay after warmup)")
    batch_size: int = Field(4, ge=1, description="blocks per device step")
    gradient_accumulation_steps: int = Field(1, ge=1, description="device steps per optimizer update")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of the updates spent warming up")
    seed: int = Field(0, ge=0, description="random seed of the training and of the document split")


class ScratchParams(Group):
    """The tiny Llama stage 1 trains when pretrain.init is scratch."""

    hidden_size: int = Field(64, ge=8, description="width of the residual stream")
    intermediate_size: int = Field(256, ge=8, description="MLP width")
    num_hidden_layers: int = Field(2, ge=1, description="decoder blocks")
    num_attention_heads: int = Field(4, ge=1, description="attention heads")
    num_key_value_heads: int = Field(2, ge=1, description="key/value heads (grouped-query attention)")
    max_position_embeddings: int = Field(512, ge=8, description="longest sequence")


class SFTParams(LoraFields):
    """Stage 2: supervised fine-tuning on (instruction, response) pairs, loss on the response tokens only."""

    enabled: bool = Field(True, description="run stage 2 (off: stage 3 starts from the stage-1 checkpoint)")
    sets: list[str] = Field(["pubmedqa", "pharma"], min_length=1,
                            description="pubmedqa (question + context -> long answer), pharma (the "
                                        "pharmaceutical pairs in data/three_stage) or .json/.jsonl files of "
                                        "{instruction, response}")
    include_context: bool = Field(True, description="pubmedqa: put the abstract's context in the instruction")
    max_train_pairs: int | None = Field(32, ge=1, description="cap on training pairs (none: all)")
    max_eval_pairs: int | None = Field(16, ge=1, description="cap on held-out pairs (none: all)")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="share held out of sets without their own split")
    use_chat_template: bool = Field(True, description="each pair as a user turn and an assistant turn")
    max_length: int = Field(320, ge=8, description="tokens per pair (longer pairs are cut by TRL)")
    epochs: float = Field(1.0, gt=0, description="passes over the pairs")
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (linear decay after warmup)")
    batch_size: int = Field(4, ge=1, description="pairs per device step")
    gradient_accumulation_steps: int = Field(1, ge=1, description="device steps per optimizer update")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of the updates spent warming up")
    seed: int = Field(0, ge=0, description="random seed of the training and of the pair split")


class RewardParams(LoraFields):
    """Stage 3: a Bradley-Terry reward model (TRL's RewardTrainer on a one-output score head)."""

    start_from: Start = Field("staged", description="staged: the stage-2 (SFT) checkpoint; base: the base model")
    train: str = Field("hh-helpful", min_length=1, description="preference pairs: a named set (hh-helpful, "
                                                              "hh-harmless, pharma, ...), a .json/.jsonl(.gz) "
                                                              "file or hub:OWNER/NAME")
    heldout: str | None = Field(None, description="held-out pairs from their own source (training pairs of the "
                                                  "same conversations are dropped); default: split `train` by "
                                                  "conversation")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="share of conversations held out when `heldout` "
                                                                 "is not given")
    max_train_pairs: int | None = Field(96, ge=1, description="cap on training pairs, after the split (none: all)")
    max_eval_pairs: int | None = Field(100, ge=1, description="cap on held-out pairs (none: all)")
    use_chat_template: bool = Field(True, description="score the conversation under the chat template")
    max_length: int = Field(128, ge=8, description="tokens per scored sequence (HH pairs share a long prefix and "
                                                   "differ at the end)")
    truncation: Truncation = Field("keep_end", description="over-long pairs: keep each sequence's last "
                                                           "max_length tokens, or drop them (counted)")
    max_drop_fraction: float = Field(0.5, ge=0, le=1, description="refuse a max_length that drops more than this "
                                                                  "share of the pairs")
    epochs: float = Field(1.0, gt=0, description="passes over the training pairs")
    learning_rate: float = Field(5e-5, gt=0, description="peak learning rate (linear decay after warmup)")
    batch_size: int = Field(8, ge=1, description="pairs per device step")
    gradient_accumulation_steps: int = Field(1, ge=1, description="device steps per optimizer update")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of the updates spent warming up")
    center_rewards_coefficient: float = Field(0.01, ge=0, description="weight of mean((r_chosen + r_rejected)^2) "
                                                                      "in the training loss: keeps rewards "
                                                                      "centred at 0; 0: off")
    eval_every: int = Field(6, ge=0, description="score the held-out pairs every N optimizer updates (0: four "
                                                 "times a run)")
    eval_before: bool = Field(True, description="score the held-out pairs before training too (untrained head)")
    freeze_below: int = Field(20, ge=0, description="full fine-tune: freeze the embeddings and the first N blocks "
                                                    "(20 of SmolLM2-135M's 30)")
    seed: int = Field(0, ge=0, description="random seed of the training, the score head and the held-out split")


class DPOParams(LoraFields):
    """Stage 4 (optional): DPO from the stage-2 model on the reward model's training pairs."""

    enabled: bool = Field(False, description="run stage 4")
    beta: float = Field(0.1, gt=0, description="DPO temperature")
    max_length: int = Field(256, ge=8, description="tokens per sequence (TRL keeps the end)")
    max_train_pairs: int | None = Field(64, ge=1, description="cap on training pairs (none: all)")
    epochs: float = Field(1.0, gt=0, description="passes over the pairs")
    learning_rate: float = Field(5e-6, gt=0, description="peak learning rate")
    batch_size: int = Field(4, ge=1, description="pairs per device step")
    seed: int = Field(0, ge=0, description="random seed of the training")


GROUPS: dict[str, type[Group]] = {"run": RunParams, "pretrain": PretrainParams, "scratch": ScratchParams,
                                  "sft": SFTParams, "reward": RewardParams, "dpo": DPOParams}
CONFIG_KEYS = ("model", *GROUPS)


def parse_group(name: str, value: Any) -> Any:
    """The group `name` from a model, a (partial) mapping or None (all defaults); one error naming the field."""
    return parse_any_group(GROUPS, name, value, "three-stage parameters")


def read_config(path: Path | str | None) -> dict[str, Any]:
    """A YAML/JSON config file: `model` and a section per group (each a partial mapping); {} for None."""
    if path is None:
        return {}
    data = read_structured(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ReasonlabError(f"three-stage config {path}: expected a mapping with sections {list(CONFIG_KEYS)}")
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ReasonlabError(f"three-stage config {path}: unknown section(s) {unknown}; allowed: {list(CONFIG_KEYS)}")
    for name in GROUPS:
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise ReasonlabError(f"three-stage config {path}: section {name!r} must be a mapping of fields")
    return data


def given_fields(value: Any) -> dict[str, Any]:
    """What a group argument sets: a mapping's keys, a model's explicitly set fields, nothing for None."""
    if value is None:
        return {}
    if isinstance(value, Group):
        return value.model_dump(exclude_unset=True)
    if not isinstance(value, dict):
        raise ReasonlabError(f"three-stage parameters: a group must be a mapping of fields, got {value!r}")
    return value


def resolve_groups(config: dict[str, Any], **groups: Any) -> dict[str, Group]:
    """Every group: the defaults, under the config file's section, under the fields given to the flow."""
    return {name: parse_group(name, {**(config.get(name) or {}), **given_fields(groups.get(name))})
            for name in GROUPS}
