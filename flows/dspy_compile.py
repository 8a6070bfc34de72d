"""DSPy compile: small models optimized toward a reference model's accuracy, measured with cost.

    python -m flows.dspy_compile --task gsm8k --models qwen2.5-coder-0.5b-instruct smollm2-135m-instruct \
        --approaches predict cot manual bootstrap random_search --train-size 8 --dev-size 4 --test-size 10
    python -m flows.dspy_compile --task hotpotqa --retriever bm25 --models smollm2-135m-instruct --test-size 5
    python -m flows.dspy_compile --models endpoint:my-endpoint --reference endpoint:gpt-4o   # LLMEndpoint blocks

Stages: check everything (approaches, trainset sizes, data fields, demos, endpoints) -> load the data
(deterministic subsets) -> per model x approach: compile (cached, gpu) -> evaluate the saved program
(cached, gpu) -> the reference model (really run) -> report: comparison table, paired bootstrap CIs,
the "% of reference score at % of its cost" rows, an accuracy-vs-cost plot and error samples.
A rerun with the same inputs is all Cached and makes no LM call.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from reasonlab import paths
from reasonlab.dspy_compile import data as datamod
from reasonlab.dspy_compile import lm as lms
from reasonlab.dspy_compile import optimizers, programs, report
from reasonlab.dspy_compile.evaluate import adapter_for
from reasonlab.errors import ReasonlabError
from reasonlab.io import sha256_json, write_json, write_text
from tasks.artifacts import image_markdown, publish_image, publish_run_folder
from tasks import dspy_compile as stages

DEFAULT_APPROACHES = ["predict", "cot", "manual", "bootstrap", "random_search"]
DEFAULT_DEMOS = {"gsm8k": "data/dspy_demos_gsm8k.json", "hotpotqa": "data/dspy_demos_hotpotqa.json"}


@flow(name="dspy-compile", log_prints=True)
def dspy_compile(
    task: str = "gsm8k",
    models: list[str] = ["qwen2.5-coder-0.5b-instruct"],
    approaches: list[str] = DEFAULT_APPROACHES,
    reference: str | None = None,
    reference_approach: str = "cot",
    teacher: str | None = None,
    train_size: int = 200,
    dev_size: int = 300,
    test_size: int = 100,
    seed: int = 0,
    data: str | None = None,
    demos: str | None = None,
    adapter: str = "chat",
    temperature: float = 0.0,
    max_tokens: int = 256,
    num_threads: int = 1,
    retriever: str | None = None,
    k: int = 3,
    hops: int = 2,
    optimizer_options: dict | None = None,
    usd_per_hour: float = 0.0,
    baseline: str = "cot",
    device: str = "cpu",
    model: str | None = None,
) -> dict:
    """Compile and evaluate every approach for every model, then compare against a reference model.

    Args:
        task: gsm8k or hotpotqa.
        models: student LMs: offline model names / folders, "endpoint:<LLMEndpoint block>", or "env".
        approaches: predict, cot, manual, bootstrap, random_search, mipro, simba (one table row each).
        reference: the reference LM (really run on the same test set with `reference_approach`).
        teacher: optional teacher LM for the bootstrapping optimizers.
        train_size, dev_size, test_size, seed: deterministic subsets (DSPy's convention: 200 / 300).
        data: a local data file/folder, "hub", or None (reasonlab.datasets: stored, mirror, else the Hub).
        demos: hand-picked demos for "manual" (JSON/YAML list); default data/dspy_demos_<task>.json.
        adapter: chat or json (DSPy's output format; small models break it: parse failures are counted).
        temperature, max_tokens: sampling, explicit for every LM.
        num_threads: DSPy's num_threads for evaluation and the optimizers' candidate scoring (an offline
            model batches the concurrent requests: see LocalEngine).
        retriever, k, hops: HotPotQA: None (all 10 paragraphs) or bm25 over them, top k per hop.
        optimizer_options: {approach: {option: value}} over the defaults (e.g. num_candidate_programs).
        usd_per_hour: price of an hour of local compute (0: local cost is compute seconds).
        baseline: the approach every row's paired bootstrap CI is taken against.
        device: cpu or cuda for local models.
        model: one student model (overrides `models`; what a model sweep sets per child run).
    """
    if model:
        models = [model]
    # Checks, before any model work
    datamod.check_task(task)
    adapter_for(adapter)
    program_spec = programs.check_program_spec({"task": task, "cot": True, "retriever": retriever, "k": k,
                                                "hops": hops})
    if not models:
        raise ReasonlabError("no models given: name at least one offline model or endpoint:<block>")
    if temperature < 0 or max_tokens < 1:
        raise ReasonlabError("temperature must be >= 0 and max_tokens >= 1")
    demo_rows = None
    if "manual" in approaches:
        demo_rows = datamod.load_demos(demos or DEFAULT_DEMOS[task], task)
    approach_cfgs = [optimizers.check_approach(a, train_size, dev_size, demo_rows, optimizer_options)
                     for a in approaches]
    sampling = dict(temperature=temperature, max_tokens=max_tokens, usd_per_hour=usd_per_hour, device=device)
    student_specs = [lms.parse_lm(m, **sampling) for m in models]
    teacher_spec = lms.parse_lm(teacher, **sampling) if teacher else None
    reference_spec = lms.parse_lm(reference, **sampling) if reference else None
    if reference:
        optimizers.check_approach(reference_approach, train_size, dev_size, demo_rows, optimizer_options)
    for spec in [*student_specs, *([teacher_spec] if teacher_spec else []), *([reference_spec] if reference_spec else [])]:
        lms.check_endpoint(spec)

    # Data
    source_path = None if data in (None, "hub") else paths.find_input(data)
    splits = stages.load_data(task, train_size, dev_size, test_size, seed, data,
                              {"path": str(source_path), "content": _content_key(source_path)} if source_path else None)
    run_dir = paths.runs_dir() / "dspy_compile" / sha256_json(
        [task, [s.to_dict() for s in student_specs], approach_cfgs, splits["hashes"], program_spec, adapter,
         reference_spec and reference_spec.to_dict(), reference_approach, teacher_spec and teacher_spec.to_dict(),
         demo_rows])[:16]

    # Compile + evaluate: model x approach, then the reference
    jobs = [(spec, cfg, False) for spec in student_specs for cfg in approach_cfgs]
    if reference_spec:
        jobs.append((reference_spec, optimizers.approach_config(reference_approach, optimizer_options), True))
    results = []
    for spec, cfg, is_ref in jobs:
        key = sha256_json([cfg, program_spec, spec.to_dict(), splits["hashes"], demo_rows if cfg["approach"] == "manual"
                           else None, teacher_spec and teacher_spec.to_dict(), adapter, seed])[:16]
        prog_dir = paths.runs_dir() / "dspy_compile" / "programs"
        compiled = stages.compile_program(cfg, program_spec, spec.to_dict(), splits["train"], splits["dev"],
                                          str(prog_dir / f"{spec.label}-{cfg['approach']}-{key}.json"),
                                          demos=demo_rows if cfg["approach"] == "manual" else None,
                                          teacher=teacher_spec.to_dict() if teacher_spec else None,
                                          adapter=adapter, seed=seed, num_threads=num_threads)
        eval_spec = {**program_spec, "cot": optimizers.APPROACHES[cfg["approach"]]["cot"]}
        evaluated = stages.evaluate_program(eval_spec, compiled["program_file"], compiled["program_sha256"],
                                            spec.to_dict(), splits["test"],
                                            str(run_dir / "evals" / f"{spec.label}-{cfg['approach']}-{key}.json"),
                                            adapter=adapter, num_threads=num_threads)
        results.append({"model": spec.label, "approach": cfg["approach"], "reference": is_ref,
                        "lm": spec.to_dict(), "program_file": compiled["program_file"], "demos": compiled["demos"],
                        "compile_cost": (compiled["compile_cost_usd"] if report.cost_unit([evaluated]) == "usd"
                                         else compiled["compile_usage"]["compute_s"]),
                        "compile_usage": compiled["compile_usage"], "summary": evaluated["summary"],
                        "rows": evaluated["rows"]})

    # Report
    table = report.table(results, task, baseline=baseline)
    ref_rows = report.reference_rows(results, task)
    errors = report.error_samples(results)
    plot = report.plot(results, task, run_dir / "accuracy_vs_cost.png")
    write_json(run_dir / "results.json", {"task": task, "splits": {k: splits[k] for k in ("source", "seed", "hashes")},
                                          "sizes": {s: len(splits[s]) for s in ("train", "dev", "test")},
                                          "results": [{k: v for k, v in r.items() if k != "rows"} for r in results],
                                          "table": table, "reference": ref_rows})
    write_json(run_dir / "error_samples.json", errors)
    md = (f"# DSPy compile: {task}\n\nTest examples: {len(splits['test'])} (train {len(splits['train'])}, dev "
          f"{len(splits['dev'])}; source {splits['source']}, seed {seed}). Adapter: {adapter}, temperature "
          f"{temperature}.\n\n{report.markdown(table)}\n"
          + (f"## Against the reference\n\n{report.markdown(ref_rows)}\n" if ref_rows else "")
          + f"{image_markdown(plot, 'accuracy vs cost')}\n\n`{plot}`\n")
    write_text(run_dir / "report.md", md)
    publish_image(plot, key="dspy-compile-plot", description=f"{task}: accuracy vs cost")
    publish_run_folder(run_dir, key="dspy-compile-run-folder", description="Programs, results, error samples")
    create_table_artifact(table, key="dspy-compile-table", description=f"{task}: approach x model")
    if ref_rows:
        create_table_artifact(ref_rows, key="dspy-compile-reference", description="% of reference score at % of its cost")
    create_table_artifact(errors or [{"note": "no wrong answers"}], key="dspy-compile-errors",
                          description="Error analysis: wrong answers with the model's reasoning")
    create_markdown_artifact(md, key="dspy-compile-report")
    print("\n" + report.markdown(table) + ("\n" + report.markdown(ref_rows) if ref_rows else ""))
    return {"run_dir": str(run_dir), "table": table, "reference": ref_rows, "plot": str(plot),
            "programs": {f"{r['model']}/{r['approach']}": r["program_file"] for r in results}}


def _content_key(path: Path | None):
    from tasks.conventions import plain

    return plain(path) if path is not None else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="gsm8k", choices=datamod.TASKS)
    parser.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b-instruct"])
    parser.add_argument("--approaches", nargs="+", default=DEFAULT_APPROACHES)
    parser.add_argument("--reference", default=None)
    parser.add_argument("--reference-approach", default="cot")
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--train-size", type=int, default=200)
    parser.add_argument("--dev-size", type=int, default=300)
    parser.add_argument("--test-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None)
    parser.add_argument("--demos", default=None)
    parser.add_argument("--adapter", default="chat", choices=["chat", "json"])
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--retriever", default=None, choices=["bm25"])
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--hops", type=int, default=2)
    parser.add_argument("--optimizer-options", default=None, help='JSON, e.g. {"random_search": {"num_candidate_programs": 4}}')
    parser.add_argument("--usd-per-hour", type=float, default=0.0)
    parser.add_argument("--baseline", default="cot")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        out = dspy_compile(task=args.task, models=args.models, approaches=args.approaches, reference=args.reference,
                           reference_approach=args.reference_approach, teacher=args.teacher,
                           train_size=args.train_size, dev_size=args.dev_size, test_size=args.test_size,
                           seed=args.seed, data=args.data, demos=args.demos, adapter=args.adapter,
                           temperature=args.temperature, max_tokens=args.max_tokens, num_threads=args.num_threads,
                           retriever=args.retriever, k=args.k, hops=args.hops,
                           optimizer_options=json.loads(args.optimizer_options) if args.optimizer_options else None,
                           usd_per_hour=args.usd_per_hour, baseline=args.baseline, device=args.device)
    except ReasonlabError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"run_dir": out["run_dir"], "plot": out["plot"]}))
    print(f"lm_generations={lms.generations()}")


if __name__ == "__main__":
    main()
