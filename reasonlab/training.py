"""What every training stage shares: the HF/TRL trainer settings, LoRA, progress reports and the checkpoint.

    args = TrlSFTConfig(output_dir=scratch, max_length=512, **trainer_kwargs(device, dtype, seed, epochs, lr,
                                                                             batch_size, accumulation, warmup))
    trainer = SFTTrainer(..., peft_config=lora_config(settings.lora), callbacks=progress_callbacks(progress))
    save_checkpoint(trainer.model, tokenizer, output_dir, {"name": ..., "base_model": ...}, metrics=summary)

A checkpoint is an ordinary HF folder (a LoRA adapter merged in), written atomically with reasonlab's manifest,
whose fingerprint is what a later stage's cache key sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from reasonlab.io import atomic_path, tree_fingerprint, write_json
from reasonlab.models import MANIFEST

Progress = Callable[[int, int, float | None], None]  # (step, total_steps, last loss)


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1, description="rank of the LoRA update")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] = Field(["q_proj", "v_proj"], description="module names to adapt")


def lora_config(settings: LoraSettings | None, task_type: str = "CAUSAL_LM", **extra):
    """peft's LoraConfig for `settings`; None (train every weight) when there are none."""
    if settings is None:
        return None
    from peft import LoraConfig

    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, task_type=task_type, **extra)


def trainer_kwargs(device: str, dtype, seed: int, epochs: float, learning_rate: float, batch_size: int,
                   gradient_accumulation_steps: int, warmup_ratio: float) -> dict:
    """Arguments common to every HF/TRL training config: linear schedule, no saving, a log row every step,
    nothing printed to stdout."""
    import torch

    return dict(num_train_epochs=epochs, learning_rate=learning_rate, per_device_train_batch_size=batch_size,
                per_device_eval_batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
                # a float below 1 is a ratio of the steps for transformers; 1.0 would read as one step
                warmup_steps=warmup_ratio if warmup_ratio < 1 else 0.999,
                lr_scheduler_type="linear", seed=seed, data_seed=seed,
                bf16=dtype == torch.bfloat16, fp16=False, use_cpu=device == "cpu", save_strategy="no",
                report_to="none", logging_steps=1, disable_tqdm=True,
                gradient_checkpointing=False)  # TRL turns it on by default: a second forward, slower on CPU


def progress_callback(progress: Progress):
    """A TrainerCallback calling progress(step, total_steps, loss) at every log row."""
    from transformers import TrainerCallback

    class ReportProgress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            progress(state.global_step, state.max_steps, (logs or {}).get("loss"))

    return ReportProgress()


def progress_callbacks(progress: Progress | None) -> list:
    return [progress_callback(progress)] if progress else []


def count_trainable(model) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))


def log_rows(trainer, key: str = "loss") -> list[dict]:
    """[{step, <key>}, ...] from a trainer's log history."""
    return [{"step": row["step"], key: row[key]} for row in trainer.state.log_history if key in row]


def save_checkpoint(model, tokenizer, output_dir: Path | str, manifest: dict, metrics: dict | None = None) -> str:
    """Save `model` (a LoRA adapter merged in), its tokenizer, `metrics.json` (when given) and the manifest
    (`manifest` + the folder's fingerprint) atomically at `output_dir`; return the folder."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with atomic_path(output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if metrics is not None:
            write_json(tmp / "metrics.json", metrics)
        write_json(tmp / MANIFEST, {**manifest, "fingerprint": "sha256:" + tree_fingerprint(tmp)})
    return str(Path(output_dir).resolve())
