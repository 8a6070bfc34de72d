"""What every check of LLM-written content shares: spotting a refusal, and a normal form of a text for finding
copies (lower case, punctuation gone, single spaces). Used by prompt generation and library generation."""

from __future__ import annotations

import re

REFUSAL = re.compile(r"^\s*(i'?m sorry|i am sorry|sorry,|i can(?:'|no)t|i cannot|i won'?t|as an ai)", re.I)


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())
