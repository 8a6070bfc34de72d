"""One case's arms matched in training budget: every arm's tokens, counted as the trainer sees them, within
+-`tolerance` of one target, by trimming words at the end of the longest texts (trimming adds no leak).

    matched, report = match_budget({"concept": [...], "direct": [...]}, lambda texts: budget_tokens(m, cfg, texts))
    report["arms"]["direct"] == {"before": 612, "after": 548, "trimmed_words": 48, "matched": True, "reason": None}

The target is the smallest arm's total that every larger arm can reach without losing more than `max_cut` of
its tokens; an arm below the target's band (too few tokens to match) is reported and left out of `matched`,
never silently kept.
"""

from __future__ import annotations

from typing import Callable

Counter = Callable[[list[str]], int]


def match_budget(arm_texts: dict[str, list[str]], count_tokens_as_trained: Counter, tolerance: float = 0.10,
                 max_cut: float = 0.5, min_words: int = 8) -> tuple[dict[str, list[str]], dict]:
    """(arm -> texts within +-tolerance of the target, report {target, tolerance, arms: {arm: {before, after,
    trimmed_words, matched, reason}}, unmatched: [arm]})."""
    totals = {arm: count_tokens_as_trained(texts) for arm, texts in arm_texts.items() if texts}
    arms: dict[str, dict] = {arm: {"before": 0, "after": 0, "trimmed_words": 0, "matched": False,
                                   "reason": "no texts"} for arm, texts in arm_texts.items() if not texts}
    target = choose_target(list(totals.values()), tolerance, max_cut)
    matched: dict[str, list[str]] = {}
    for arm, total in totals.items():
        texts, after = arm_texts[arm], total
        if total < target * (1 - tolerance):
            arms[arm] = {"before": total, "after": total, "trimmed_words": 0, "matched": False,
                         "reason": f"{total} tokens, below the target {target} - {tolerance:.0%}: too few to match"}
            continue
        if total > target * (1 + tolerance):
            texts, after = trim_to(texts, count_tokens_as_trained, target, target * (1 + tolerance), min_words)
        ok = target * (1 - tolerance) <= after <= target * (1 + tolerance)
        arms[arm] = {"before": total, "after": after, "matched": ok,
                     "trimmed_words": sum(len(t.split()) for t in arm_texts[arm]) - sum(len(t.split()) for t in texts),
                     "reason": None if ok else f"{after} tokens after trimming, outside {target} +- {tolerance:.0%}"}
        if ok:
            matched[arm] = texts
    report = {"target": target, "tolerance": tolerance, "arms": {a: arms[a] for a in arm_texts},
              "unmatched": [a for a in arm_texts if not arms[a]["matched"]]}
    return matched, report


def choose_target(totals: list[int], tolerance: float, max_cut: float) -> int:
    """The smallest total that the largest arm reaches while keeping at least 1 - max_cut of its tokens."""
    if not totals:
        return 0
    largest = max(totals)
    return next(t for t in sorted(totals) if largest * (1 - max_cut) <= t * (1 + tolerance))


def trim_to(texts: list[str], count: Counter, goal: float, upper: float, min_words: int) -> tuple[list[str], int]:
    """`texts` with words cut from the end of the longest ones until their count is at most `upper` (aiming at
    `goal`); each keeps at least `min_words`. Returns (texts, their count)."""
    texts = list(texts)
    total = count(texts)
    overhead = count([""]) * len(texts)  # template tokens per text, which no trimming removes
    for _ in range(50):
        if total <= upper:
            break
        lengths = [len(t.split()) for t in texts]
        words_per_token = sum(lengths) / max(1, total - overhead)
        excess = max(1, round((total - goal) * words_per_token))
        level = water_level(lengths, excess, min_words)
        if level >= max(lengths):
            break  # every text is at its minimum
        texts = [" ".join(t.split()[:level]) if n > level else t for t, n in zip(texts, lengths)]
        total = count(texts)
    return texts, total


def water_level(lengths: list[int], excess: int, min_words: int) -> int:
    """The highest word count L such that cutting every text down to L removes at least `excess` words (or
    `min_words`, when even that removes less)."""
    level = max(lengths)
    while level > min_words and sum(max(0, n - level) for n in lengths) < excess:
        level -= 1
    return level


def token_counter(model) -> Callable[[str], int]:
    """Tokens of one text by `model`'s tokenizer (a ResolvedModel), no special tokens: the length rule's count."""
    from reasonlab.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def trained_tokens_counter(model, config) -> Counter:
    """Training tokens of a list of texts as the trainer sees them (templated, truncated at `config.max_length`):
    the sum `experiment.budget_tokens` computes, with the tokenizer loaded once."""
    from reasonlab.models import load_tokenizer
    from reasonlab.prompt_format import build_training_text

    tokenizer = load_tokenizer(model)

    def count(texts: list[str]) -> int:
        return sum(min(len(tokenizer.encode(build_training_text(tokenizer, t, config.use_chat_template,
                                                                config.system_prompt))), config.max_length)
                   for t in texts)
    return count
