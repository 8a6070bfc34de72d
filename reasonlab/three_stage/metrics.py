"""Pure metric functions (no torch): preference accuracy, margins, confidence intervals, perplexity."""

from __future__ import annotations

import math
import random
from typing import Sequence


def preference_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Fraction of pairs with r(chosen) > r(rejected); a tie counts as wrong."""
    _same_length(chosen, rejected)
    return sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)


def mean_margin(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Mean of r(chosen) - r(rejected)."""
    _same_length(chosen, rejected)
    return sum(c - r for c, r in zip(chosen, rejected)) / len(chosen)


def bradley_terry_loss(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Mean -log sigmoid(r_chosen - r_rejected), computed stably."""
    _same_length(chosen, rejected)
    return sum(_softplus(r - c) for c, r in zip(chosen, rejected)) / len(chosen)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside 0..{n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(values: Sequence[float], statistic=None, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` (default: the mean) over `values`."""
    if not values:
        raise ValueError("bootstrap_interval needs at least one value")
    stat = statistic or (lambda xs: sum(xs) / len(xs))
    rng = random.Random(seed)
    n = len(values)
    draws = sorted(stat([values[rng.randrange(n)] for _ in range(n)]) for _ in range(n_boot))
    lo = draws[int((1 - level) / 2 * (n_boot - 1))]
    hi = draws[int((1 + level) / 2 * (n_boot - 1))]
    return lo, hi


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token)."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one token")
    return math.exp(total_nll / n_tokens)


def preference_summary(chosen: Sequence[float], rejected: Sequence[float]) -> dict:
    """accuracy (ties wrong) with its Wilson 95 % CI, mean margin with a bootstrap 95 % CI, BT loss, ties."""
    n = len(chosen)
    wins = sum(c > r for c, r in zip(chosen, rejected))
    lo, hi = wilson_interval(wins, n)
    margins = [c - r for c, r in zip(chosen, rejected)]
    m_lo, m_hi = bootstrap_interval(margins)
    return {"n": n, "accuracy": wins / n, "ci_low": lo, "ci_high": hi, "margin": sum(margins) / n,
            "margin_ci_low": m_lo, "margin_ci_high": m_hi, "loss": bradley_terry_loss(chosen, rejected),
            "ties": sum(c == r for c, r in zip(chosen, rejected))}


def _softplus(x: float) -> float:
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"chosen has {len(a)} scores, rejected {len(b)}")
    if not a:
        raise ValueError("no pairs to score")
