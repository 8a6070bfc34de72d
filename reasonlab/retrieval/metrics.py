"""Metrics as pure functions of plain lists: accuracy, paired bootstrap CIs, McNemar, entropy, information gain,
KL divergence, Brier score, expected calibration error and the reliability-diagram bins. Entropies are in bits."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np


def accuracy(correct: list[bool]) -> float:
    return float(np.mean(correct)) if len(correct) else float("nan")


def bootstrap_ci(correct: list[bool], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of one accuracy."""
    x = np.asarray(correct, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, 1 - (1 - level) / 2))


def paired_bootstrap_diff(a: list[bool], b: list[bool], n_boot: int = 2000, seed: int = 0,
                          level: float = 0.95) -> dict[str, float]:
    """acc(b) - acc(a) on the same questions, with a paired percentile bootstrap CI (questions resampled together)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in size: {x.size} vs {y.size}")
    if x.size == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan")}
    d = y - x
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(axis=1)
    return {"diff": float(d.mean()), "lo": float(np.quantile(means, (1 - level) / 2)),
            "hi": float(np.quantile(means, 1 - (1 - level) / 2))}


def mcnemar(a: list[bool], b: list[bool]) -> dict[str, float]:
    """Exact McNemar test (two-sided binomial on the discordant pairs): b01 = a wrong & b right, b10 = the reverse."""
    from scipy.stats import binomtest

    b01 = sum((not x) and y for x, y in zip(a, b))
    b10 = sum(x and (not y) for x, y in zip(a, b))
    p = 1.0 if b01 + b10 == 0 else float(binomtest(b01, b01 + b10, 0.5).pvalue)
    return {"b01": b01, "b10": b10, "p_value": p}


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
