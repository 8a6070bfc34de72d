"""Instruction-library entries written by an LLM endpoint, checked like the hand-written ones.

    REASONLAB_LLM_BASE_URL=... REASONLAB_LLM_MODEL=gpt-4o OPENAI_API_KEY=... \
        python -m reasonlab.cli library generate nephrology dermatology --output data/my_library.yaml

The LLM sees one existing entry as the format to follow and is asked for JSON (a JSON schema where the
endpoint takes one; a tolerant parser otherwise). Nothing it says is trusted: the entry must pass
`validate_library` and the rules below (sizes, no answer letters, no refusal, no copy of the example), or
it is asked again with the broken rule named, up to `attempts` times; then one clear error. The output is
the whole library plus the new entries, written atomically, with each new entry's provenance in `generated.json`
beside it (model, attempts, tokens): never the key.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from reasonlab.errors import ReasonlabError
from reasonlab.llm_client import LLMClient
from reasonlab.llm_output import REFUSAL, normalize
from reasonlab.retrieval.library import DOMAIN_NAME, FIELDS, validate_library

MAX_ITEMS = 8  # knowledge facts / reasoning steps per entry
MIN_ITEMS = 2
MAX_WORDS = 45  # per fact, step or description: an instruction is read before every question
ANSWER_LETTER = re.compile(r"\b(answer|option|choice)\s*(is\s*)?\(?[A-E]\)?(?![a-z])", re.I)

ENTRY_SCHEMA = {
    "type": "object",
    "properties": {"description": {"type": "string"},
                   "knowledge": {"type": "array", "items": {"type": "string"}},
                   "reasoning": {"type": "array", "items": {"type": "string"}}},
    "required": list(FIELDS), "additionalProperties": False,
}


def build_messages(domain: str, library: dict[str, dict[str, Any]], hint: str = "",
                   broken_rule: str = "") -> list[dict]:
    example_domain, example = next(iter(library.items()))
    rules = (
        "You write entries of an instruction library that a small language model reads before a medical "
        "multiple-choice question. An entry is background knowledge and reasoning steps for one clinical domain: "
        f"`description` (one sentence naming what the domain covers), `knowledge` ({MIN_ITEMS}-{MAX_ITEMS} short, "
        f"correct, textbook facts) and `reasoning` ({MIN_ITEMS}-{MAX_ITEMS} steps a clinician follows). Each item "
        f"at most {MAX_WORDS} words. Never refer to answer options or letters. Reply with JSON only: "
        '{"description": ..., "knowledge": [...], "reasoning": [...]}')
    ask = f"Write the entry for the domain {domain.replace('_', ' ')!r}."
    if hint:
        ask += f" It covers: {hint}."
    if broken_rule:
        ask += f" Your previous reply was rejected: {broken_rule}. Follow the rules."
    return [{"role": "system", "content": rules},
            {"role": "user", "content": f"Write the entry for the domain {example_domain.replace('_', ' ')!r}."},
            {"role": "assistant", "content": json.dumps(example)},
            {"role": "user", "content": ask}]


def response_format() -> dict:
    return {"type": "json_schema", "json_schema": {"name": "library_entry", "strict": True, "schema": ENTRY_SCHEMA}}


def parse_entry(text: str | None) -> dict[str, Any]:
    """The entry object from a reply (strict, fenced or embedded JSON); ReasonlabError when there is none."""
    if text and REFUSAL.search(text):
        raise ReasonlabError(f"the reply is a refusal: {text.strip()[:120]!r}")
    try:
        obj = json.loads(text or "")
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        decoder = json.JSONDecoder()
        body = text or ""
        for m in re.finditer(r"\{", body):
            try:
                obj, _ = decoder.raw_decode(body, m.start())
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and "knowledge" in obj:
                break
            obj = None
    if not isinstance(obj, dict):
        clip = " ".join(str(text or "").split())[:120]
        raise ReasonlabError(f"no JSON object with {', '.join(FIELDS)} in the reply: {clip!r}")
    return obj


def check_new_domain(domain: str, library: dict[str, dict[str, Any]]) -> None:
    if not DOMAIN_NAME.fullmatch(domain):
        raise ReasonlabError(f"domain name {domain!r} must be lower_snake_case")
    if domain in library:
        raise ReasonlabError(f"domain {domain!r} is already in the library")


def check_entry(domain: str, entry: Any, library: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The entry, normalised, if it passes the library's validation and the generation rules."""
    check_new_domain(domain, library)
    other = next(iter(library))
    checked = validate_library({domain: entry, other: library[other]}, where="generated entry")[domain]
    for field in ("knowledge", "reasoning"):
        if not MIN_ITEMS <= len(checked[field]) <= MAX_ITEMS:
            raise ReasonlabError(f"{field} has {len(checked[field])} items; it needs {MIN_ITEMS}-{MAX_ITEMS}")
    for text in [checked["description"], *checked["knowledge"], *checked["reasoning"]]:
        if len(text.split()) > MAX_WORDS:
            raise ReasonlabError(f"{text[:60]!r}... has {len(text.split())} words (at most {MAX_WORDS})")
        if ANSWER_LETTER.search(text):
            raise ReasonlabError(f"{text[:80]!r} refers to an answer option")
    existing = {normalize(t) for e in library.values() for t in e["knowledge"] + e["reasoning"]}
    copied = [t for t in checked["knowledge"] + checked["reasoning"] if normalize(t) in existing]
    if len(copied) * 2 >= len(checked["knowledge"]) + len(checked["reasoning"]):
        raise ReasonlabError(f"the entry repeats the library's existing text ({len(copied)} items copied)")
    return checked


def generate_entry(client: LLMClient, domain: str, library: dict[str, dict[str, Any]], hint: str = "",
                   attempts: int = 3, temperature: float = 0.2, max_tokens: int = 900) -> tuple[dict, dict]:
    """(checked entry, provenance) for one new domain; one clear error after `attempts` rejected replies."""
    if attempts < 1:
        raise ReasonlabError(f"attempts must be >= 1, got {attempts}")
    check_new_domain(domain, library)  # before any call
    broken, rejected = "", []
    for attempt in range(1, attempts + 1):
        reply = client.chat(build_messages(domain, library, hint, broken), label=f"library:{domain}",
                            max_tokens=max_tokens, temperature=temperature, response_format=response_format())
        try:
            entry = check_entry(domain, parse_entry(reply.content or reply.refusal), library)
        except ReasonlabError as e:
            broken = str(e)
            rejected.append(broken)
            continue
        return entry, {"domain": domain, "model": client.cfg.model, "attempts": attempt, "rejected": rejected,
                       "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
    raise ReasonlabError(f"the LLM's entry for {domain!r} was rejected {attempts} times; last: {broken}")


def library_yaml(library: dict[str, dict[str, Any]]) -> str:
    return yaml.safe_dump(library, sort_keys=False, allow_unicode=True, width=110)
