"""The cross-case statistics of the study: seeds averaged within a case, arms paired by case against concept,
checked against scipy's Wilcoxon and a hand-computed bootstrap; the findings' verdicts."""

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from reasonlab.concept_sft.study import MIN_CASES, case_means, comparisons, findings


def rows_for(concept: list[float], other: list[float], arm: str = "negated_wrong", seeds: int = 2) -> list[dict]:
    """Per case, `seeds` rows per arm whose correct_gain averages to the given value (seed spread +-0.01)."""
    out = []
    for i, (c, o) in enumerate(zip(concept, other)):
        for s in range(seeds):
            jitter = 0.01 if s % 2 else -0.01
            out.append({"case": f"case{i}", "arm": "concept", "seed": s, "correct_gain": c + jitter})
            out.append({"case": f"case{i}", "arm": arm, "seed": s, "correct_gain": o + jitter})
    return out


def test_seeds_are_averaged_within_a_case_before_pairing():
    means = case_means(rows_for([0.3], [0.1]))
    assert means[("case0", "concept")]["correct_gain"] == pytest.approx(0.3)
    assert means[("case0", "negated_wrong")]["correct_gain"] == pytest.approx(0.1)


def test_the_paired_test_is_scipys_wilcoxon_and_the_ci_a_bootstrap_of_the_case_differences():
    concept = [0.30, 0.25, 0.40, 0.10, 0.35, 0.20, 0.15, 0.50]
    other = [0.05, 0.10, 0.12, 0.11, 0.02, 0.08, 0.01, 0.20]
    [row] = [r for r in comparisons(rows_for(concept, other)) if r["measure"] == "correct_gain"]
    d = np.array(other) - np.array(concept)
    assert row["n_cases"] == 8 and row["mean_diff"] == pytest.approx(d.mean())
    assert row["p_value"] == pytest.approx(wilcoxon(d).pvalue)
    rng = np.random.default_rng(0)  # the percentile bootstrap by hand: resample cases, take the mean
    boots = np.sort([rng.choice(d, size=d.size).mean() for _ in range(2000)])
    assert row["ci_low"] == pytest.approx(np.quantile(boots, 0.025), abs=0.02)
    assert row["ci_high"] == pytest.approx(np.quantile(boots, 0.975), abs=0.02)
    assert row["p_holm"] >= row["p_value"]


def test_a_clear_difference_supports_the_finding_and_the_reverse_contradicts_it():
    concept = [0.30, 0.25, 0.40, 0.10, 0.35, 0.20, 0.15, 0.50]
    other = [c - 0.2 - 0.01 * i for i, c in enumerate(concept)]
    [first] = [f for f in findings(comparisons(rows_for(concept, other))) if f["finding"].startswith("1.")]
    assert first["verdict"] == "supports" and first["n_cases"] == 8
    [first] = [f for f in findings(comparisons(rows_for(other, concept))) if f["finding"].startswith("1.")]
    assert first["verdict"] == "contradicts"


def test_too_few_cases_cannot_tell_and_give_no_p_value():
    n = MIN_CASES - 1
    table = comparisons(rows_for([0.5] * n, [0.0] * n))
    row = next(r for r in table if r["measure"] == "correct_gain")
    assert row["n_cases"] == n and math.isnan(row["p_value"]) and math.isnan(row["p_holm"])
    verdicts = {f["finding"][:2]: f["verdict"] for f in findings(table)}
    assert verdicts == {"1.": "cannot tell", "2.": "cannot tell", "3.": "cannot tell", "4.": "cannot tell"}


def test_forest_plot_is_written(tmp_path):
    from reasonlab.concept_sft.study import forest_plot

    concept = [0.30, 0.25, 0.40, 0.10, 0.35, 0.20, 0.15, 0.50]
    png = forest_plot(comparisons(rows_for(concept, [c - 0.1 for c in concept])), tmp_path / "f.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
