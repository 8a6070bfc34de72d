"""DSPy evaluation throughput: the same examples sequentially and with num_threads=4, then a cached rerun.

    python bench/dspy_eval.py                                   # stories260K (chat template added), 12 examples
    python bench/dspy_eval.py --model smollm2-135m-instruct --n 6 --max-tokens 64

Sequential and threaded runs bypass DSPy's cache (each really generates); the cached pair runs with a fresh
disk cache under a temporary $REASONLAB_HOME, first cold then warm. The in-process engine batches the
requests that the threads have waiting into one left-padded generate (decoding is memory-bound, so a
batch costs far less than its generations one by one); prompt processing is compute-bound and gains little.
Ends with: same_predictions=, speedup=, cached_rerun_ratio=, lm_calls_rerun=.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mirror import need  # noqa: E402
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def stories_with_chat(tmp: Path) -> str:
    from reasonlab import paths

    src = paths.project_root() / "tests" / "fixtures" / "models" / "stories260K"  # ships with the repo
    dest = tmp / "stories260K"
    shutil.copytree(src, dest)
    (dest / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return str(dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="offline model (default: stories260K with a chat template)")
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dspy-bench-"))
    os.environ["REASONLAB_HOME"] = str(tmp / "home")  # a fresh DSPy disk cache
    need("gsm8k")
    from reasonlab.dspy_compile import data, evaluate, lm as lms, programs

    model = args.model or stories_with_chat(tmp)
    rows = data.load_splits("gsm8k", 0, 0, args.n, seed=11)["test"]
    spec = lms.local_spec(model, temperature=0.0, max_tokens=args.max_tokens)
    program = programs.build_program({"task": "gsm8k", "cot": True})
    lm = lms.build_lm(spec)
    uncached = lm.copy(cache=False)
    evaluate.evaluate_program(program, rows[:1], "gsm8k", uncached)  # load the weights once, outside the timings

    def timed(target_lm, threads):
        start = time.perf_counter()
        out = evaluate.evaluate_program(program, rows, "gsm8k", target_lm, num_threads=threads)
        return out, time.perf_counter() - start

    engine = lms._engine_for(spec)
    seq, t_seq = timed(uncached, 1)
    n_batches = len(engine.batch_sizes)
    par, t_par = timed(uncached, args.threads)
    threaded_batches = engine.batch_sizes[n_batches:]
    same = [(r["answer"], r["reasoning"], r["status"]) for r in seq] == \
           [(r["answer"], r["reasoning"], r["status"]) for r in par]
    cold, t_cold = timed(lm, args.threads)
    calls = lms.generations()
    warm, t_warm = timed(lm, args.threads)
    rerun_calls = lms.generations() - calls
    same_cached = [r["reasoning"] for r in warm] == [r["reasoning"] for r in cold] == [r["reasoning"] for r in seq]
    print(f"model={spec.label} fingerprint={spec.fingerprint[:24]} examples={len(rows)} max_tokens={args.max_tokens}")
    print(f"sequential_s={t_seq:.2f} sequential_examples_per_s={len(rows) / t_seq:.3f}")
    print(f"threads={args.threads} threaded_s={t_par:.2f} threaded_examples_per_s={len(rows) / t_par:.3f} "
          f"mean_batch={sum(threaded_batches) / max(1, len(threaded_batches)):.2f}")
    print(f"parse_failures={sum(r['status'] == 'parse_error' for r in seq)} "
          f"completion_tokens={sum(r['completion_tokens'] for r in seq)}")
    print(f"cold_s={t_cold:.2f} cached_rerun_s={t_warm:.3f} cached_same_predictions={same_cached}")
    print(f"same_predictions={same}")
    print(f"speedup={t_seq / t_par:.3f}")
    print(f"cached_rerun_ratio={t_warm / t_cold:.4f}")
    print(f"lm_calls_rerun={rerun_calls}")
    shutil.rmtree(tmp, ignore_errors=True)
    if rerun_calls or not same_cached:  # the cached rerun's premise: no generation, the same answers
        sys.exit(f"cached rerun made {rerun_calls} LM calls (same answers: {same_cached}): DSPy's cache is not working")


if __name__ == "__main__":
    main()
