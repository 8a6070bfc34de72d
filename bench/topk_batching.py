"""Batched top-k filter vs a per-prompt loop on a few hundred prompts: same decisions, speed, and how far
the batched filter is from the machine's forward-FLOP bound.

    python bench/topk_batching.py [--model smollm2-135m-instruct] [--prompts data/factual_prompts.json]
                                  [--batch-size 32] [--repeats 3] [--fmt completion|chat]

One run, side by side: `filter_prompts(..., batch_size=B)` (length-sorted batches) and
`filter_prompts(..., batch_size=1)` (the per-prompt loop), each the best wall time of `--repeats` calls, as
prompts/s. The filter's work: one pass over every prompt (its next-token top-k), then, for the prompts that
survive the first-token checks, their whole answers, a greedy wrong word and its whole probability.

Forward-FLOP bound. The forward passes of the batched run are recorded (a forward pre-hook: each row's real
length from the attention mask, the positions sent through the LM head), and the FLOPs they need counted
without padding:

    F = 2 * N * T  +  2 * n_layers * d_attn * sum_i L_i * (L_i + 1)  +  2 * d_model * V * P

    N      non-embedding parameters (all parameters minus the input embedding, and minus an untied LM head,
           which the last term counts)
    L_i    real token length of forwarded sequence i (every pass: first pass, answers, greedy steps)
    T      sum_i L_i, the tokens actually needed
    d_attn n_heads * head_dim; the middle term is causal attention (QK^T and AV: 2 * 2 * d_attn FLOPs per
           query-key pair, sum over positions j of j keys = L(L+1)/2)
    V      vocabulary size
    P      positions through the LM head (`logits_to_keep`: 1 per next-token read, the answer's positions)

The machine's sustained FLOP/s is measured in the same run: torch.matmul in the model's dtype, on its device,
with torch's current thread count, over the model's own weight shapes (attention projections, MLP, LM head)
at M = batch_size * mean length rows. bound (prompts/s) = FLOP/s / (F / prompts); share_of_bound =
batched prompts/s / bound. Norms, rotary embeddings, softmax and the top-k are not counted, so the bound
is a little optimistic.

Padding waste = padded tokens / real tokens: as run (the filter's length-sorted batches, recorded) and, for
comparison, what the first pass would pad with batches taken in input order.

Ends with: same_decisions=, prompts_per_s_batched=, prompts_per_s_loop=, speedup=.
"""

from __future__ import annotations

import argparse

import torch

from reasonlab.concept_sft.prompts import load_prompts
from reasonlab.concept_sft.topk_filter import filter_prompts
from reasonlab.models import load_model, resolve_model
from reasonlab.paths import project_root
from reasonlab.prompt_format import build_prompt
from flops import ForwardLog, forward_flops, matmul_flops_per_s, model_dims, padded_tokens
from timing import timed


def decisions(result: dict) -> list[tuple]:
    """Each row's (prompt, status, reason, rank), sorted by prompt; other (new) row fields are ignored."""
    rows = result["target_cases"] + result["rejected"]
    return sorted(((r["prompt"], r["status"], r.get("reason"), r.get("correct_rank")) for r in rows), key=repr)


def max_prob_diff(a: dict, b: dict) -> float | None:
    """Largest top-k probability difference between the two results' rows, if rows carry top_k."""
    by_prompt = {r["prompt"]: r for r in b["target_cases"] + b["rejected"]}
    diffs = [abs(x["prob"] - y["prob"])
             for r in a["target_cases"] + a["rejected"] if "top_k" in r and "top_k" in by_prompt.get(r["prompt"], {})
             for x, y in zip(r["top_k"], by_prompt[r["prompt"]]["top_k"])]
    return max(diffs) if diffs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", default=str(project_root() / "data" / "factual_prompts.json"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fmt", choices=["completion", "chat"], default="completion")
    args = parser.parse_args()

    model, tokenizer = load_model(resolve_model(args.model))
    items = load_prompts(args.prompts)
    texts = [build_prompt(tokenizer, it.prompt, args.fmt) for it in items]
    first_pass = [len(tokenizer.encode(t)) for t in texts]
    pad_input = padded_tokens(first_pass, args.batch_size)

    run = lambda bs: filter_prompts(model, tokenizer, items, fmt=args.fmt, batch_size=bs)  # noqa: E731
    filter_prompts(model, tokenizer, items[:2], fmt=args.fmt, batch_size=2)  # warm-up
    log = ForwardLog(model)
    run(args.batch_size)  # one recorded batched run: the work the filter needs, and its padding
    log.close()
    batched_s, batched = timed(lambda: run(args.batch_size), args.repeats)
    loop_s, loop = timed(lambda: run(1), args.repeats)
    diff = max_prob_diff(batched, loop)

    lengths, real = log.lengths, sum(log.lengths)
    dims = model_dims(model)
    flops = forward_flops(dims, lengths, log.head_positions)
    rows = max(1, round(args.batch_size * real / len(lengths)))
    flop_s = matmul_flops_per_s(dims, rows, next(model.parameters()).dtype, model.device)
    bound = flop_s / (flops / len(items))
    survivors = sum("wrong_word" in r for r in batched["target_cases"] + batched["rejected"])

    print(f"model={args.model}")
    print(f"device={model.device}")
    print(f"dtype={next(model.parameters()).dtype}")
    print(f"threads={torch.get_num_threads()}")
    print(f"prompts={len(items)}")
    print(f"fmt={args.fmt}")
    print(f"batch_size={args.batch_size}")
    print(f"repeats={args.repeats}")
    print(f"target_cases={len(batched['target_cases'])}")
    print(f"whole_answer_step_prompts={survivors}")
    print(f"forward_sequences={len(lengths)}")
    print(f"prompt_tokens_mean={sum(first_pass) / len(first_pass):.1f}")
    print(f"tokens_real={real}")
    print(f"tokens_padded_as_run={log.padded}")
    print(f"lm_head_positions={log.head_positions}")
    print(f"pad_waste_sorted={log.padded / real:.3f}")
    print(f"pad_waste_input_order={pad_input / sum(first_pass):.3f}")
    print(f"non_embedding_params={dims['non_embedding']}")
    print(f"forward_gflop={flops / 1e9:.2f}")
    print(f"matmul_rows={rows}")
    print(f"matmul_gflop_per_s={flop_s / 1e9:.2f}")
    print(f"flop_bound_prompts_per_s={bound:.1f}")
    print(f"max_prob_diff={'n/a' if diff is None else f'{diff:.2e}'}")
    print(f"batched_s={batched_s:.3f}")
    print(f"loop_s={loop_s:.3f}")
    print(f"share_of_bound={len(items) / batched_s / bound:.3f}")
    print(f"same_decisions={decisions(batched) == decisions(loop)}")
    print(f"prompts_per_s_batched={len(items) / batched_s:.2f}")
    print(f"prompts_per_s_loop={len(items) / loop_s:.2f}")
    print(f"speedup={loop_s / batched_s:.2f}")


if __name__ == "__main__":
    main()
