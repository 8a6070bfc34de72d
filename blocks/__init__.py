"""The project's Prefect Blocks. Register them all with `python -m blocks` (or `prefect block register -m blocks`)."""

from blocks.llm_endpoint import LLMEndpoint

BLOCKS = [LLMEndpoint]


def register() -> None:
    for block in BLOCKS:
        block.register_type_and_schema()


__all__ = ["BLOCKS", "LLMEndpoint", "register"]
