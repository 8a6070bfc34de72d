"""BM25 over the library's domain documents (the `bm25s` package: Lucene's BM25 variant, English stopwords)."""

from __future__ import annotations

import numpy as np


def bm25_scores(documents: list[str], queries: list[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """(queries x documents) BM25 scores; queries made only of stopwords score 0 everywhere."""
    import bm25s

    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(bm25s.tokenize(documents, stopwords="en", show_progress=False), show_progress=False)
    out = np.zeros((len(queries), len(documents)), dtype=np.float32)
    for i, query in enumerate(queries):
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        if tokens:
            out[i] = retriever.get_scores(tokens)
    return out
