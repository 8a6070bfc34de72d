"""One SFT experiment of the study: train on one text set with one seed, score the tuned model, keep the figures.

    run_experiment(base, config.model_copy(update={"texts": texts, "seed": 0}), cases, ["completion"],
                   "runs/concept_sft/sft/case0-concept-<key>/seed0", heldout=paragraphs)

The checkpoint is kept (at `output_dir`) only with `keep_checkpoint` (a study makes many; the attribution
after SFT needs one); otherwise it lives in a scratch folder until scored. The result holds everything the
summary needs, so a cached rerun needs no weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from reasonlab.concept_sft import evaluate, sft_trainer
from reasonlab.concept_sft.sft_config import SFTConfig
from reasonlab.models import ResolvedModel, load_fresh, load_tokenizer, resolve_model
from reasonlab.models.scoring import text_perplexity
from reasonlab.prompt_format import build_training_text

VERSION = "1"


def budget_tokens(resolved: ResolvedModel, config: SFTConfig, texts: list[str]) -> int:
    """Training tokens per epoch as the trainer sees them (templated, truncated): the budget the controls match."""
    tokenizer = load_tokenizer(resolved)
    return sum(min(len(tokenizer.encode(build_training_text(tokenizer, t, config.use_chat_template,
                                                            config.system_prompt))), config.max_length)
               for t in texts)


def run_experiment(base: ResolvedModel, config: SFTConfig, cases: list[dict], formats: list[str],
                   output_dir: Path | str, *, heldout: list[str], keep_checkpoint: bool = False, k: int = 10,
                   answer_prefix: str = " Answer:", progress: sft_trainer.Progress | None = None) -> dict:
    """Train `base` on `config.texts` (seed `config.seed`), score it on `cases`, perplexity on `heldout`.

    A checkpoint that is not kept lives in a private scratch folder, so two runs training the same thing at
    once (a sweep child beside a run) never share or delete each other's files."""
    with tempfile.TemporaryDirectory(prefix="reasonlab-sft-") as scratch:
        target = Path(output_dir) if keep_checkpoint else Path(scratch) / "checkpoint"
        sft = sft_trainer.run_sft(base, config, target, progress=progress)
        model, tokenizer = load_fresh(resolve_model(sft["checkpoint"]), config.device, config.dtype)
        rows = evaluate.evaluate_cases(model, tokenizer, cases, formats, k=k, system_prompt=config.system_prompt,
                                       answer_prefix=answer_prefix)
        ppl = text_perplexity(model, tokenizer, heldout)
        del model
    return {"seed": config.seed, "rows": rows, "perplexity": ppl, "losses": sft["losses"], "steps": sft["steps"],
            "train_tokens": budget_tokens(base, config, config.texts),
            "checkpoint": sft["checkpoint"] if keep_checkpoint else None}
