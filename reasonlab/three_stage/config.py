"""The three-stage flow's YAML config: one typed, documented section per stage.

    model: smollm2-135m-instruct     # the base model (stage 1 continues from it unless pretrain.init: scratch)
    pretrain: {corpus: pubmedqa, block_size: 128, ...}
    sft: {sets: [pubmedqa, pharma], ...}
    reward: {train: hh-helpful, ...}          # see reward_config.RewardSettings
    dpo: {enabled: false, ...}
    compare_order: true                       # also train the reward model from the base model

Every field and its meaning: the `description` of each Field below (also the flow's docs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from reasonlab.training import LoraSettings
from reasonlab.io import read_structured
from reasonlab.models import DEFAULT_MODEL
from reasonlab.three_stage.reward_config import RewardSettings, parse_settings


class ScratchModel(BaseModel):
    """A tiny Llama trained from scratch in stage 1 (with the base model's tokenizer)."""

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(64, ge=8, description="width of the residual stream")
    intermediate_size: int = Field(256, ge=8, description="MLP width")
    num_hidden_layers: int = Field(2, ge=1, description="decoder blocks")
    num_attention_heads: int = Field(4, ge=1, description="attention heads")
    num_key_value_heads: int = Field(2, ge=1, description="key/value heads (grouped-query attention)")
    max_position_embeddings: int = Field(512, ge=8, description="longest sequence")


class PretrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="false: stage 2 starts from the base model itself")
    init: Literal["continue", "scratch"] = Field("continue", description="continue the base model, or a tiny scratch model")
    scratch: ScratchModel = Field(default_factory=ScratchModel, description="architecture when init: scratch")
    corpus: str = Field("pubmedqa", description="pubmedqa, a .txt/.md/.json/.jsonl file, or a folder of them")
    text_field: str = Field("text", description="the text column of a JSON/JSONL corpus")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="share of documents held out (PubMedQA: its test ids)")
    block_size: int = Field(128, ge=2, description="tokens per packed training block")
    max_train_blocks: int | None = Field(64, ge=1, description="cap on packed training blocks; null: all")
    max_eval_blocks: int | None = Field(16, ge=1, description="cap on packed held-out blocks for perplexity")
    epochs: float = Field(1.0, gt=0, description="passes over the training blocks")
    learning_rate: float = Field(5e-5, gt=0, description="peak learning rate")
    batch_size: int = Field(4, ge=1, description="blocks per device step")
    gradient_accumulation_steps: int = Field(1, ge=1, description="steps per optimizer update")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="fraction of updates spent warming up")
    lora: LoraSettings | None = Field(None, description="LoRA (merged into the checkpoint) instead of all weights")
    seed: int = Field(0, description="training seed")


class SFTPairSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="false: stage 3 starts from the stage-1 checkpoint")
    sets: list[str] = Field(["pubmedqa", "pharma"], min_length=1,
                            description="pubmedqa (question + context -> long answer), pharma (the seed's pairs), "
                                        "or .json/.jsonl files of {instruction, response}")
    include_context: bool = Field(True, description="pubmedqa: put the abstract's context in the instruction")
    max_train_pairs: int | None = Field(64, ge=1, description="cap on training pairs; null: all")
    max_eval_pairs: int | None = Field(32, ge=1, description="cap on held-out pairs; null: all")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="share held out of sets without their own split")
    use_chat_template: bool = Field(True, description="pairs as a user turn and an assistant turn of the template")
    max_length: int = Field(384, ge=8, description="tokens per pair (longer pairs are truncated by TRL)")
    epochs: float = Field(1.0, gt=0, description="passes over the pairs")
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate")
    batch_size: int = Field(4, ge=1, description="pairs per device step")
    gradient_accumulation_steps: int = Field(1, ge=1, description="steps per optimizer update")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="fraction of updates spent warming up")
    lora: LoraSettings | None = Field(None, description="LoRA (merged into the checkpoint) instead of all weights")
    seed: int = Field(0, description="training seed")


class DPOSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="run stage 4: DPO from the stage-2 model on the reward pairs")
    beta: float = Field(0.1, gt=0, description="DPO temperature")
    max_length: int = Field(256, ge=8, description="tokens per sequence (TRL keeps the end)")
    max_train_pairs: int | None = Field(128, ge=1, description="cap on training pairs")
    epochs: float = Field(1.0, gt=0, description="passes over the pairs")
    learning_rate: float = Field(5e-6, gt=0, description="peak learning rate")
    batch_size: int = Field(4, ge=1, description="pairs per device step")
    lora: LoraSettings | None = Field(None, description="LoRA (merged) instead of all weights")
    seed: int = Field(0, description="training seed")


class ThreeStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(DEFAULT_MODEL, description="base model: registry name, local folder, Hub id or block:NAME")
    device: str = Field("auto", description="auto (CUDA if present), cpu, cuda, cuda:N")
    dtype: str = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings, description="stage 1")
    sft: SFTPairSettings = Field(default_factory=SFTPairSettings, description="stage 2")
    reward: RewardSettings = Field(default_factory=RewardSettings, description="stage 3")
    dpo: DPOSettings = Field(default_factory=DPOSettings, description="stage 4 (optional)")
    compare_order: bool = Field(True, description="also train the reward model from the base model (same data/budget)")


def parse_config(data: object, where: str = "three-stage config") -> ThreeStageConfig:
    return parse_settings(ThreeStageConfig, data, where)


def load_config(path: Path | str) -> ThreeStageConfig:
    return parse_config(read_structured(path), where=f"three-stage config {path}")
