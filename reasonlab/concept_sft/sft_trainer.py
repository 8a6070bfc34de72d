"""Stage 6 of concept SFT: fine-tune on the concept texts with TRL's SFTTrainer.

Full fine-tune by default; with `lora:` in the config, a peft LoRA adapter that is merged into the
saved checkpoint (an ordinary HF folder either way). The checkpoint appears atomically.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from reasonlab.errors import ReasonlabError
from reasonlab.io import atomic_path, tree_fingerprint, write_json
from reasonlab.models import MANIFEST, ResolvedModel, load_fresh, pick_device, pick_dtype
from reasonlab.prompt_format import build_training_text
from reasonlab.concept_sft.sft_config import SFTConfig

VERSION = "1"

Progress = Callable[[int, int, float | None], None]  # (step, total_steps, last loss)


def progress_callback(progress: Progress):
    from transformers import TrainerCallback

    class ReportProgress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            progress(state.global_step, state.max_steps, (logs or {}).get("loss"))

    return ReportProgress()


def run_sft(resolved: ResolvedModel, config: SFTConfig, output_dir: Path | str,
            progress: Progress | None = None) -> dict:
    """Train `resolved` on `config.texts`; save an HF checkpoint at `output_dir`; return a summary."""
    if not config.texts:
        raise ReasonlabError("the SFT config has no texts: give `texts:` (one or more training texts)")
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    model, tokenizer = load_fresh(resolved, config.device, config.dtype, train=True)
    texts = [build_training_text(tokenizer, t, config.use_chat_template, config.system_prompt) for t in config.texts]
    peft_config = None
    if config.lora:
        peft_config = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                                 target_modules=config.lora.target_modules, task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory(prefix="reasonlab-sft-") as scratch:
        args = TrlSFTConfig(
            output_dir=scratch,
            num_train_epochs=config.epochs,
            learning_rate=config.learning_rate,
            per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            warmup_steps=config.warmup_ratio if config.warmup_ratio < 1 else 0.999,  # a float < 1 is a ratio
            lr_scheduler_type="linear",
            max_length=config.max_length,
            dataset_text_field="text",
            seed=config.seed,
            bf16=dtype == torch.bfloat16,
            fp16=False,
            use_cpu=device == "cpu",
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}),
            processing_class=tokenizer, peft_config=peft_config,
            callbacks=[progress_callback(progress)] if progress else None,
        )
        trainer.remove_callback(PrinterCallback)  # progress goes through `progress`, not stdout dicts
        result = trainer.train()
    trained = trainer.model.merge_and_unload() if config.lora else trainer.model
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    with atomic_path(output_dir) as tmp:
        trained.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MANIFEST, {
            "name": f"{resolved.name}-sft",
            "base_model": resolved.to_dict(),
            "sft_config": config.model_dump(),
            "fingerprint": "sha256:" + tree_fingerprint(tmp),
        })
    return {
        "checkpoint": str(Path(output_dir).resolve()),
        "steps": trainer.state.global_step,
        "losses": losses,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "lora": config.lora is not None,
    }
