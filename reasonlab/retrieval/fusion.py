"""Reciprocal-rank fusion (Cormack et al. 2009; MedRAG's RRF): score(d) = sum over rankers of 1 / (k + rank(d)).

Ties never depend on the library's order: equal scores are ordered by domain name, in each ranker's ranks and in
the final order (`order`), so reordering the library YAML changes no ranking.
"""

from __future__ import annotations

import numpy as np

RRF_K = 60


def order(scores: np.ndarray, names: list[str]) -> np.ndarray:
    """Column indices of one row of scores [documents], best first; equal scores by name."""
    return np.lexsort((np.asarray(names), -np.asarray(scores, dtype=float)))


def ranks(scores: np.ndarray, names: list[str]) -> np.ndarray:
    """1-based rank of every column per row of scores [queries, documents] (highest = 1; ties by name)."""
    out = np.empty(scores.shape, dtype=np.int64)
    for i, row in enumerate(scores):
        out[i, order(row, names)] = np.arange(1, scores.shape[1] + 1)
    return out


def reciprocal_rank_fusion(score_matrices: list[np.ndarray], names: list[str], k: int = RRF_K) -> np.ndarray:
    """Fused scores [queries, documents] from several rankers' score matrices of that shape; `names` the documents'."""
    if not score_matrices:
        raise ValueError("reciprocal_rank_fusion needs at least one ranking")
    return sum(1.0 / (k + ranks(s, names)) for s in score_matrices)
