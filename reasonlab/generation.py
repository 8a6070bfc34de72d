"""One batched generation loop for every pipeline: left padding, greedy by default, stop at EOS.

    outs = generate(model, tokenizer, [prompt_ids_1, prompt_ids_2], max_new_tokens=256)
    outs[0].text, outs[0].completion_tokens, outs[0].stopped

Prompts are token ids (each caller tokenizes its own way: a chat template, a plain completion). They are
left-padded so every row's next token comes at the same column. A row ends at its first EOS token (the model's
generation config and the tokenizer's), at a stop string, at `max_new_tokens` or when `max_time_s` runs out;
a row that ended early is padded to the batch's length by `generate`, and that padding is not part of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Generated:
    """One row of a batch.

    ids: the new tokens, up to and including the EOS token that ended the row (if one did).
    text: `ids` decoded without special tokens (stop strings are left in: the caller cuts where it needs).
    stopped: it ended at an EOS token (else at a stop string, max_new_tokens or the time limit).
    batch_seconds: the wall time of the whole batch's generate call (per-row time is not measured)."""

    ids: list[int]
    text: str
    prompt_tokens: int
    stopped: bool
    batch_seconds: float
    batch_size: int

    @property
    def completion_tokens(self) -> int:
        return len(self.ids)


def stop_ids(model, tokenizer) -> set[int]:
    """The EOS ids that end a row: the model's generation config's and the tokenizer's."""
    ids = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_pad(prompts: Sequence[Sequence[int]], pad: int):
    """(input_ids [B, W], attention_mask [B, W]) with each prompt right-aligned, W the longest prompt."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


def generate(model, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
             stop_strings: Sequence[str] = (), max_time_s: float | None = None, temperature: float = 0.0,
             top_p: float = 1.0) -> list[Generated]:
    """One `model.generate` over the left-padded `prompts`, greedy at temperature 0 (else sampled with
    `temperature` and `top_p`: seed torch first). Returns one `Generated` per prompt, in order."""
    import torch

    pad = pad_id(tokenizer)
    ids, mask = left_pad(prompts, pad)                      # [B, W], [B, W]
    kwargs: dict = dict(max_new_tokens=max_new_tokens, pad_token_id=pad)
    if stop_strings:
        kwargs.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    if max_time_s:
        kwargs["max_time"] = max_time_s
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids.to(model.device), attention_mask=mask.to(model.device), **kwargs)  # [B, W + T]
    seconds = time.perf_counter() - started
    stops = stop_ids(model, tokenizer)
    rows = []
    for i, new in enumerate(out[:, ids.shape[1]:].tolist()):
        end = next((j + 1 for j, t in enumerate(new) if t in stops), None)
        if end is None:                                     # no EOS: drop the padding after a stop string
            end = len(new)
            while end and new[end - 1] == pad:
                end -= 1
        rows.append(Generated(ids=new[:end], text=tokenizer.decode(new[:end], skip_special_tokens=True),
                              prompt_tokens=len(prompts[i]), stopped=end > 0 and new[end - 1] in stops,
                              batch_seconds=seconds, batch_size=len(prompts)))
    return rows
