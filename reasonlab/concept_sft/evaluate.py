"""Stage 7 of concept SFT: the wrong -> correct probability shift, base vs SFT.

For each target case and prompt format: the top-10 next tokens, p(wrong) = the summed probability
of the wrong token's one-token surface variants (' ren', ' Ren', ...), and p(correct) = that of the
answer's first tokens (' al', ' Ald', ...).
"""

from __future__ import annotations

from reasonlab.prompt_format import Format, build_prompt
from reasonlab.tokens import first_token_ids, single_token_ids
from reasonlab.concept_sft.topk_filter import next_token_probs, top_tokens

VERSION = "1"


def evaluate_cases(model, tokenizer, cases: list[dict], formats: list[Format], *, k: int = 10,
                   system_prompt: str | None = "", answer_prefix: str = " Answer:", batch_size: int = 8) -> list[dict]:
    """One row per (case, format) with top_k, p_wrong and p_correct."""
    rows = [{"prompt": c["prompt"], "answer": c["answer"], "wrong_token": c["wrong_token"], "format": fmt,
             "wrong_ids": single_token_ids(tokenizer, c["wrong_token"]) | {c["wrong_token_id"]},
             "correct_ids": first_token_ids(tokenizer, c["answer"])}
            for c in cases for fmt in formats]
    texts = [build_prompt(tokenizer, r["prompt"], r["format"], system_prompt, answer_prefix) for r in rows]
    for row, probs in zip(rows, next_token_probs(model, tokenizer, texts, batch_size)):
        row["top_k"] = [{"token": t.token, "prob": t.prob} for t in top_tokens(tokenizer, probs, k)]
        row["p_wrong"] = float(probs[sorted(row.pop("wrong_ids"))].sum())
        row["p_correct"] = float(probs[sorted(row.pop("correct_ids"))].sum())
    return rows


def compare(base: list[dict], tuned: list[dict]) -> list[dict]:
    """The seed's results table: base wrong->correct vs SFT wrong->correct, one row per case and format."""
    table = []
    for b, t in zip(base, tuned, strict=True):
        assert (b["prompt"], b["format"]) == (t["prompt"], t["format"])
        table.append({
            "prompt": b["prompt"], "answer": b["answer"], "wrong_token": b["wrong_token"], "format": b["format"],
            "base_p_wrong": b["p_wrong"], "base_p_correct": b["p_correct"],
            "sft_p_wrong": t["p_wrong"], "sft_p_correct": t["p_correct"],
            "correct_gain": t["p_correct"] - b["p_correct"],
            "flipped": b["p_wrong"] > b["p_correct"] and t["p_correct"] > t["p_wrong"],
            "base_top1": b["top_k"][0]["token"], "sft_top1": t["top_k"][0]["token"],
        })
    return table


def results_markdown(table: list[dict]) -> str:
    """One column per figure: base and SFT p(wrong) / p(correct) side by side, then the shift."""
    lines = ["| Prompt | Format | Wrong | Correct | Base p(wrong) | Base p(correct) | SFT p(wrong) | SFT p(correct) "
             "| Δ p(correct) | Flipped | Base top-1 | SFT top-1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(
            f"| {r['prompt']} | {r['format']} | {r['wrong_token'].strip()} | {r['answer']} "
            f"| {r['base_p_wrong']:.1%} | {r['base_p_correct']:.1%} | {r['sft_p_wrong']:.1%} | {r['sft_p_correct']:.1%} "
            f"| {r['correct_gain']:+.1%} | {'yes' if r['flipped'] else 'no'} | {r['base_top1']!r} | {r['sft_top1']!r} |"
        )
    return "\n".join(lines) + "\n"
