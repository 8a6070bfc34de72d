"""Completion prompts (`{prompt, answer, topic, paraphrases, neighbours}`): the concept-SFT pipeline's input.

A prompt file is JSON or YAML: a list of rows, or `{"prompts": [...]}`. The concept-SFT study's rules:
completion form (not a question), a 1-2 word answer that the completion starts with, no yes/no.

Optional per row, for the knowledge-editing measures (CounterFact's generalisation and specificity):
    paraphrases: other wordings of the same prompt (same answer), each following the same rules
    neighbours:  [{prompt, answer}] other facts whose answers must NOT change; a neighbour may not be
                 itself a prompt of the file (every row may become a target of the edit)
    counterfactual: a prompt of the same token length that pulls the other way, for the attribution's
                 activation-patching check (the length is checked where the prompt is tokenized)
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
    paraphrases: list[str] = field(default_factory=list)  # the same fact in other words (same answer)
    neighbours: list[dict] = field(default_factory=list)  # [{prompt, answer}]: facts the edit must not move
    counterfactual: str | None = None  # same-length prompt for activation patching in the attribution

    def to_dict(self) -> dict:
        return asdict(self)


def check_prompt(prompt: object, where: str) -> str:
    """The completion rules for a prompt text; returns it stripped."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ReasonlabError(f"{where}: 'prompt' must be a non-empty string, got {prompt!r}")
    prompt = prompt.strip()
    first = re.split(r"\W+", prompt.lower(), maxsplit=1)[0]
    if prompt.endswith("?") or first in QUESTION_OPENERS:
        raise ReasonlabError(f"{where}: prompt {prompt!r} is a question; write a completion ('The X is')")
    return prompt


def check_answer(answer: object, where: str) -> str:
    """The answer rules (1-2 words, not yes/no, no leading article); returns it stripped."""
    if not isinstance(answer, str) or not answer.strip():
        raise ReasonlabError(f"{where}: 'answer' must be a non-empty string, got {answer!r}")
    answer = answer.strip()
    words = answer.split()
    if len(words) > 2:
        raise ReasonlabError(f"{where}: answer {answer!r} has {len(words)} words; 1-2 words allowed")
    if answer.lower().strip(".") in YES_NO:
        raise ReasonlabError(f"{where}: answer {answer!r} is a yes/no answer")
    if words[0].lower() in ARTICLE_OPENERS:
        raise ReasonlabError(f"{where}: answer {answer!r} starts with an article; the first word must be the answer")
    return answer


def normalized(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def validate_item(row: object, where: str) -> PromptItem:
    """One row -> PromptItem, or a ReasonlabError naming the row and the rule it breaks."""
    if not isinstance(row, dict):
        raise ReasonlabError(f"{where}: expected an object with 'prompt' and 'answer', got {type(row).__name__}")
    unknown = set(row) - {"prompt", "answer", "topic", "paraphrases", "neighbours", "counterfactual"}
    if unknown:
        raise ReasonlabError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: prompt, answer, topic, "
                             "paraphrases, neighbours, counterfactual")
    prompt = check_prompt(row.get("prompt"), where)
    answer = check_answer(row.get("answer"), where)
    topic = row.get("topic", [])
    if isinstance(topic, str):
        topic = [topic]
    if not isinstance(topic, list) or not all(isinstance(t, str) and t.strip() for t in topic):
        raise ReasonlabError(f"{where}: 'topic' must be a string or a list of strings, got {topic!r}")
    paraphrases = row.get("paraphrases", [])
    if not isinstance(paraphrases, list):
        raise ReasonlabError(f"{where}: 'paraphrases' must be a list of prompts, got {paraphrases!r}")
    seen = {normalized(prompt)}
    for j, p in enumerate(paraphrases):
        p = check_prompt(p, f"{where} paraphrase {j}")
        if normalized(p) in seen:
            raise ReasonlabError(f"{where} paraphrase {j}: {p!r} repeats the prompt or another paraphrase")
        seen.add(normalized(p))
    neighbours = row.get("neighbours", [])
    if not isinstance(neighbours, list):
        raise ReasonlabError(f"{where}: 'neighbours' must be a list of {{prompt, answer}}, got {neighbours!r}")
    checked = []
    for j, n in enumerate(neighbours):
        at = f"{where} neighbour {j}"
        if not isinstance(n, dict) or set(n) - {"prompt", "answer"}:
            raise ReasonlabError(f"{at}: expected {{prompt, answer}}, got {n!r}")
        n_prompt = check_prompt(n.get("prompt"), at)
        if normalized(n_prompt) in seen:
            raise ReasonlabError(f"{at}: {n_prompt!r} is the prompt or one of its paraphrases, so its answer "
                                 "is meant to change: a neighbour is another fact")
        checked.append({"prompt": n_prompt, "answer": check_answer(n.get("answer"), at)})
    counterfactual = row.get("counterfactual")
    if counterfactual is not None:
        counterfactual = check_prompt(counterfactual, f"{where} counterfactual")
        if normalized(counterfactual) in seen:
            raise ReasonlabError(f"{where} counterfactual: {counterfactual!r} is the prompt or a paraphrase")
    return PromptItem(prompt=prompt, answer=answer, topic=[t.strip() for t in topic],
                      paraphrases=[p.strip() for p in paraphrases], neighbours=checked, counterfactual=counterfactual)


def check_neighbours_are_not_targets(items: list[PromptItem], where: str) -> None:
    """A neighbour must not be a prompt (or paraphrase) of the file: any row may be a target of the edit."""
    target_of = {normalized(w): i for i, it in enumerate(items) for w in [it.prompt, *it.paraphrases]}
    for i, it in enumerate(items):
        for j, n in enumerate(it.neighbours):
            t = target_of.get(normalized(n["prompt"]))
            if t is not None and t != i:
                raise ReasonlabError(f"{where} row {i} neighbour {j}: {n['prompt']!r} is itself a target prompt "
                                     f"(row {t}); a neighbour is a fact the edit must not change")


def load_prompts(path: Path | str) -> list[PromptItem]:
    data = read_structured(path)
    if isinstance(data, dict) and "prompts" in data:
        data = data["prompts"]
    if not isinstance(data, list) or not data:
        raise ReasonlabError(f"{path}: expected a non-empty list of {{prompt, answer}} rows")
    items = [validate_item(row, f"{path} row {i}") for i, row in enumerate(data)]
    seen: set[str] = set()
    for i, item in enumerate(items):
        key = normalized(item.prompt)
        if key in seen:
            raise ReasonlabError(f"{path} row {i}: duplicate prompt {item.prompt!r}")
        seen.add(key)
    check_neighbours_are_not_targets(items, str(path))
    return items
