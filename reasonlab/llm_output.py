"""Reading what an LLM wrote: normalized text for duplicate checks, refusals, and JSON items parsed tolerantly
(strict JSON, then fenced or embedded JSON, then every complete object that looks like an item)."""

from __future__ import annotations

import json
import re
from typing import Any

REFUSAL = re.compile(r"^\s*(i'?m sorry|i am sorry|sorry,|i can(?:'|no)t|i cannot|i won'?t|as an ai)", re.I)


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces: the form two texts are compared in."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def strip_fences(text: str) -> str:
    m = re.search(r"```(?:json)?\s*(.*?)(?:```|$)", text, re.S)
    return m.group(1) if m else text


def rows_from(obj: Any) -> list | None:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        for key in ("items", "prompts", "data", "results"):
            if isinstance(obj.get(key), list):
                return obj[key]
        if "prompt" in obj:
            return [obj]
    return None


def parse_items(text: str | None) -> tuple[list, str]:
    """Rows from an LLM reply: strict JSON, then fenced/embedded JSON, then each complete `{...}` object.

    Returns (rows, how) where how says which way worked; ([], reason) when nothing parsed.
    """
    if not text or not text.strip():
        return [], "empty reply"
    body = strip_fences(text).strip()
    for candidate in (text.strip(), body, re.sub(r",\s*([}\]])", r"\1", body)):
        try:
            rows = rows_from(json.loads(candidate))
        except (json.JSONDecodeError, ValueError):
            continue
        if rows is not None:
            return rows, "json"
    decoder = json.JSONDecoder()
    rows: list = []
    for m in re.finditer(r"\{", body):  # salvage every complete object that looks like an item
        try:
            obj, _ = decoder.raw_decode(body, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "prompt" in obj:
            rows.append(obj)
    seen, unique = set(), []
    for r in rows:
        key = json.dumps(r, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    if unique:
        return unique, "salvaged objects"
    return [], f"malformed JSON: {clip(text, 120)!r}"


def clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "…"
