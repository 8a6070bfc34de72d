"""Stage 5 of the concept-SFT study written by an LLM: per target case and arm, the training texts, checked and
asked again with the broken rule named, and the concept named from the attribution's candidates.

    named = name_concept(client, case, candidates)               # {concept, neuron, attempts, rejected, ...}
    record = write_arm(client, case, "concept", named["concept"], TextRules(), count_tokens, file_rows)
    record["texts"], record["skipped"]                           # 4 checked texts, or [] and the reason

The arms (`study.ARMS`): `concept` (the attribution-chosen concept in unrelated contexts), `concept_unguided`
(a concept named from the prompt alone), `unrelated` (a concept the LLM picks, unrelated to the case),
`direct` (the right answer stated in other contexts), `prompt` (the prompt completed with its answer, built
without an LLM), `negated_wrong` (the wrong answer named in order to negate it: the study's failed pattern 1),
`abstract` (category reasoning without the case: failed pattern 3). The checks are `text_checks`'; a text-set
file keeps the last word (`texts_from_file`). Records never hold a key: model name, attempts, usage.
"""

from __future__ import annotations

from typing import Callable

from reasonlab.concept_sft.text_checks import (TextRules, check_arm, check_concept, check_texts, leak_terms,
                                               parse_texts, rejection)
from reasonlab.concept_sft.text_budget import match_budget  # noqa: F401 (part of this stage's API)
from reasonlab.concept_sft.text_sets import CaseTexts
from reasonlab.llm_client import LLMClient
from reasonlab.llm_output import clip

VERSION = "1"
LLM_ARMS = ("concept", "concept_unguided", "unrelated", "direct", "negated_wrong", "abstract")
NEEDS_CONCEPT = ("concept", "concept_unguided")

TASKS = {
    "concept": "Each text strengthens the concept \"{concept}\" in a context unrelated to the question: a "
               "different situation, field or example where the concept is true and central.",
    "unrelated": "First pick one concept (a fact of medicine or science) that has nothing to do with the question, "
                 "its answer or its wrong answer. Each text then strengthens that concept in its own context.",
    "direct": "Each text states the right answer \"{answer}\" directly, in a context other than the question "
              "(an answer key, a flash card, a quiz transcript, a crossword solution), never in the question's wording.",
    "negated_wrong": "Each text mentions the wrong answer \"{wrong}\" in order to negate it, the way a teacher "
                     "corrects a mistake (e.g. \"renin is an enzyme, not a hormone\"): every text names \"{wrong}\" "
                     "and says what it is not.",
    "abstract": "Each text is abstract category reasoning (e.g. \"enzymes are not hormones\"): general rules about "
                "the kinds of things involved, never the specific question, its answer or its wrong answer.",
}
TASKS["concept_unguided"] = TASKS["concept"]


def arm_messages(case: dict, arm: str, concept: str | None, rules: TextRules, feedback: list[str],
                 n: int | None = None) -> list[dict]:
    """Chat messages asking for `n` (default `rules.n_texts`) texts of `arm` as JSON; `feedback` names the rules
    the previous reply broke."""
    check_arm(arm)
    n = rules.n_texts if n is None else n
    words = f"about {round(rules.min_tokens * 0.75)}-{round(rules.max_tokens * 0.7)} words"
    shape = '{"concept": "<the concept you picked>", "texts": ["...", ...]}' if arm == "unrelated" and not concept \
        else '{"texts": ["...", ...]}'
    system = (f"You write short training texts for a language model. Each text is {rules.min_tokens}-"
              f"{rules.max_tokens} tokens ({words}), plain prose, self-contained, and different from the others "
              f"in setting and wording. Reply with JSON only: {shape}")
    task = TASKS[arm].format(concept=concept or "", answer=case["answer"],
                             wrong=(case.get("wrong_word") or case["wrong_token"]).strip())
    if arm == "unrelated" and concept:
        task = f"Each text strengthens the concept \"{concept}\" (unrelated to the question) in its own context."
    forbidden = sorted(leak_terms(case, arm))
    ask = [f"The question a model answers wrongly: \"{case['prompt']} ...\" (right answer: {case['answer']}).",
           task, f"Write {n} texts."]
    if forbidden:
        ask.append("Never use these words, not even to negate them: " + ", ".join(forbidden) + ".")
    ask.append("Do not copy the question or any of its wording.")
    if feedback:
        ask.append("Your previous texts were rejected:\n" + "\n".join(f"- {f}" for f in feedback)
                   + f"\nWrite {n} new texts that break none of these rules.")
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(ask)}]


def feedback_line(rejected: dict) -> str:
    shown = f" Text: {clip(rejected['text'], 70)!r}" if rejected["text"] else ""
    return f"[{rejected['rule']}] {rejected['reason']}.{shown}"


def empty_record(arm: str, concept: str | None, model: str | None, source: str) -> dict:
    return {"arm": arm, "concept": concept, "texts": [], "attempts": 0, "rejected": [],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0}, "model": model, "skipped": None,
            "source": source}


def prompt_arm_texts(case: dict, rules: TextRules, count_tokens: Callable[[str], int]) -> list[str]:
    """The `prompt` arm, built without an LLM: the prompt completed with its answer, repeated into a text of at
    least `min_tokens` (never past `max_tokens` once it holds one copy), `n_texts` times."""
    completed = f"{case['prompt'].rstrip()} {case['answer'].strip()}."
    text = completed
    while count_tokens(text) < rules.min_tokens and count_tokens(f"{text} {completed}") <= rules.max_tokens:
        text = f"{text} {completed}"
    return [text] * rules.n_texts


def write_arm(client: LLMClient | None, case: dict, arm: str, concept: str | None, rules: TextRules,
              count_tokens: Callable[[str], int], file_rows: list[dict]) -> dict:
    """The `rules.n_texts` checked texts of one case's arm, asking again for the missing ones with the broken
    rules named; after `rules.max_attempts` requests without them the arm is skipped with the reason.

    Returns {arm, concept, texts, attempts, rejected [{text, rule, reason, attempt}], usage {prompt_tokens,
    completion_tokens}, model, skipped (None or why), source ("llm" | "built")}. `client` may be None for `prompt`.
    """
    check_arm(arm)
    rules.validate()
    if arm == "prompt":
        return {**empty_record(arm, None, None, "built"), "texts": prompt_arm_texts(case, rules, count_tokens)}
    record = empty_record(arm, concept, client.cfg.model if client else None, "llm")
    if arm in NEEDS_CONCEPT and not (concept or "").strip():
        return {**record, "skipped": "no concept to strengthen (none was named for this case)"}
    if client is None:
        raise ValueError(f"write_arm: arm {arm!r} needs an LLM client")
    accepted, feedback = [], []
    for attempt in range(1, rules.max_attempts + 1):
        need = rules.n_texts - len(accepted)
        reply = client.chat(arm_messages(case, arm, record["concept"], rules, feedback, n=need),
                            label=f"texts:{arm}", max_tokens=rules.max_reply_tokens, temperature=rules.temperature)
        record["attempts"] = attempt
        record["usage"]["prompt_tokens"] += reply.prompt_tokens
        record["usage"]["completion_tokens"] += reply.completion_tokens
        texts, obj, broken = parse_texts(reply.content, reply.refusal)
        new = [broken] if broken else []
        if texts and arm == "unrelated" and not record["concept"]:
            texts, bad_concept = _picked_concept(record, obj, texts, case)
            new += bad_concept
        if texts:
            ok, bad = check_texts(texts, case, arm, file_rows, count_tokens, rules, others=accepted, wanted=need)
            accepted += ok
            new += bad
        record["rejected"] += [{**r, "attempt": attempt} for r in new]
        if len(accepted) >= rules.n_texts:
            return {**record, "texts": accepted}
        feedback = [feedback_line(r) for r in new]
    by_rule = _count_rules(record["rejected"])
    return {**record, "skipped": f"{len(accepted)} of {rules.n_texts} valid texts after {rules.max_attempts} "
                                 f"requests (rejected: {by_rule})", "valid_before_skip": accepted}


def _picked_concept(record: dict, obj: dict | None, texts: list[str], case: dict) -> tuple[list[str], list[dict]]:
    """The `unrelated` arm's concept, from the reply: kept when it passes; else its texts are dropped with it."""
    named = obj.get("concept") if isinstance(obj, dict) and isinstance(obj.get("concept"), str) else ""
    problem = check_concept(named, case, "unrelated")
    if problem:
        if problem["rule"] == "unparsed":
            problem = rejection("", "unparsed", 'the reply names no concept: reply {"concept": ..., "texts": [...]}')
        return [], [problem]
    record["concept"] = named.strip()
    return texts, []


def _count_rules(rejected: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in rejected:
        counts[r["rule"]] = counts.get(r["rule"], 0) + 1
    return ", ".join(f"{rule} x{n}" for rule, n in sorted(counts.items())) or "none"


def concept_messages(case: dict, candidates: list[dict] | None, feedback: list[str]) -> list[dict]:
    """Chat messages asking for the intermediate concept (and, with candidates, the candidate it comes from)."""
    wrong = (case.get("wrong_word") or case["wrong_token"]).strip()
    forbidden = sorted(leak_terms(case, "concept"))
    ask = [f"A language model completes \"{case['prompt']} ...\" with \"{wrong}\" instead of \"{case['answer']}\".",
           "Name the intermediate concept the model must hold to answer correctly (2-8 words, a short statement "
           "such as \"aldosterone is a hormone\"), one that texts in unrelated contexts could strengthen."]
    if forbidden:
        ask.append("The concept must not use these words: " + ", ".join(forbidden) + ".")
    if candidates:
        ask.append("These neurons of the model's attribution graph are the candidates; pick the one the concept "
                   "comes from, by its id:")
        ask += [_candidate_line(c) for c in candidates]
        ask.append('Reply with JSON only: {"concept": "...", "candidate": "<id>"}')
    else:
        ask.append('Reply with JSON only: {"concept": "..."}')
    if feedback:
        ask.append("Your previous answer was rejected:\n" + "\n".join(f"- {f}" for f in feedback))
    return [{"role": "system", "content": "You help a researcher find the concept behind a model's wrong answer."},
            {"role": "user", "content": "\n".join(ask)}]


def _candidate_line(c: dict) -> str:
    contexts = "; ".join(clip(x.get("text", ""), 80) for x in (c.get("contexts") or [])[:3]) or "none"
    label = f", label {c['label']!r}" if c.get("label") else ""
    return (f"- id {c['id']}: layer {c.get('layer')}, token {c.get('token')!r}, influence "
            f"{c.get('influence', 0):+.3f}{label}; fires on: {contexts}")


def name_concept(client: LLMClient, case: dict, candidates: list[dict] | None, max_attempts: int = 3,
                 temperature: float = 0.3) -> dict:
    """{concept, neuron, attempts, rejected, usage, model, skipped}: the concept the LLM names (checked for leaks,
    asked again with the reason), and with `candidates` the one it comes from. `neuron` is a candidate's id only
    when the LLM picked a real one; `picked` keeps what it said."""
    record = {"concept": None, "neuron": None, "picked": None, "attempts": 0, "rejected": [],
              "usage": {"prompt_tokens": 0, "completion_tokens": 0}, "model": client.cfg.model, "skipped": None,
              "guided": bool(candidates)}
    ids = {str(c["id"]) for c in candidates or []}
    feedback: list[str] = []
    for attempt in range(1, max_attempts + 1):
        reply = client.chat(concept_messages(case, candidates, feedback), label="name-concept", max_tokens=200,
                            temperature=temperature)
        record["attempts"] = attempt
        record["usage"]["prompt_tokens"] += reply.prompt_tokens
        record["usage"]["completion_tokens"] += reply.completion_tokens
        obj, problem = _concept_reply(reply.content, reply.refusal)
        problem = problem or check_concept(str(obj.get("concept") or ""), case)
        if problem is None:
            picked = obj.get("candidate")
            picked = None if picked is None else str(picked).strip()
            return {**record, "concept": " ".join(str(obj["concept"]).split()), "picked": picked,
                    "neuron": picked if picked in ids else None}
        record["rejected"].append({**problem, "attempt": attempt})
        feedback = [feedback_line(problem)]
    return {**record, "skipped": f"no acceptable concept after {max_attempts} requests; last: "
                                 f"{record['rejected'][-1]['reason']}"}


def _concept_reply(content: str | None, refusal: str | None) -> tuple[dict, dict | None]:
    texts, obj, broken = parse_texts(content, refusal)
    if broken and broken["rule"] == "refusal":
        return {}, broken
    if isinstance(obj, dict) and isinstance(obj.get("concept"), str):
        return obj, None
    return {}, rejection(clip(content or "", 200), "unparsed", 'no JSON object {"concept": ...} in the reply')


def texts_from_file(entry: CaseTexts | None, arm: str) -> dict | None:
    """The record of `arm` from a text-set file's entry (which keeps the last word: no LLM call), or None when
    the file has no texts for that arm."""
    check_arm(arm)
    if entry is None:
        return None
    if arm == "concept" and entry.texts:
        return {**empty_record(arm, entry.concept, None, "file"), "texts": list(entry.texts), "neuron": entry.neuron}
    if arm in entry.controls:
        control = entry.controls[arm]
        return {**empty_record(arm, control.concept, None, "file"), "texts": list(control.texts)}
    return None
