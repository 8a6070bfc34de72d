"""How a prompt is shown to a model: as a plain completion, or under the chat template.

`chat` is the evaluation format: system + user turn, the assistant header, then the
answer prefix (" Answer:"), so the next token is the model's answer.
"""

from __future__ import annotations

from typing import Literal

from reasonlab.errors import ReasonlabError

Format = Literal["completion", "chat"]
FORMATS = ("completion", "chat")


def chat_messages(system_prompt: str | None, role: str, content: str) -> list[dict]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return msgs + [{"role": role, "content": content}]


def apply_template(tokenizer, system_prompt: str | None, role: str, content: str, add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ReasonlabError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template: "
            "use the 'completion' format (use_chat_template: false)"
        )
    try:
        return tokenizer.apply_chat_template(
            chat_messages(system_prompt, role, content), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as e:
        if system_prompt == "":  # templates without a system role (Gemma): an empty one is no loss
            return apply_template(tokenizer, None, role, content, add_generation_prompt)
        raise ReasonlabError(f"the chat template rejected a {role} turn: {e}") from None


def require_formats(tokenizer, formats: list[str], model_name: str) -> None:
    """One error, before any model work, when a requested format cannot be built for this tokenizer."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ReasonlabError(f"unknown prompt format {unknown[0]!r}: use one of {FORMATS}")
    if "chat" in formats and not getattr(tokenizer, "chat_template", None):
        raise ReasonlabError(f"model {model_name!r} has no chat template, so the 'chat' format cannot be built: "
                             "ask for the 'completion' format only (--filter-format completion --eval-formats "
                             "completion --attribution-format completion) and train without it "
                             "(--no-use-chat-template, or use_chat_template: false in the SFT config)")


def build_prompt(tokenizer, prompt: str, fmt: Format = "completion", system_prompt: str | None = "",
                 answer_prefix: str = " Answer:") -> str:
    """The text whose next token is the model's answer to `prompt`."""
    if fmt == "completion":
        return prompt
    if fmt == "chat":
        return apply_template(tokenizer, system_prompt, "user", prompt, add_generation_prompt=True) + answer_prefix
    raise ReasonlabError(f"unknown prompt format {fmt!r}: use one of {FORMATS}")


def adds_special_tokens(tokenizer, text: str) -> bool:
    """Whether encoding a built prompt adds the tokenizer's special tokens (BOS): not when the chat template
    already began the text with BOS (Gemma, Llama 3), where adding them would give [BOS, BOS, ...]."""
    return not (tokenizer.bos_token and text.startswith(tokenizer.bos_token))


def prompt_ids(tokenizer, text: str) -> list[int]:
    """The token ids of a built prompt (`build_prompt`): the one encoding every scoring path and the attribution use."""
    return list(tokenizer(text, add_special_tokens=adds_special_tokens(tokenizer, text))["input_ids"])


def build_training_text(tokenizer, text: str, use_chat_template: bool, system_prompt: str | None = "") -> str:
    """A training text as the model sees it: plain, or as an assistant turn under the chat template."""
    if not use_chat_template:
        return text
    return apply_template(tokenizer, system_prompt, "assistant", text, add_generation_prompt=False)
