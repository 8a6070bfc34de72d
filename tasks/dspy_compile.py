"""The DSPy-compile units of work as Prefect tasks (cached; a rerun with the same inputs makes no LM call).

Keys (`PlainInputs`): the programs' source version and the optimizer config in the task's version /
inputs, the trainset / test rows themselves (so their hash), and the LM spec, which carries the weights
fingerprint of a local model. The compile result is the saved program (DSPy's JSON `save`), whose
sha256 enters the evaluation's key.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from reasonlab.dspy_compile import data, evaluate, lm as lms, optimizers, programs, run
from tasks.conventions import task_options

COMPILE_VERSION = f"p{programs.VERSION}-o{optimizers.VERSION}-r{run.VERSION}-l{lms.VERSION}"
EVAL_VERSION = f"p{programs.VERSION}-e{evaluate.VERSION}-r{run.VERSION}-l{lms.VERSION}"


@task(name="dspy-load-data", **task_options(data.VERSION))
def load_data(task_name: str, train_size: int, dev_size: int, test_size: int, seed: int,
              source: str | None, source_fingerprint: dict | None = None) -> dict:
    """Deterministic train/dev/test subsets (keyed by the source file's content when local)."""
    splits = data.load_splits(task_name, train_size, dev_size, test_size, seed=seed, source=source)
    get_run_logger().info(f"{task_name} from {splits['source']}: train {len(splits['train'])}, dev "
                          f"{len(splits['dev'])}, test {len(splits['test'])}")
    return splits


@task(name="dspy-compile", **task_options(COMPILE_VERSION, gpu=True))
def compile_program(approach_cfg: dict, program_spec: dict, lm_spec: dict, train: list[dict], dev: list[dict],
                    out_file: str, demos: list[dict] | None = None, teacher: dict | None = None,
                    adapter: str = "chat", seed: int = 0, num_threads: int = 1) -> dict:
    """Compile one approach for one student LM; the result names the saved program JSON."""
    name = approach_cfg["approach"]
    options = {name: {k: v for k, v in approach_cfg.items() if k != "approach"}}
    info = run.compile_approach(name, program_spec, lms.spec_from_dict(lm_spec), train, dev, out_file, demos=demos,
                                teacher=lms.spec_from_dict(teacher) if teacher else None, options=options,
                                adapter=adapter, seed=seed, num_threads=num_threads)
    get_run_logger().info(f"compiled {name} for {lm_spec['model']}: {info['demos']} demos, "
                          f"{info['compile_usage']['lm_calls']} LM calls -> {out_file}")
    return info


@task(name="dspy-evaluate", **task_options(EVAL_VERSION, gpu=True))
def evaluate_program(program_spec: dict, program_file: str, program_sha256: str, lm_spec: dict, rows: list[dict],
                     out_file: str, adapter: str = "chat", num_threads: int = 1) -> dict:
    """Evaluate a saved program on the test rows (per-example records, failures with their reason)."""
    result = run.evaluate_saved(program_spec, program_file, lms.spec_from_dict(lm_spec), rows, out_file,
                                adapter=adapter, num_threads=num_threads)
    s = result["summary"]
    get_run_logger().info(f"{lm_spec['model']} {program_file}: score {s['score']:.3f} on {s['n']} "
                          f"({s['parse_failures']} parse failures, {s['errors']} errors)")
    return result
