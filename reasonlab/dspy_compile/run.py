"""The two units of work, without Prefect: compile an approach to a saved program, evaluate a saved program.

    info = compile_approach("bootstrap", program_spec, lm_spec, splits, out_file)   # writes DSPy's JSON save
    result = evaluate_saved(program_spec, info["program_file"], lm_spec, rows, task, out_file)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from reasonlab.dspy_compile import evaluate, lm as lms, optimizers, programs
from reasonlab.io import atomic_path, sha256_file, write_json

VERSION = "1"


def _ledger(lm) -> dict[str, Any]:
    return evaluate._usage(lm.history)


def compile_approach(approach: str, program_spec: dict, lm_spec: lms.LMSpec, train: list[dict], dev: list[dict],
                     out_file: str | Path, demos: list[dict] | None = None, teacher: lms.LMSpec | None = None,
                     options: dict | None = None, adapter: str = "chat", seed: int = 0,
                     num_threads: int = 1, api_key: str | None = None,
                     teacher_api_key: str | None = None) -> dict[str, Any]:
    """Compile `approach` with `lm_spec` as the student; save the program (DSPy's JSON `save`) to out_file.
    `api_key` / `teacher_api_key`: endpoint keys the caller read (else each spec's env var)."""
    import dspy

    task = program_spec["task"]
    lm = lms.build_lm(lm_spec, api_key)
    teacher_lm = lms.build_lm(teacher, teacher_api_key) if teacher else None
    trainset = [programs.to_example(r, task) for r in train]
    devset = [programs.to_example(r, task) for r in dev]
    demo_examples = [programs.to_example(d, task) for d in demos] if demos else None
    started = time.perf_counter()
    with dspy.context(lm=lm, adapter=evaluate.adapter_for(adapter)):
        program = optimizers.compile_program(approach, program_spec, trainset, devset, optimizers.metric_for(task),
                                             demos=demo_examples, teacher_lm=teacher_lm, options=options,
                                             num_threads=num_threads, seed=seed)
    wall = time.perf_counter() - started
    out_file = Path(out_file)
    with atomic_path(out_file) as tmp:
        program.save(str(tmp.with_suffix(".json")))
        tmp.with_suffix(".json").rename(tmp)
    usage = _ledger(lm)
    if teacher_lm is not None:
        usage["teacher"] = _ledger(teacher_lm)
    return {"approach": approach, "program_file": str(out_file), "program_sha256": sha256_file(out_file),
            "demos": optimizers.demo_count(program), "compile_wall_s": round(wall, 2), "compile_usage": usage,
            "compile_cost_usd": lm_spec.cost_usd(usage["prompt_tokens"], usage["completion_tokens"],
                                                 usage["compute_s"])}


def evaluate_saved(program_spec: dict, program_file: str, lm_spec: lms.LMSpec, rows: list[dict], out_file: str | Path,
                   adapter: str = "chat", num_threads: int = 1, api_key: str | None = None) -> dict[str, Any]:
    """Load the saved program, evaluate it on `rows`; the per-example records go to out_file."""
    task = program_spec["task"]
    program = programs.load_program(program_spec, program_file)
    lm = lms.build_lm(lm_spec, api_key)
    started = time.perf_counter()
    records = evaluate.evaluate_program(program, rows, task, lm, adapter=adapter, num_threads=num_threads)
    wall = time.perf_counter() - started
    summary = evaluate.summarize(records, task, lm_spec.cost_usd)
    summary["eval_wall_s"] = round(wall, 2)
    write_json(out_file, {"lm": lm_spec.to_dict(), "program_file": program_file, "summary": summary,
                          "rows": records})
    return {"summary": summary, "rows": records, "rows_file": str(out_file)}
