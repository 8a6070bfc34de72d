"""The stage-3 reward model on a fixed HH-RLHF subset, evaluated on held-out pairs (no conversation shared).

    python bench/reward_model.py        # SmolLM2-135M-Instruct, CPU, about 10 min alone on 2 cores
    python bench/reward_model.py PATH   # the same from another start model (e.g. a stage-2 checkpoint folder)

Data: HH-RLHF helpful-base (the official test split, the only full-context human labels offline),
split by conversation (first human turn): 20 % of conversations held out; the first 256 training and
200 held-out pairs. Sequences are the conversation under the chat template, the last 128 tokens kept
(the pairs share the prompt and differ in the final reply). Full fine-tune of the top 10 of 30 blocks + the score head.
Prints key=value lines; the last five are heldout_accuracy, ci_low, ci_high, margin, pairs_dropped.
"""

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("REASONLAB_MODEL_CACHE", str(Path.home() / ".cache" / "reasonlab" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mirror import need  # noqa: E402
from reasonlab.models import resolve_model  # noqa: E402
from reasonlab.three_stage.params import RewardParams  # noqa: E402
from reasonlab.three_stage.reward_model import run_reward_model  # noqa: E402

SETTINGS = RewardParams(
    train="hh-helpful", heldout=None, heldout_fraction=0.2, max_train_pairs=256, max_eval_pairs=200,
    max_length=128, truncation="keep_end", epochs=1, learning_rate=5e-5, batch_size=8, warmup_ratio=0.1,
    center_rewards_coefficient=0.01, eval_every=10_000, eval_before=False, freeze_below=20, seed=0,
)


def main() -> None:
    need("hh-rlhf")
    model = resolve_model(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct")
    start = time.perf_counter()
    out = run_reward_model(model, SETTINGS, Path(tempfile.mkdtemp(prefix="reasonlab-bench-rm-")) / "rm", device="cpu")
    wall = time.perf_counter() - start
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    h, data = out["heldout"], out["data"]
    print(f"model={model.name}")
    print(f"train_pairs={data['train_pairs']}")
    print(f"heldout_pairs={h['n']}")
    print(f"over_length_train={data['train_fit']['over_length']}")
    print(f"over_length_heldout={data['heldout_fit']['over_length']}")
    print(f"identical_skipped={data['train_source']['identical_skipped']}")
    print(f"trainable_params={out['trainable_params']}")
    print(f"steps={out['steps']}")
    print(f"ties={h['ties']}")
    print(f"heldout_loss={h['loss']:.4f}")
    print(f"margin_ci_low={h['margin_ci_low']:.4f}")
    print(f"margin_ci_high={h['margin_ci_high']:.4f}")
    print(f"wall_s={wall:.1f}")
    print(f"cpu_s={cpu.ru_utime + cpu.ru_stime:.1f}")
    print(f"heldout_accuracy={h['accuracy']:.4f}")
    print(f"ci_low={h['ci_low']:.4f}")
    print(f"ci_high={h['ci_high']:.4f}")
    print(f"margin={h['margin']:.4f}")
    print(f"pairs_dropped={data['pairs_dropped']}")


if __name__ == "__main__":
    main()
