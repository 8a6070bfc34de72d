"""Stage 6 of concept SFT: fine-tune on the concept texts with TRL's SFTTrainer.

Full fine-tune by default; with `lora:` in the config, a peft LoRA adapter that is merged into the
weights (an ordinary HF folder when saved). `run_sft` loads the base fresh and saves the checkpoint
atomically; `train` fine-tunes a model already in memory (the experiments' path, which restores the
base weights between runs instead of reloading them).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from reasonlab.errors import ReasonlabError
from reasonlab.models import ResolvedModel, load_fresh, pick_device, pick_dtype
from reasonlab.prompt_format import build_training_text
from reasonlab.concept_sft.sft_config import SFTConfig
from reasonlab.training import (Progress, count_trainable, log_rows, lora_config, progress_callbacks, save_checkpoint,
                                trainer_kwargs)

VERSION = "1"

__all__ = ["VERSION", "Progress", "run_sft", "train"]


def train(model, tokenizer, config: SFTConfig, progress: Progress | None = None) -> tuple[object, dict]:
    """Fine-tune `model` in place on `config.texts` (seed `config.seed`); return (the tuned model, a summary).

    With `lora:` the adapter is merged and unloaded, so the returned model is `model` itself with new weights and
    no peft wrapper; every parameter's `requires_grad` is as peft left it (a caller reusing the model resets it).
    The summary's `train_s` is the wall time of the optimizer steps (`trainer.train()`) alone."""
    if not config.texts:
        raise ReasonlabError("the SFT config has no texts: give `texts:` (one or more training texts)")
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    texts = [build_training_text(tokenizer, t, config.use_chat_template, config.system_prompt) for t in config.texts]
    torch.manual_seed(config.seed)  # the LoRA init draws from it before the trainer seeds itself
    with tempfile.TemporaryDirectory(prefix="reasonlab-sft-") as scratch:
        args = TrlSFTConfig(output_dir=scratch, max_length=config.max_length, dataset_text_field="text",
                            **trainer_kwargs(device, dtype, config.seed, config.epochs, config.learning_rate,
                                             config.batch_size, config.gradient_accumulation_steps,
                                             config.warmup_ratio))
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}),
                             processing_class=tokenizer, peft_config=lora_config(config.lora),
                             callbacks=progress_callbacks(progress))
        trainer.remove_callback(PrinterCallback)  # progress goes through `progress`, not stdout dicts
        trainable, _ = count_trainable(trainer.model)
        start = time.perf_counter()
        result = trainer.train()
        train_s = time.perf_counter() - start
    tuned = trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else trainer.model
    return tuned, {
        "steps": trainer.state.global_step,
        "losses": [row["loss"] for row in log_rows(trainer)],
        "train_runtime_s": result.metrics.get("train_runtime"),
        "train_s": train_s,
        "trainable_params": trainable,
        "lora": config.lora is not None,
    }


def run_sft(resolved: ResolvedModel, config: SFTConfig, output_dir: Path | str,
            progress: Progress | None = None) -> dict:
    """Train `resolved` (loaded fresh) on `config.texts`; save an HF checkpoint at `output_dir`; return a summary."""
    if not config.texts:
        raise ReasonlabError("the SFT config has no texts: give `texts:` (one or more training texts)")
    model, tokenizer = load_fresh(resolved, config.device, config.dtype, train=True)
    tuned, summary = train(model, tokenizer, config, progress)
    checkpoint = save_checkpoint(tuned, tokenizer, output_dir, {
        "name": f"{resolved.name}-sft", "base_model": resolved.to_dict(), "sft_config": config.model_dump()})
    return {"checkpoint": checkpoint, **summary}
