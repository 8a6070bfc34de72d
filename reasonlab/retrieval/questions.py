"""Multiple-choice questions in one format, from the notebook's example file, MedQA, MedMCQA (Hub) or any local file.

A question is `{id, question, options: {letter: text}, answer: letter, domain: str | None, source}`. Loaders
accept the field layouts of the sources the project meets:
  - MedQA-USMLE as released (`question`, `options` {A..D}, `answer_idx`): `medqa` (see `reasonlab.datasets`);
  - the Hub's `GBaker/MedQA-USMLE-4-options-hf` (`sent1`, `ending0..3`, `label`);
  - MedMCQA (`question`, `opa..opd`, `cop` 0-3, `subject_name`, which becomes the domain through SUBJECT_DOMAINS);
  - the project's own format (above), e.g. data/retrieval_seed_questions.yaml.
Every row is checked: an answer letter that is not among the options is one clear error naming the row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasonlab import datasets, paths
from reasonlab.errors import ReasonlabError
from reasonlab.io import read_rows

LETTERS = "ABCDEFGH"
SEED_FILE = "data/retrieval_seed_questions.yaml"
MEDQA_HUB = "GBaker/MedQA-USMLE-4-options-hf"
MEDMCQA_HUB = "openlifescienceai/medmcqa"

# MedMCQA subject_name -> instruction-library domain (None: no single library domain)
SUBJECT_DOMAINS = {
    "Anatomy": None, "Physiology": None, "Biochemistry": "genetics_biochemistry", "Pathology": None,
    "Pharmacology": "pharmacology", "Microbiology": "infectious_disease", "Forensic Medicine": "medical_ethics",
    "Social & Preventive Medicine": "biostatistics_epidemiology", "Medicine": None, "Surgery": "emergency_surgery",
    "Gynaecology & Obstetrics": "obstetrics", "Pediatrics": "pediatrics", "Psychiatry": "psychiatry",
    "Skin": "dermatology", "Dental": None, "Ophthalmology": None, "ENT": None, "Orthopaedics": None,
    "Anaesthesia": "emergency_surgery", "Radiology": None, "Unknown": None,
}


def _fail(where: str, msg: str) -> ReasonlabError:
    return ReasonlabError(f"{where}: {msg}")


def normalize(row: dict[str, Any], where: str, source: str = "") -> dict[str, Any]:
    """One question in the project's format from any supported layout; ReasonlabError naming the row otherwise."""
    if not isinstance(row, dict):
        raise _fail(where, f"a question is a mapping, got {type(row).__name__}")
    domain = row.get("domain")
    if "sent1" in row and "ending0" in row:  # GBaker/MedQA-USMLE-4-options-hf (SWAG layout)
        text = " ".join(s for s in (row.get("sent1"), row.get("sent2")) if s)
        endings = [row[k] for k in sorted(k for k in row if k.startswith("ending"))]
        options = dict(zip(LETTERS, endings))
        answer = LETTERS[row["label"]] if isinstance(row.get("label"), int) and 0 <= row["label"] < len(endings) \
            else row.get("label")
    elif "opa" in row:  # MedMCQA
        text = row.get("question")
        options = {letter: row.get(f"op{letter.lower()}") for letter in "ABCD"}
        cop = row.get("cop")
        answer = LETTERS[cop] if isinstance(cop, int) and 0 <= cop < 4 else cop
        domain = domain or SUBJECT_DOMAINS.get(row.get("subject_name") or "Unknown")
    else:  # MedQA as released, and the project's own format
        text = row.get("question")
        options = row.get("options")
        answer = row.get("answer_idx", row.get("answer"))
    if not isinstance(text, str) or not text.strip():
        raise _fail(where, "the question text is missing or empty")
    if not isinstance(options, dict) or len(options) < 2:
        raise _fail(where, f"options must map letters to texts (at least two), got {options!r}")
    letters = list(options)
    if letters != list(LETTERS[:len(letters)]):
        raise _fail(where, f"option letters must be A, B, C, ... in order, got {letters}")
    if not all(isinstance(v, str) and v.strip() for v in options.values()):
        raise _fail(where, "every option needs a non-empty text")
    if answer not in options:
        raise _fail(where, f"the answer letter {answer!r} is not among the options {letters}")
    qid = row.get("id", row.get("realidx"))
    return {"id": str(qid) if qid is not None else where, "question": text.strip(),
            "options": {k: v.strip() for k, v in options.items()}, "answer": answer,
            "domain": domain if isinstance(domain, str) and domain else None, "source": source}


def _rows_from_file(path: Path) -> list[dict]:
    return read_rows(path, under=("questions",))


def load_file(path: Path | str, source: str | None = None, start: int = 0, limit: int | None = None) -> list[dict]:
    """Questions [start, start+limit) of a local .jsonl / .json / .yaml file."""
    path = Path(path)
    rows = _rows_from_file(path)[start:None if limit is None else start + limit]
    out = [normalize(r, f"{path} question {start + i}", source or path.stem) for i, r in enumerate(rows)]
    if not out:
        raise ReasonlabError(f"{path}: no questions in [{start}, {start + (limit or 0)})")
    return out


def load_hub(dataset: str, split: str, source: str, start: int = 0, limit: int | None = None,
             config: str | None = None) -> list[dict]:
    """Questions from the Hugging Face Hub through `datasets.load_dataset` (needs network or the HF cache)."""
    try:
        from datasets import load_dataset

        ds = load_dataset(dataset, config, split=split)
    except Exception as e:
        raise ReasonlabError(f"dataset {dataset!r} (split {split!r}) could not be loaded from the Hub: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
                             "Pass a local file with the same fields instead") from None
    end = len(ds) if limit is None else min(len(ds), start + limit)
    return [normalize(dict(ds[i]), f"{dataset}[{split}] row {i}", source) for i in range(start, end)]


def load_questions(spec: str, start: int = 0, limit: int | None = None) -> list[dict]:
    """`seed`, `medqa` (`reasonlab.datasets`: stored, mirror, else the Hub), `medqa-hub`, `medmcqa` (Hub
    validation split), `hub:DATASET[:SPLIT]`, or a path to a local file."""
    if spec == "seed":
        return load_file(paths.find_input(SEED_FILE), "seed", start, limit)
    if spec == "medqa":
        return load_file(datasets.locate_file("medqa"), "medqa", start, limit)
    if spec == "medqa-hub":
        return load_hub(MEDQA_HUB, "test", "medqa", start, limit)
    if spec == "medmcqa":
        return load_hub(MEDMCQA_HUB, "validation", "medmcqa", start, limit)
    if spec.startswith("hub:"):
        name, _, split = spec[4:].partition(":")
        return load_hub(name, split or "test", name.rsplit("/", 1)[-1], start, limit)
    path = paths.find_input(spec)
    if not path.is_file():
        raise ReasonlabError(f"unknown question source {spec!r}: use seed, medqa, medqa-hub, medmcqa, "
                             "hub:DATASET[:SPLIT], or a path to a .jsonl/.json/.yaml file")
    return load_file(path, None, start, limit)


def apply_domains(questions: list[dict], labels: dict[str, dict[str, str]], where: str = "domains") -> list[dict]:
    """Set gold domains from a {source: {question id: domain}} mapping (e.g. data/medqa_domains.yaml)."""
    if not isinstance(labels, dict) or not all(isinstance(v, dict) for v in labels.values()):
        raise ReasonlabError(f"{where}: expected {{source: {{question id: domain}}}}")
    out = []
    for q in questions:
        domain = labels.get(q["source"], {}).get(q["id"])
        out.append({**q, "domain": domain} if domain else q)
    return out
