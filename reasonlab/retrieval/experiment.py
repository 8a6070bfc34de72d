"""One instruction-retrieval run as plain data: its question sets, its settings and key, where its files go, and
the result it returns. No Prefect, no models.

    sets = load_question_sets(["seed", "medqa"], start=0, n=500, domains=None, library=lib)   # {set name: questions}
    run = RunFolders.of(settings(...), sets)   # run.root: runs/instruction_retrieval/<key of settings + question ids>
    run.chunk_file(model, set_name, condition, chunk)    # scores keyed by settings and chunk content only
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasonlab import paths
from reasonlab.errors import ReasonlabError
from reasonlab.io import read_structured, sha256_json
from reasonlab.retrieval import conditions, questions as question_sources
from reasonlab.retrieval.retrieve import METHODS, retrieval_accuracy


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def load_question_sets(sources: list[str], start: int, n: int, domains: str | None,
                       library: dict) -> dict[str, list[dict]]:
    """{set name: questions} per source, gold domains applied from `domains`; a gold domain the library lacks is
    one error."""
    labels = read_structured(paths.find_input(domains)) if domains else None
    sets = {}
    for spec in sources:
        qs = question_sources.load_questions(spec, start, n)
        if labels is not None:
            qs = question_sources.apply_domains(qs, labels, domains)
        conditions.check_domains(qs, library)
        sets[slug(qs[0]["source"] or spec)] = qs
    return sets


def check_top_k(top_k: int, library: dict) -> None:
    if not top_k < len(library):
        raise ReasonlabError(f"retrieval.top_k must be below the library's {len(library)} domains, got {top_k}")


def letter_sets(sets: dict[str, list[dict]]) -> list[list[str]]:
    """Every distinct list of option letters among the questions (each needs its own letter tokens)."""
    return [list(ls) for ls in dict.fromkeys(tuple(q["options"]) for qs in sets.values() for q in qs)]


@dataclass(frozen=True)
class RunFolders:
    """Where a run writes: `root` keyed by the settings and the question ids; `scores` keyed by the settings only."""

    root: Path
    scores: Path

    @classmethod
    def of(cls, settings: dict[str, Any], sets: dict[str, list[dict]]) -> RunFolders:
        base = paths.runs_dir() / "instruction_retrieval"
        key = sha256_json([settings, {k: [q["id"] for q in qs] for k, qs in sets.items()}])[:12]
        return cls(base / key, base / "scores" / sha256_json(settings)[:12])

    def results_dir(self, model: str, set_name: str) -> Path:
        return self.root / slug(model) / set_name

    def chunk_file(self, model: str, set_name: str, condition: str, chunk: list[dict]) -> Path:
        """A chunk's scores, keyed by its content: a longer run reuses every chunk a shorter one scored."""
        return self.scores / slug(model) / set_name / f"{condition}_{sha256_json(chunk)[:12]}.json"


def chunks(items: list[dict], size: int) -> list[list[dict]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def retrieval_table(questions: list[dict], ranked: list[dict], top_k: int) -> list[dict]:
    """Retrieval accuracy (with its Wilson CI) of every method at k = 1 and top_k."""
    return [retrieval_accuracy(questions, ranked, method, k) for method in METHODS for k in sorted({1, top_k})]


def main_metric(debias: bool) -> str:
    return "acc_debiased" if debias else "acc"


def chance_rate(questions: list[dict]) -> float:
    """Accuracy of a uniform guess: the mean of 1 / number of options."""
    return sum(1 / len(q["options"]) for q in questions) / len(questions)


def flow_result(root: Path, results: dict, retrieval: dict, scaling: dict, forwards: int) -> dict[str, Any]:
    """What the flow returns: the run folder, per model and set the conditions, differences and plots."""
    return {"run_dir": str(root),
            "results": {m: {s: {"plots": r["plots"], "conditions": r["summary"]["conditions"],
                                "differences": r["summary"]["differences"]} for s, r in per.items()}
                        for m, per in results.items()},
            "retrieval_accuracy": retrieval, "scaling": scaling, "forward_passes": forwards}
