"""Metrics as pure functions: GSM8K numeric exact match, HotPotQA EM/F1 (official normalisation).
Means, intervals and paired differences come from `reasonlab.stats`."""

from __future__ import annotations

import collections
import re
import string

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def parse_number(text: object) -> float | None:
    """The answer's number: the last number in the text ("$1,234.50." -> 1234.5); None if there is none."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    if "####" in s:
        s = s.rsplit("####", 1)[1]
    found = _NUMBER.findall(s.replace("\u2212", "-"))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def gsm8k_match(gold: object, predicted: object) -> bool:
    """Exact numeric match after normalisation (commas, $, units, trailing period; 18 == 18.0)."""
    g, p = parse_number(gold), parse_number(predicted)
    return g is not None and p is not None and abs(g - p) < 1e-6


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
    """All metrics of one prediction; `score` is the headline one (GSM8K accuracy, HotPotQA EM)."""
    if task == "gsm8k":
        ok = float(gsm8k_match(gold, predicted))
        return {"score": ok, "em": ok, "has_number": float(parse_number(predicted) is not None)}
    em, f1 = hotpot_em(gold, str(predicted or "")), hotpot_f1(gold, str(predicted or ""))
    return {"score": em, "em": em, "f1": f1}


def headline(task: str) -> str:
    return "accuracy" if task == "gsm8k" else "EM"
