"""GSM8K and HotPotQA as plain rows, with deterministic train/dev/test subsets.

    splits = load_splits("gsm8k", train_size=200, dev_size=300, test_size=100, seed=0)
    splits["train"][0] == {"id": "train-3342", "question": "...", "answer": "72", "reasoning": "..."}

Sources: `source=None` asks `reasonlab.datasets` (the stored copy, the REASONLAB_SHARED_DATA mirror, else the
Hub, stored once); `source="hub"` reads the Hub (`openai/gsm8k`, `hotpotqa/hotpot_qa` distractor); any other
value is a local file or folder (GSM8K: a folder with train.jsonl/test.jsonl or one .jsonl file;
HotPotQA: a .json list or a .jsonl file in the original distractor format).

GSM8K follows DSPy's convention: train and dev are disjoint draws from the train split, test from the
test split. HotPotQA's offline copy has only dev questions with their 10 paragraphs, so the three
subsets are disjoint draws from that one file (questions without paragraphs are skipped and counted).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from reasonlab import datasets, paths
from reasonlab.errors import ReasonlabError
from reasonlab.io import read_rows, sha256_json

VERSION = "1"
TASKS = ("gsm8k", "hotpotqa")
HUB_IDS = {"gsm8k": ("openai/gsm8k", "main"), "hotpotqa": ("hotpotqa/hotpot_qa", "distractor")}
REQUIRED = {"gsm8k": ("question", "answer"), "hotpotqa": ("question", "answer", "context")}
_CALC = re.compile(r"<<[^>]*>>")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ReasonlabError(f"unknown task {task!r}: use one of {TASKS}")
    return task


def _read_rows(path: Path) -> list[dict]:
    return read_rows(path, under=("data",))


def _check_fields(rows: list[dict], task: str, where: str) -> None:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ReasonlabError(f"data file {where}: row {i} is not an object")
        for name in REQUIRED[task]:
            if name not in row:
                raise ReasonlabError(f"data file {where}: row {i} is missing the field {name!r} "
                                     f"({task} rows need {', '.join(REQUIRED[task])})")


def gsm8k_row(row: dict, ident: str) -> dict:
    answer = str(row["answer"])
    reasoning, _, final = answer.rpartition("####")
    if not _:
        raise ReasonlabError(f"GSM8K row {ident}: the answer has no '#### <number>' line")
    return {"id": ident, "question": row["question"].strip(), "answer": final.strip().replace(",", ""),
            "reasoning": _CALC.sub("", reasoning).strip()}


def hotpot_row(row: dict, ident: str) -> dict:
    context = row["context"]
    if isinstance(context, dict):  # Hub layout: {"title": [...], "sentences": [[...], ...]}
        context = list(zip(context["title"], context["sentences"]))
    paragraphs = [f"{title} | {''.join(sents).strip()}" for title, sents in context]
    return {"id": str(row.get("_id") or row.get("id") or ident), "question": row["question"].strip(),
            "answer": str(row["answer"]).strip(), "paragraphs": paragraphs, "type": row.get("type", ""),
            "supporting_titles": sorted({t for t, _ in row.get("supporting_facts", [])})
            if isinstance(row.get("supporting_facts"), list) else []}


def _hub_rows(task: str) -> dict[str, list[dict]]:
    try:
        import datasets

        hub_id, config = HUB_IDS[task]
        ds = datasets.load_dataset(hub_id, config)
    except Exception as e:  # offline, gated, renamed: one clear message
        raise ReasonlabError(f"could not load {task} from the Hugging Face Hub ({type(e).__name__}: {e}); "
                             f"pass a local file with data=<path>") from None
    return {split: [dict(r) for r in ds[split]] for split in ds}


def raw_splits(task: str, source: str | None = None) -> tuple[dict[str, list[dict]], str]:
    """{"train": rows, "test": rows} (GSM8K) or {"all": rows} (HotPotQA), and where they came from."""
    check_task(task)
    if source == "hub":
        rows = _hub_rows(task)
        if task == "hotpotqa":
            return {"all": rows["validation"]}, f"hub:{HUB_IDS[task][0]}"
        return {"train": rows["train"], "test": rows["test"]}, f"hub:{HUB_IDS[task][0]}"
    if source is None:
        path = datasets.locate(task) if task == "gsm8k" else datasets.locate_file(task)
    else:
        path = paths.find_input(source)
        if not path.exists():
            raise ReasonlabError(f"data file {source} does not exist (resolved to {path})")
    if task == "gsm8k" and path.is_dir():
        out = {split: _read_rows(path / f"{split}.jsonl") for split in ("train", "test")}
        for split, rows in out.items():
            _check_fields(rows, task, str(path / f"{split}.jsonl"))
        return out, str(path)
    rows = _read_rows(path)
    _check_fields(rows, task, str(path))
    if task == "gsm8k":
        return {"train": rows, "test": rows}, str(path)  # one file: disjoint draws from it
    return {"all": rows}, str(path)


def load_splits(task: str, train_size: int, dev_size: int, test_size: int, seed: int = 0,
                source: str | None = None) -> dict[str, Any]:
    """Deterministic, disjoint train/dev/test subsets (same inputs -> same rows, in the same order)."""
    for name, size in (("train_size", train_size), ("dev_size", dev_size), ("test_size", test_size)):
        if size < 0:
            raise ReasonlabError(f"{name} must be >= 0, got {size}")
    raw, origin = raw_splits(task, source)
    rng = random.Random(seed)
    skipped = 0
    if task == "gsm8k":
        train_rows, test_rows = raw["train"], raw["test"]
        same = train_rows is test_rows
        order = rng.sample(range(len(train_rows)), len(train_rows))
        need = train_size + dev_size + (test_size if same else 0)
        if need > len(train_rows):
            raise ReasonlabError(f"GSM8K {origin}: {need} train+dev examples asked, only {len(train_rows)} there")
        pick = lambda idx, rows, tag: [gsm8k_row(rows[i], f"{tag}-{i}") for i in idx]  # noqa: E731
        train = pick(order[:train_size], train_rows, "train")
        dev = pick(order[train_size:train_size + dev_size], train_rows, "train")
        if same:
            test = pick(order[train_size + dev_size:need], train_rows, "train")
        else:
            test_order = random.Random(seed + 1).sample(range(len(test_rows)), len(test_rows))
            if test_size > len(test_rows):
                raise ReasonlabError(f"GSM8K {origin}: {test_size} test examples asked, only {len(test_rows)} there")
            test = pick(test_order[:test_size], test_rows, "test")
    else:
        rows = [r for r in raw["all"] if r["context"]]
        skipped = len(raw["all"]) - len(rows)
        need = train_size + dev_size + test_size
        if need > len(rows):
            raise ReasonlabError(f"HotPotQA {origin}: {need} examples asked, only {len(rows)} with paragraphs")
        order = rng.sample(range(len(rows)), len(rows))
        conv = [hotpot_row(rows[i], f"dev-{i}") for i in order[:need]]
        train, dev, test = conv[:train_size], conv[train_size:train_size + dev_size], conv[train_size + dev_size:]
    out = {"task": task, "source": origin, "seed": seed, "train": train, "dev": dev, "test": test,
           "skipped_without_context": skipped}
    out["hashes"] = {split: sha256_json(out[split]) for split in ("train", "dev", "test")}
    return out


def load_demos(path: str | Path, task: str) -> list[dict]:
    """Hand-picked demos (manual few-shot): a JSON/YAML list of rows with the task's input and output fields."""
    from reasonlab.io import read_structured

    resolved = paths.find_input(path)
    rows = read_structured(resolved)
    if not isinstance(rows, list) or not rows:
        raise ReasonlabError(f"demos file {resolved}: expected a non-empty list of examples")
    fields = ("question", "answer") if task == "gsm8k" else ("question", "answer", "paragraphs")
    for i, row in enumerate(rows):
        missing = [f for f in fields if f not in row]
        if missing:
            raise ReasonlabError(f"demos file {resolved}: demo {i} is missing the field {missing[0]!r}")
    return rows
