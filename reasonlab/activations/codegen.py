"""Greedy (temperature 0) code generation for MBPP problems, batched with left padding, with capture.

    prompts = [mbpp_prompt(tokenizer, p) for p in problems]
    outs = generate_batch(model, tokenizer, prompts, GenerationConfig(max_new_tokens=384), layers=[12])

The prompt is the problem statement plus its tests (the usual MBPP prompt), under the tokenizer's
chat template when it has one (`uses_chat_template` says which), else as a plain completion.
Each output carries its completion, token counts, timings and the captured residuals.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from reasonlab.activations.capture import ResidualCapture
from reasonlab.prompt_format import apply_template

VERSION = "2"  # 2: hit_token_limit / hit_time_limit apart, the batch's measured time per row

INSTRUCTION = ("You are an expert Python programmer, and here is your task: {text} "
               "Your code should pass these tests:\n\n{tests}\n\nWrite the Python function in a ```python code block.")


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate.

    max_new_tokens: generation limit per problem (the seed: 2000).
    batch_size: problems per `generate` call (left-padded); 1 = unbatched.
    capture_generated: also keep the residual at every generated token ([T, D] per layer).
    system_prompt: system turn for chat templates ("" = none: the template's default, if it has one).
    max_time_s: wall-clock limit of one generate call (transformers' `max_time`); None = no limit.
    use_chat_template: prompt under the tokenizer's chat template (None: when the tokenizer has one).
    """

    max_new_tokens: int = 2000
    batch_size: int = 8
    capture_generated: bool = False
    system_prompt: str = ""
    max_time_s: float | None = None  # a batch stops generating after this long (rows then hit_time_limit)
    use_chat_template: bool | None = None


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def problem_text(problem: dict) -> str:
    return INSTRUCTION.format(text=problem["text"].strip(), tests="\n".join(problem["test_list"]))


def chat_prompting(tokenizer, use_chat_template: bool | None = None) -> bool:
    """Whether prompts go under the chat template: `use_chat_template`, or (None) whether the tokenizer has one."""
    return uses_chat_template(tokenizer) if use_chat_template is None else bool(use_chat_template)


def mbpp_prompt(tokenizer, problem: dict, system_prompt: str = "", use_chat_template: bool | None = None) -> str:
    """The exact text fed to the model for one problem (a completion prompt for base models)."""
    text = problem_text(problem)
    if chat_prompting(tokenizer, use_chat_template):
        # "" = no system turn at all, so a template's own default system prompt (Qwen's) stays
        return apply_template(tokenizer, system_prompt or None, "user", text, add_generation_prompt=True)
    return text + "\n\n```python\n"


_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def model_lock(model) -> threading.Lock:
    """One lock per loaded model: shards sharing a process-cached model (thread task runner, one device)
    generate one at a time, so one shard's capture hooks never see another shard's forward passes."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(id(model), threading.Lock())


def _stop_ids(model, tokenizer) -> set[int]:
    ids = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def generate_batch(model, tokenizer, prompts: Sequence[str], config: GenerationConfig,
                   layers: Sequence[int] = ()) -> list[dict[str, Any]]:
    """Greedy completions for `prompts` in one left-padded `generate` call.

    Returns one dict per prompt: completion, prompt_tokens, completion_tokens, hit_token_limit (it stopped
    because max_new_tokens were generated), hit_time_limit (cut by max_time_s before either a stop token or
    the token limit), batch_generation_s (the measured wall time of the whole generate call: per-row time is
    not measured, so none is given), batch_size and, when `layers` is given,
    activations {layer: {"last_prompt": [D] array, "generated": [T, D] array (capture_generated)}}.
    """
    tokenizer.padding_side = "left"
    add_special = not chat_prompting(tokenizer, config.use_chat_template)  # a rendered template holds BOS
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=add_special)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    capture = ResidualCapture(model, layers, over_generated=config.capture_generated) if layers else None
    with model_lock(model):
        start = time.perf_counter()
        out = _generate(model, tokenizer, enc, config, capture)
        elapsed = time.perf_counter() - start
    return _split_outputs(model, tokenizer, enc, out, capture, elapsed, len(prompts), config.max_new_tokens)


def _generate(model, tokenizer, enc: dict, config: GenerationConfig, capture: ResidualCapture | None):
    import torch

    kwargs = dict(do_sample=False, max_new_tokens=config.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    if config.max_time_s:
        kwargs["max_time"] = config.max_time_s
    with torch.inference_mode():
        if capture:
            with capture:
                return model.generate(**enc, **kwargs)
        return model.generate(**enc, **kwargs)


def _split_outputs(model, tokenizer, enc: dict, out, capture: ResidualCapture | None, elapsed: float,
                   n_prompts: int, max_new_tokens: int) -> list[dict[str, Any]]:
    prompt_len = enc["input_ids"].shape[1]
    acts = capture.result() if capture else {}
    stops = _stop_ids(model, tokenizer)
    new = out[:, prompt_len:].tolist()  # [B, T]
    results = []
    for i, ids in enumerate(new):
        n = next((j + 1 for j, t in enumerate(ids) if t in stops), None)
        stopped = n is not None
        n = len(ids) if n is None else n
        row = {
            "completion": tokenizer.decode(ids[:n], skip_special_tokens=True),
            "prompt_tokens": int(enc["attention_mask"][i].sum()),
            "completion_tokens": n,
            # no stop token: either all max_new_tokens were generated, or max_time cut the batch short
            "hit_token_limit": not stopped and n >= max_new_tokens,
            "hit_time_limit": not stopped and n < max_new_tokens,
            "batch_generation_s": elapsed,
            "batch_size": n_prompts,
        }
        if acts:
            row["activations"] = {
                layer: {"last_prompt": a["last_prompt"][i].numpy(),
                        **({"generated": a["generated"][i, :n].numpy()} if "generated" in a else {})}
                for layer, a in acts.items()
            }
        results.append(row)
    return results


_PY_FENCE = re.compile(r"```[ \t]*(?:python3?|py)\b[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_ANY_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The Python code in an LLM completion: the first ```python block, else the first fenced
    block of any language, else the raw text. An unclosed fence (a cut-off completion) runs to the end."""
    for pattern in (_PY_FENCE, _ANY_FENCE):
        m = pattern.search(completion)
        if m:
            return m.group(1).rstrip() + "\n"
    return completion
