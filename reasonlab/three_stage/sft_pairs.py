"""Stage 2: supervised fine-tuning on (instruction, response) pairs, loss on the response tokens only.

Sets: `pubmedqa` (question, optionally + the abstract's context -> the long answer; PubMedQA's test ids
are held out), `pharma` (the pharmaceutical pairs in data/three_stage/pharma_sft.jsonl), or any
.json/.jsonl file of {instruction, response}. Under the chat template each pair is a user turn and an
assistant turn (TRL's conversational prompt-completion format); without it, "Question: ...\\nAnswer:".
TRL's SFTTrainer masks the prompt (`completion_only_loss`), so train and held-out loss are both over
response tokens. Full fine-tune, or LoRA merged into the checkpoint (the concept-SFT settings).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reasonlab.errors import ReasonlabError
from reasonlab.models import ResolvedModel, load_fresh, pick_device, pick_dtype
from reasonlab.paths import find_input, project_root
from reasonlab.three_stage.checkpoint import stage_manifest
from reasonlab.training import Progress, lora_config, count_trainable, progress_callback, save_checkpoint, trainer_kwargs
from reasonlab.three_stage.params import SFTParams
from reasonlab.three_stage.corpus import contexts_of, pubmedqa_records

VERSION = "1"
PHARMA = "data/three_stage/pharma_sft.jsonl"
MAX_CONTEXT_WORDS = 120  # PubMedQA abstracts run to 300+ words: keep the answer inside max_length


@dataclass(frozen=True)
class SFTPair:
    instruction: str
    response: str
    source: str


def _hash_heldout(text: str, fraction: float, seed: int) -> bool:
    return int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def _file_pairs(path: Path, name: str) -> list[SFTPair]:
    if not path.is_file():
        raise ReasonlabError(f"SFT set {name!r}: no such file {path} (or use 'pubmedqa' / 'pharma')")
    text = path.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(text)
    pairs = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip()
                                                for k in ("instruction", "response")):
            raise ReasonlabError(f"SFT set {name!r}: row {n} needs non-empty 'instruction' and 'response' strings")
        pairs.append(SFTPair(row["instruction"].strip(), row["response"].strip(), name))
    return pairs


def _split(pairs: list[SFTPair], fraction: float, seed: int) -> tuple[list[SFTPair], list[SFTPair]]:
    held = [p for p in pairs if _hash_heldout(p.instruction, fraction, seed)]
    train = [p for p in pairs if not _hash_heldout(p.instruction, fraction, seed)]
    if len(pairs) >= 2 and not held:
        held, train = train[-1:], train[:-1]
    if len(pairs) >= 2 and not train:
        train, held = held[:1], held[1:]
    return train, held


def pubmedqa_pairs(include_context: bool) -> tuple[list[SFTPair], list[SFTPair]]:
    records, test_ids = pubmedqa_records()
    train, held = [], []
    for pid, rec in records.items():
        question, answer = rec.get("QUESTION", "").strip(), rec.get("LONG_ANSWER", "").strip()
        if not question or not answer:
            continue
        instruction = question
        if include_context:
            words = " ".join(contexts_of(rec)).split()
            context = " ".join(words[:MAX_CONTEXT_WORDS]) + (" ..." if len(words) > MAX_CONTEXT_WORDS else "")
            instruction = f"Context: {context}\n\nQuestion: {question}"
        (held if pid in test_ids else train).append(SFTPair(instruction, answer, "pubmedqa"))
    return train, held


def _interleave(groups: list[list[SFTPair]], cap: int | None) -> list[SFTPair]:
    """Round-robin over the sets, so a cap keeps some of every set (the 5 pharma pairs are not crowded out)."""
    out, i = [], 0
    while any(i < len(g) for g in groups):
        out.extend(g[i] for g in groups if i < len(g))
        i += 1
    return out[:cap] if cap else out


def load_sft_pairs(settings: SFTParams) -> tuple[list[SFTPair], list[SFTPair], dict]:
    trains, helds, report = [], [], {}
    for name in settings.sets:
        if name == "pubmedqa":
            train, held = pubmedqa_pairs(settings.include_context)
        else:
            path = project_root() / PHARMA if name == "pharma" else find_input(name)
            train, held = _split(_file_pairs(path, name), settings.heldout_fraction, settings.seed)
        trains.append(train)
        helds.append(held)
        report[name] = {"train": len(train), "heldout": len(held)}
    train, held = _interleave(trains, settings.max_train_pairs), _interleave(helds, settings.max_eval_pairs)
    if not train or not held:
        raise ReasonlabError(f"SFT sets {settings.sets}: {len(train)} training and {len(held)} held-out pairs "
                             "(stage 2 needs both)")
    report.update(train_pairs=len(train), heldout_pairs=len(held))
    return train, held, report


def to_rows(pairs: list[SFTPair], use_chat_template: bool) -> list[dict]:
    if use_chat_template:
        return [{"prompt": [{"role": "user", "content": p.instruction}],
                 "completion": [{"role": "assistant", "content": p.response}]} for p in pairs]
    return [{"prompt": f"Question: {p.instruction}\nAnswer:", "completion": " " + p.response} for p in pairs]


def run_sft_pairs(start: ResolvedModel, settings: SFTParams, output_dir: Path | str, device: str = "auto",
                  dtype: str = "auto", progress: Progress | None = None) -> dict:
    """Fine-tune `start` on the pairs; save an HF checkpoint at `output_dir`; return held-out losses."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    train, held, data_report = load_sft_pairs(settings)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    torch.manual_seed(settings.seed)
    model, tokenizer = load_fresh(start, device, dtype, train=True)
    if settings.use_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ReasonlabError(f"model {start.name!r} has no chat template: set sft.use_chat_template: false")
    peft_config = None
    if settings.lora:
        peft_config = lora_config(settings.lora)
    with tempfile.TemporaryDirectory(prefix="reasonlab-sft-pairs-") as scratch:
        args = TrlSFTConfig(output_dir=scratch, max_length=settings.max_length, completion_only_loss=True,
                            eval_strategy="no", **trainer_kwargs(
                                dev, torch_dtype, settings.seed, settings.epochs, settings.learning_rate,
                                settings.batch_size, settings.gradient_accumulation_steps, settings.warmup_ratio))
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(to_rows(train, settings.use_chat_template)),
                             eval_dataset=Dataset.from_list(to_rows(held, settings.use_chat_template)),
                             processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[progress_callback(progress)] if progress else None)
        trainer.remove_callback(PrinterCallback)
        trainable, total = count_trainable(trainer.model)
        before = trainer.evaluate()["eval_loss"]
        result = trainer.train()
        after = trainer.evaluate()["eval_loss"]
    out = {"stage": "sft", "start_model": start.to_dict(), "data": data_report,
           "heldout_loss_before": before, "heldout_loss_after": after,
           "train_losses": [{"step": r["step"], "loss": r["loss"]} for r in trainer.state.log_history if "loss" in r],
           "trainable_params": trainable, "total_params": total, "lora": settings.lora is not None,
           "steps": trainer.state.global_step, "train_runtime_s": result.metrics.get("train_runtime")}
    out["checkpoint"] = save_checkpoint(trainer.model, tokenizer, output_dir, stage_manifest(start, "sft", settings), out)
    return out
