"""The experimental conditions: which library domains' instructions go before each question.

    none          no instruction
    top1          the retrieved top-1 domain
    topK          the retrieved top-k domains (k = top_k), best first
    oracle        the question's gold domain (only for questions whose domain is known)
    random_other  one random domain other than the gold (or, unknown, the retrieved top-1): the length control

Every condition is evaluated on the same questions; `oracle` on the subset with a known domain.
"""

from __future__ import annotations

import random
from typing import Any

from reasonlab.errors import ReasonlabError
from reasonlab.io import sha256_json
from reasonlab.retrieval.library import render


def condition_names(top_k: int) -> list[str]:
    names = ["none", "top1"]
    if top_k > 1:
        names.append(f"top{top_k}")
    return names + ["oracle", "random_other"]


def check_domains(questions: list[dict], library: dict) -> None:
    """A gold domain that the library lacks is an error (the oracle would have nothing to show)."""
    for q in questions:
        if q.get("domain") and q["domain"] not in library:
            raise ReasonlabError(f"question {q['id']!r} has domain {q['domain']!r}, which the instruction library "
                                 f"does not have (domains: {', '.join(library)})")


def condition_domains(question: dict, ranked: list[list], library: dict, condition: str, top_k: int,
                      seed: int = 0) -> list[str] | None:
    """The domains whose instructions the condition shows (None: the condition does not apply to the question)."""
    retrieved = [d for d, _ in ranked]
    if condition == "none":
        return []
    if condition == "top1":
        return retrieved[:1]
    if condition == f"top{top_k}" and top_k > 1:
        return retrieved[:top_k]
    if condition == "oracle":
        return [question["domain"]] if question.get("domain") else None
    if condition == "random_other":
        avoid = question.get("domain") or retrieved[0]
        rng = random.Random(int(sha256_json([seed, question["id"]])[:12], 16))
        return [rng.choice([d for d in library if d != avoid])]
    raise ReasonlabError(f"unknown condition {condition!r}: use one of {condition_names(top_k)}")


def instruction_text(domains: list[str], library: dict[str, Any]) -> str:
    return "\n\n".join(render(d, library[d]) for d in domains)


def build_condition_items(questions: list[dict], ranked: list[dict], library: dict, method: str, top_k: int,
                          seed: int = 0) -> dict[str, list[dict]]:
    """{condition: [{id, domains, instruction}]} for every condition, questions in order (skipped where n/a)."""
    out: dict[str, list[dict]] = {}
    for condition in condition_names(top_k):
        items = []
        for q, r in zip(questions, ranked):
            domains = condition_domains(q, r[method], library, condition, top_k, seed)
            if domains is not None:
                items.append({"id": q["id"], "domains": domains, "instruction": instruction_text(domains, library)})
        out[condition] = items
    return out
