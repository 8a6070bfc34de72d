"""Stage 6 of concept SFT: fine-tune on the concept texts with TRL's SFTTrainer.

Full fine-tune by default; with `lora:` in the config, a peft LoRA adapter that is merged into the
saved checkpoint (an ordinary HF folder either way). The checkpoint appears atomically.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from reasonlab.errors import ReasonlabError
from reasonlab.models import ResolvedModel, load_fresh, pick_device, pick_dtype
from reasonlab.prompt_format import build_training_text
from reasonlab.concept_sft.sft_config import SFTConfig
from reasonlab.training import (Progress, count_trainable, log_rows, lora_config, progress_callbacks, save_checkpoint,
                                trainer_kwargs)

VERSION = "1"

__all__ = ["VERSION", "Progress", "run_sft"]


def run_sft(resolved: ResolvedModel, config: SFTConfig, output_dir: Path | str,
            progress: Progress | None = None) -> dict:
    """Train `resolved` on `config.texts`; save an HF checkpoint at `output_dir`; return a summary."""
    if not config.texts:
        raise ReasonlabError("the SFT config has no texts: give `texts:` (one or more training texts)")
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    model, tokenizer = load_fresh(resolved, config.device, config.dtype, train=True)
    texts = [build_training_text(tokenizer, t, config.use_chat_template, config.system_prompt) for t in config.texts]
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
        result = trainer.train()
    checkpoint = save_checkpoint(trainer.model, tokenizer, output_dir, {
        "name": f"{resolved.name}-sft", "base_model": resolved.to_dict(), "sft_config": config.model_dump()})
    return {
        "checkpoint": checkpoint,
        "steps": trainer.state.global_step,
        "losses": [row["loss"] for row in log_rows(trainer)],
        "train_runtime_s": result.metrics.get("train_runtime"),
        "trainable_params": trainable,
        "lora": config.lora is not None,
    }
