"""The project's Prefect Blocks. Register them all with `python -m blocks` (or `prefect block register -m blocks`).

- `LLMEndpoint` (llm-endpoint): an OpenAI-compatible endpoint or a local model served offline
- `ModelSpecBlock` (reasonlab-model): a model by registry name / Hub id + revision / local folder, device, dtype
- `StorageLocation` (reasonlab-storage): the shared REASONLAB_HOME and the task-result storage block
"""

from blocks.llm_endpoint import LLMEndpoint
from blocks.model_spec import ModelSpecBlock
from blocks.storage import StorageLocation

BLOCKS = [LLMEndpoint, ModelSpecBlock, StorageLocation]


def register() -> None:
    for block in BLOCKS:
        block.register_type_and_schema()


__all__ = ["BLOCKS", "LLMEndpoint", "ModelSpecBlock", "StorageLocation", "register"]
