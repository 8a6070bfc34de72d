"""Reciprocal-rank fusion (Cormack et al. 2009; MedRAG's RRF): score(d) = sum over rankers of 1 / (k + rank(d))."""

from __future__ import annotations

import numpy as np

RRF_K = 60


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every column per row (highest score = rank 1; ties broken by column order)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    out = np.empty_like(order)
    rows = np.arange(scores.shape[0])[:, None]
    out[rows, order] = np.arange(1, scores.shape[1] + 1)[None, :]
    return out


def reciprocal_rank_fusion(score_matrices: list[np.ndarray], k: int = RRF_K) -> np.ndarray:
    """Fused (queries x documents) scores from several rankers' score matrices of the same shape."""
    if not score_matrices:
        raise ValueError("reciprocal_rank_fusion needs at least one ranking")
    return sum(1.0 / (k + ranks(s)) for s in score_matrices)
