"""What every stage shares: the HF Trainer arguments it runs with, and how its checkpoint is written.

A stage's result is an ordinary HF folder (LoRA merged in), written atomically with reasonlab's
manifest (its fingerprint is what the next stage's cache key sees), plus `metrics.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from reasonlab.concept_sft.sft_trainer import progress_callback
from reasonlab.io import atomic_path, tree_fingerprint, write_json
from reasonlab.models import MANIFEST, ResolvedModel

Progress = Callable[[int, int, float | None], None]  # (step, total_steps, last loss)

__all__ = ["Progress", "progress_callback", "trainer_kwargs", "save_checkpoint", "log_rows", "count_trainable"]


def trainer_kwargs(device: str, dtype, seed: int, epochs: float, learning_rate: float, batch_size: int,
                   gradient_accumulation_steps: int, warmup_ratio: float) -> dict:
    """Arguments common to every stage's TRL/HF config (no saving, logging every step, no stdout dicts)."""
    import torch

    return dict(num_train_epochs=epochs, learning_rate=learning_rate, per_device_train_batch_size=batch_size,
                per_device_eval_batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
                warmup_steps=warmup_ratio, lr_scheduler_type="linear", seed=seed, data_seed=seed,
                bf16=dtype == torch.bfloat16, fp16=False, use_cpu=device == "cpu", save_strategy="no",
                report_to="none", logging_steps=1, disable_tqdm=True,
                gradient_checkpointing=False)  # TRL turns it on by default: a second forward, slower on CPU


def count_trainable(model) -> tuple[int, int]:
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))


def log_rows(trainer, key: str) -> list[dict]:
    """[{step, <key>}, ...] from a trainer's log history."""
    return [{"step": row["step"], key: row[key]} for row in trainer.state.log_history if key in row]


def save_checkpoint(model, tokenizer, output_dir: Path | str, name: str, start: ResolvedModel, stage: str,
                    settings: dict, metrics: dict) -> str:
    """Save `model` (LoRA merged) + tokenizer + manifest + metrics.json atomically; return the folder."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with atomic_path(output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / MANIFEST, {"name": name, "stage": stage, "base_model": start.to_dict(),
                                    "settings": settings, "fingerprint": "sha256:" + tree_fingerprint(tmp)})
    return str(Path(output_dir).resolve())
