"""What an edit is judged on, for a case whose prompts file gives only the prompt: neighbours taken from the
file and paraphrases written by an LLM, both checked.

Neighbours (CounterFact's neighbourhood prompts): other prompts of the same file that share the most content
words with the case (the same relation about other subjects, e.g. "The capital of Sweden is" beside "The capital
of Ukraine is"), with another answer, and not themselves target cases. Deterministic.
Paraphrases: the LLM rewords the prompt so that it still ends right before the answer; a paraphrase that names
the answer, the wrong answer, repeats the prompt or another paraphrase is rejected with its reason.
"""

from __future__ import annotations

import re

from reasonlab.concept_sft.training_texts import find_leaks
from reasonlab.llm_output import normalize, parse_items, strip_fences

VERSION = "2"  # 2: the answer is matched on word starts (its plural too)

STOP = frozenset("the a an of in is was by to and or for on at with as from that which who whose its it are be "
                 "called named".split())


def content_words(text: str) -> set[str]:
    return {w for w in normalize(text).split() if w not in STOP and len(w) > 1}


def file_neighbours(case: dict, rows: list[dict], target_prompts: set[str], k: int = 3) -> list[dict]:
    """Up to k {prompt, answer} of `rows` closest to the case by shared content words (Jaccard), ties by order."""
    mine = content_words(case["prompt"])
    scored = []
    for i, row in enumerate(rows):
        if (normalize(row["prompt"]) in target_prompts or normalize(row["answer"]) == normalize(case["answer"])
                or normalize(case["answer"]) in normalize(row["prompt"])):
            continue
        theirs = content_words(row["prompt"])
        overlap = len(mine & theirs) / max(len(mine | theirs), 1)
        if overlap > 0:
            scored.append((-overlap, i, row))
    return [{"prompt": r["prompt"], "answer": r["answer"]} for _, _, r in sorted(scored)[:k]]


def paraphrase_messages(case: dict, n: int, feedback: list[str]) -> list[dict]:
    ask = (f"Rewrite an unfinished sentence in {n} different ways. Each rewrite asks for the same fact and stops "
           f"exactly where the missing last word would follow, like the original. Never write the missing word.\n\n"
           "Example: unfinished sentence \"The capital of France is\" (missing word: Paris) -> "
           "[\"France's capital city is\", \"The city that serves as the capital of France is\"]\n\n"
           f"Unfinished sentence: {case['prompt']!r} (missing word: {case['answer']!r})\n"
           f"Reply with a JSON list of {n} strings and nothing else.")
    if feedback:
        ask += "\n\nYour last rewrites were rejected:\n" + "\n".join(f"- {f}" for f in feedback)
    return [{"role": "system", "content": "You rewrite sentences. You reply with JSON only."},
            {"role": "user", "content": ask}]


def parse_strings(reply: str | None) -> list[str]:
    """A JSON list of strings from a reply (fenced or embedded too); [] when there is none."""
    items, _ = parse_items(reply)
    if not items and reply:
        match = re.search(r"\[.*\]", strip_fences(reply), re.S)
        if match:
            items, _ = parse_items(match.group(0))
    return [i.strip() for i in items if isinstance(i, str) and i.strip()]


def check_paraphrases(texts: list[str], case: dict) -> tuple[list[str], list[dict]]:
    """(accepted, rejected with reasons): no answer, no wrong answer, not the prompt, no duplicate."""
    accepted, rejected, seen = [], [], {normalize(case["prompt"])}
    banned = {w.strip().lower(): why for w, why in ((case["answer"], "the answer"),
                                                      (case.get("wrong_word") or "", "the wrong answer")) if w.strip()}
    for text in texts:
        named = find_leaks(text, banned)  # word starts, as the leak check: "chloroplasts" names "chloroplast"
        if named:
            rejected.append({"text": text, "reason": f"it names {named[0][2]}"})
        elif normalize(text) in seen:
            rejected.append({"text": text, "reason": "it repeats the prompt or another rewrite"})
        elif len(content_words(text)) < 2:
            rejected.append({"text": text, "reason": "too short to ask for the fact"})
        else:
            accepted.append(text.strip().rstrip(".?!:…").rstrip())
            seen.add(normalize(text))
    return accepted, rejected


def write_paraphrases(client, case: dict, n: int = 3, max_attempts: int = 3) -> dict:
    """Ask until n paraphrases pass `check_paraphrases` or `max_attempts` requests are made; fewer is recorded,
    not an error (the case is then judged on the paraphrases it has)."""
    accepted: list[str] = []
    rejected: list[dict] = []
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    attempts = 0
    feedback: list[str] = []
    while len(accepted) < n and attempts < max_attempts:
        attempts += 1
        reply = client.chat(paraphrase_messages(case, n - len(accepted), feedback), label="paraphrases",
                            max_tokens=60 * n, temperature=0.7 if attempts > 1 else 0.0)
        usage["prompt_tokens"] += reply.prompt_tokens
        usage["completion_tokens"] += reply.completion_tokens
        texts = parse_strings(reply.content)
        ok, bad = check_paraphrases(texts, {**case, "prompt": case["prompt"]})
        ok = [t for t in ok if normalize(t) not in {normalize(a) for a in accepted}]
        accepted += ok[: n - len(accepted)]
        rejected += bad + ([{"text": (reply.content or reply.refusal or "")[:200], "reason": "no JSON list of "
                            "strings in the reply"}] if not texts else [])
        feedback = [f"{r['text'][:80]!r}: {r['reason']}" for r in rejected[-4:]]
    return {"paraphrases": accepted, "attempts": attempts, "rejected": rejected, "usage": usage}
