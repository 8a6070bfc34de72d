"""Where the decoder blocks of an HF causal LM live (Llama, Qwen2, Gemma/Gemma3, Phi, GPT-NeoX-like).

One lookup for every hook the project sets: residual capture (`activation_capture.py`) and MLP
attribution (`attribution.py`) both index blocks through `decoder_layers(model)[l]`.
"""

from __future__ import annotations

from reasonlab.errors import ReasonlabError


def num_layers(model) -> int:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(cfg.num_hidden_layers)


def decoder_layers(model):
    """The model's decoder blocks: the nn.ModuleList of length config.num_hidden_layers."""
    import torch

    n = num_layers(model)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.endswith(("layers", ".h", "blocks")) and len(module) == n:
            return module
    raise ReasonlabError(f"cannot find the {n} decoder layers of {type(model).__name__}")
