"""The same SFT experiments run one after another and fanned out over worker processes: same figures, overhead
share of an experiment, experiments per hour each way.

    python bench/study_fanout.py [--model smollm2-135m-instruct] [--cases 2] [--text-sets concept unrelated]
                                 [--seeds 2] [--epochs 5] [--workers 2]

The experiments: the first `--cases` prompts of data/target_prompts.json x `--text-sets` (their texts from
data/concept_texts.yaml) x `--seeds`, submitted through `tasks.concept_sft.run_experiments` in a Prefect flow
(a temporary Prefect server each time). Two runs, each in a child process with a fresh REASONLAB_HOME (a fresh
result store: nothing can be Cached): sequential (workers 1, cores torch threads) and fanned out (`--workers`
processes, cores // workers torch threads each). Wall time is the flow's, the server's start excluded; it
includes each worker's one base load.

overhead_share = 1 - sum(training-step seconds) / sum(experiment seconds) over the sequential run's experiments
(each experiment's own `timings`: restoring or loading the base, the trainer's setup, scoring, perplexity,
saving; the first experiment in a process pays the load).

Ends with: same_results=, overhead_share=, experiments_per_h_sequential=, experiments_per_h_fanned=, speedup=.
Exits 1 (after printing them) when its premise fails: results differ beyond float tolerance, or a run was not
all Completed (a Cached experiment measures nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("REASONLAB_MODEL_CACHE", str(Path.home() / ".cache" / "reasonlab" / "models"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network: each heartbeat logged an ERROR


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--text-sets", nargs="+", default=["concept", "unrelated"])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--completion", action="store_true", help="no chat template: train and score raw text "
                                                                  "(a base model such as stories260K)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child: run with this many workers
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_child(args: argparse.Namespace) -> None:
    """One run (workers = args.one) in this process; writes {wall_s, states, runs} to args.out."""
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from reasonlab.concept_sft.params import ExperimentParams, FormatParams
    from reasonlab.concept_sft.prompts import load_prompts
    from reasonlab.concept_sft.sft_config import load_sft_config
    from reasonlab.concept_sft.text_sets import load_text_sets, plan_experiments
    from reasonlab.models import resolve_model
    from tasks import concept_sft as stages
    from tasks.run_info import flow_run_summary

    base = resolve_model(args.model)
    config = load_sft_config(ROOT / "configs/concept_sft_default.yaml").model_copy(
        update={"epochs": args.epochs, "model_name": args.model, "use_chat_template": not args.completion})
    cases = [{**p.to_dict(), "wrong_word": p.to_dict()["topic"][0].split()[0]}  # p(wrong) is not what is timed
             for p in load_prompts(ROOT / "data/target_prompts.json")[:args.cases]]
    experiments, _ = plan_experiments(cases, load_text_sets(ROOT / "data/concept_texts.yaml"), [],
                                      text_sets_wanted=args.text_sets)
    settings = ExperimentParams(seeds=args.seeds, attribution_after=False, workers=args.one)
    formats = FormatParams(evaluation=["completion" if args.completion else "chat"])

    @flow(name="study-fanout-bench")
    def bench_flow() -> list[dict]:
        stages.run_experiments(base, experiments, config, ROOT / "data/heldout_text.txt", formats, 10, settings)
        return experiments

    with prefect_test_harness(server_startup_timeout=120):
        start = time.perf_counter()
        state = bench_flow(return_state=True)
        wall = time.perf_counter() - start
        done = state.result()
        states, _ = flow_run_summary(state.state_details.flow_run_id)
    Path(args.out).write_text(json.dumps({"wall_s": wall, "states": sorted(states.values()),
                                          "runs": [[r for r in e["runs"]] for e in done]}))


def close(a, b, rel: float = 1e-3) -> bool:
    """Equal, floats within `rel` (another torch thread count sums in another order)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    return a == b


def figures(runs: list[list[dict]]) -> list[list[dict]]:
    return [[{k: r[k] for k in ("rows", "perplexity", "losses", "steps", "train_tokens")} for r in e] for e in runs]


def measured(args: argparse.Namespace, workers: int, threads: int) -> dict:
    home = tempfile.mkdtemp(prefix="reasonlab-bench-fanout-")
    out = Path(home) / "bench.json"
    env = {**os.environ, "REASONLAB_HOME": home, "REASONLAB_TORCH_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                       os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, __file__, "--one", str(workers), "--out", str(out), "--model", args.model,
            "--cases", str(args.cases), "--seeds", str(args.seeds), "--epochs", str(args.epochs),
            "--text-sets", *args.text_sets] + (["--completion"] if args.completion else [])
    subprocess.run(argv, env=env, cwd=ROOT, check=True)
    return json.loads(out.read_text())


def main() -> None:
    args = parse_args()
    if args.one is not None:
        return run_child(args)
    cores = os.cpu_count() or 1
    sequential = measured(args, 1, cores)
    fanned = measured(args, args.workers, max(1, cores // args.workers))
    runs = [r for e in sequential["runs"] for r in e]
    n = len(runs)
    train = sum(r["timings"]["train"] for r in runs)
    total = sum(r["timings"]["total"] for r in runs)
    parts = {k: sum(r["timings"][k] for r in runs) / n for k in ("load", "setup", "train", "score", "perplexity",
                                                                  "save", "total")}
    same = close(figures(sequential["runs"]), figures(fanned["runs"]))
    per_h_seq, per_h_fan = 3600 * n / sequential["wall_s"], 3600 * n / fanned["wall_s"]
    print(f"model={args.model}")
    print(f"experiments={n}")
    print(f"cores={cores}")
    print("mean_experiment_s=" + ",".join(f"{k}:{v:.2f}" for k, v in parts.items()))
    print(f"states_sequential={','.join(sorted(set(sequential['states'])))}")
    print(f"states_fanned={','.join(sorted(set(fanned['states'])))}")
    print(f"wall_s_sequential={sequential['wall_s']:.1f}")
    print(f"wall_s_fanned={fanned['wall_s']:.1f}")
    print(f"same_results={same}")
    print(f"overhead_share={1 - train / total:.3f}")
    print(f"experiments_per_h_sequential={per_h_seq:.1f}")
    print(f"experiments_per_h_fanned={per_h_fan:.1f}")
    print(f"speedup={per_h_fan / per_h_seq:.2f}")
    premise = [s for s in sequential["states"] + fanned["states"] if s != "Completed"]
    if not same or premise or len(fanned["states"]) != n:
        print(f"FAILED: same_results={same}, states other than Completed: {premise or 'none'}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
