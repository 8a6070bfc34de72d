"""The leak check for concept training texts (stage 5 of concept SFT).

The concept-SFT study's key finding: a text that mentions the wrong answer, even to negate it ("renin is an
enzyme, not a hormone"), reinforces it. So no training text may mention any target case's
wrong answer or its prompt's topic. Matching is case-insensitive on word starts, so ' ren' also
catches "renin" and "renal", and "opioid" catches "opioids".
"""

from __future__ import annotations

import re

from reasonlab.errors import ReasonlabError


def forbidden_terms(target_cases: list[dict], extra: list[str] = ()) -> dict[str, str]:
    """term -> why it is forbidden, for every target case (wrong token, topic) plus `extra`."""
    terms: dict[str, str] = {}
    for case in target_cases:
        for wrong in (case["wrong_token"], case.get("wrong_word") or ""):  # the first token (' ren') and the word
            if len(wrong.strip()) >= 2:
                terms.setdefault(wrong.strip().lower(), f"the wrong answer {wrong!r} of {case['prompt']!r}")
        for topic in case.get("topic", []):
            terms.setdefault(topic.lower(), f"the topic of {case['prompt']!r}")
    for term in extra:
        terms.setdefault(term.lower(), "listed in forbidden_terms")
    return terms


def find_leaks(text: str, terms: dict[str, str]) -> list[tuple[str, str, str]]:
    """(word as written in the text, term, why) for each forbidden term the text mentions."""
    leaks = []
    for term, why in terms.items():
        pattern = r"(?<![\w])" + r"[\s-]+".join(map(re.escape, term.split())) + r"\w*"
        for match in re.finditer(pattern, text, flags=re.IGNORECASE):
            leaks.append((match.group(0), term, why))
    return leaks


def check_texts(texts: list[str], target_cases: list[dict], extra: list[str] = ()) -> list[str]:
    """Return `texts` unchanged, or raise naming the first text and word that leak."""
    terms = forbidden_terms(target_cases, extra)
    for i, text in enumerate(texts):
        leaks = find_leaks(text, terms)
        if leaks:
            word, term, why = leaks[0]
            snippet = " ".join(text.split())[:60]
            raise ReasonlabError(
                f"training text {i} ({snippet!r}...) mentions {word!r}, which matches {term!r}: {why}. "
                "Mentioning the wrong concept, even to negate it, reinforces it: rewrite the text without it."
            )
    return texts
