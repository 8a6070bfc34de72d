"""Rank the library's domains for every question: dense (sentence embeddings), BM25, and their RRF fusion
(ties ordered by domain name, never by the library's order).

`rank_domains` returns plain data per question: the ordered domains (and scores) of each method; `retrieval_accuracy`
scores a method's top-1 / top-k against the known gold domains.
"""

from __future__ import annotations

from typing import Any

from reasonlab import stats
from reasonlab.errors import ReasonlabError
from reasonlab.retrieval.bm25 import bm25_scores
from reasonlab.retrieval.embedders import EmbedderSpec, embed_texts, library_embeddings
from reasonlab.retrieval.fusion import order, reciprocal_rank_fusion
from reasonlab.retrieval.library import document

METHODS = ("dense", "bm25", "rrf")


def query_text(question: dict[str, Any]) -> str:
    return question["question"] + " " + " ".join(question["options"].values())


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ReasonlabError(f"unknown retrieval method {method!r}: use one of {METHODS}")


def rank_domains(questions: list[dict], library: dict[str, dict], embedder: EmbedderSpec) -> dict[str, Any]:
    """{per_question: [{id, dense: [[domain, score]...], bm25: [...], rrf: [...]}], library_cached: bool}."""
    domains = list(library)
    queries = [query_text(q) for q in questions]
    lib_vectors, cached = library_embeddings(embedder, library)
    scores = {"dense": embed_texts(embedder, queries) @ lib_vectors.T,
              "bm25": bm25_scores([document(d, e) for d, e in library.items()], queries)}
    scores["rrf"] = reciprocal_rank_fusion([scores["dense"], scores["bm25"]], domains)
    rows = []
    for i, q in enumerate(questions):
        row = {"id": q["id"]}
        for method in METHODS:
            row[method] = [[domains[j], round(float(scores[method][i][j]), 6)]
                           for j in order(scores[method][i], domains)]
        rows.append(row)
    return {"per_question": rows, "library_cached": cached}


def retrieval_accuracy(questions: list[dict], ranked: list[dict], method: str, k: int = 1) -> dict[str, Any]:
    """Share of questions with a known domain whose gold domain is in the method's top-k, with its Wilson 95 % CI."""
    known = [(q, r) for q, r in zip(questions, ranked) if q.get("domain")]
    hits = sum(q["domain"] in [d for d, _ in r[method][:k]] for q, r in known)
    share = stats.rate(hits, len(known))
    return {"method": method, "k": k, "n_known": len(known), "hits": hits,
            "accuracy": share["rate"] if known else None, "low": share["low"] if known else None,
            "high": share["high"] if known else None}
