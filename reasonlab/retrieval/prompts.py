"""The multiple-choice prompt, in lm-evaluation-harness's layout, with an optional instruction before it.

    {instruction}\n\nQuestion: {question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:

`acc` reads the next token as " A" / " B" / ...; `acc_option_text_norm` scores " {option text}" as the
continuation (not lm-eval's acc_norm: see option_scoring).
With the chat template, the same text is the user turn and " Answer:" follows the assistant header.
"""

from __future__ import annotations

from reasonlab.prompt_format import build_prompt


def mc_text(question: str, options: dict[str, str], instruction: str = "") -> str:
    body = f"Question: {question}\n" + "".join(f"{k}. {v}\n" for k, v in options.items())
    return (instruction.strip() + "\n\n" if instruction.strip() else "") + body + "Answer:"


def rotate(options: dict[str, str], shift: int) -> dict[str, str]:
    """Cyclic shift: the option shown at position j is the original option (j + shift) mod n."""
    letters, texts = list(options), list(options.values())
    n = len(texts)
    return {letters[j]: texts[(j + shift) % n] for j in range(n)}


def model_prompt(tokenizer, question: str, options: dict[str, str], instruction: str = "",
                 use_chat_template: bool = False) -> str:
    text = mc_text(question, options, instruction)
    if not use_chat_template:
        return text
    return build_prompt(tokenizer, text.removesuffix("Answer:").rstrip(), "chat", system_prompt="",
                        answer_prefix=" Answer:")
