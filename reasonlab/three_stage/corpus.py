"""Stage-1 data: a domain corpus (text files, a JSON/JSONL column, or PubMedQA contexts), split into
train and held-out documents, then tokenized and packed into fixed-length blocks.

    corpus = load_corpus("pubmedqa")                    # held-out = PubMedQA's 500 test ids
    corpus = load_corpus("data/three_stage/pharma_pretrain.jsonl", text_field="text", heldout_fraction=0.2)
    blocks = pack(tokenizer, corpus.train, block_size=256)

The split is by document, decided by a hash of the text (stable under reordering), so no held-out
document contributes a token to training.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from reasonlab.errors import ReasonlabError
from reasonlab.io import read_rows
from reasonlab import datasets
from reasonlab.paths import find_input

PUBMEDQA = "pubmedqa"  # alias: PubMedQA's labelled contexts (+ long answers), held-out = the test ids


@dataclass
class Corpus:
    source: str
    train: list[str]
    heldout: list[str]
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"source": self.source, "train_docs": len(self.train), "heldout_docs": len(self.heldout),
                **self.notes}


def pubmedqa_records() -> tuple[dict, set[str]]:
    """(id -> record, set of test ids) from PubMedQA's files (`reasonlab.datasets`). A copy without the
    official test ids (the Hub's has none) holds out half of the ids by a hash instead."""
    folder = datasets.locate("pubmedqa")
    records = json.loads((folder / "ori_pqal.json").read_text())
    test_file = folder / "test_ground_truth.json"
    test_ids = (set(json.loads(test_file.read_text())) if test_file.is_file()
                else {pid for pid in records if _is_heldout(pid, 0.5, 0)})
    return records, test_ids


def contexts_of(record: dict) -> list[str]:
    ctx = record.get("CONTEXTS", [])
    if isinstance(ctx, str):  # the shared copy stores the list as its Python repr
        try:
            ctx = ast.literal_eval(ctx)
        except (ValueError, SyntaxError):
            ctx = [ctx]
    return [c for c in ctx if isinstance(c, str) and c.strip()]


def _is_heldout(text: str, fraction: float, seed: int) -> bool:
    h = int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def _read_texts(path: Path, text_field: str) -> list[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md", ".jsonl", ".json") and p.is_file())
        return [t for f in files for t in _read_texts(f, text_field)]
    if path.suffix in (".txt", ".md"):  # documents separated by blank lines
        return [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    rows = read_rows(path, values=True)
    texts = []
    for n, row in enumerate(rows, 1):
        if isinstance(row, str):
            texts.append(row)
        elif isinstance(row, dict) and isinstance(row.get(text_field), str):
            texts.append(row[text_field])
        else:
            raise ReasonlabError(f"{path}: row {n} has no string field {text_field!r} (set text_field)")
    return [t.strip() for t in texts if t.strip()]


def load_corpus(source: str, text_field: str = "text", heldout_fraction: float = 0.1, seed: int = 0,
                max_docs: int | None = None) -> Corpus:
    """Train and held-out documents from `source` ("pubmedqa", a file or a folder); one error if empty."""
    if not 0 < heldout_fraction < 1:
        raise ReasonlabError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if source == PUBMEDQA:
        records, test_ids = pubmedqa_records()
        train, heldout = [], []
        for pid, rec in records.items():
            doc = "\n".join(contexts_of(rec) + ([rec["LONG_ANSWER"]] if rec.get("LONG_ANSWER") else []))
            if doc.strip():
                (heldout if pid in test_ids else train).append(doc)
        notes = {"split": "PubMedQA test ids held out"}
    else:
        path = find_input(source)
        if not path.exists():
            raise ReasonlabError(f"corpus {source!r}: no such file or folder (or use {PUBMEDQA!r})")
        texts = list(dict.fromkeys(_read_texts(path, text_field)))  # exact duplicates once
        train = [t for t in texts if not _is_heldout(t, heldout_fraction, seed)]
        heldout = [t for t in texts if _is_heldout(t, heldout_fraction, seed)]
        if texts and not heldout:  # tiny corpora: hold out at least one document
            heldout, train = train[-1:], train[:-1]
        notes = {"split": f"hash split, heldout_fraction={heldout_fraction}, seed={seed}"}
    if max_docs:
        train, heldout = train[:max_docs], heldout[:max(1, int(max_docs * heldout_fraction))]
    if not train or not heldout:
        raise ReasonlabError(f"corpus {source!r} is empty: {len(train)} training and {len(heldout)} held-out "
                             "documents after removing blank ones (stage 1 needs text in both)")
    return Corpus(source=source, train=train, heldout=heldout, notes=notes)


def pack(tokenizer, texts: list[str], block_size: int, max_blocks: int | None = None) -> list[list[int]]:
    """Tokenize, join with EOS, cut into `block_size` blocks (the tail shorter than a block is dropped)."""
    if block_size < 2:
        raise ReasonlabError(f"block_size must be at least 2, got {block_size}")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    need = None if max_blocks is None else max_blocks * block_size
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
        if need is not None and len(stream) >= need:
            break
    blocks = [stream[i:i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
    if not blocks:
        raise ReasonlabError(f"corpus too short to pack: {len(stream)} tokens < block_size {block_size}")
    return blocks[:max_blocks] if max_blocks else blocks
