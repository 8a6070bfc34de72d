"""Batched top-k filter vs a per-prompt loop on the same prompts: same decisions, and the speed ratio.

    python bench/topk_batching.py [--model smollm2-135m-instruct] [--batch-size 8] [--repeats 3]
"""

import argparse

from reasonlab.models import load_model, resolve_model
from reasonlab.paths import project_root
from reasonlab.concept_sft.prompts import load_prompts
from reasonlab.concept_sft.topk_filter import filter_prompts
from timing import timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", default=str(project_root() / "data" / "medical_prompts.json"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer = load_model(resolve_model(args.model))
    items = load_prompts(args.prompts)
    filter_prompts(model, tokenizer, items[:2])  # warm-up
    batched_s, batched = timed(lambda: filter_prompts(model, tokenizer, items, batch_size=args.batch_size), args.repeats)
    loop_s, loop = timed(lambda: filter_prompts(model, tokenizer, items, batch_size=1), args.repeats)
    decisions = lambda r: [(c["prompt"], c["status"], c.get("reason"), c["correct_rank"]) for c in  # noqa: E731
                           sorted(r["target_cases"] + r["rejected"], key=lambda c: c["prompt"])]
    max_diff = max(abs(a["prob"] - b["prob"])
                   for ra, rb in zip(sorted(batched["target_cases"] + batched["rejected"], key=lambda c: c["prompt"]),
                                     sorted(loop["target_cases"] + loop["rejected"], key=lambda c: c["prompt"]))
                   for a, b in zip(ra["top_k"], rb["top_k"]))
    print(f"model={args.model}")
    print(f"prompts={len(items)}")
    print(f"batch_size={args.batch_size}")
    print(f"target_cases={len(batched['target_cases'])}")
    print(f"same_decisions={decisions(batched) == decisions(loop)}")
    print(f"max_prob_diff={max_diff:.2e}")
    print(f"batched_s={batched_s:.3f}")
    print(f"loop_s={loop_s:.3f}")
    print(f"speedup={loop_s / batched_s:.2f}")


if __name__ == "__main__":
    main()
