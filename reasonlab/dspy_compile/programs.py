"""The DSPy programs (modules with signatures), built from a plain `ProgramSpec`.

    program = build_program({"task": "gsm8k", "cot": True})
    program(question="...").answer

GSM8K: `MathSolver` (ChainOfThought or Predict over question -> answer). HotPotQA: `MultiHopQA` over the
question's own 10 paragraphs; with `retriever="bm25"` it retrieves the top `k` paragraphs (bm25s),
writes a follow-up query from what it found (`hops` >= 2), retrieves again, and answers from the union.
`VERSION` is the programs' source version: it enters every compile and evaluation cache key.
"""

from __future__ import annotations

from typing import Any

import dspy

from reasonlab.errors import ReasonlabError

VERSION = "1"
RETRIEVERS = (None, "bm25")


class MathQA(dspy.Signature):
    """Solve the grade-school math word problem. The answer is the final number only."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="the final numeric answer, a number only")


class ParagraphQA(dspy.Signature):
    """Answer the question using the paragraphs; several may be needed. The answer is a short phrase."""

    paragraphs: list[str] = dspy.InputField(desc="'title | text' paragraphs")
    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="a short factoid answer (a few words, or yes/no)")


class FollowUpQuery(dspy.Signature):
    """Write a search query for the missing fact needed to answer the question."""

    paragraphs: list[str] = dspy.InputField()
    question: str = dspy.InputField()
    query: str = dspy.OutputField()


class MathSolver(dspy.Module):
    def __init__(self, cot: bool = True):
        super().__init__()
        self.solve = dspy.ChainOfThought(MathQA) if cot else dspy.Predict(MathQA)

    def forward(self, question: str):
        return self.solve(question=question)


def bm25_top(query: str, paragraphs: list[str], k: int) -> list[str]:
    """The `k` paragraphs that best match `query` (bm25s; original order kept among the picks)."""
    if len(paragraphs) <= k:
        return list(paragraphs)
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(paragraphs, stopwords="en", show_progress=False), show_progress=False)
    docs, _ = retriever.retrieve(bm25s.tokenize([query], stopwords="en", show_progress=False), k=k,
                                 show_progress=False)
    picked = sorted(int(i) for i in docs[0])
    return [paragraphs[i] for i in picked]


class MultiHopQA(dspy.Module):
    def __init__(self, cot: bool = True, retriever: str | None = None, k: int = 3, hops: int = 2):
        super().__init__()
        self.retriever, self.k, self.hops = retriever, k, hops
        if retriever and hops >= 2:
            self.follow_up = dspy.Predict(FollowUpQuery)
        self.answer = dspy.ChainOfThought(ParagraphQA) if cot else dspy.Predict(ParagraphQA)

    def forward(self, question: str, paragraphs: list[str]):
        found = paragraphs
        if self.retriever == "bm25":
            found = bm25_top(question, paragraphs, self.k)
            for _ in range(self.hops - 1):
                query = self.follow_up(paragraphs=found, question=question).query
                more = bm25_top(f"{question} {query}", [p for p in paragraphs if p not in found], self.k)
                found = found + more
        return self.answer(paragraphs=found, question=question)


def check_program_spec(spec: dict[str, Any]) -> dict[str, Any]:
    task = spec.get("task")
    if task not in ("gsm8k", "hotpotqa"):
        raise ReasonlabError(f"unknown task {task!r}: use gsm8k or hotpotqa")
    if spec.get("retriever") not in RETRIEVERS:
        raise ReasonlabError(f"unknown retriever {spec.get('retriever')!r}: use none or bm25")
    return {"task": task, "cot": bool(spec.get("cot", True)), "retriever": spec.get("retriever"),
            "k": int(spec.get("k", 3)), "hops": int(spec.get("hops", 2)), "version": VERSION}


def build_program(spec: dict[str, Any]) -> dspy.Module:
    spec = check_program_spec(spec)
    if spec["task"] == "gsm8k":
        return MathSolver(cot=spec["cot"])
    return MultiHopQA(cot=spec["cot"], retriever=spec["retriever"], k=spec["k"], hops=spec["hops"])


def input_keys(task: str) -> tuple[str, ...]:
    return ("question",) if task == "gsm8k" else ("question", "paragraphs")


def to_example(row: dict[str, Any], task: str) -> dspy.Example:
    """A data row (or a hand-written demo) as a dspy.Example with the task's inputs marked."""
    fields = {k: v for k, v in row.items() if k in ("question", "answer", "paragraphs", "reasoning")}
    return dspy.Example(**fields).with_inputs(*input_keys(task))


def load_program(spec: dict[str, Any], path: str) -> dspy.Module:
    """A compiled program saved with `program.save(path)` (DSPy's JSON state), rebuilt from its spec."""
    program = build_program(spec)
    program.load(path)
    return program
