"""Stage 3: a Bradley-Terry reward model, -log sigmoid(r_chosen - r_rejected), with TRL's RewardTrainer.

The start model (the stage-2 checkpoint, or the base model for the order check) gets a freshly
initialised one-output `score` head (`AutoModelForSequenceClassification`, num_labels=1). The reward
is read at the last non-pad token, so the pad token is set on the tokenizer *and* on the model config
(a causal LM often has none; TRL sets it too). Pairs are tokenized here (`preferences.tokenize_pairs`:
counted, end-kept) so that TRL's silent max_length filter has nothing left to drop.

Every evaluation (before training, every `eval_every` updates, at the end) is one estimator: this module
scores every held-out pair (`score_pairs`) and summarises the per-pair rewards (`metrics.preference_summary`:
accuracy with ties wrong, mean margin, Bradley-Terry loss without the centring term). TRL's own evaluation
is not used: it averages per-batch means and adds the centring term to its loss. The final rewards of every
pair give the accuracy's Wilson 95 % CI, the margin's bootstrap CI, the histograms and the paired order test.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from reasonlab.errors import ReasonlabError
from reasonlab.io import sha256_json
from reasonlab.models import ResolvedModel, load_fresh, load_tokenizer, pick_device, pick_dtype
from reasonlab.three_stage import metrics, preferences
from reasonlab.three_stage.checkpoint import stage_manifest
from reasonlab.training import Progress, lora_config, count_trainable, progress_callback, save_checkpoint, trainer_kwargs
from reasonlab.three_stage.params import RewardParams

VERSION = "2"  # 2: split by conversation; one estimator for every evaluation


def prepare_pairs(settings: RewardParams) -> tuple[list, list, dict]:
    """(train pairs, held-out pairs, data report): validated, identical pairs skipped, no conversation on both
    sides (`data.split` counts what a training pair still gives away of the held-out ones: zero)."""
    train, train_report = preferences.load_preferences(settings.train)
    report = {"train_source": train_report}
    if settings.heldout:
        heldout, held_report = preferences.load_preferences(settings.heldout)
        train, dedupe = preferences.dedupe_across(train, heldout)
        report.update(heldout_source=held_report, **dedupe)
    else:
        train, heldout, split = preferences.split_by_conversation(train, settings.heldout_fraction, settings.seed)
        report.update(split=split)
    if settings.max_train_pairs:
        train = train[:settings.max_train_pairs]
    if settings.max_eval_pairs:
        heldout = heldout[:settings.max_eval_pairs]
    if not train:
        raise ReasonlabError(f"reward data {settings.train!r}: no training pair left after removing conversations "
                             f"the held-out set holds ({report})")
    report.update(train_pairs=len(train), heldout_pairs=len(heldout))
    return train, heldout, report


def tokenizer_with_pad(start: ResolvedModel):
    """The start model's tokenizer with a pad token (EOS when it has none: rewards are read before padding)."""
    tokenizer = load_tokenizer(start)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is None:
        raise ReasonlabError(f"model {start.name!r}: the tokenizer has neither a pad nor an EOS token")
    return tokenizer


def load_reward_model(start: ResolvedModel, pad_token_id: int, device: str, dtype: str, num_labels: int = 1):
    """The project's loader with a `num_labels`-output sequence-classification head, and the pad token set."""
    import logging

    quiet = logging.getLogger("transformers.modeling_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "score.weight newly initialized": expected for a new head
    try:
        model, _ = load_fresh(start, device, dtype, train=True, num_labels=num_labels)
    finally:
        quiet.setLevel(level)
    model.config.pad_token_id = pad_token_id
    if getattr(model.config, "get_text_config", None):
        model.config.get_text_config().pad_token_id = pad_token_id
    return model


def freeze_lower(model, freeze_below: int) -> None:
    """Freeze the embeddings and the first `freeze_below` decoder blocks (full fine-tune on a budget)."""
    if freeze_below <= 0:
        return
    from reasonlab.models import decoder_layers

    base = model.base_model
    for p in base.get_input_embeddings().parameters():
        p.requires_grad_(False)
    for block in list(decoder_layers(model))[:freeze_below]:
        for p in block.parameters():
            p.requires_grad_(False)


def score_pairs(model, tokenizer, rows: list[dict], batch_size: int = 8) -> tuple[list[float], list[float]]:
    """Rewards of every pair's chosen and rejected sequence (right padding, reward at the last real token)."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def score(seqs: list[list[int]]) -> list[float]:
        out = []
        for i in range(0, len(seqs), batch_size):
            batch = seqs[i:i + batch_size]
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, s in enumerate(batch):
                ids[j, :len(s)] = torch.tensor(s)
                mask[j, :len(s)] = 1
            with torch.no_grad():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out.extend(logits[:, 0].float().cpu().tolist())
        return out

    chosen = score([r["chosen_ids"] for r in rows])
    rejected = score([r["rejected_ids"] for r in rows])
    model.train(was_training)
    return chosen, rejected


def run_reward_model(start: ResolvedModel, settings: RewardParams, output_dir: Path | str, device: str = "auto",
                     dtype: str = "auto", progress: Progress | None = None) -> dict:
    """Train a reward model from `start`; save it (HF folder) at `output_dir`; return its metrics."""
    import torch

    train_pairs, heldout_pairs, data_report = prepare_pairs(settings)  # data errors before any model work
    tokenizer = tokenizer_with_pad(start)
    fit = dict(max_length=settings.max_length, use_chat_template=settings.use_chat_template,
               truncation=settings.truncation, max_drop_fraction=settings.max_drop_fraction)
    train_rows, train_fit = preferences.tokenize_pairs(tokenizer, train_pairs, where="reward training pairs", **fit)
    eval_rows, eval_fit = preferences.tokenize_pairs(tokenizer, heldout_pairs, where="reward held-out pairs", **fit)

    torch.manual_seed(settings.seed)
    model = load_reward_model(start, tokenizer.pad_token_id, device, dtype)
    freeze_lower(model, 0 if settings.lora else settings.freeze_below)
    evals: list[dict] = []

    def evaluate(step: int, chosen: list[float], rejected: list[float]) -> dict:
        summary = metrics.preference_summary(chosen, rejected)
        evals.append({"step": step, "n": summary["n"], "accuracy": summary["accuracy"],
                      "margin": summary["margin"], "loss": summary["loss"]})
        return summary

    def score(model_now) -> tuple[list[float], list[float]]:
        return score_pairs(model_now, tokenizer, eval_rows, batch_size=settings.batch_size)

    if settings.eval_before:
        evaluate(0, *score(model))
    trainer, result, (trainable, total) = _train(model, tokenizer, train_rows, settings, device, dtype, progress,
                                                 lambda step, model_now: evaluate(step, *score(model_now)))
    trained = trainer.model
    chosen, rejected = score(trained)
    summary = evaluate(trainer.state.global_step, chosen, rejected)
    if len(set(chosen + rejected)) <= 1:
        raise ReasonlabError("the reward model gives every held-out sequence the same reward: check the pad token "
                             "and the learning rate")
    losses = [{"step": r["step"], "loss": r["loss"]} for r in trainer.state.log_history if "loss" in r]
    out = {"stage": "reward", "start_model": start.to_dict(), "start_from": settings.start_from,
           "heldout": summary, "evaluations": evals, "train_losses": losses,
           "rewards": {"chosen": chosen, "rejected": rejected}, "heldout_fingerprint": sha256_json(eval_rows),
           "data": {**data_report, "train_fit": train_fit, "heldout_fit": eval_fit,
                    "pairs_dropped": pairs_dropped(data_report, train_fit, eval_fit)},
           "trainable_params": trainable, "total_params": total, "lora": settings.lora is not None,
           "steps": trainer.state.global_step, "train_runtime_s": result.metrics.get("train_runtime"),
           "pad_token": tokenizer.pad_token, "pad_token_id": tokenizer.pad_token_id}
    out["checkpoint"] = save_checkpoint(trained, tokenizer, output_dir, stage_manifest(start, "reward", settings), out)
    return out


def _train(model, tokenizer, train_rows: list[dict], settings: RewardParams, device: str, dtype: str,
           progress: Progress | None, evaluate) -> tuple:
    """TRL's RewardTrainer over `train_rows`, calling `evaluate(step, model)` every `eval_every` updates
    before the last: (trainer, train result, (trainable, total) parameters)."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    dev = pick_device(device)
    peft_config = None
    if settings.lora:
        peft_config = lora_config(settings.lora, task_type="SEQ_CLS", modules_to_save=["score"])
    updates_per_epoch = math.ceil(len(train_rows) / (settings.batch_size * settings.gradient_accumulation_steps))
    total_updates = max(1, math.ceil(updates_per_epoch * settings.epochs))
    eval_every = settings.eval_every or max(1, total_updates // 4)

    class EvaluateEvery(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % eval_every == 0 and state.global_step < state.max_steps:
                evaluate(state.global_step, model)

    with tempfile.TemporaryDirectory(prefix="reasonlab-rm-") as scratch:
        args = RewardConfig(output_dir=scratch, max_length=settings.max_length, eval_strategy="no",
                            center_rewards_coefficient=settings.center_rewards_coefficient or None,
                            disable_dropout=True,
                            **trainer_kwargs(dev, pick_dtype(dtype, dev), settings.seed, settings.epochs,
                                             settings.learning_rate, settings.batch_size,
                                             settings.gradient_accumulation_steps, settings.warmup_ratio))
        callbacks = [EvaluateEvery()] + ([progress_callback(progress)] if progress else [])
        trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                                processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)
        counts = count_trainable(trainer.model)
        result = trainer.train()
    return trainer, result, counts


def pairs_dropped(data_report: dict, train_fit: dict, eval_fit: dict) -> int:
    """Every pair that did not reach training or evaluation, whatever the reason (capping excluded)."""
    n = data_report["train_source"]["identical_skipped"] + data_report["train_source"]["unsplittable_skipped"]
    if "heldout_source" in data_report:
        n += data_report["heldout_source"]["identical_skipped"] + data_report["heldout_source"]["unsplittable_skipped"]
        n += data_report.get("train_dropped_shared_conversation", 0)
    for fit in (train_fit, eval_fit):
        n += fit["dropped_over_length"] + fit["identical_after_truncation"]
    return n
