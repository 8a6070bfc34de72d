"""Pure metric functions (no torch): preference accuracy, margins, the Bradley-Terry loss and their summary.
Intervals come from `reasonlab.stats`."""

from __future__ import annotations

import math
from typing import Sequence

from reasonlab import stats


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


def preference_summary(chosen: Sequence[float], rejected: Sequence[float]) -> dict:
    """accuracy (ties wrong) with its Wilson 95 % CI, mean margin with a bootstrap 95 % CI, BT loss, ties."""
    _same_length(chosen, rejected)
    n = len(chosen)
    wins = sum(c > r for c, r in zip(chosen, rejected))
    low, high = stats.wilson(wins, n)
    margins = [c - r for c, r in zip(chosen, rejected)]
    margin_low, margin_high = stats.bootstrap_ci(margins)
    return {"n": n, "accuracy": wins / n, "ci_low": low, "ci_high": high, "margin": stats.mean(margins),
            "margin_ci_low": margin_low, "margin_ci_high": margin_high, "loss": bradley_terry_loss(chosen, rejected),
            "ties": sum(c == r for c, r in zip(chosen, rejected))}


def _softplus(x: float) -> float:
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"chosen has {len(a)} scores, rejected {len(b)}")
    if not a:
        raise ValueError("no pairs to score")
