"""The instruction library: domain -> description, background knowledge, reasoning steps (a YAML file).

    cardiology:
      description: Heart and vessels - ischemia, arrhythmia, ...
      knowledge: [fact, fact, ...]
      reasoning: [step, step, ...]        # numbered when rendered

`load_library` validates every entry (one ReasonlabError naming the domain and the field), `library_hash`
identifies its content (the key of cached library embeddings), `render` is the text a model reads, and
`document` the text a retriever indexes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from reasonlab.errors import ReasonlabError
from reasonlab.io import read_structured, sha256_json

DEFAULT_LIBRARY = "data/instruction_library.yaml"
FIELDS = ("description", "knowledge", "reasoning")
DOMAIN_NAME = re.compile(r"[a-z][a-z0-9_]*")


def validate_library(data: Any, where: str = "instruction library") -> dict[str, dict[str, Any]]:
    """The library as {domain: {description, knowledge, reasoning}}; one clear error for the first bad entry."""
    if not isinstance(data, dict) or not data:
        raise ReasonlabError(f"{where}: expected a non-empty mapping of domain -> entry")
    if len(data) < 2:
        raise ReasonlabError(f"{where}: needs at least two domains (retrieval and the random-other control choose among them)")
    out = {}
    for domain, entry in data.items():
        if not isinstance(domain, str) or not DOMAIN_NAME.fullmatch(domain):
            raise ReasonlabError(f"{where}: domain name {domain!r} must be lower_snake_case")
        if not isinstance(entry, dict):
            raise ReasonlabError(f"{where}: entry {domain!r} must be a mapping with {', '.join(FIELDS)}")
        for field in FIELDS:
            if field not in entry:
                raise ReasonlabError(f"{where}: entry {domain!r} is missing the field {field!r} "
                                     f"(each entry needs {', '.join(FIELDS)})")
        unknown = set(entry) - set(FIELDS)
        if unknown:
            raise ReasonlabError(f"{where}: entry {domain!r} has unknown field(s) {sorted(unknown)}")
        if not isinstance(entry["description"], str) or not entry["description"].strip():
            raise ReasonlabError(f"{where}: entry {domain!r}: description must be a non-empty string")
        for field in ("knowledge", "reasoning"):
            items = entry[field]
            if not isinstance(items, list) or not items or not all(isinstance(s, str) and s.strip() for s in items):
                raise ReasonlabError(f"{where}: entry {domain!r}: {field} must be a non-empty list of non-empty strings")
        out[domain] = {"description": entry["description"].strip(),
                       "knowledge": [s.strip() for s in entry["knowledge"]],
                       "reasoning": [re.sub(r"^\d+[.)]\s*", "", s.strip()) for s in entry["reasoning"]]}
    return out


def load_library(path: Path | str) -> dict[str, dict[str, Any]]:
    return validate_library(read_structured(path), where=str(path))


def library_hash(library: dict[str, dict[str, Any]]) -> str:
    return sha256_json(library)[:16]


def render(domain: str, entry: dict[str, Any]) -> str:
    """The instruction as the model reads it (placed before the question)."""
    knowledge = "\n".join(f"- {k}" for k in entry["knowledge"])
    steps = "\n".join(f"{i}. {s}" for i, s in enumerate(entry["reasoning"], 1))
    return f"Background knowledge ({domain.replace('_', ' ')}):\n{knowledge}\nReasoning steps:\n{steps}"


def document(domain: str, entry: dict[str, Any]) -> str:
    """The text a retriever indexes for a domain: its name, description, knowledge and steps."""
    return " ".join([domain.replace("_", " ") + ".", entry["description"], *entry["knowledge"], *entry["reasoning"]])
