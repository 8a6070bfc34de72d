"""The rules every LLM-written training text of the concept-SFT study passes (stage 5), one rejection per broken rule.

    accepted, rejected = check_texts(texts, case, "concept", file_rows, count_tokens, TextRules())
    rejected == [{"text": ..., "rule": "leak", "reason": "mentions 'renin' (the wrong answer ...)"}]

The rules (`RULES`):
    leak      a topic word or the wrong answer, even negated (the study's finding 1); `negated_wrong` may name
              the wrong answer, `prompt` carries the topic by construction; `unrelated` and `abstract` may not
              name the right answer either (they would no longer be unrelated / abstract)
    missing   a text of `negated_wrong` that does not name the wrong answer, of `direct` that does not name the
              right one (the arm's point)
    length    fewer than `min_tokens` or more than `max_tokens` tokens (`count_tokens`)
    copy      a near-duplicate of another text of the set, or a copy of a prompt, paraphrase or neighbour of the
              prompts file (except the `prompt` arm, whose texts are the prompt)
    count     fewer texts than asked for (or more: the surplus is not used)
    refusal   the LLM declined
    unparsed  no JSON list of texts in the reply
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Callable

from reasonlab.concept_sft.study import ARMS
from reasonlab.concept_sft.training_texts import find_leaks, forbidden_terms
from reasonlab.errors import ReasonlabError
from reasonlab.llm_output import REFUSAL, clip, normalize, parse_items, strip_fences

RULES = ("leak", "missing", "length", "copy", "count", "refusal", "unparsed")
MAY_NAME_WRONG = {"negated_wrong"}
NO_LEAK_CHECK = {"prompt"}
NO_ANSWER = {"unrelated", "abstract"}
MUST_NAME = {"negated_wrong": "wrong", "direct": "answer"}


@dataclass(frozen=True)
class TextRules:
    """How many texts an arm gets, how long, how often the LLM is asked, how alike two texts may be."""

    n_texts: int = 4
    min_tokens: int = 100
    max_tokens: int = 150
    max_attempts: int = 3
    max_similarity: float = 0.5  # word-trigram Jaccard at or above which two texts are near-duplicates
    temperature: float = 0.7
    max_reply_tokens: int = 1500

    def validate(self) -> TextRules:
        if self.n_texts < 1 or self.max_attempts < 1:
            raise ReasonlabError(f"text rules: n_texts and max_attempts must be >= 1, got {self.n_texts}, "
                                 f"{self.max_attempts}")
        if not 0 < self.min_tokens <= self.max_tokens:
            raise ReasonlabError(f"text rules: need 0 < min_tokens <= max_tokens, got {self.min_tokens}, "
                                 f"{self.max_tokens}")
        if not 0 < self.max_similarity <= 1:
            raise ReasonlabError(f"text rules: max_similarity must be in (0, 1], got {self.max_similarity}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def check_arm(arm: str) -> str:
    if arm not in ARMS:
        raise ReasonlabError(f"unknown arm {arm!r}: use one of {', '.join(ARMS)}")
    return arm


def rejection(text: str, rule: str, reason: str) -> dict:
    return {"text": text, "rule": rule, "reason": reason}


def parse_texts(content: str | None, refusal: str | None = None) -> tuple[list[str], dict | None, str | None]:
    """(texts, the reply's JSON object if it was one, None) or ([], None, a rejection) for one LLM reply."""
    if refusal or (content and REFUSAL.match(content) and "[" not in content and "{" not in content):
        return [], None, rejection(clip(refusal or content, 200), "refusal", f"the LLM declined: "
                                                                             f"{clip(refusal or content, 120)!r}")
    obj = _json_object(content)
    rows = obj.get("texts") if isinstance(obj, dict) else None
    if not isinstance(rows, list):
        rows, _ = parse_items(content)
    texts = [r if isinstance(r, str) else r.get("text") for r in rows if isinstance(r, (str, dict))]
    texts = [" ".join(t.split()) for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        texts = _salvage_strings(content or "")
    if not texts:
        return [], obj, rejection(clip(content or "", 200), "unparsed",
                                  f"no JSON list of texts in the reply: {clip(content or '', 120)!r}")
    return texts, obj, None


def _json_object(content: str | None) -> dict | None:
    for candidate in (content or "", strip_fences(content or "")):
        try:
            obj = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _salvage_strings(content: str) -> list[str]:
    """Complete JSON string literals of a cut-off list (`["...", "...", "..`): each long enough to be a text."""
    body = strip_fences(content)
    if "[" not in body:
        return []
    found = []
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"', body[body.index("["):]):
        try:
            text = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if len(text.split()) >= 12:
            found.append(" ".join(text.split()))
    return found


def shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the two texts' word trigrams (0: nothing shared, 1: the same words in order)."""
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb) if sa and sb else 0.0


def file_prompts(file_rows: list[dict]) -> list[str]:
    """Every prompt, paraphrase and neighbour prompt of a prompts file's rows, normalized."""
    out = []
    for row in file_rows:
        out += [row.get("prompt", ""), *row.get("paraphrases", [])]
        out += [n.get("prompt", "") for n in row.get("neighbours", []) if isinstance(n, dict)]
    return list(dict.fromkeys(p for p in map(normalize, out) if len(p.split()) >= 3))


def leak_terms(case: dict, arm: str) -> dict[str, str]:
    """term -> why a text of `arm` may not mention it."""
    if arm in NO_LEAK_CHECK:
        return {}
    terms = forbidden_terms([case])
    if arm in MAY_NAME_WRONG:
        wrong = {w.strip().lower() for w in (case["wrong_token"], case.get("wrong_word") or "")}
        terms = {t: why for t, why in terms.items() if t not in wrong}
    if arm in NO_ANSWER:
        terms.setdefault(case["answer"].lower(), f"the right answer of {case['prompt']!r} (this arm is not about it)")
    return terms


def required_term(case: dict, arm: str) -> tuple[str, str] | None:
    """(term, what it is) that every text of `arm` must mention, or None."""
    kind = MUST_NAME.get(arm)
    if kind == "wrong":
        return (case.get("wrong_word") or case["wrong_token"]).strip().lower(), "the wrong answer"
    if kind == "answer":
        return case["answer"].lower(), "the right answer"
    return None


def check_one(text: str, case: dict, arm: str, prompts: list[str], count_tokens: Callable[[str], int],
              rules: TextRules) -> dict | None:
    """The first rule `text` breaks (as a rejection), or None."""
    if REFUSAL.match(text):
        return rejection(text, "refusal", f"the text is a refusal: {clip(text, 80)!r}")
    leaks = find_leaks(text, leak_terms(case, arm))
    if leaks:
        word, _, why = leaks[0]
        return rejection(text, "leak", f"it mentions {word!r} ({why}); never mention it, not even to negate it")
    needed = required_term(case, arm)
    if needed and not find_leaks(text, {needed[0]: needed[1]}):
        return rejection(text, "missing", f"it does not name {needed[1]} {needed[0]!r}, which this arm is about")
    n = count_tokens(text)
    if not rules.min_tokens <= n <= rules.max_tokens:
        side = "too short" if n < rules.min_tokens else "too long"
        return rejection(text, "length", f"{side}: {n} tokens, not {rules.min_tokens}-{rules.max_tokens}")
    if arm != "prompt":
        flat = f" {normalize(text)} "
        copied = next((p for p in prompts if f" {p} " in flat), None)
        if copied:
            return rejection(text, "copy", f"it copies the prompt {copied!r} of the prompts file")
    return None


def check_texts(texts: list[str], case: dict, arm: str, file_rows: list[dict], count_tokens: Callable[[str], int],
                rules: TextRules, *, others: list[str] = (), wanted: int | None = None) -> tuple[list[str], list[dict]]:
    """(accepted, rejected) of one reply's texts. `others`: texts already accepted for the arm (no near-copy of
    them either); `wanted`: how many texts were asked for (fewer is a `count` rejection, the surplus too)."""
    check_arm(arm)
    prompts = file_prompts(file_rows) if arm != "prompt" else []
    kept, rejected = list(others), []
    for text in texts:
        broken = check_one(text, case, arm, prompts, count_tokens, rules)
        if broken is None and arm != "prompt":
            twin = next((k for k in kept if similarity(text, k) >= rules.max_similarity), None)
            if twin is not None:
                broken = rejection(text, "copy", f"a near-duplicate (similarity {similarity(text, twin):.2f}) of "
                                                 f"another text: {clip(twin, 60)!r}")
        if broken is None and wanted is not None and len(kept) - len(others) >= wanted:
            broken = rejection(text, "count", f"a surplus text: {wanted} were asked for")
        if broken:
            rejected.append(broken)
        else:
            kept.append(text)
    accepted = kept[len(others):]
    if wanted is not None and len(texts) < wanted:
        rejected.append(rejection("", "count", f"{len(texts)} texts written where {wanted} were asked for"))
    return accepted, rejected


def check_concept(concept: str, case: dict, arm: str = "concept") -> dict | None:
    """A rejection when the concept itself leaks (topic, wrong answer; for `unrelated`, also the answer)."""
    if not concept or not concept.strip():
        return rejection("", "unparsed", "no concept named")
    if len(concept.split()) > 20:
        return rejection(concept, "length", f"the concept has {len(concept.split())} words (at most 20)")
    leaks = find_leaks(concept, leak_terms(case, "unrelated" if arm == "unrelated" else "concept"))
    if leaks:
        word, _, why = leaks[0]
        return rejection(concept, "leak", f"the concept mentions {word!r} ({why})")
    return None
