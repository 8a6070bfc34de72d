"""reasonlab.stats against hand-computed values and against scipy / statsmodels called directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from scipy.stats import wilcoxon as scipy_wilcoxon

from reasonlab import stats

Z95 = 1.959963984540054


def _hand_wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(60, 100), (5, 10), (0, 20), (20, 20), (1, 3)])
def test_wilson_matches_the_score_formula(k, n):
    assert stats.wilson(k, n) == pytest.approx(_hand_wilson(k, n), abs=1e-9)


def test_wilson_known_value_and_level():
    assert stats.wilson(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
    z90 = 1.6448536269514722
    assert stats.wilson(30, 50, level=0.90) == pytest.approx(_hand_wilson(30, 50, z90), abs=1e-9)


def test_wilson_at_zero_items_is_nan_and_out_of_range_raises():
    low, high = stats.wilson(0, 0)
    assert math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="successes=11 is outside 0..n=10"):
        stats.wilson(11, 10)
    with pytest.raises(ValueError):
        stats.wilson(-1, 10)


def test_rate_bundles_the_proportion_and_its_interval():
    r = stats.rate(3, 12)
    assert r["k"] == 3 and r["n"] == 12 and r["rate"] == 0.25
    assert (r["low"], r["high"]) == pytest.approx(_hand_wilson(3, 12), abs=1e-9)
    empty = stats.rate(0, 0)
    assert math.isnan(empty["rate"]) and math.isnan(empty["low"]) and math.isnan(empty["high"])


def test_mean_and_empty_samples_give_nan():
    assert stats.mean([1, 2, 3, 6]) == 3.0
    assert math.isnan(stats.mean([]))
    assert all(math.isnan(v) for v in stats.bootstrap_ci([]))
    d = stats.paired_bootstrap([], [])
    assert d["n"] == 0 and all(math.isnan(d[k]) for k in ("diff", "low", "high"))
    w = stats.wilcoxon([], [])
    assert w["n"] == 0 and math.isnan(w["p_value"]) and math.isnan(w["statistic"])
    m = stats.mcnemar([], [])
    assert (m["only_a"], m["only_b"], m["n"]) == (0, 0, 0) and math.isnan(m["p_value"])


def test_bootstrap_ci_of_a_proportion_is_near_the_normal_interval_and_reproducible():
    x = [1.0, 0.0] * 50
    low, high = stats.bootstrap_ci(x, n_boot=4000, seed=1)
    half = Z95 * math.sqrt(0.25 / 100)
    assert low == pytest.approx(0.5 - half, abs=0.02) and high == pytest.approx(0.5 + half, abs=0.02)
    assert stats.bootstrap_ci(x, n_boot=4000, seed=1) == (low, high)
    y = np.random.default_rng(0).normal(size=30)
    assert stats.bootstrap_ci(y, seed=1) == stats.bootstrap_ci(y, seed=1) != stats.bootstrap_ci(y, seed=2)


def test_bootstrap_ci_of_a_constant_sample_is_the_point_and_takes_other_statistics():
    assert stats.bootstrap_ci([0.7] * 9) == (0.7, 0.7)
    assert stats.bootstrap_ci([4.0]) == (4.0, 4.0)
    low, high = stats.bootstrap_ci([1, 2, 3, 4, 100], statistic=np.median, n_boot=500)
    assert 1 <= low <= 3 <= high <= 100      # the median never reaches the outlier's mean (22)


def test_paired_bootstrap_is_a_minus_b():
    a = [1] * 80 + [0] * 20
    b = [1] * 50 + [0] * 50
    ab = stats.paired_bootstrap(a, b, n_boot=1000)
    assert ab["diff"] == pytest.approx(0.3) and 0 < ab["low"] < 0.3 < ab["high"] and ab["n"] == 100
    ba = stats.paired_bootstrap(b, a, n_boot=1000)
    assert ba["diff"] == pytest.approx(-0.3) and ba["low"] < -0.3 < ba["high"] < 0
    same = stats.paired_bootstrap(a, a)
    assert (same["diff"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="paired samples differ in size: 1 vs 2"):
        stats.paired_bootstrap([1], [1, 0])


def test_mcnemar_counts_and_exact_p():
    a = [True] * 10 + [False] * 2 + [True] * 5 + [False] * 3
    b = [False] * 10 + [True] * 2 + [True] * 5 + [False] * 3
    m = stats.mcnemar(a, b)
    assert (m["only_a"], m["only_b"], m["n"]) == (10, 2, 20)
    assert m["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 2 ** 12)
    assert m["p_value"] == pytest.approx(binomtest(2, 12, 0.5).pvalue)
    swapped = stats.mcnemar(b, a)
    assert (swapped["only_a"], swapped["only_b"]) == (2, 10) and swapped["p_value"] == m["p_value"]
    assert stats.mcnemar([True, False], [True, False])["p_value"] == 1.0     # no discordant pair
    with pytest.raises(ValueError, match="differ in size"):
        stats.mcnemar([True], [True, False])


def test_wilcoxon_matches_scipy_on_a_minus_b():
    rng = np.random.default_rng(3)
    a = rng.normal(0.3, 1.0, 40)
    b = rng.normal(0.0, 1.0, 40)
    b[:5] = a[:5]                                   # five zero differences, dropped
    got = stats.wilcoxon(a, b)
    ref = scipy_wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    assert got["p_value"] == pytest.approx(ref.pvalue) and got["statistic"] == pytest.approx(ref.statistic)
    assert (got["n"], got["n_nonzero"]) == (40, 35)
    assert stats.wilcoxon(b, a)["p_value"] == pytest.approx(ref.pvalue)


def test_wilcoxon_with_too_few_differences_is_untested():
    few = stats.wilcoxon([1.0, 2.0, 3.0], [1.0, 2.0, 2.0], min_n=5)
    assert math.isnan(few["p_value"]) and few["n_nonzero"] == 1
    assert math.isnan(stats.wilcoxon([1.0, 2.0], [1.0, 2.0])["p_value"])


def test_holm_against_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06 for the last
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])          # capped at 1
    out = stats.holm([0.01, float("nan"), 0.04])                          # NaN is untested: m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert stats.holm([]) == []


def test_perplexity_is_exp_of_the_mean_nll():
    assert stats.perplexity(0.0, 5) == 1.0
    assert stats.perplexity(4 * math.log(2), 4) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least one token"):
        stats.perplexity(1.0, 0)
