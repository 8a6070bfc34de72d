"""The dataset resolver (reasonlab/datasets.py) and `reasonlab data fetch`: a local path, the store under
$REASONLAB_HOME/data, the REASONLAB_SHARED_DATA mirror (here: the repo's fixtures), the Hub, else one error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from conftest import DATA, REPO
from reasonlab import datasets, paths
from reasonlab.activations import mbpp
from reasonlab.dspy_compile import data
from reasonlab.errors import ReasonlabError
from reasonlab.io import sha256_file
from reasonlab.retrieval.questions import load_questions
from reasonlab.three_stage import corpus, preferences


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private REASONLAB_HOME, with the Hub off (as everywhere in the tests)."""
    monkeypatch.setenv("REASONLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return tmp_path / "home"


def test_fetch_stores_each_dataset_once_and_later_runs_need_neither_mirror_nor_hub(home, monkeypatch):
    env = {**os.environ, "REASONLAB_SHARED_DATA": str(DATA), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "reasonlab.cli", "data", "fetch", "gsm8k", "mbpp", "hh-rlhf"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0] == f"gsm8k: {home / 'data' / 'gsm8k'} (from mirror:{DATA / 'gsm8k'})"
    for name, mirror in (("gsm8k", "gsm8k"), ("mbpp", "mbpp"), ("hh-rlhf", "preferences/hh-rlhf")):
        stored = sorted(p.name for p in (home / "data" / name).iterdir())
        assert stored == sorted([*(p.name for p in (DATA / mirror).iterdir()), datasets.SOURCE_FILE])
        assert all(sha256_file(home / "data" / name / f) == sha256_file(DATA / mirror / f)
                   for f in stored if f != datasets.SOURCE_FILE)
    assert sorted(p.name for p in (home / "data").iterdir()) == ["gsm8k", "hh-rlhf", "mbpp"]  # no temp folders
    assert datasets.locate("gsm8k") == home / "data" / "gsm8k"  # the store comes before the mirror
    monkeypatch.delenv("REASONLAB_SHARED_DATA")
    assert data.load_splits("gsm8k", 2, 1, 2)["source"] == str(home / "data" / "gsm8k")
    assert len(mbpp.load_problems()) == 974
    assert preferences.load_preferences("hh-helpful")[1]["rows"] == 20
    assert datasets.fetch("gsm8k") == (home / "data" / "gsm8k", f"mirror:{DATA / 'gsm8k'}")  # already stored


LOADERS = {
    "gsm8k": lambda: data.load_splits("gsm8k", 1, 0, 0),
    "hotpotqa": lambda: data.load_splits("hotpotqa", 1, 0, 0),
    "mbpp": lambda: mbpp.load_problems(),
    "medqa": lambda: load_questions("medqa", 0, 2),
    "pubmedqa": lambda: corpus.load_corpus("pubmedqa"),
    "hh-rlhf": lambda: preferences.load_preferences("hh-helpful"),
}


@pytest.mark.parametrize("name", list(LOADERS))
def test_without_any_copy_every_loader_fails_with_one_error_saying_how_to_get_the_data(name, home, monkeypatch):
    monkeypatch.delenv("REASONLAB_SHARED_DATA")
    with pytest.raises(ReasonlabError, match=rf"dataset '{name}' is not available: it is not stored at "
                                             rf".*REASONLAB_SHARED_DATA \(an offline mirror\) is not set, and the "
                                             rf"Hugging Face Hub \(.+\) failed: .*`reasonlab data fetch {name}`"):
        LOADERS[name]()
    assert not (home / "data").exists() or not any((home / "data").iterdir())  # nothing half-stored


def test_a_mirror_without_the_dataset_and_a_mirror_only_set_are_named(home, tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLAB_SHARED_DATA", str(tmp_path / "empty-mirror"))
    with pytest.raises(ReasonlabError, match=r"the mirror REASONLAB_SHARED_DATA=.*empty-mirror has no gsm8k/"):
        datasets.locate("gsm8k")
    with pytest.raises(ReasonlabError, match=r"dataset 'ultrafeedback-subset' is not available: .*it is not on the "
                                             r"Hugging Face Hub in this form \(only in the offline mirror\)"):
        preferences.load_preferences("ultrafeedback-train")
    with pytest.raises(ReasonlabError, match="unknown dataset 'gsm9k': use one of gsm8k, mbpp"):
        datasets.locate("gsm9k")


def test_a_local_path_comes_first_and_a_missing_one_is_named(home, tmp_path):
    assert datasets.locate("gsm8k", str(DATA / "gsm8k")) == DATA / "gsm8k"
    assert datasets.locate_file("hotpotqa") == DATA / "hotpotqa" / "hotpot_dev_distractor_subset500.jsonl"
    with pytest.raises(ReasonlabError, match=r"gsm8k data .*nope: no such file or folder"):
        datasets.locate("gsm8k", str(tmp_path / "nope"))


SIBLING = "../" + "sha" + "red"  # spelled in parts so that this checker does not match itself


def test_no_default_depends_on_a_folder_beside_the_checkout(monkeypatch):
    monkeypatch.delenv("REASONLAB_SHARED_DATA")
    assert paths.shared_data_dir() is None and datasets.mirror_dir("gsm8k") is None
    offenders = [f"{p.relative_to(REPO)}:{n}" for folder in ("reasonlab", "flows", "tasks", "deployments", "blocks")
                 for p in (REPO / folder).rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if SIBLING in line or 'parent / "' + "sha" + "red" + '"' in line or "parents[2]" in line]
    assert offenders == []


# ---------------------------------------------------------------- from the Hub (its layout, served here)

def hub_rows(calls: list) -> callable:
    """A stand-in for `datasets.load_dataset` serving real `datasets` objects in each Hub dataset's layout."""
    hotpot = [{"id": f"h{i}", "question": f"Which river {i}?", "answer": "Nile", "type": "bridge", "level": "hard",
               "supporting_facts": {"title": ["Nile"], "sent_id": [0]},
               "context": {"title": ["Nile", "Congo"], "sentences": [["The Nile flows north.", " It is long."],
                                                                     ["The Congo is deep."]]}} for i in range(4)]
    tables = {
        ("openai/gsm8k", "main"): DatasetDict({s: Dataset.from_list([{"question": f"{s} {i}?", "answer": f"1+{i}\n#### {1 + i}"}
                                                                     for i in range(6)]) for s in ("train", "test")}),
        ("google-research-datasets/mbpp", "full"): DatasetDict({s: Dataset.from_list([
            {"task_id": t, "text": f"Write f{t}.", "code": f"def f{t}():\n    return {t}", "test_list": [f"assert f{t}() == {t}"],
             "test_setup_code": "", "challenge_test_list": []} for t in ids]) for s, ids in (("test", [3, 1]), ("prompt", [2]))}),
        ("hotpotqa/hotpot_qa", "distractor", "validation"): Dataset.from_list(hotpot),
        ("GBaker/MedQA-USMLE-4-options-hf", None, "test"): Dataset.from_list([
            {"id": "q0", "sent1": "A 50-year-old man has chest pain.", "sent2": "", "ending0": "aspirin",
             "ending1": "insulin", "ending2": "warfarin", "ending3": "heparin", "label": 0}] * 3),
        ("qiaojin/PubMedQA", "pqa_labeled", "train"): Dataset.from_list([
            {"pubid": 1000 + i, "question": f"Does drug {i} work?", "context": {
                "contexts": [f"Background {i}.", f"Methods {i}."], "labels": ["BACKGROUND", "METHODS"],
                "meshes": ["Humans"], "reasoning_required_pred": ["yes"], "reasoning_free_pred": ["yes"]},
             "long_answer": f"Drug {i} works.", "final_decision": "yes"} for i in range(40)]),
    }
    for subset in ("helpful-base", "harmless-base", "helpful-rejection-sampled"):
        tables[("Anthropic/hh-rlhf", subset, "test")] = Dataset.from_list([
            {"chosen": f"\n\nHuman: Hi {i}\n\nAssistant: Hello!", "rejected": f"\n\nHuman: Hi {i}\n\nAssistant: Go."}
            for i in range(3)])

    def load(hub_id, config=None, split=None, data_dir=None):
        calls.append((hub_id, config or data_dir, split))
        return tables[(hub_id, config or data_dir, split) if split else (hub_id, config)]
    return load


def test_hub_rows_are_stored_in_the_layout_every_loader_reads(home, monkeypatch):
    monkeypatch.delenv("REASONLAB_SHARED_DATA")
    calls = []
    for name in datasets.HUB_FILES:
        folder, origin = datasets.fetch(name, load=hub_rows(calls))
        assert folder == home / "data" / name and origin == f"hub:{datasets.spec(name).hub}"
    assert ("Anthropic/hh-rlhf", "helpful-rejection-sampled", "test") in calls and len(calls) == 8
    gsm = data.load_splits("gsm8k", 2, 1, 3)
    assert gsm["source"] == str(home / "data" / "gsm8k") and gsm["test"][0]["answer"].isdigit()
    assert [p["task_id"] for p in mbpp.load_problems()] == [1, 2, 3]
    hot = data.load_splits("hotpotqa", 1, 1, 1)["test"][0]
    assert hot["paragraphs"] == ["Nile | The Nile flows north. It is long.", "Congo | The Congo is deep."]
    assert hot["supporting_titles"] == ["Nile"] and hot["id"].startswith("h")
    [q] = load_questions("medqa", 0, 1)
    assert q["answer"] == "A" and q["options"]["B"] == "insulin" and q["question"] == "A 50-year-old man has chest pain."
    pubmed = corpus.load_corpus("pubmedqa")  # no official test ids on the Hub: half the ids held out by a hash
    assert len(pubmed.train) + len(pubmed.heldout) == 40 and pubmed.train and pubmed.heldout
    pairs, report = preferences.load_preferences("hh-helpful")
    assert report["pairs"] == 3 and pairs[0].prompt == "\n\nHuman: Hi 0\n\nAssistant:" and pairs[0].chosen == " Hello!"
    stored = json.loads((home / "data" / "pubmedqa" / datasets.SOURCE_FILE).read_text())
    assert stored == {"dataset": "pubmedqa", "origin": "hub:qiaojin/PubMedQA", "licence": "MIT"}


def test_a_failing_hub_download_leaves_nothing_stored(home, monkeypatch):
    monkeypatch.delenv("REASONLAB_SHARED_DATA")

    def flaky(hub_id, config=None, split=None, data_dir=None):
        if data_dir == "harmless-base":  # the second of three subsets
            raise ConnectionError("reset by peer")
        return hub_rows([])(hub_id, config, split, data_dir)

    with pytest.raises(ReasonlabError, match=r"Hub \(Anthropic/hh-rlhf\) failed: ConnectionError: reset by peer"):
        datasets.fetch("hh-rlhf", load=flaky)
    assert not (home / "data").exists() or not any((home / "data").iterdir())
