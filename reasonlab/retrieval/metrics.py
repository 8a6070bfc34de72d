"""Metrics as pure functions of plain lists: accuracy, entropy, information gain, KL divergence, Brier score,
expected calibration error and the reliability-diagram bins. Entropies are in bits. Intervals and tests
(bootstraps, McNemar) come from `reasonlab.stats`."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np


def entropy(p: list[float]) -> float:
    return float(-sum(x * math.log2(x) for x in p if x > 0))


def information_gain(without: list[float], with_: list[float]) -> float:
    """H(without) - H(with): how much the instruction sharpened the distribution (negative: it flattened it)."""
    return entropy(without) - entropy(with_)


def kl_divergence(p: list[float], q: list[float], eps: float = 1e-12) -> float:
    """KL(p || q) in bits."""
    return float(sum(x * math.log2(x / max(y, eps)) for x, y in zip(p, q) if x > 0))


def brier(probs: list[list[float]], answers: list[int]) -> float:
    """Multi-class Brier score: mean over questions of sum_k (p_k - 1[k = answer])^2."""
    if not probs:
        return float("nan")
    p = np.asarray(probs, dtype=float)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(answers)), answers] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def reliability_bins(probs: list[list[float]], answers: list[int], n_bins: int = 10) -> list[dict]:
    """Equal-width bins of top-1 confidence: [{lo, hi, count, confidence, accuracy}] (empty bins kept, count 0)."""
    p = np.asarray(probs, dtype=float)
    conf = p.max(axis=1) if p.size else np.zeros(0)
    hit = (p.argmax(axis=1) == np.asarray(answers)) if p.size else np.zeros(0, dtype=bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = []
    for i in range(n_bins):
        inside = (conf > edges[i]) & (conf <= edges[i + 1]) if i else (conf >= edges[0]) & (conf <= edges[1])
        count = int(inside.sum())
        out.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": count,
                    "confidence": float(conf[inside].mean()) if count else None,
                    "accuracy": float(hit[inside].mean()) if count else None})
    return out


def expected_calibration_error(probs: list[list[float]], answers: list[int], n_bins: int = 10) -> float:
    """ECE: sum over bins of (share of questions) x |accuracy - mean confidence|."""
    bins = reliability_bins(probs, answers, n_bins)
    total = sum(b["count"] for b in bins)
    if not total:
        return float("nan")
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def letter_distribution(preds: list[str], letters: str = "ABCD") -> dict[str, float]:
    """Share of predictions per letter (beside accuracy: a model answering 'A' everywhere shows here)."""
    counts = Counter(preds)
    n = len(preds) or 1
    return {k: counts.get(k, 0) / n for k in letters}
