"""Rebuild data/reference_corpus.jsonl (see data/reference_corpus.md) from an offline mirror of the datasets.

    python data/reference_corpus_build.py /path/to/mirror      # the folder REASONLAB_SHARED_DATA names

Deterministic: the same mirror files give the same corpus, byte for byte.
"""

from __future__ import annotations

import json
import re
import sys
from itertools import zip_longest
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
WIKIPEDIA, PUBMED = 180, 150
MIN_CHARS, MAX_CHARS = 250, 700


def cut(text: str, limit: int = MAX_CHARS) -> str:
    """At most `limit` characters, ending at a sentence end when one is past the middle."""
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) <= limit:
        return text
    head = text[:limit]
    end = head.rfind(". ")
    return head[:end + 1] if end > limit // 2 else head.rsplit(" ", 1)[0]


def wikipedia(mirror: Path) -> list[dict]:
    """Intro paragraphs of Wikipedia articles from HotpotQA's dev distractor contexts, one per title."""
    out, seen = [], set()
    for line in (mirror / "hotpotqa" / "hotpot_dev_distractor_subset500.jsonl").read_text().splitlines():
        for title, sentences in json.loads(line)["context"]:
            text = re.sub(r"\s+", " ", "".join(sentences)).strip()
            if title not in seen and MIN_CHARS <= len(text) <= MAX_CHARS:
                seen.add(title)
                out.append({"text": text, "source": f"hotpotqa:{title}"})
            if len(out) == WIKIPEDIA:
                return out
    return out


def pubmed(mirror: Path) -> list[dict]:
    """The first section of PubMedQA abstracts outside its 500 test ids, in file order."""
    records = json.loads((mirror / "pubmedqa" / "ori_pqal.json").read_text())
    test = set(json.loads((mirror / "pubmedqa" / "test_ground_truth.json").read_text()))
    out = [{"text": cut(rec["CONTEXTS"][0]), "source": f"pubmedqa:{pmid}"}
           for pmid, rec in records.items() if pmid not in test and rec["CONTEXTS"]]
    return [r for r in out if len(r["text"]) >= MIN_CHARS // 2][:PUBMED]


def library() -> list[dict]:
    """The project's own instruction library: each domain's background facts."""
    lib = yaml.safe_load((HERE / "instruction_library.yaml").read_text())
    return [{"text": fact.strip(), "source": f"instruction_library:{domain}"}
            for domain, entry in lib.items() for fact in entry["knowledge"]]


def main(mirror: Path) -> None:
    groups = [wikipedia(mirror), pubmed(mirror), library()]
    rows = [r for trio in zip_longest(*groups) for r in trio if r]  # interleaved: any first n mixes all three
    (HERE / "reference_corpus.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                 encoding="utf-8")
    print(f"{len(rows)} paragraphs: " + ", ".join(f"{len(g)} {g[0]['source'].split(':')[0]}" for g in groups))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
