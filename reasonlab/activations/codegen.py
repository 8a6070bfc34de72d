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
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

from reasonlab.activations.capture import ResidualCapture
from reasonlab.generation import Generated, generate
from reasonlab.prompt_format import apply_template

VERSION = "2"  # 2: hit_token_limit / hit_time_limit apart, the batch's measured time per row

INSTRUCTION = ("You are an expert Python programmer, and here is your task: {text} "
               "Your code should pass these tests:\n\n{tests}\n\nWrite the Python function in a ```python code block.")


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate.

    max_new_tokens: generation limit per problem (the baseline specification: 2000).
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


def generate_batch(model, tokenizer, prompts: Sequence[str], config: GenerationConfig,
                   layers: Sequence[int] = ()) -> list[dict[str, Any]]:
    """Greedy completions for `prompts` in one left-padded `generate` call.

    Returns one dict per prompt: completion, prompt_tokens, completion_tokens, hit_token_limit (it stopped
    because max_new_tokens were generated), hit_time_limit (cut by max_time_s before either a stop token or
    the token limit), batch_generation_s (the measured wall time of the whole generate call: per-row time is
    not measured, so none is given), batch_size and, when `layers` is given,
    activations {layer: {"last_prompt": [D] array, "generated": [T, D] array (capture_generated)}}.
    """
    add_special = not chat_prompting(tokenizer, config.use_chat_template)  # a rendered template holds BOS
    prompt_ids = tokenizer(list(prompts), add_special_tokens=add_special)["input_ids"]
    capture = ResidualCapture(model, layers, over_generated=config.capture_generated) if layers else None
    with model_lock(model), capture or nullcontext():
        outs = generate(model, tokenizer, prompt_ids, config.max_new_tokens, max_time_s=config.max_time_s)
    acts = capture.result() if capture else {}
    return [_result(out, i, acts, config.max_new_tokens) for i, out in enumerate(outs)]


def _result(out: Generated, i: int, acts: dict, max_new_tokens: int) -> dict[str, Any]:
    n = out.completion_tokens
    row = {
        "completion": out.text,
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": n,
        # no stop token: either all max_new_tokens were generated, or max_time cut the batch short
        "hit_token_limit": not out.stopped and n >= max_new_tokens,
        "hit_time_limit": not out.stopped and n < max_new_tokens,
        "batch_generation_s": out.batch_seconds,
        "batch_size": out.batch_size,
    }
    if acts:
        row["activations"] = {
            layer: {"last_prompt": a["last_prompt"][i].numpy(),
                    **({"generated": a["generated"][i, :n].numpy()} if "generated" in a else {})}
            for layer, a in acts.items()
        }
    return row


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
