"""Where the public datasets come from: one resolver for every pipeline.

    folder = datasets.locate("gsm8k")            # a folder holding train.jsonl and test.jsonl
    path = datasets.locate_file("mbpp")          # .../mbpp/mbpp.jsonl
    folder, origin = datasets.fetch("medqa")     # `reasonlab data fetch medqa`: stored once, for offline use

`locate(name, source)` looks, in this order:
  1. `source`, a local file or folder, when one is given;
  2. the store, $REASONLAB_HOME/data/<name> (written by `reasonlab data fetch`, or by a first Hub download);
  3. an offline mirror, $REASONLAB_SHARED_DATA/<its folder there>, when that variable is set;
  4. the Hugging Face Hub through `datasets.load_dataset`: the rows are written to the store in the mirror's
     file layout, so every loader reads the same files and the next run needs no network;
and otherwise raises one ReasonlabError that says how to get the data. No default depends on a folder
beside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from reasonlab import paths
from reasonlab.errors import ReasonlabError
from reasonlab.io import atomic_path, write_json

SOURCE_FILE = "SOURCE.json"  # in a stored copy: where it came from


@dataclass(frozen=True)
class Dataset:
    name: str
    mirror: str             # its folder in an offline mirror (REASONLAB_SHARED_DATA)
    files: tuple[str, ...]  # its main file(s), in order of preference: any one marks a folder as holding it
    hub: str | None         # the Hugging Face id (None: only from a mirror or a local copy)
    licence: str


DATASETS = {d.name: d for d in (
    Dataset("gsm8k", "gsm8k", ("test.jsonl", "train.jsonl"), "openai/gsm8k", "MIT"),
    Dataset("mbpp", "mbpp", ("mbpp.jsonl",), "google-research-datasets/mbpp", "CC-BY-4.0"),
    Dataset("hotpotqa", "hotpotqa", ("hotpot_dev_distractor.jsonl", "hotpot_dev_distractor_subset500.jsonl"),
            "hotpotqa/hotpot_qa", "CC-BY-SA-4.0"),
    Dataset("medqa", "medqa", ("medqa_usmle_4options_test.jsonl",), "GBaker/MedQA-USMLE-4-options-hf", "MIT"),
    Dataset("pubmedqa", "pubmedqa", ("ori_pqal.json",), "qiaojin/PubMedQA", "MIT"),
    Dataset("hh-rlhf", "preferences/hh-rlhf", ("helpful-base_test.jsonl", "harmless-base_test.jsonl",
                                               "helpful-rejection-sampled_test.jsonl"), "Anthropic/hh-rlhf", "MIT"),
    Dataset("hh-rlhf-train5k-lastturn", "preferences/hh-rlhf-harmless-base-train5k-lastturn", ("train.jsonl",),
            None, "MIT (HH-RLHF)"),
    Dataset("ultrafeedback-subset", "preferences/ultrafeedback-binarized-subset", ("train_clean.jsonl",), None,
            "MIT (UltraFeedback card, not verified)"),
)}


def spec(name: str) -> Dataset:
    if name not in DATASETS:
        raise ReasonlabError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    return DATASETS[name]


def store_dir(name: str) -> Path:
    return paths.data_store_dir() / name


def mirror_dir(name: str) -> Path | None:
    root = paths.shared_data_dir()
    return root / spec(name).mirror if root else None


def holds(folder: Path | None, name: str) -> bool:
    return folder is not None and folder.is_dir() and any((folder / f).is_file() for f in spec(name).files)


def locate(name: str, source: str | Path | None = None) -> Path:
    """The folder (or, when `source` names one, the file) holding dataset `name`; see the module docstring."""
    spec(name)
    if source is not None and str(source) != "":
        path = paths.find_input(source)
        if not path.exists():
            raise ReasonlabError(f"{name} data {source}: no such file or folder (resolved to {path})")
        return path
    for folder in (store_dir(name), mirror_dir(name)):
        if holds(folder, name):
            return folder
    return fetch(name)[0]


def locate_file(name: str, source: str | Path | None = None) -> Path:
    """The dataset's main file: `source` when it is a file, else the first of its files in the located folder."""
    found = locate(name, source)
    if found.is_file():
        return found
    for file in spec(name).files:
        if (found / file).is_file():
            return found / file
    raise ReasonlabError(f"{name} data folder {found} holds none of {', '.join(spec(name).files)}")


def fetch(name: str, refresh: bool = False, load: Callable[..., Any] | None = None) -> tuple[Path, str]:
    """Store dataset `name` under $REASONLAB_HOME/data/<name> (atomically), from the mirror when
    REASONLAB_SHARED_DATA holds it, else from the Hub (`load`: `datasets.load_dataset` unless given).
    Returns (stored folder, where it came from)."""
    dataset, store = spec(name), store_dir(name)
    if holds(store, name) and not refresh:
        return store, _stored_origin(store)
    mirror = mirror_dir(name)
    if holds(mirror, name):
        origin = f"mirror:{mirror}"
        files = None
    elif dataset.hub is None:
        raise _unavailable(dataset, "it is not on the Hugging Face Hub in this form (only in the offline mirror)")
    else:
        origin = f"hub:{dataset.hub}"
        try:
            files = HUB_FILES[name](load or _hub_loader())
        except Exception as e:  # offline, gated, renamed: one message saying how to get the data
            first_line = str(e).splitlines()[0] if str(e) else ""
            raise _unavailable(dataset, f"the Hugging Face Hub ({dataset.hub}) failed: {type(e).__name__}: "
                                        f"{first_line}") from None
    with atomic_path(store) as tmp:
        tmp.mkdir()
        if files is None:
            _copy_files(mirror, tmp)
        else:
            for file, content in files.items():
                _write(tmp / file, content)
        write_json(tmp / SOURCE_FILE, {"dataset": name, "origin": origin, "licence": dataset.licence})
    return store, origin


def _stored_origin(store: Path) -> str:
    try:
        return json.loads((store / SOURCE_FILE).read_text())["origin"]
    except (OSError, ValueError, KeyError):
        return f"store:{store}"


def _unavailable(dataset: Dataset, why: str) -> ReasonlabError:
    root = os.environ.get("REASONLAB_SHARED_DATA")
    mirror = (f"the mirror REASONLAB_SHARED_DATA={root} has no {dataset.mirror}/" if root
              else "REASONLAB_SHARED_DATA (an offline mirror) is not set")
    return ReasonlabError(
        f"dataset {dataset.name!r} is not available: it is not stored at {store_dir(dataset.name)}, {mirror}, "
        f"and {why}. Get it once with `reasonlab data fetch {dataset.name}` where the Hub is reachable (or with "
        f"REASONLAB_SHARED_DATA set), set REASONLAB_SHARED_DATA to a mirror holding {dataset.mirror}/, "
        f"or pass a local path")


def _copy_files(src: Path, dest: Path) -> None:
    """The files only (not a read-only mirror's permissions, which would make the copy undeletable)."""
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest / rel)


def _write(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in content), encoding="utf-8")
    else:
        path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")


def _hub_loader() -> Callable[..., Any]:
    from datasets import load_dataset  # only when the Hub is asked

    return load_dataset


# ---------------------------------------------------------------- Hub rows -> the mirror's file layout

def _gsm8k(load) -> dict[str, Any]:
    ds = load("openai/gsm8k", "main")
    return {f"{split}.jsonl": [{"question": r["question"], "answer": r["answer"]} for r in ds[split]]
            for split in ("train", "test")}


def _mbpp(load) -> dict[str, Any]:
    ds = load("google-research-datasets/mbpp", "full")  # its train/test/validation/prompt splits: all 974
    return {"mbpp.jsonl": sorted((dict(r) for split in ds for r in ds[split]), key=lambda r: r["task_id"])}


def _hotpotqa(load) -> dict[str, Any]:
    rows = []
    for r in load("hotpotqa/hotpot_qa", "distractor", split="validation"):
        facts, context = r["supporting_facts"], r["context"]
        rows.append({"_id": r["id"], "question": r["question"], "answer": r["answer"], "type": r["type"],
                     "level": r["level"], "supporting_facts": [list(f) for f in zip(facts["title"], facts["sent_id"])],
                     "context": [list(c) for c in zip(context["title"], context["sentences"])]})
    return {"hotpot_dev_distractor.jsonl": rows}


def _medqa(load) -> dict[str, Any]:
    rows = []
    for i, r in enumerate(load("GBaker/MedQA-USMLE-4-options-hf", split="test")):
        options = {letter: r[f"ending{k}"] for k, letter in enumerate("ABCD")}
        rows.append({"id": str(r.get("id", i)), "question": " ".join(s for s in (r["sent1"], r.get("sent2")) if s),
                     "options": options, "answer_idx": "ABCD"[r["label"]]})
    return {"medqa_usmle_4options_test.jsonl": rows}


def _pubmedqa(load) -> dict[str, Any]:
    """ori_pqal.json only: the Hub has no official 500 test ids (test_ground_truth.json)."""
    records = {}
    for r in load("qiaojin/PubMedQA", "pqa_labeled", split="train"):
        ctx = r["context"]
        records[str(r["pubid"])] = {"QUESTION": r["question"], "CONTEXTS": list(ctx["contexts"]),
                                    "LABELS": list(ctx["labels"]), "MESHES": list(ctx["meshes"]),
                                    "final_decision": r["final_decision"], "LONG_ANSWER": r["long_answer"]}
    return {"ori_pqal.json": records}


def _hh_rlhf(load) -> dict[str, Any]:
    """The three test splits as published ({chosen, rejected} transcripts; the loaders split off the prompt)."""
    return {f"{subset}_test.jsonl": [{"chosen": r["chosen"], "rejected": r["rejected"]}
                                     for r in load("Anthropic/hh-rlhf", data_dir=subset, split="test")]
            for subset in ("helpful-base", "harmless-base", "helpful-rejection-sampled")}


HUB_FILES: dict[str, Callable[[Callable[..., Any]], dict[str, Any]]] = {
    "gsm8k": _gsm8k, "mbpp": _mbpp, "hotpotqa": _hotpotqa, "medqa": _medqa, "pubmedqa": _pubmedqa,
    "hh-rlhf": _hh_rlhf,
}
