"""The DSPy-compile units of work as Prefect tasks (cached; a rerun with the same inputs makes no LM call), the
LM references resolved (LLMEndpoint blocks are read here, never in the library) and the report published.

Keys (`PlainInputs`): the programs' source version and the optimizer config in the task's version /
inputs, the trainset / test rows themselves (so their hash), and the LM spec, which carries the weights
fingerprint of a local model and never a key. The compile result is the saved program (DSPy's JSON
`save`), whose sha256 enters the evaluation's key. An endpoint key stored in a block is read inside the
task that needs it and handed to the library as an argument: it never enters a parameter, a result or a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from reasonlab import paths
from reasonlab.dspy_compile import data, evaluate, lm as lms, optimizers, plan, programs, report, run
from reasonlab.io import write_json, write_text
from reasonlab.llm_client import endpoint_from_env
from tasks.artifacts import image_markdown, publish_image, publish_run_folder
from tasks.conventions import task_options

COMPILE_VERSION = f"p{programs.VERSION}-o{optimizers.VERSION}-r{run.VERSION}-l{lms.VERSION}"
EVAL_VERSION = f"p{programs.VERSION}-e{evaluate.VERSION}-r{run.VERSION}-l{lms.VERSION}"
ENDPOINT_PREFIX = "endpoint:"


def resolve_lm(ref: str, *, temperature: float, max_tokens: int, usd_per_hour: float = 0.0,
               device: str = "cpu") -> lms.LMSpec:
    """"endpoint:<LLMEndpoint block>", "env" (REASONLAB_LLM_* vars), or an offline model name / folder."""
    sampling = dict(temperature=temperature, max_tokens=max_tokens)
    if ref.startswith(ENDPOINT_PREFIX):
        from blocks.llm_endpoint import load_endpoint

        name = ref[len(ENDPOINT_PREFIX):]
        return lms.endpoint_spec(load_endpoint(name).to_config(), key_block=name, **sampling)
    if ref == "env":
        return lms.endpoint_spec(endpoint_from_env(), **sampling)
    return lms.local_spec(ref, usd_per_hour=usd_per_hour, device=device, **sampling)


def endpoint_key(spec: lms.LMSpec | None) -> str | None:
    """The key stored in the spec's LLMEndpoint block (None: the library reads the spec's env var)."""
    if spec is None or not spec.key_block:
        return None
    from blocks.llm_endpoint import load_endpoint

    return load_endpoint(spec.key_block).api_key_value()


def check_endpoints(specs: list[lms.LMSpec]) -> None:
    """Before any work: every endpoint answers and takes its key (one clear error otherwise)."""
    for spec in specs:
        lms.check_endpoint(spec, endpoint_key(spec))


@task(name="dspy-load-data", **task_options(data.VERSION))
def load_data(task_name: str, train_size: int, dev_size: int, test_size: int, seed: int,
              source: str | None, source_file: Path | None = None) -> dict:
    """Deterministic train/dev/test subsets (`source_file`, a local file or folder, keys them by content)."""
    splits = data.load_splits(task_name, train_size, dev_size, test_size, seed=seed, source=source)
    get_run_logger().info(f"{task_name} from {splits['source']}: train {len(splits['train'])}, dev "
                          f"{len(splits['dev'])}, test {len(splits['test'])}")
    return splits


def source_file(source: str | None) -> Path | None:
    """The local data file or folder behind `source` (None for the default copy or the Hub)."""
    return None if source in (None, "hub") else paths.find_input(source)


@task(name="dspy-compile", **task_options(COMPILE_VERSION, gpu=True))
def compile_program(approach_cfg: dict, program_spec: dict, lm_spec: dict, train: list[dict], dev: list[dict],
                    out_file: str, demos: list[dict] | None = None, teacher: dict | None = None,
                    adapter: str = "chat", seed: int = 0, num_threads: int = 1) -> dict:
    """Compile one approach for one student LM; the result names the saved program JSON."""
    name = approach_cfg["approach"]
    options = {name: {k: v for k, v in approach_cfg.items() if k != "approach"}}
    student = lms.spec_from_dict(lm_spec)
    teacher_spec = lms.spec_from_dict(teacher) if teacher else None
    info = run.compile_approach(name, program_spec, student, train, dev, out_file, demos=demos,
                                teacher=teacher_spec, options=options, adapter=adapter, seed=seed,
                                num_threads=num_threads, api_key=endpoint_key(student),
                                teacher_api_key=endpoint_key(teacher_spec))
    get_run_logger().info(f"compiled {name} for {lm_spec['model']}: {info['demos']} demos, "
                          f"{info['compile_usage']['lm_calls']} LM calls -> {out_file}")
    return info


@task(name="dspy-evaluate", **task_options(EVAL_VERSION, gpu=True))
def evaluate_program(program_spec: dict, program_file: str, program_sha256: str, lm_spec: dict, rows: list[dict],
                     out_file: str, adapter: str = "chat", num_threads: int = 1) -> dict:
    """Evaluate a saved program on the test rows (per-example records, failures with their reason)."""
    spec = lms.spec_from_dict(lm_spec)
    result = run.evaluate_saved(program_spec, program_file, spec, rows, out_file, adapter=adapter,
                                num_threads=num_threads, api_key=endpoint_key(spec))
    s = result["summary"]
    strict = f", strict-match {s['strict_score']:.3f}" if "strict_score" in s else ""
    get_run_logger().info(f"{lm_spec['model']} {program_file}: score {s['score']:.3f}{strict} on {s['n']} "
                          f"({s['parse_failures']} parse failures, {s['errors']} errors)")
    return result


def compile_and_evaluate(setup: plan.Setup, job: plan.Job, splits: dict[str, Any], folder: Path) -> dict:
    """One model x approach: the cached compile, then the cached evaluation of the saved program."""
    sampling, seed = setup.groups["sampling"], setup.groups["data"].seed
    compiled = compile_program(job.approach, setup.program_spec, job.spec.to_dict(), splits["train"], splits["dev"],
                               str(plan.program_file(setup, job, splits["hashes"])), demos=setup.job_demos(job),
                               teacher=setup.teacher.to_dict() if setup.teacher else None,
                               adapter=sampling.adapter, seed=seed, num_threads=sampling.num_threads)
    evaluated = evaluate_program(setup.eval_spec(job), compiled["program_file"], compiled["program_sha256"],
                                 job.spec.to_dict(), splits["test"],
                                 str(plan.eval_file(folder, setup, job, splits["hashes"])),
                                 adapter=sampling.adapter, num_threads=sampling.num_threads)
    return plan.result_row(job, compiled, evaluated)


def publish_report(setup: plan.Setup, splits: dict[str, Any], results: list[dict], folder: Path) -> dict:
    """The comparison: results.json, error samples, report.md and the plot in the run folder, and the artifacts
    (the table a sweep reads its figures from, the reference rows, errors, the report)."""
    task_name, baseline = setup.task, setup.groups["compile"].baseline
    table = report.table(results, task_name, baseline=baseline)
    reference_rows = report.reference_rows(results, task_name)
    errors = report.error_samples(results)
    picture = report.plot(results, task_name, folder / "accuracy_vs_cost.png")
    write_json(folder / "results.json", plan.results_document(setup, splits, results, table, reference_rows))
    write_json(folder / "error_samples.json", errors)
    md = plan.report_markdown(setup, splits, table, reference_rows, image_markdown(picture, "accuracy vs cost"))
    write_text(folder / "report.md", md)
    publish_image(picture, key="dspy-compile-plot", description=f"{task_name}: accuracy vs cost")
    publish_run_folder(folder, key="dspy-compile-run-folder", description="Programs, results, error samples")
    create_table_artifact(table, key="dspy-compile-table", description=f"{task_name}: approach x model")
    if reference_rows:
        create_table_artifact(reference_rows, key="dspy-compile-reference",
                              description="% of reference score at % of its cost")
    create_table_artifact(errors or [{"note": "no wrong answers"}], key="dspy-compile-errors",
                          description="Error analysis: wrong answers with the model's reasoning")
    create_markdown_artifact(md, key="dspy-compile-report")
    print("\n" + report.headline_markdown(table, task_name, baseline) + f"\nEvery figure: {folder / 'report.md'}")
    return {"run_dir": str(folder), "table": table, "reference": reference_rows, "plot": str(picture),
            "programs": {f"{r['model']}/{r['approach']}": r["program_file"] for r in results}}
