"""One SFT experiment of the study: train on one text set with one seed, score the tuned model, keep the figures.

    run_experiment(base, config, texts, cases, ["completion"], "runs/x/case0-concept/seed0", heldout=paragraphs)

The checkpoint is deleted after scoring unless `keep_checkpoint` (a study makes many; the attribution
after SFT needs one). The result holds everything the summary needs, so a cached rerun needs no weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from reasonlab.concept_sft import evaluate, sft_trainer
from reasonlab.concept_sft.sft_config import SFTConfig
from reasonlab.models import ResolvedModel, load_fresh, load_tokenizer, resolve_model
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
    """Train `base` on `config.texts` (seed `config.seed`), score it on `cases`, perplexity on `heldout`."""
    output_dir = Path(output_dir)
    sft = sft_trainer.run_sft(base, config, output_dir, progress=progress)
    tuned = resolve_model(sft["checkpoint"])
    model, tokenizer = load_fresh(tuned, config.device, config.dtype)
    rows = evaluate.evaluate_cases(model, tokenizer, cases, formats, k=k, system_prompt=config.system_prompt,
                                   answer_prefix=answer_prefix)
    ppl = evaluate.perplexity(model, tokenizer, heldout)
    del model
    if not keep_checkpoint:
        shutil.rmtree(output_dir)
    return {"seed": config.seed, "rows": rows, "perplexity": ppl, "losses": sft["losses"], "steps": sft["steps"],
            "train_tokens": budget_tokens(base, config, config.texts),
            "checkpoint": sft["checkpoint"] if keep_checkpoint else None}
