"""`ModelSpecBlock`: a model saved by name in Prefect, so deployments and the UI can pick it.

    ModelSpecBlock(model="smollm2-135m-instruct").save("default-model")          # registry name
    ModelSpecBlock(model="Qwen/Qwen2.5-0.5B", revision="7ae557...").save("qwen")   # Hub id at a commit
    ModelSpecBlock(model="/shared/models/my-sft").save("my-sft")                   # local HF folder

A flow parameter `model="block:qwen"` then resolves through `blocks.resolve.resolve_model_ref`.
`device` / `dtype` are the block's preference for where the weights load (auto = CUDA if present).
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field


class ModelSpecBlock(Block):
    _block_type_name = "Reasonlab Model"
    _block_type_slug = "reasonlab-model"
    _description = "A model for reasonlab flows: registry name, Hugging Face Hub id (+ revision) or local folder."

    model: str = Field(..., description="registry name (reasonlab models list), Hub id owner/name, or a local HF folder")
    revision: str | None = Field(None, description="Hub branch, tag or commit (Hub ids only)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field("auto", description="auto | float32 | bfloat16 | float16")
