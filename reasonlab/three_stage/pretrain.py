"""Stage 1: continued pretraining (or a tiny model from scratch) with causal-LM cross-entropy on packed
blocks of a domain corpus; held-out perplexity before and after.

Blocks are equal-length token windows over the documents joined by EOS (`corpus.pack`), so labels
are the inputs themselves (no padding, and EOS between documents is a real target: a pad-masking
collator would hide it wherever pad == EOS).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from reasonlab.models import ResolvedModel, load_fresh, load_tokenizer, pick_device, pick_dtype
from reasonlab.models.scoring import heldout_perplexity
from reasonlab.three_stage.checkpoint import stage_manifest
from reasonlab.training import Progress, lora_config, count_trainable, progress_callback, save_checkpoint, trainer_kwargs
from reasonlab.three_stage.params import PretrainParams, ScratchParams
from reasonlab.three_stage.corpus import load_corpus, pack

VERSION = "1"


def build_scratch(tokenizer, arch: ScratchParams, seed: int = 0):
    """A randomly initialised tiny Llama sized to `tokenizer`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **arch.model_dump())
    return LlamaForCausalLM(config)


def run_pretrain(start: ResolvedModel, settings: PretrainParams, output_dir: Path | str, device: str = "auto",
                 dtype: str = "auto", progress: Progress | None = None, scratch: ScratchParams | None = None) -> dict:
    """Train on the corpus; save an HF checkpoint at `output_dir`; return perplexities and losses.
    `scratch`: the architecture when `settings.init` is scratch (default: ScratchParams())."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import PrinterCallback, Trainer, TrainingArguments, default_data_collator

    corpus = load_corpus(settings.corpus, settings.text_field, settings.heldout_fraction, settings.seed)
    tokenizer = load_tokenizer(start)
    train_blocks = pack(tokenizer, corpus.train, settings.block_size, settings.max_train_blocks)
    eval_blocks = pack(tokenizer, corpus.heldout, settings.block_size, settings.max_eval_blocks)

    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    if settings.init == "scratch":
        model = build_scratch(tokenizer, scratch or ScratchParams(), settings.seed).to(dev)  # fp32 master weights
    else:
        model, _ = load_fresh(start, device, dtype, train=True)
    before = heldout_perplexity(model, eval_blocks, settings.batch_size)
    if settings.lora:
        model = get_peft_model(model, lora_config(settings.lora))
    trainable, total = count_trainable(model)
    rows = [{"input_ids": b, "labels": b} for b in train_blocks]
    with tempfile.TemporaryDirectory(prefix="reasonlab-pretrain-") as scratch:
        args = TrainingArguments(output_dir=scratch, **trainer_kwargs(
            dev, torch_dtype, settings.seed, settings.epochs, settings.learning_rate, settings.batch_size,
            settings.gradient_accumulation_steps, settings.warmup_ratio))
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                          data_collator=default_data_collator,
                          callbacks=[progress_callback(progress)] if progress else None)
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
    after = heldout_perplexity(trainer.model, eval_blocks, settings.batch_size)
    out = {"stage": "pretrain", "start_model": start.to_dict(), "init": settings.init, "corpus": corpus.to_dict(),
           "train_blocks": len(train_blocks), "heldout_blocks": len(eval_blocks), "block_size": settings.block_size,
           "perplexity_before": before["perplexity"], "perplexity_after": after["perplexity"],
           "heldout_before": before, "heldout_after": after,
           "train_losses": [{"step": r["step"], "loss": r["loss"]} for r in trainer.state.log_history if "loss" in r],
           "trainable_params": trainable, "total_params": total, "lora": settings.lora is not None,
           "steps": trainer.state.global_step, "train_runtime_s": result.metrics.get("train_runtime")}
    out["checkpoint"] = save_checkpoint(trainer.model, tokenizer, output_dir, stage_manifest(start, "pretrain", settings), out)
    return out
