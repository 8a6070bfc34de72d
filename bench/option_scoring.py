"""Option scoring: the four letters from one forward against one forward per option, and the option texts over a shared
prefix (KV cache + one batched forward of the continuations) against one forward per option.

    python bench/option_scoring.py                       # SmolLM2-135M-Instruct, 8 MedQA questions, best of 2
    python bench/option_scoring.py --model gemma-3-270m --n 10

Ends with key=value lines: max_abs_diff (largest log-likelihood difference, letters and option texts), speedup
(letters: per-option time / one-forward time) and option_text_speedup (unbatched / batched).
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("REASONLAB_MODEL_CACHE", str(Path.home() / ".cache" / "reasonlab" / "models"))

from mirror import need  # noqa: E402
from timing import timed  # noqa: E402

from reasonlab.models import load_model, resolve_model  # noqa: E402
from reasonlab.retrieval import option_scoring as scoring  # noqa: E402
from reasonlab.retrieval.prompts import model_prompt  # noqa: E402
from reasonlab.retrieval.questions import load_questions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    need("medqa")
    model, tokenizer = load_model(resolve_model(args.model), device="cpu")
    questions = load_questions("medqa", 0, args.n)
    letters = list(questions[0]["options"])
    extra, conts = scoring.letter_ids(tokenizer, letters)
    prompts = [model_prompt(tokenizer, q["question"], q["options"]) for q in questions]
    encoded = [scoring.encode(tokenizer, p) for p in prompts]

    def one_forward():
        return [scoring.letter_logliks(scoring.last_position_logprobs(model, [e], extra=extra)[0][0], extra, conts)
                for e in encoded]

    def per_option():
        return [scoring.letter_logprobs_per_option(model, tokenizer, p, letters) for p in prompts]

    def norm_batched():
        return [scoring.option_text_logliks(model, tokenizer, p, list(q["options"].values()))
                for p, q in zip(prompts, questions)]

    def norm_unbatched():
        return [scoring.option_text_scores_unbatched(model, tokenizer, p, list(q["options"].values()))
                for p, q in zip(prompts, questions)]

    one_forward()  # warm-up
    t_one, a = timed(one_forward, args.repeats)
    t_per, b = timed(per_option, args.repeats)
    t_nb, c = timed(norm_batched, args.repeats)
    t_nu, d = timed(norm_unbatched, args.repeats)
    letter_diff = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    norm_diff = max(abs(x - y) for rc, rd in zip(c, d) for x, y in zip(rc, rd))
    tokens = sum(len(e) for e in encoded) / len(encoded)
    print(f"model={args.model}")
    print(f"questions={len(questions)}")
    print(f"mean_prompt_tokens={tokens:.0f}")
    print(f"letters_one_forward_s={t_one:.3f}")
    print(f"letters_per_option_s={t_per:.3f}")
    print(f"option_text_batched_s={t_nb:.3f}")
    print(f"option_text_unbatched_s={t_nu:.3f}")
    print(f"letter_max_abs_diff={letter_diff:.2e}")
    print(f"option_text_max_abs_diff={norm_diff:.2e}")
    print(f"max_abs_diff={max(letter_diff, norm_diff):.2e}")
    print(f"speedup={t_per / t_one:.2f}")
    print(f"option_text_speedup={t_nu / t_nb:.2f}")


if __name__ == "__main__":
    main()
