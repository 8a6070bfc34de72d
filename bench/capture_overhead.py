"""Capture overhead: greedy generation on the same MBPP problems without hooks, with last-prompt-token
capture, and with capture over every generated token, side by side in one process.

    python bench/capture_overhead.py [--model qwen2.5-coder-0.5b-instruct] [--problems 8] [--batch-size 4]
                                     [--max-new-tokens 64] [--layers 14 16] [--repeats 3]

The arms alternate within each repeat (off, last, all, off, ...) so load drift hits them alike; each arm's
time is its median over repeats. Completions must be identical across arms (hooks never change the
result). Ends with key=value lines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reasonlab.activations import codegen, mbpp  # noqa: E402
from reasonlab.models import load_model, resolve_model  # noqa: E402


def run_arm(model, tok, prompts: list[str], batch_size: int, max_new_tokens: int, layers: list[int],
            capture_generated: bool) -> tuple[float, list[str], int]:
    cfg = codegen.GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   capture_generated=capture_generated)
    start = time.perf_counter()
    outs = []
    for i in range(0, len(prompts), batch_size):
        outs += codegen.generate_batch(model, tok, prompts[i:i + batch_size], cfg, layers)
    elapsed = time.perf_counter() - start
    return elapsed, [o["completion"] for o in outs], sum(o["completion_tokens"] for o in outs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--layers", type=int, nargs="+", default=None, help="default: two middle layers")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args(argv)

    resolved = resolve_model(args.model)
    model, tok = load_model(resolved, args.device, args.dtype)
    n_layers = model.config.num_hidden_layers
    layers = args.layers or sorted({n_layers // 2, (2 * n_layers) // 3})
    problems = mbpp.load_split("validation")[:args.problems]
    prompts = [codegen.mbpp_prompt(tok, p) for p in problems]
    print(f"model={resolved.name} device={model.device} dtype={model.dtype} layers={layers} "
          f"problems={len(prompts)} batch_size={args.batch_size} max_new_tokens={args.max_new_tokens}")
    run_arm(model, tok, prompts[:1], 1, 4, [], False)  # warm-up

    arms = {"off": ([], False), "last": (layers, False), "all": (layers, True)}
    times: dict[str, list[float]] = {a: [] for a in arms}
    completions: dict[str, list[str]] = {}
    tokens = 0
    for r in range(args.repeats):
        for arm, (lay, gen) in arms.items():
            t, comps, tokens = run_arm(model, tok, prompts, args.batch_size, args.max_new_tokens, lay, gen)
            times[arm].append(t)
            completions.setdefault(arm, comps)
            print(f"repeat {r} {arm}: {t:.2f}s")
    same = completions["off"] == completions["last"] == completions["all"]
    med = {a: statistics.median(ts) for a, ts in times.items()}
    print(f"model={resolved.name}")
    print(f"problems={len(prompts)}")
    print(f"generated_tokens={tokens}")
    print(f"same_completions={same}")
    for arm in arms:
        print(f"{arm}_s={med[arm]:.3f}")
        print(f"{arm}_tokens_per_s={tokens / med[arm]:.2f}")
    print(f"ratio_last_vs_off={med['last'] / med['off']:.4f}")
    print(f"ratio_all_vs_off={med['all'] / med['off']:.4f}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
