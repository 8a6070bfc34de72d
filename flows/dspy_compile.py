"""DSPy compile: small models optimized toward a reference model's accuracy, measured with cost.

    python -m flows.dspy_compile --task gsm8k --models qwen2.5-coder-0.5b-instruct smollm2-135m-instruct \\
        --approaches predict cot manual bootstrap random_search --train-size 8 --dev-size 4 --test-size 10
    python -m flows.dspy_compile --task hotpotqa --retriever bm25 --models smollm2-135m-instruct --test-size 5
    python -m flows.dspy_compile --models endpoint:my-endpoint --reference endpoint:gpt-4o   # LLMEndpoint blocks

Stages: check everything (groups, data fields, demos, approaches, endpoints) -> load the data (deterministic
subsets) -> per model x approach: compile (cached, gpu) -> evaluate the saved program (cached, gpu) -> the
reference model (really run) -> report: comparison table, paired bootstrap CIs, the "% of reference score
at % of its cost" rows, an accuracy-vs-cost plot and error samples.
A rerun with the same inputs is all Cached and makes no LM call.
"""

from __future__ import annotations

import argparse
import json
from typing import Literal

from prefect import flow

from flows.cli_params import add_flow_arguments, flow_parameters
from reasonlab.dspy_compile import data as datamod, lm as lms, optimizers, plan, programs
from reasonlab.dspy_compile.evaluate import adapter_for
from reasonlab.dspy_compile.params import (DEFAULT_DEMOS, GROUPS, CompileParams, DataParams, ProgramParams,
                                           ReferenceParams, SamplingParams, check_task, parse_group)
from reasonlab.errors import ReasonlabError
from tasks import dspy_compile as stages


@flow(name="dspy-compile", log_prints=True, validate_parameters=False)  # the groups check themselves: one error
def dspy_compile(
    task: Literal["gsm8k", "hotpotqa"] = "gsm8k",
    models: list[str] = ["qwen2.5-coder-0.5b-instruct"],
    model: str | None = None,
    data: DataParams = DataParams(),
    compile: CompileParams = CompileParams(),
    reference: ReferenceParams = ReferenceParams(),
    sampling: SamplingParams = SamplingParams(),
    program: ProgramParams = ProgramParams(),
) -> dict:
    """Compile and evaluate every approach for every model, then compare against a reference model.

    Args:
        task: gsm8k or hotpotqa.
        models: student LMs: offline model names / folders, "endpoint:<LLMEndpoint block>", or "env"
            (REASONLAB_LLM_* env vars).
        model: one student LM (overrides `models`; what a model sweep sets per child run).
        data: the deterministic train / dev / test subsets, their source and the manual demos.
        compile: the approaches compiled per model, the teacher, optimizer options, the paired baseline.
        reference: the reference model, really run on the same test set, and its approach.
        sampling: how every LM is called (temperature, max tokens, adapter, threads, device, price).
        program: HotPotQA's retrieval (none or bm25, k per hop, hops).
    """
    setup = check_inputs(task, models, model, data=data, compile=compile, reference=reference,
                         sampling=sampling, program=program)
    d = setup.groups["data"]
    splits = stages.load_data(task, d.train_size, d.dev_size, d.test_size, d.seed, d.source,
                              stages.source_file(d.source))
    folder = plan.run_dir(setup, splits["hashes"])
    results = [stages.compile_and_evaluate(setup, job, splits, folder) for job in setup.jobs()]
    return stages.publish_report(setup, splits, results, folder)


def check_inputs(task: str = "gsm8k", models: list[str] | None = None, model: str | None = None,
                 **groups) -> plan.Setup:
    """Everything that can be checked before any model work, each failure one `ReasonlabError`: the groups
    (`group.field` named), the task, the demos file, each approach against the subset sizes, every LM
    reference and every endpoint. The CLI calls it before Prefect starts a run."""
    parsed = {name: parse_group(name, groups.get(name)) for name in GROUPS}
    d, c, r, s, p = (parsed[name] for name in GROUPS)
    check_task(task)
    adapter_for(s.adapter)
    students = [model] if model else list(models or [])
    if not students:
        raise ReasonlabError("no models given: name at least one offline model or endpoint:<block>")
    program_spec = programs.check_program_spec({"task": task, "cot": True, "retriever": p.retriever, "k": p.k,
                                                "hops": p.hops})
    needs_demos = "manual" in c.approaches or r.approach == "manual"
    demos = datamod.load_demos(d.demos or DEFAULT_DEMOS[task], task) if needs_demos else None
    approaches = [optimizers.check_approach(a, d.train_size, d.dev_size, demos, c.options) for a in c.approaches]
    reference_approach = (optimizers.check_approach(r.approach, d.train_size, d.dev_size, demos, c.options)
                          if r.model else None)
    if d.source not in (None, "hub"):
        datamod.raw_splits(task, d.source)  # a missing file or a row without its fields: one error now
    lm_args = dict(temperature=s.temperature, max_tokens=s.max_tokens, usd_per_hour=s.usd_per_hour, device=s.device)
    setup = plan.Setup(task=task, program_spec=program_spec,
                       students=[stages.resolve_lm(m, **lm_args) for m in students],
                       teacher=stages.resolve_lm(c.teacher, **lm_args) if c.teacher else None,
                       reference=stages.resolve_lm(r.model, **lm_args) if r.model else None,
                       approaches=approaches, reference_approach=reference_approach, demos=demos, groups=parsed)
    stages.check_endpoints(setup.lms())
    return setup


# The CLI's flags (unchanged since before the grouping): help and defaults come from the parameter schema
FLAGS = {
    "data.source": "--data", "data.train_size": "--train-size", "data.dev_size": "--dev-size",
    "data.test_size": "--test-size", "data.seed": "--seed", "data.demos": "--demos",
    "compile.approaches": "--approaches", "compile.teacher": "--teacher", "compile.options": "--optimizer-options",
    "compile.baseline": "--baseline",
    "reference.model": "--reference", "reference.approach": "--reference-approach",
    "sampling.temperature": "--temperature", "sampling.max_tokens": "--max-tokens", "sampling.adapter": "--adapter",
    "sampling.num_threads": "--num-threads", "sampling.device": "--device", "sampling.usd_per_hour": "--usd-per-hour",
    "program.retriever": "--retriever", "program.k": "--k", "program.hops": "--hops",
}


def parser() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flow_arguments(out, dspy_compile, FLAGS)
    return out


def main(argv: list[str] | None = None) -> None:
    params = flow_parameters(parser().parse_args(argv))
    try:
        check_inputs(**params)  # bad input is one line here, before Prefect starts (and fails) a flow run
        out = dspy_compile(**params)
    except ReasonlabError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"run_dir": out["run_dir"], "plot": out["plot"]}))
    print(f"lm_generations={lms.generations()}")


if __name__ == "__main__":
    main()
