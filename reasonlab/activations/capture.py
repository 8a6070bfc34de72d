"""Residual-stream capture with forward hooks on decoder layers, cheap enough to leave on during generation.

Hook names follow TransformerLens: `blocks.{l}.hook_resid_post` is the output of decoder layer `l`
(the residual stream after the block), which is `output_hidden_states[l + 1]` of the same forward,
except for the last layer, whose `output_hidden_states` entry has the final norm applied (the hook
keeps the un-normed residual there too).

    capture = ResidualCapture(model, layers=[12, 16], over_generated=False)
    with capture:
        model.generate(**batch)                       # prompts left-padded: the last prompt token is at -1
    acts = capture.result()                           # {layer: {"last_prompt": [B, D], "generated": [B, T, D]}}

Cost: the hook slices one position (`out[:, -1, :]`) and keeps it on the model's device; the slices
are concatenated and copied to the CPU once, in `result()`. No full [B, S, D] tensor is ever kept.
The first forward of `generate` is the prefill (S = prompt length); every later one processes one
new token (S = 1), so "generated" row t is the residual that predicted generated token t
(row 0 is the last prompt token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reasonlab.errors import ReasonlabError
from reasonlab.models import decoder_layers, num_layers


def hook_name(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def check_layers(model, layers: Sequence[int]) -> list[int]:
    """Sorted, de-duplicated layers; a layer outside [0, num_layers) is a ReasonlabError."""
    n = num_layers(model)
    bad = [layer for layer in layers if not isinstance(layer, int) or not 0 <= layer < n]
    if bad or not layers:
        raise ReasonlabError(f"unknown layer(s) {bad or '[] (none given)'}: {type(model).__name__} has "
                             f"{n} decoder layers, 0..{n - 1}")
    return sorted(set(layers))


class ResidualCapture:
    """Context manager: forward hooks on the chosen decoder layers while it is open."""

    def __init__(self, model, layers: Sequence[int], over_generated: bool = False):
        self.model = model
        self.layers = check_layers(model, layers)
        self.over_generated = over_generated
        self._steps: dict[int, list] = {}  # layer -> per-forward [B, D] slices, on the model's device
        self._handles: list = []

    def _hook(self, layer: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output  # [B, S, D]
            steps = self._steps[layer]
            if steps and not self.over_generated:
                return  # only the prefill's last position is wanted
            steps.append(hidden[:, -1, :].detach().clone())  # [B, D] copy on the device (async, no host sync;
            # a bare view would keep the whole [B, S, D] output alive)
        return hook

    def __enter__(self) -> "ResidualCapture":
        blocks = decoder_layers(self.model)
        self._steps = {layer: [] for layer in self.layers}
        self._handles = [blocks[layer].register_forward_hook(self._hook(layer)) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def result(self) -> dict[int, dict[str, Any]]:
        """{layer: {"last_prompt": [B, D] float32 CPU, "generated": [B, T, D] (only with over_generated)}}."""
        import torch

        out = {}
        for layer, steps in self._steps.items():
            if not steps:
                raise ReasonlabError(f"layer {layer} captured nothing: was the model run inside the capture?")
            entry = {"last_prompt": steps[0].float().cpu()}
            if self.over_generated:
                entry["generated"] = torch.stack(steps, dim=1).float().cpu()  # [B, T, D]
            out[layer] = entry
        return out
