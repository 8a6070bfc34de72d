"""One SFT experiment of the study: train on one text set with one seed, score the tuned model, keep the figures.

    run_experiment(base, config.model_copy(update={"texts": texts, "seed": 0}), cases, ["completion"],
                   "runs/concept_sft/sft/case0-concept-<key>/seed0", heldout=paragraphs)

The base is loaded once per process and its weights restored before each experiment (`BasePool`), the tuned
model is scored in memory, and a checkpoint is written (at `output_dir`, atomically) only with `keep_checkpoint`
(a study makes many; the attribution after SFT needs one). The result holds everything the summary needs, so
a cached rerun needs no weights, and `timings` says where the wall time went.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

from reasonlab.concept_sft import evaluate, sft_trainer
from reasonlab.concept_sft.sft_config import SFTConfig
from reasonlab.models import ResolvedModel, load_fresh, load_tokenizer, pick_device
from reasonlab.models.scoring import text_perplexity
from reasonlab.prompt_format import build_training_text
from reasonlab.training import save_checkpoint

VERSION = "1"


def budget_tokens(resolved: ResolvedModel, config: SFTConfig, texts: list[str], tokenizer=None) -> int:
    """Training tokens per epoch as the trainer sees them (templated, truncated): the budget the controls match."""
    tokenizer = tokenizer or load_tokenizer(resolved)
    return sum(min(len(tokenizer.encode(build_training_text(tokenizer, t, config.use_chat_template,
                                                            config.system_prompt))), config.max_length)
               for t in texts)


class BasePool:
    """Base models kept in memory, each with a CPU copy of its weights to restore before the next experiment.

    One model per concurrent borrower (threads of one process each get their own); only the last base's
    models are kept, so a process moving on to another base frees the previous one."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._idle: list[tuple] = []  # (model, tokenizer, weights: {name: CPU tensor})

    @contextmanager
    def borrow(self, resolved: ResolvedModel, device: str = "auto", dtype: str = "auto"):
        """(model, tokenizer) with the base weights, in train mode, every parameter trainable, no gradients."""
        key = (resolved.source, resolved.revision, resolved.fingerprint, pick_device(device), dtype)
        with self._lock:
            if self._key != key:
                self._key, self._idle = key, []
            entry = self._idle.pop() if self._idle else None
        if entry is None:
            model, tokenizer = load_fresh(resolved, device, dtype, train=True)
            entry = (model, tokenizer, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
        else:
            restore(entry[0], entry[2])
        yield entry[0], entry[1]  # a failed experiment's model (maybe still wrapped by peft) is dropped
        with self._lock:
            if self._key == key:
                self._idle.append(entry)

    def clear(self) -> None:
        """Free every kept model (the experiments are over in this process)."""
        with self._lock:
            self._key, self._idle = None, []


def restore(model, weights: dict) -> None:
    """Put `model` back to the base state it was loaded in: weights, trainable flags, train mode, no gradients,
    and no forward wrapper left by a trainer (accelerate's mixed-precision one is set on the instance)."""
    import torch

    with torch.no_grad():
        model.load_state_dict(weights, strict=True)
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    for name in ("forward", "_original_forward"):
        model.__dict__.pop(name, None)
    model.train(True)


BASES = BasePool()


def run_experiment(base: ResolvedModel, config: SFTConfig, cases: list[dict], formats: list[str],
                   output_dir: Path | str, *, heldout: list[str], keep_checkpoint: bool = False, k: int = 10,
                   answer_prefix: str = " Answer:", progress: sft_trainer.Progress | None = None) -> dict:
    """Train `base` on `config.texts` (seed `config.seed`), score it on `cases`, perplexity on `heldout`.

    `timings` (seconds): load (restoring the base weights, or loading them on a process's first experiment),
    train (the optimizer steps), setup (the trainer's construction and the LoRA merge), score, perplexity,
    save (the kept checkpoint), total."""
    start = time.perf_counter()
    with BASES.borrow(base, config.device, config.dtype) as (model, tokenizer):
        loaded = time.perf_counter()
        tuned, sft = sft_trainer.train(model, tokenizer, config, progress)
        tuned.eval()  # as the old path's freshly loaded checkpoint was
        trained = time.perf_counter()
        rows = evaluate.evaluate_cases(tuned, tokenizer, cases, formats, k=k, system_prompt=config.system_prompt,
                                       answer_prefix=answer_prefix)
        scored = time.perf_counter()
        ppl = text_perplexity(tuned, tokenizer, heldout)
        measured = time.perf_counter()
        checkpoint = save_checkpoint(tuned, tokenizer, output_dir, {
            "name": f"{base.name}-sft", "base_model": base.to_dict(),
            "sft_config": config.model_dump()}) if keep_checkpoint else None
        train_tokens = budget_tokens(base, config, config.texts, tokenizer)
    end = time.perf_counter()
    timings = {"load": loaded - start, "train": sft["train_s"], "setup": trained - loaded - sft["train_s"],
               "score": scored - trained, "perplexity": measured - scored, "save": end - measured,
               "total": end - start}
    return {"seed": config.seed, "rows": rows, "perplexity": ppl, "losses": sft["losses"], "steps": sft["steps"],
            "train_tokens": train_tokens, "checkpoint": checkpoint, "timings": timings}
