"""The rules a generated completion prompt must pass (beyond `prompts.validate_item`): one short answer that is
the very next word, an unfinished sentence, one correct answer; paraphrases and neighbours checked one by one."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from reasonlab.concept_sft.prompts import PromptItem, validate_item
from reasonlab.errors import ReasonlabError
from reasonlab.llm_output import normalize

DETERMINERS = {"the", "a", "an", "this", "that", "these", "those", "its", "his", "her", "their", "some", "any",
               "many", "several", "each", "every", "one", "our", "your", "my"}
SEVERAL_ANSWERS = re.compile(r"\b(includes?|including|such as|for example|e\.g\.|examples? of|one of|among)\b", re.I)


def check_item(row: Any, where: str) -> PromptItem:
    """validate_item (the concept-SFT study's rules) plus the generation rules; ReasonlabError names the broken rule.

    Paraphrases and neighbours are not checked here (see `check_extras`): a bad one is dropped, not the item."""
    if isinstance(row, dict):
        row = {k: row[k] for k in ("prompt", "answer", "topic") if k in row}  # extra keys an LLM adds are dropped
        if isinstance(row.get("topic"), list):
            row["topic"] = [t for t in row["topic"] if isinstance(t, str) and t.strip()]
    item = validate_item(row, where)
    prompt, answer = item.prompt, item.answer
    if answer.split()[0].lower() in DETERMINERS:
        raise ReasonlabError(f"{where}: answer {answer!r} starts with a determiner; the first word must be the answer")
    if prompt.rstrip()[-1] in ".!:;":
        raise ReasonlabError(f"{where}: prompt {prompt!r} is a finished sentence, not a completion")
    if re.search(r"_{2,}|\[(blank|mask|answer)\]|\.\.\.|…", prompt, re.I):
        raise ReasonlabError(f"{where}: prompt {prompt!r} is fill-in-the-blank; write a completion")
    if len(prompt.split()) < 3:
        raise ReasonlabError(f"{where}: prompt {prompt!r} is too short to have one unambiguous answer")
    if not re.search(r"[A-Za-z]", answer) or re.search(r"[/,;]|\b(or|and)\b", answer, re.I):
        raise ReasonlabError(f"{where}: answer {answer!r} is not a single 1-2 word answer")
    if normalize(answer) and re.search(rf"\b{re.escape(normalize(answer))}\b", normalize(prompt)):
        raise ReasonlabError(f"{where}: prompt {prompt!r} already contains its answer {answer!r}")
    if SEVERAL_ANSWERS.search(prompt):
        raise ReasonlabError(f"{where}: prompt {prompt!r} admits several valid answers")
    return item


def check_extras(row: Any, item: PromptItem, where: str, taken: dict[str, str]) -> tuple[PromptItem, list[dict]]:
    """The item with the paraphrases and neighbours that pass the same rules; the dropped ones with reasons.

    A paraphrase keeps the item's answer; a neighbour has its own answer and must not be a prompt already
    taken (another item, a paraphrase): it would be a target of the edit, not a fact it must leave alone."""
    raw_para = row.get("paraphrases") if isinstance(row, dict) else None
    raw_neigh = row.get("neighbours") if isinstance(row, dict) else None
    paraphrases, neighbours, dropped = [], [], []
    own = {normalize(item.prompt)}
    for j, text in enumerate(raw_para if isinstance(raw_para, list) else []):
        at = f"{where} paraphrase {j}"
        try:
            p = check_item({"prompt": text, "answer": item.answer, "topic": item.topic}, at).prompt
            if normalize(p) in own:
                raise ReasonlabError(f"{at}: {p!r} repeats the prompt or another paraphrase")
            if normalize(p) in taken:
                raise ReasonlabError(f"{at}: {p!r} duplicates a prompt from {taken[normalize(p)]}")
        except ReasonlabError as e:
            dropped.append({"kind": "paraphrase", "prompt": text, "reason": reason_of(e, at)})
            continue
        own.add(normalize(p))
        paraphrases.append(p)
    for j, n in enumerate(raw_neigh if isinstance(raw_neigh, list) else []):
        at = f"{where} neighbour {j}"
        try:
            if not isinstance(n, dict):
                raise ReasonlabError(f"{at}: expected {{prompt, answer}}, got {n!r}")
            checked = check_item({"prompt": n.get("prompt"), "answer": n.get("answer")}, at)
            key = normalize(checked.prompt)
            if key in own or key in taken:
                raise ReasonlabError(f"{at}: {checked.prompt!r} is itself a target prompt "
                                     f"({'this item' if key in own else taken[key]})")
        except ReasonlabError as e:
            dropped.append({"kind": "neighbour", "prompt": n.get("prompt") if isinstance(n, dict) else n,
                            "reason": reason_of(e, at)})
            continue
        neighbours.append({"prompt": checked.prompt, "answer": checked.answer})
    return replace(item, paraphrases=paraphrases, neighbours=neighbours), dropped


def drop_target_neighbours(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rows, dropped): neighbours that became targets later (a later item or paraphrase has their prompt) are
    dropped, so the output always passes `prompts.load_prompts`."""
    target_of = {normalize(w): i for i, r in enumerate(rows) for w in [r["prompt"], *r.get("paraphrases", [])]}
    out, dropped = [], []
    for i, r in enumerate(rows):
        keep = []
        for n in r.get("neighbours", []):
            t = target_of.get(normalize(n["prompt"]), i)
            if t == i:
                keep.append(n)
            else:
                dropped.append({"kind": "neighbour", "prompt": n["prompt"], "of": r["prompt"],
                                "reason": f"{n['prompt']!r} is itself a target prompt (item {rows[t]['prompt']!r})"})
        out.append({**r, "neighbours": keep})
    return out, dropped


def reason_of(err: ReasonlabError, where: str) -> str:
    msg = str(err)
    return msg[len(where) + 2:] if msg.startswith(where + ": ") else msg
