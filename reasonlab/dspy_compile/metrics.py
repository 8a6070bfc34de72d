"""Metrics as pure functions: GSM8K exact match under lm-evaluation-harness's two extraction rules, HotPotQA
EM/F1 (official normalisation).
Means, intervals and paired differences come from `reasonlab.stats`.

GSM8K follows lm-eval's `gsm8k` task: "strict-match" takes the first number after "#### " (regex
`#### (\-?[0-9\.\,]+)`), "flexible-extract" the last number-like run anywhere (regex
`(-?[$0-9.,]{2,})|(-?[0-9]+)`); the extracted text and the gold answer are then compared as strings after
removing ",", "$", everything up to "#### " and a final "." (case ignored). So "18.0" is not "18", and
"1,2,3" reads as "123" under flexible-extract, exactly as lm-eval reads them. DSPy's answer field plays
the part of GSM8K's answer line: strict-match reads it as "#### <answer field>" (its leading number, or the
number after a "####" it writes itself).
"""

from __future__ import annotations

import collections
import re
import string

STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORED = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def _pick(pattern: re.Pattern, text: object, index: int) -> str | None:
    """lm-eval's regex filter: the `index`-th of all matches (its first non-empty group), stripped; None if none."""
    if text is None:
        return None
    found = pattern.findall(str(text))
    if not found:
        return None
    match = found[index]
    if isinstance(match, tuple):
        match = next(m for m in match if m)
    return match.strip()


def strict_match(text: object) -> str | None:
    """lm-eval's "strict-match": the first number after "#### ", as written; None when there is none."""
    return _pick(STRICT_PATTERN, text, 0)


def flexible_extract(text: object) -> str | None:
    """lm-eval's "flexible-extract": the last number-like run in the text, normalised; None when there is none."""
    found = _pick(FLEXIBLE_PATTERN, text, -1)
    return None if found is None else normalize_number(found)


def normalize_number(text: str) -> str:
    """lm-eval's exact-match normalisation of a GSM8K answer: without ",", "$", anything up to "#### " and a
    final "."; lower-cased."""
    for pattern in IGNORED:
        text = pattern.sub("", text)
    return text.lower()


def gsm8k_scores(gold: object, predicted: object) -> dict[str, float]:
    """Strict and flexible exact match of a predicted answer field, and whether each rule extracted a number."""
    answer = None if predicted is None else str(predicted)
    strict = strict_match(None if answer is None else "#### " + answer)
    flexible = flexible_extract(answer)
    target = normalize_number(str(gold).strip())
    return {"strict": float(strict is not None and normalize_number(strict) == target),
            "flexible": float(flexible is not None and flexible == target),
            "strict_extracted": float(strict is not None), "flexible_extracted": float(flexible is not None)}


# HotPotQA's official evaluation (hotpot_evaluate_v1.py), re-implemented.
def normalize_answer(s: str) -> str:
    s = str(s).lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def hotpot_em(gold: str, predicted: str) -> float:
    return float(normalize_answer(predicted) == normalize_answer(gold))


def hotpot_f1(gold: str, predicted: str) -> float:
    pred, ref = normalize_answer(predicted), normalize_answer(gold)
    special = ("yes", "no", "noanswer")
    if (pred in special or ref in special) and pred != ref:
        return 0.0
    pred_toks, ref_toks = pred.split(), ref.split()
    common = collections.Counter(pred_toks) & collections.Counter(ref_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(ref_toks)
    return 2 * precision * recall / (precision + recall)


def score(task: str, gold: str, predicted: object) -> dict[str, float]:
    """All metrics of one prediction; `score` is the headline one (GSM8K flexible-extract accuracy, HotPotQA EM)."""
    if task == "gsm8k":
        scores = gsm8k_scores(gold, predicted)
        return {"score": scores["flexible"], "em": scores["flexible"], **scores}
    em, f1 = hotpot_em(gold, str(predicted or "")), hotpot_f1(gold, str(predicted or ""))
    return {"score": em, "em": em, "f1": f1}


def headline(task: str) -> str:
    return "accuracy" if task == "gsm8k" else "EM"
