"""Stage-3 settings: the Bradley-Terry reward model (TRL RewardTrainer on a sequence-classification head).

    reward:
      start_from: staged             # staged (the stage-2 checkpoint) or base (the flow's base model)
      train: hh-helpful              # named set, file, or hub:OWNER/NAME[:split]
      heldout: null                  # null: split `train` by prompt; else its own source (deduped against train)
      max_length: 256
      truncation: keep_end           # keep_end (cut the shared prompt from the left) or drop (counted)
      learning_rate: 5e-5
      center_rewards_coefficient: 0.01
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reasonlab.training import LoraSettings
from reasonlab.errors import ReasonlabError


class RewardSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start_from: Literal["staged", "base"] = Field(
        "staged", description="staged: the stage-2 (SFT) checkpoint; base: the flow's base model (the order check)")
    train: str = Field("hh-helpful", description="preference pairs: named set, .json/.jsonl(.gz) file, or hub:OWNER/NAME")
    heldout: str | None = Field(None, description="held-out pairs from their own source; null: split `train` by prompt")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="share of prompts held out when `heldout` is null")
    max_train_pairs: int | None = Field(512, ge=1, description="cap on training pairs (after the split); null: all")
    max_eval_pairs: int | None = Field(256, ge=1, description="cap on held-out pairs; null: all")
    use_chat_template: bool = Field(True, description="score the conversation under the chat template")
    max_length: int = Field(256, ge=8, description="tokens per scored sequence")
    truncation: Literal["keep_end", "drop"] = Field(
        "keep_end", description="over-long pairs: keep each sequence's last max_length tokens, or drop them (counted)")
    max_drop_fraction: float = Field(0.5, ge=0, le=1, description="refuse a max_length that drops more than this share")
    epochs: float = Field(1.0, gt=0, description="passes over the training pairs")
    learning_rate: float = Field(5e-5, gt=0, description="peak learning rate (linear decay after warmup)")
    batch_size: int = Field(8, ge=1, description="pairs per device step")
    gradient_accumulation_steps: int = Field(1, ge=1, description="steps per optimizer update")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="fraction of updates spent warming up")
    center_rewards_coefficient: float | None = Field(
        0.01, ge=0, description="weight of mean((r_chosen + r_rejected)^2): keeps rewards centred at 0; null: off")
    eval_every: int = Field(0, ge=0, description="evaluate held-out pairs every N optimizer steps (0: 4 times a run; >= the run: only at the end)")
    eval_before: bool = Field(True, description="score the held-out pairs before training too (the untrained head)")
    lora: LoraSettings | None = Field(None, description="LoRA adapters (+ the trainable score head) instead of all weights")
    freeze_below: int = Field(0, ge=0, description="full fine-tune only: freeze the embeddings and the first N blocks")
    seed: int = Field(0, description="training seed (also the score head's initialisation)")


def parse_settings(cls: type[BaseModel], data: object, where: str) -> BaseModel:
    """`cls` from a mapping, with one error listing every unknown / missing / invalid field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ReasonlabError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(config)"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown field {field!r}")
            elif err["type"] == "missing":
                problems.append(f"missing field {field!r}")
            else:
                problems.append(f"field {field!r}: {err['msg']} (got {err.get('input')!r})")
        raise ReasonlabError(f"{where}: " + "; ".join(problems)) from None
