"""Stage 4 (optional): DPO (TRL's DPOTrainer) from the stage-2 model on the reward model's pairs.

Measured on the held-out pairs before and after: the policy's log-probability margin
log p(chosen | prompt) - log p(rejected | prompt), and the implicit-reward accuracy, i.e. how often
beta * [(log pi - log ref)(chosen) - (log pi - log ref)(rejected)] > 0 (ties wrong: before training
pi == ref, so every implicit reward is 0 and the accuracy is 0 by that rule).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from reasonlab.errors import ReasonlabError
from reasonlab.models import ResolvedModel, load_fresh, pick_device, pick_dtype
from reasonlab.three_stage import metrics, preferences
from reasonlab.three_stage.checkpoint import stage_manifest
from reasonlab.training import Progress, lora_config, count_trainable, progress_callback, save_checkpoint, trainer_kwargs
from reasonlab.three_stage.params import DPOParams, RewardParams
from reasonlab.three_stage.reward_model import prepare_pairs

VERSION = "1"


def _conversation(pair: preferences.Pair) -> dict:
    chosen = preferences.to_messages(pair.prompt, pair.chosen)
    rejected = preferences.to_messages(pair.prompt, pair.rejected)
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def response_logprobs(model, tokenizer, pairs: list[preferences.Pair], max_length: int) -> tuple[list[float], list[float]]:
    """Summed log-probabilities of each chosen and rejected reply given its prompt (the end kept)."""
    import torch

    device = next(model.parameters()).device
    model.eval()

    def logp(prompt_msgs: list[dict], reply: dict) -> float:
        prompt = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(prompt_msgs + [reply], tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        n_reply = max(1, len(ids) - len(p_ids))
        ids = ids[-max_length:]
        n_reply = min(n_reply, len(ids) - 1)
        x = torch.tensor([ids], device=device)
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
        targets = x[0, 1:]
        return lp[-n_reply:].gather(-1, targets[-n_reply:, None]).sum().item()

    chosen, rejected = [], []
    for pair in pairs:
        conv = _conversation(pair)
        chosen.append(logp(conv["prompt"], conv["chosen"][0]))
        rejected.append(logp(conv["prompt"], conv["rejected"][0]))
    return chosen, rejected


def run_dpo(start: ResolvedModel, settings: DPOParams, pairs_from: RewardParams, output_dir: Path | str,
            device: str = "auto", dtype: str = "auto", progress: Progress | None = None) -> dict:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    train, heldout, data_report = prepare_pairs(pairs_from)
    train = train[:settings.max_train_pairs] if settings.max_train_pairs else train
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    torch.manual_seed(settings.seed)
    model, tokenizer = load_fresh(start, device, dtype, train=True)
    if not getattr(tokenizer, "chat_template", None):
        raise ReasonlabError(f"model {start.name!r} has no chat template: DPO here uses conversational pairs")
    ref_chosen, ref_rejected = response_logprobs(model, tokenizer, heldout, settings.max_length)
    peft_config = None
    if settings.lora:
        peft_config = lora_config(settings.lora)
    with tempfile.TemporaryDirectory(prefix="reasonlab-dpo-") as scratch:
        args = DPOConfig(output_dir=scratch, beta=settings.beta, max_length=settings.max_length,
                         **trainer_kwargs(dev, torch_dtype, settings.seed, settings.epochs, settings.learning_rate,
                                          settings.batch_size, 1, 0.0))
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list([_conversation(p) for p in train]),
                             processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[progress_callback(progress)] if progress else None)
        trainer.remove_callback(PrinterCallback)
        trainable, total = count_trainable(trainer.model)
        result = trainer.train()
    policy = trainer.model.merge_and_unload() if settings.lora else trainer.model
    pol_chosen, pol_rejected = response_logprobs(policy, tokenizer, heldout, settings.max_length)
    implicit_c = [settings.beta * (p - r) for p, r in zip(pol_chosen, ref_chosen)]
    implicit_r = [settings.beta * (p - r) for p, r in zip(pol_rejected, ref_rejected)]
    out = {"stage": "dpo", "start_model": start.to_dict(), "data": data_report, "train_pairs": len(train),
           "heldout_pairs": len(heldout),
           "logp_margin_before": metrics.mean_margin(ref_chosen, ref_rejected),
           "logp_margin_after": metrics.mean_margin(pol_chosen, pol_rejected),
           "logp_accuracy_before": metrics.preference_accuracy(ref_chosen, ref_rejected),
           "logp_accuracy_after": metrics.preference_accuracy(pol_chosen, pol_rejected),
           "implicit_reward": metrics.preference_summary(implicit_c, implicit_r),
           "train_losses": [{"step": r["step"], "loss": r["loss"]} for r in trainer.state.log_history if "loss" in r],
           "trainable_params": trainable, "total_params": total, "steps": trainer.state.global_step,
           "train_runtime_s": result.metrics.get("train_runtime")}
    out["checkpoint"] = save_checkpoint(policy, tokenizer, output_dir, stage_manifest(start, "dpo", settings), out)
    return out
