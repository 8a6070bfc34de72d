"""Completion prompts (`{prompt, answer, topic}`): the input of the concept-SFT pipeline.

A prompt file is JSON or YAML: a list of rows, or `{"prompts": [...]}`. The seed's rules:
completion form (not a question), a 1-2 word answer that the completion starts with, no yes/no.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reasonlab.errors import ReasonlabError
from reasonlab.io import read_structured

QUESTION_OPENERS = {"what", "which", "who", "whom", "whose", "where", "when", "why", "how", "is", "are",
                    "does", "do", "did", "can", "could", "should", "would", "will", "was", "were", "name"}
YES_NO = {"yes", "no", "true", "false", "maybe"}
ARTICLE_OPENERS = {"the", "a", "an"}


@dataclass(frozen=True)
class PromptItem:
    prompt: str
    answer: str
    topic: list[str] = field(default_factory=list)  # words training texts must not mention

    def to_dict(self) -> dict:
        return asdict(self)


def validate_item(row: object, where: str) -> PromptItem:
    """One row -> PromptItem, or a ReasonlabError naming the row and the rule it breaks."""
    if not isinstance(row, dict):
        raise ReasonlabError(f"{where}: expected an object with 'prompt' and 'answer', got {type(row).__name__}")
    unknown = set(row) - {"prompt", "answer", "topic"}
    if unknown:
        raise ReasonlabError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: prompt, answer, topic")
    prompt, answer, topic = row.get("prompt"), row.get("answer"), row.get("topic", [])
    if not isinstance(prompt, str) or not prompt.strip():
        raise ReasonlabError(f"{where}: 'prompt' must be a non-empty string, got {prompt!r}")
    if not isinstance(answer, str) or not answer.strip():
        raise ReasonlabError(f"{where}: 'answer' must be a non-empty string, got {answer!r}")
    prompt, answer = prompt.strip(), answer.strip()
    first = re.split(r"\W+", prompt.lower(), maxsplit=1)[0]
    if prompt.endswith("?") or first in QUESTION_OPENERS:
        raise ReasonlabError(f"{where}: prompt {prompt!r} is a question; write a completion ('The X is')")
    words = answer.split()
    if len(words) > 2:
        raise ReasonlabError(f"{where}: answer {answer!r} has {len(words)} words; 1-2 words allowed")
    if answer.lower().strip(".") in YES_NO:
        raise ReasonlabError(f"{where}: answer {answer!r} is a yes/no answer")
    if words[0].lower() in ARTICLE_OPENERS:
        raise ReasonlabError(f"{where}: answer {answer!r} starts with an article; the first word must be the answer")
    if isinstance(topic, str):
        topic = [topic]
    if not isinstance(topic, list) or not all(isinstance(t, str) and t.strip() for t in topic):
        raise ReasonlabError(f"{where}: 'topic' must be a string or a list of strings, got {topic!r}")
    return PromptItem(prompt=prompt, answer=answer, topic=[t.strip() for t in topic])


def load_prompts(path: Path | str) -> list[PromptItem]:
    data = read_structured(path)
    if isinstance(data, dict) and "prompts" in data:
        data = data["prompts"]
    if not isinstance(data, list) or not data:
        raise ReasonlabError(f"{path}: expected a non-empty list of {{prompt, answer}} rows")
    items = [validate_item(row, f"{path} row {i}") for i, row in enumerate(data)]
    seen: set[str] = set()
    for i, item in enumerate(items):
        key = " ".join(item.prompt.lower().split())
        if key in seen:
            raise ReasonlabError(f"{path} row {i}: duplicate prompt {item.prompt!r}")
        seen.add(key)
    return items
