"""MBPP problems: load from a parquet / jsonl file or the Hub, and split them deterministically.

    from reasonlab.activations import mbpp
    problems = mbpp.load_split("validation")                  # 388 problems (reasonlab.datasets: "mbpp")
    problems = mbpp.load_split("validation", "split.parquet")  # a ready-made split (e.g. validation_mbpp.parquet)

The split (the original study's proportions: 50 % SAE training, 10 % hyperparameters, 40 % validation):
every problem gets the McCabe cyclomatic complexity of its reference solution; problems are sorted by
(complexity, sha256(f"{seed}:{task_id}")) and dealt in runs of ten: positions 0-4 -> "sae",
5 -> "hyperparams", 6-9 -> "validation". So each split spans the complexity range evenly, and the full
974-problem MBPP gives sae 489, hyperparams 97, validation 388 (the original study's counts), the same on every
machine. A parquet that already is a split (has no `code` column needed) is used as given.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Any

from reasonlab.errors import ReasonlabError
from reasonlab.io import read_rows
from reasonlab import datasets

SPLITS = ("sae", "hyperparams", "validation")
REQUIRED = ("task_id", "text", "test_list")  # + cyclomatic_complexity (computed when a `code` column allows)
HUB_ID = "google-research-datasets/mbpp"
DEFAULT_SEED = 42


def default_mbpp_path() -> Path:
    """mbpp.jsonl from `reasonlab.datasets`: the stored copy, the REASONLAB_SHARED_DATA mirror, else the Hub."""
    return datasets.locate_file("mbpp")


# ---------------------------------------------------------------- complexity (pure)

_DECISIONS = (ast.If, ast.IfExp, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.With, ast.AsyncWith,
              ast.Assert, ast.match_case)


def cyclomatic_complexity(code: str) -> int:
    """McCabe complexity of a program: 1 + decision points (branches, loops, handlers, boolean operators,
    comprehension clauses). Code that does not parse counts as 1."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return 1
    score = 1
    for node in ast.walk(tree):
        if isinstance(node, _DECISIONS):
            score += 1
        elif isinstance(node, ast.BoolOp):
            score += len(node.values) - 1
        elif isinstance(node, ast.comprehension):
            score += 1 + len(node.ifs)
    return score


def assign_splits(rows: list[dict], seed: int = DEFAULT_SEED) -> dict[Any, str]:
    """task_id -> split name, stratified by complexity (see the module docstring)."""
    def order(r: dict) -> tuple:
        return (r["cyclomatic_complexity"], hashlib.sha256(f"{seed}:{r['task_id']}".encode()).hexdigest())

    out = {}
    for i, r in enumerate(sorted(rows, key=order)):
        slot = i % 10
        out[r["task_id"]] = "sae" if slot < 5 else "hyperparams" if slot == 5 else "validation"
    return out


# ---------------------------------------------------------------- loading

def _normalize(rows: list[dict], source: str) -> list[dict]:
    if not rows:
        raise ReasonlabError(f"{source}: no MBPP problems in it")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise ReasonlabError(f"{source}: missing column(s) {missing}; MBPP needs {list(REQUIRED)} "
                             f"(found {sorted(rows[0])})")
    out = []
    for i, r in enumerate(rows):
        tests = r["test_list"]
        tests = list(tests.tolist() if hasattr(tests, "tolist") else tests) if tests is not None else []
        if not tests or not all(isinstance(t, str) for t in tests):
            raise ReasonlabError(f"{source}: row {i} (task_id {r.get('task_id')!r}): test_list must be a "
                                 "non-empty list of assert statements")
        row = {"task_id": int(r["task_id"]), "text": str(r["text"]), "test_list": tests,
               "test_setup_code": str(r.get("test_setup_code") or ""), "code": str(r.get("code") or "")}
        cc = r.get("cyclomatic_complexity")
        row["cyclomatic_complexity"] = int(cc) if cc is not None else cyclomatic_complexity(row["code"])
        out.append(row)
    ids = [r["task_id"] for r in out]
    if len(set(ids)) != len(ids):
        raise ReasonlabError(f"{source}: duplicate task_id values")
    return out


def _read_rows(path: Path) -> list[dict]:
    return read_rows(path, under=("rows",))


def _hub_rows() -> list[dict]:
    """All 974 problems of the Hub's 'full' config (its train/test/validation/prompt splits together)."""
    from datasets import load_dataset

    try:
        ds = load_dataset(HUB_ID, "full")
    except Exception as e:
        raise ReasonlabError(f"MBPP from the Hub ({HUB_ID}) failed: {type(e).__name__}: {e}; "
                             "pass a local path, or run `reasonlab data fetch mbpp` where the Hub is "
                             "reachable") from None
    return [dict(r) for name in ds for r in ds[name]]


def load_problems(source: str | Path | None = None) -> list[dict]:
    """Every problem of `source` (a .parquet/.jsonl/.json path, "hub", or None for `default_mbpp_path()`)."""
    if source is None or str(source) == "":
        source = default_mbpp_path()
    if str(source) == "hub":
        return _normalize(_hub_rows(), HUB_ID)
    path = Path(source).expanduser()
    return _normalize(_read_rows(path), str(path))


def load_split(split: str = "validation", source: str | Path | None = None, seed: int = DEFAULT_SEED) -> list[dict]:
    """The problems of one split, ordered by task_id.

    A file holding the whole MBPP (974 problems) is split as documented above; any other file is taken
    to be a split already (e.g. the original study's `validation_mbpp.parquet`) and returned whole (`split="all"` also
    returns everything).
    """
    if split not in (*SPLITS, "all"):
        raise ReasonlabError(f"unknown MBPP split {split!r}: use one of {SPLITS} or 'all'")
    rows = load_problems(source)
    if split != "all" and len(rows) == 974:
        which = assign_splits(rows, seed)
        rows = [r for r in rows if which[r["task_id"]] == split]
    return sorted(rows, key=lambda r: r["task_id"])
