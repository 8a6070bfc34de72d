"""One resolver for model references in flow parameters: a name, a folder, a Hub id, or a saved block.

    resolve_model_ref("smollm2-135m-instruct")       # as reasonlab.models.resolve_model
    resolve_model_ref("block:qwen")                   # the ModelSpecBlock saved as "qwen"
    resolve_model_ref("reasonlab-model/qwen")         # same, in Prefect's block-slug form

Every flow that takes a `model` parameter calls this, so a deployment run from the UI can name a block.
"""

from __future__ import annotations

from reasonlab.errors import ReasonlabError
from reasonlab.models import ResolvedModel, resolve_model

BLOCK_PREFIXES = ("block:", "reasonlab-model/")


def block_name(ref: str) -> str | None:
    """The block name in `ref`, or None when `ref` is not a block reference."""
    for prefix in BLOCK_PREFIXES:
        if isinstance(ref, str) and ref.startswith(prefix):
            name = ref[len(prefix):].strip()
            if not name:
                raise ReasonlabError(f"model reference {ref!r} names no block: use block:NAME")
            return name
    return None


def load_model_block(name: str):
    from blocks.model_spec import ModelSpecBlock

    try:
        return ModelSpecBlock.load(name)
    except ValueError as e:
        raise ReasonlabError(
            f"no reasonlab-model block named {name!r} ({str(e).splitlines()[0]}); create it with "
            f"ModelSpecBlock(model=...).save({name!r}) or `python -m deployments.setup --model {name}=MODEL`"
        ) from None


def resolve_model_ref(ref: str) -> ResolvedModel:
    """A `ResolvedModel` (plain data, safe for cache keys) for a model name, folder, Hub id or block reference."""
    name = block_name(ref)
    if name is None:
        return resolve_model(ref)
    block = load_model_block(name)
    return resolve_model(block.model, revision=block.revision or None)
