"""The SFT config: the YAML fields of a concept-SFT training run, typed, with a LoRA option.

    model_name: smollm2-135m-instruct   # registry name, local folder or Hub id
    epochs: 5
    learning_rate: 5e-6
    texts: ["...", "..."]
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from reasonlab.errors import check_model
from reasonlab.io import read_structured
from reasonlab.models import DEFAULT_MODEL
from reasonlab.training import LoraSettings


class SFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str = Field(DEFAULT_MODEL, description="registry name, local model folder or Hub id")
    device: str = Field("auto", description="auto (CUDA if present), cpu, cuda, cuda:N")
    dtype: str = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    output_dir: str | None = Field(None, description="checkpoint folder; default: under REASONLAB_HOME/runs")
    epochs: int = Field(5, ge=1, description="passes over the texts")
    learning_rate: float = Field(5e-6, gt=0, description="peak learning rate (linear decay after warmup)")
    batch_size: int = Field(1, ge=1, description="texts per device step")
    gradient_accumulation_steps: int = Field(1, ge=1, description="steps per optimizer update")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="fraction of updates spent warming up")
    max_length: int = Field(512, ge=8, description="tokens per text after templating; longer is truncated")
    use_chat_template: bool = Field(True, description="train each text as an assistant turn of the chat template")
    system_prompt: str = Field("", description="system turn used with the chat template (here and in evaluation)")
    texts: list[str] = Field([], description="the training texts (`reasonlab sft` trains on them; the flow takes "
                                             "each case's from the text-set file and falls back to these)")
    lora: LoraSettings | None = Field(None, description="train a LoRA adapter (merged into the checkpoint) instead of all weights")
    seed: int = Field(0, description="training seed")
    forbidden_terms: list[str] = Field([], description="more words no text may mention (besides each target's wrong answer and topic)")


def parse_sft_config(data: object, where: str = "sft config") -> SFTConfig:
    return check_model(SFTConfig, data, where)


def load_sft_config(path: Path | str) -> SFTConfig:
    return parse_sft_config(read_structured(path), where=f"sft config {path}")
