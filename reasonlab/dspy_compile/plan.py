"""A DSPy-compile run as plain data: what was checked (`Setup`), the model x approach jobs, where each job's
files go (named by what they hold, so another run with the same inputs reuses them), and each job's result row.

    setup = Setup(task, program_spec, students, teacher, reference, approaches, reference_approach, demos, groups)
    for job in setup.jobs():
        program_file(setup, job, hashes), eval_file(run_dir(setup, hashes), setup, job, hashes)
        result_row(job, compiled, evaluated)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasonlab import paths
from reasonlab.dspy_compile import optimizers, report
from reasonlab.dspy_compile.lm import LMSpec
from reasonlab.io import sha256_json


@dataclass(frozen=True)
class Job:
    """One model x approach to compile and evaluate; `reference`: the reference model's row."""

    spec: LMSpec
    approach: dict[str, Any]  # the optimizer's full config (optimizers.approach_config)
    reference: bool = False

    @property
    def name(self) -> str:
        return self.approach["approach"]


@dataclass(frozen=True)
class Setup:
    """Everything the flow checked before any model work: the LMs resolved, the approaches configured."""

    task: str
    program_spec: dict[str, Any]
    students: list[LMSpec]
    teacher: LMSpec | None
    reference: LMSpec | None
    approaches: list[dict[str, Any]]
    reference_approach: dict[str, Any] | None
    demos: list[dict] | None  # the manual approach's hand-picked demos
    groups: dict[str, Any]  # group name -> its parsed parameters

    def jobs(self) -> list[Job]:
        """Every student x approach, then the reference model with its approach."""
        out = [Job(spec, cfg) for spec in self.students for cfg in self.approaches]
        if self.reference is not None:
            out.append(Job(self.reference, self.reference_approach, reference=True))
        return out

    def lms(self) -> list[LMSpec]:
        return [s for s in (*self.students, self.teacher, self.reference) if s is not None]

    def job_demos(self, job: Job) -> list[dict] | None:
        return self.demos if job.name == "manual" else None

    def eval_spec(self, job: Job) -> dict[str, Any]:
        """The program the job evaluates: its approach decides ChainOfThought or Predict."""
        return {**self.program_spec, "cot": optimizers.APPROACHES[job.name]["cot"]}


def _job_key(setup: Setup, job: Job, hashes: dict[str, str]) -> str:
    sampling = setup.groups["sampling"]
    return sha256_json([job.approach, setup.program_spec, job.spec.to_dict(), hashes, setup.job_demos(job),
                        setup.teacher and setup.teacher.to_dict(), sampling.adapter, setup.groups["data"].seed])[:16]


def program_file(setup: Setup, job: Job, hashes: dict[str, str]) -> Path:
    """The compiled program's JSON, shared by every run that compiles the same thing."""
    key = _job_key(setup, job, hashes)
    return paths.runs_dir() / "dspy_compile" / "programs" / f"{job.spec.label}-{job.name}-{key}.json"


def run_dir(setup: Setup, hashes: dict[str, str]) -> Path:
    """The run's folder (results, report, plot, evaluations), named by its inputs."""
    key = sha256_json([setup.task, [s.to_dict() for s in setup.students], setup.approaches, hashes,
                       setup.program_spec, setup.groups["sampling"].adapter,
                       setup.reference and setup.reference.to_dict(), setup.reference_approach,
                       setup.teacher and setup.teacher.to_dict(), setup.demos])
    return paths.runs_dir() / "dspy_compile" / key[:16]


def eval_file(folder: Path, setup: Setup, job: Job, hashes: dict[str, str]) -> Path:
    return folder / "evals" / f"{job.spec.label}-{job.name}-{_job_key(setup, job, hashes)}.json"


def result_row(job: Job, compiled: dict[str, Any], evaluated: dict[str, Any]) -> dict[str, Any]:
    """One job's result: the evaluation's summary and rows with the compile's demos and cost."""
    usd = report.cost_unit([evaluated]) == "usd"
    return {"model": job.spec.label, "approach": job.name, "reference": job.reference, "lm": job.spec.to_dict(),
            "program_file": compiled["program_file"], "demos": compiled["demos"],
            "compile_cost": compiled["compile_cost_usd"] if usd else compiled["compile_usage"]["compute_s"],
            "compile_usage": compiled["compile_usage"], "summary": evaluated["summary"], "rows": evaluated["rows"]}


def results_document(setup: Setup, splits: dict[str, Any], results: list[dict], table: list[dict],
                     reference_rows: list[dict]) -> dict[str, Any]:
    """results.json: the subsets, every job's result without its per-example rows, the tables."""
    return {"task": setup.task, "splits": {k: splits[k] for k in ("source", "seed", "hashes")},
            "sizes": {s: len(splits[s]) for s in ("train", "dev", "test")},
            "results": [{k: v for k, v in r.items() if k != "rows"} for r in results],
            "table": table, "reference": reference_rows}


def report_markdown(setup: Setup, splits: dict[str, Any], table: list[dict], reference_rows: list[dict],
                    plot_markdown: str) -> str:
    """The answer (every approach, best first, in six columns), the accuracy-vs-cost picture, then the detail."""
    sampling, baseline = setup.groups["sampling"], setup.groups["compile"].baseline
    scoring = ("Accuracy is exact match under lm-evaluation-harness's flexible-extract rule (the last number in "
               "the answer); accuracy_strict under its strict-match rule (the number the answer starts with, or "
               "the one after \"####\"); extracted_*: the share of answers each rule found a number in.\n\n"
               if setup.task == "gsm8k" else "")
    models = sorted({r["model"] for r in table})
    return (f"# DSPy compile: {setup.task}, {', '.join(models)}\n\n"
            f"{report.headline_markdown(table, setup.task, baseline)}\n"
            f"{plot_markdown}\n\n## Every figure\n\nTest examples: {len(splits['test'])} (train "
            f"{len(splits['train'])}, dev {len(splits['dev'])}; source {splits['source']}, seed {splits['seed']}). "
            f"Adapter: {sampling.adapter}, temperature {sampling.temperature}.\n\n{scoring}{report.markdown(table)}\n"
            + (f"## Against the reference\n\n{report.markdown(reference_rows)}\n" if reference_rows else ""))
