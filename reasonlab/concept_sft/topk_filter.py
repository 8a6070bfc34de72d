"""Stage 2 of concept SFT: keep prompts the model gets clearly wrong with the answer close behind.

A prompt becomes a *target case* when
  1. the model's top-1 next token is clearly wrong: not a function word, not punctuation, not a special
     token, not a prefix or variant of the answer;
  2. the model's wrong answer, its greedy continuation to a word boundary (" Ren"+"in"), is not the
     answer or a piece of it, and is more probable as a whole than the whole answer (`answer_prob`);
  3. the whole answer is close behind: its rank, 1 + the number of other next tokens more probable than
     the *whole* answer, is 2..max_rank. (So " B" at rank 4 does not make "BBC" a target when p(" BBC")
     is far below it: the first token alone is not the answer.)
Every other prompt is kept in `rejected` with its reason. Both answers are scored alike, and the evaluation
scores them with the same definition (`answer_prob.score_answers`); `wrong_ids` keeps the ids the model wrote.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from reasonlab.concept_sft import answer_prob as AP
from reasonlab.prompt_format import Format, build_prompt
from reasonlab.concept_sft.prompts import PromptItem
from reasonlab.tokens import first_token_ids, token_text

VERSION = "4"  # bump when the decisions change (4: one BOS under the chat template; both answers on the same paths)
BATCH_SIZE = 16  # prompts per forward pass (the decisions do not depend on it: bench/topk_batching.py)

FUNCTION_WORDS = frozenset("""
a an the this that these those its it their his her our your my of in on at to for from by with as
and or but not no nor so than then there here is are was were be been being has have had do does did
can could may might must shall should will would which who whom whose what when where why how
some any all many much more most few one two each every other such very also only just about into
called known usually often typically generally mainly primarily probably likely
""".split())


@dataclass(frozen=True)
class TokenProb:
    token: str
    token_id: int
    prob: float


def top_tokens(tokenizer, probs, k: int = 10) -> list[TokenProb]:
    top_p, top_i = probs.topk(k)
    return [TokenProb(token_text(tokenizer, i), i, p) for p, i in zip(top_p.tolist(), top_i.tolist())]


def next_token_topk(model, tokenizer, texts: list[str], k: int = 10, batch_size: int = BATCH_SIZE) -> list[list[TokenProb]]:
    """Top-k next-token probabilities after each text (length-sorted batches)."""
    return [top_tokens(tokenizer, logp.exp(), k) for logp in AP.next_token_logprobs(model, tokenizer, texts, batch_size)]


def starts_answer(tok: TokenProb, answer: str, correct_ids: set[int]) -> bool:
    """The token begins the answer: a variant's first token, or any 2+ letter prefix (' hepat')."""
    word = tok.token.strip().lower()
    return tok.token_id in correct_ids or (len(word) >= 2 and answer.lower().startswith(word))


def why_not_clearly_wrong(top1: TokenProb, answer: str, correct_ids: set[int], special_ids: set[int]) -> str | None:
    """None if `top1` is clearly wrong for `answer`, else the reason it is not."""
    word = top1.token.strip().lower()
    if top1.token_id in correct_ids:
        return f"top-1 {top1.token!r} is the answer's first token"
    if top1.token_id in special_ids:
        return f"top-1 {top1.token!r} is a special token"
    if not any(c.isalnum() for c in word):
        return f"top-1 {top1.token!r} is punctuation or whitespace"
    if word in FUNCTION_WORDS:
        return f"top-1 {top1.token!r} is a function word"
    answer_l = answer.lower()
    if answer_l.startswith(word):
        return f"top-1 {top1.token!r} is a prefix of the answer {answer!r}"
    if word.startswith(answer_l.split()[0]):
        return f"top-1 {top1.token!r} is a variant of the answer {answer!r}"
    return None


def classify(item: PromptItem, topk: list[TokenProb], correct_ids: set[int], special_ids: set[int],
             max_rank: int = 5) -> dict:
    """Step 1 on one prompt's top-k: a rejection with its reason, or a candidate for the whole-answer step.

    The rank here is the first token's (the cheap pre-filter); `decide` replaces it by the whole answer's.
    """
    base = {"prompt": item.prompt, "answer": item.answer, "topic": item.topic,
            "paraphrases": list(item.paraphrases), "neighbours": [dict(n) for n in item.neighbours],
            **({"counterfactual": item.counterfactual} if item.counterfactual else {}),
            "top_k": [asdict(t) for t in topk]}
    reason = why_not_clearly_wrong(topk[0], item.answer, correct_ids, special_ids)
    rank = next((r for r, t in enumerate(topk, start=1) if starts_answer(t, item.answer, correct_ids)), None)
    if reason is None and rank is None:
        reason = f"answer not in the top-{len(topk)}"
    elif reason is None and rank > max_rank:
        reason = f"answer at rank {rank}, beyond rank {max_rank}"
    if reason:
        return {**base, "status": "rejected", "reason": reason, "correct_rank": rank}
    correct = topk[rank - 1]
    return {**base, "status": "target",
            "wrong_token": topk[0].token, "wrong_token_id": topk[0].token_id, "wrong_prob": topk[0].prob,
            "correct_token": correct.token, "correct_token_id": correct.token_id, "correct_prob": correct.prob,
            "correct_first_rank": rank, "correct_rank": rank}


def why_wrong_word_is_not_wrong(word: str, answer: str) -> str | None:
    """None if the greedy word is a different answer, else why it is not (the answer, or a piece of it)."""
    w, a = word.strip().lower(), answer.lower()
    if w == a:
        return f"the greedy answer {word.strip()!r} is the answer"
    if a.startswith(w) or w.startswith(a):
        return f"the greedy answer {word.strip()!r} is a prefix or variant of the answer {answer!r}"
    return None


def decide(row: dict, wrong_word: str, wrong_ids: list[int], p_wrong: float, p_correct: float,
           p_correct_first: float, max_rank: int, answer_tokens: set[int] | None = None) -> dict:
    """Step 2, with whole-answer probabilities: the final target case or a rejection with its reason.

    `answer_tokens`: the top-k token ids that start the answer (default: the one `classify` found); they are
    part of the whole answer, not ahead of it."""
    answer_tokens = answer_tokens or {row["correct_token_id"]}
    ahead = [t for t in row["top_k"] if t["token_id"] not in answer_tokens and t["prob"] > p_correct]
    rank = 1 + len(ahead)  # other next tokens that beat the whole answer
    out = {**row, "wrong_word": wrong_word, "wrong_ids": list(wrong_ids), "p_wrong": p_wrong,
           "p_correct": p_correct, "p_correct_first": p_correct_first, "correct_rank": rank}
    reason = why_wrong_word_is_not_wrong(wrong_word, row["answer"])
    if reason is None and p_correct >= p_wrong:
        reason = (f"the whole answer ({p_correct:.2%}) is at least as probable as the greedy wrong answer "
                  f"{wrong_word.strip()!r} ({p_wrong:.2%})")
    if reason is None and rank > max_rank:
        reason = (f"whole answer at rank {rank}, beyond rank {max_rank} (p={p_correct:.2%}; its first token "
                  f"{row['correct_token']!r} ranks {row['correct_first_rank']})")
    if reason:
        return {**out, "status": "rejected", "reason": reason}
    return out


def filter_prompts(model, tokenizer, items: list[PromptItem], *, k: int = 10, max_rank: int = 5,
                   fmt: Format = "completion", system_prompt: str | None = "", answer_prefix: str = " Answer:",
                   batch_size: int = BATCH_SIZE) -> dict:
    """{"target_cases": [...], "rejected": [...]} for `items`.

    One batched pass reads every prompt's next-token top-k (the cheap first-token checks); only the prompts
    that survive them get their whole answer scored and a greedy wrong word (a few more batched passes).
    `batch_size=1` is the per-prompt loop (the same decisions; see bench/topk_batching.py).
    """
    texts = [build_prompt(tokenizer, it.prompt, fmt, system_prompt, answer_prefix) for it in items]
    nexts = AP.next_token_logprobs(model, tokenizer, texts, batch_size)
    special = set(tokenizer.all_special_ids)
    topks = [top_tokens(tokenizer, logp.exp(), k) for logp in nexts]
    correct_ids = [first_token_ids(tokenizer, it.answer) for it in items]
    rows = [classify(it, tk, ids, special, max_rank) for it, tk, ids in zip(items, topks, correct_ids, strict=True)]
    live = [i for i, r in enumerate(rows) if r["status"] == "target"]
    contexts = [texts[i] for i in live]
    words = AP.greedy_words(model, tokenizer, contexts, [len(items[i].answer.split()) for i in live], batch_size)
    wrong_words = [AP.decode_word(tokenizer, ids) for ids in words]
    scored = AP.score_answers(model, tokenizer, contexts,
                              [[items[i].answer, w] for i, w in zip(live, wrong_words, strict=True)], batch_size)
    for j, i in enumerate(live):
        correct, wrong = scored[j]
        starts = {t.token_id for t in topks[i] if starts_answer(t, items[i].answer, correct_ids[i])}
        rows[i] = decide(rows[i], wrong_words[j], words[j], wrong.p_full, correct.p_full, correct.p_first,
                         max_rank, starts)
    return {
        "format": fmt,
        "top_k": k,
        "max_rank": max_rank,
        "target_cases": [r for r in rows if r["status"] == "target"],
        "rejected": [r for r in rows if r["status"] == "rejected"],
    }
