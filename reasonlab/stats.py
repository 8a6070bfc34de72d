"""Every statistic the pipelines report, computed here once, with one convention.

Conventions, the same for every function:
- intervals are two-sided at `level` (95 % by default) and returned as `(low, high)`;
- an empty sample has no estimate: its figures are NaN (a Wilson interval at n = 0 is (NaN, NaN) too);
- a paired comparison is always **a − b** (the first argument minus the second), for the difference, its
  bootstrap interval and the signed-rank test alike;
- bootstraps are percentile bootstraps with `n_boot` resamples from `numpy.random.default_rng(seed)`.

The formulas are scipy's and statsmodels' (`bootstrap`, `wilcoxon`, `proportion_confint`, `mcnemar`,
`multipletests`); this module only fixes the conventions around them.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

NAN = float("nan")


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean; NaN for an empty sample."""
    return float(np.mean(values)) if len(values) else NAN


def wilson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion successes / n."""
    from statsmodels.stats.proportion import proportion_confint

    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"wilson: successes={successes} is outside 0..n={n}")
    if n == 0:
        return NAN, NAN
    low, high = proportion_confint(successes, n, alpha=1 - level, method="wilson")
    return float(low), float(high)


def rate(successes: int, n: int, level: float = 0.95) -> dict[str, float]:
    """A rate with its Wilson interval: {"k", "n", "rate", "low", "high"}."""
    low, high = wilson(successes, n, level)
    return {"k": successes, "n": n, "rate": successes / n if n else NAN, "low": low, "high": high}


def bootstrap_ci(values: Sequence[float], statistic: Callable = np.mean, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` (default: the mean) over `values`."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return NAN, NAN
    if x.size == 1 or np.all(x == x[0]):
        v = float(statistic(x))
        return v, v
    res = bootstrap((x,), statistic, n_resamples=n_boot, confidence_level=level, method="percentile",
                    rng=np.random.default_rng(seed), vectorized=False)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """mean(a) − mean(b) on the same items, with a percentile bootstrap interval resampling items jointly.

    Returns {"diff", "low", "high", "n"}."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in size: {x.size} vs {y.size}")
    d = x - y
    low, high = bootstrap_ci(d, np.mean, n_boot, seed, level)
    return {"diff": mean(d), "low": low, "high": high, "n": int(d.size)}


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float]:
    """Exact McNemar test on paired outcomes: only_a = a right and b wrong, only_b = the reverse.

    No discordant pair gives p = 1; no pair at all gives p = NaN (an empty sample)."""
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    if len(a) != len(b):
        raise ValueError(f"paired samples differ in size: {len(a)} vs {len(b)}")
    only_a = sum(bool(x) and not bool(y) for x, y in zip(a, b))
    only_b = sum(bool(y) and not bool(x) for x, y in zip(a, b))
    both = sum(bool(x) and bool(y) for x, y in zip(a, b))
    neither = len(a) - only_a - only_b - both
    if not len(a):
        return {"only_a": 0, "only_b": 0, "n": 0, "p_value": NAN}
    p = 1.0 if only_a + only_b == 0 else float(sm_mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue)
    return {"only_a": only_a, "only_b": only_b, "n": len(a), "p_value": p}


def wilcoxon(a: Sequence[float], b: Sequence[float], min_n: int = 1) -> dict[str, float]:
    """Two-sided Wilcoxon signed-rank test of a − b (zero differences dropped, scipy's `zero_method="wilcox"`).

    Fewer than `min_n` non-zero differences gives p = NaN: too few items to test."""
    from scipy.stats import wilcoxon as sp_wilcoxon

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in size: {x.size} vs {y.size}")
    d = x - y
    nonzero = int(np.count_nonzero(d))
    if nonzero < max(min_n, 1):
        return {"statistic": NAN, "p_value": NAN, "n": int(d.size), "n_nonzero": nonzero}
    res = sp_wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue), "n": int(d.size),
            "n_nonzero": nonzero}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order. NaN entries (untested) stay NaN and are not counted."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, NAN)
    tested = ~np.isnan(p)
    if tested.any():
        out[tested] = multipletests(p[tested], method="holm")[1]
    return [float(v) for v in out]


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token), from a summed NLL in nats."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one token")
    return math.exp(total_nll / n_tokens)
