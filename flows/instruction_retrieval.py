"""Instruction retrieval on medical multiple-choice questions: does a retrieved instruction help a small model?

    python -m flows.instruction_retrieval                                   # seed + 500 MedQA, SmolLM2-135M
    python -m flows.instruction_retrieval --models smollm2-135m-instruct gemma-3-270m --n-questions 500
    python -m flows.instruction_retrieval --questions seed medmcqa --embedder BAAI/bge-small-en-v1.5

Stages: questions -> instruction library -> retrieval (dense / BM25 / RRF, retrieval accuracy) -> conditions
(none, top-1, top-k, oracle, random-other) -> option scoring per model and condition (acc, debiased acc, acc_norm)
-> metrics (CIs, McNemar, entropy, information gain, KL, Brier, ECE) -> plots -> scaling chart over models.
Every stage is a cached task: a rerun with the same inputs does no model work.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from blocks.resolve import resolve_model_ref
from reasonlab import datasets, paths
from reasonlab.errors import ReasonlabError
from reasonlab.io import read_structured, sha256_json, write_json, write_text
from reasonlab.models import forward_passes, load_tokenizer
from reasonlab.retrieval import conditions as cond
from reasonlab.retrieval import option_scoring, plots, report
from reasonlab.retrieval import questions as question_sources
from reasonlab.retrieval.embedders import resolve_embedder
from reasonlab.retrieval.library import DEFAULT_LIBRARY, library_hash
from reasonlab.retrieval.retrieve import check_method, retrieval_accuracy
from tasks.artifacts import image_markdown, publish_run_folder
from tasks import retrieval as stages

DEFAULT_MODELS = ["smollm2-135m-instruct"]


@flow(name="instruction-retrieval", log_prints=True)
def instruction_retrieval(
    questions: list[str] = ["seed", "medqa"],
    n_questions: int = 500,
    start: int = 0,
    library: str = DEFAULT_LIBRARY,
    domains: str | None = None,
    embedder: str = "all-minilm-l6-v2",
    retriever: str = "rrf",
    top_k: int = 3,
    model: str | None = None,
    models: list[str] | None = None,
    use_chat_template: bool = False,
    debias: bool = True,
    acc_norm: bool = True,
    seed: int = 0,
    n_boot: int = 2000,
    chunk_size: int = 25,
    device: str = "auto",
    dtype: str = "auto",
) -> dict:
    """Score every question with no instruction, the retrieved one(s), the gold domain's and a random other's.

    Args:
        questions: sources, each `seed`, `medqa` (stored, the REASONLAB_SHARED_DATA mirror, else the Hub's
            GBaker/MedQA-USMLE-4-options-hf), `medqa-hub`, `medmcqa` (Hub), `hub:DATASET[:SPLIT]`, or a local file.
        n_questions: questions per source (from `start`); the seed has 3.
        library: the instruction library YAML (domain -> description, knowledge, reasoning).
        domains: a YAML {source: {question id: gold domain}} for sources without domains (e.g.
            data/medqa_domains.yaml): enables the oracle condition and retrieval accuracy there.
        embedder: all-minilm-l6-v2 (offline), a sentence-transformers folder, or a Hub id.
        retriever: which ranking picks the instructions: dense, bm25 or rrf (their reciprocal-rank fusion).
        top_k: instructions in the top-k condition (1 leaves that condition out).
        model: one model (registry name, folder, Hub id, or block:NAME); the sweep sets this.
        models: several models (scaling chart over their sizes); default smollm2-135m-instruct.
        use_chat_template: the prompt as a user turn under the model's chat template.
        debias: also score the cyclic shifts of the options and average (letter-bias control).
        acc_norm: also score each option's text, normalised by its length.
        seed: random-other choice and bootstrap seed.
        n_boot: bootstrap resamples.
        chunk_size: questions per cached scoring task (a longer run reuses the chunks of a shorter one).
        device, dtype: where and how the models run (auto: cuda + bf16 if present, else cpu + fp32).
    """
    # Checks, before any model work: each bad input is one clear error
    check_method(retriever)
    if n_questions < 1 or start < 0 or chunk_size < 1:
        raise ReasonlabError(f"n_questions and chunk_size must be >= 1 and start >= 0, got {n_questions}, "
                             f"{chunk_size}, {start}")
    if not questions:
        raise ReasonlabError("questions: name at least one source (seed, medqa, medmcqa, a file)")
    library_file = paths.find_input(library)
    lib = stages.load_instruction_library(library_file)
    if not 1 <= top_k < len(lib):
        raise ReasonlabError(f"top_k must be between 1 and {len(lib) - 1} (the library has {len(lib)} domains)")
    embedder_spec = resolve_embedder(embedder)
    refs = ([model] if model else []) + list(models or ([] if model else DEFAULT_MODELS))
    resolved = [resolve_model_ref(m) for m in refs]
    sets = {}
    for spec in questions:
        qs = stages.load_questions(spec, start, n_questions, content=_local_file(spec))
        if domains:
            qs = question_sources.apply_domains(qs, read_structured(paths.find_input(domains)), domains)
        cond.check_domains(qs, lib)
        sets[_slug(qs[0]["source"] or spec)] = qs
    for m in resolved:
        tokenizer = load_tokenizer(m)
        for qs in sets.values():
            option_scoring.letter_ids(tokenizer, list(qs[0]["options"]))
        if use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ReasonlabError(f"model {m.name!r} has no chat template: run with use_chat_template false")

    settings = dict(library=library_hash(lib), embedder=embedder_spec.to_dict(), retriever=retriever, top_k=top_k,
                    use_chat_template=use_chat_template, debias=debias, acc_norm=acc_norm, seed=seed)
    experiment = sha256_json([settings, {k: [q["id"] for q in qs] for k, qs in sets.items()}])[:12]
    root = paths.runs_dir() / "instruction_retrieval" / experiment
    # scores by settings and chunk content, not by question count: a longer run reuses a shorter one's chunks
    scores_root = paths.runs_dir() / "instruction_retrieval" / "scores" / sha256_json(settings)[:12]
    forwards_before = forward_passes()

    # Retrieval: rankings per question, conditions per question
    retrieved, items, retrieval_acc = {}, {}, {}
    for name, qs in sets.items():
        retrieved[name] = stages.retrieve_domains(qs, lib, embedder_spec)["per_question"]
        retrieval_acc[name] = [retrieval_accuracy(qs, retrieved[name], method, k)
                               for method in ("dense", "bm25", "rrf") for k in sorted({1, top_k})]
        items[name] = cond.build_condition_items(qs, retrieved[name], lib, retriever, top_k, seed)
    write_json(root / "retrieval.json", {"settings": settings, "retrieval_accuracy": retrieval_acc,
                                         "rankings": retrieved})

    # Scoring, metrics and plots per model and question set
    results = {}
    for m in resolved:
        model_dir = root / _slug(m.name)
        results[m.name] = {}
        for name, qs in sets.items():
            out = model_dir / name
            scored, n_params = {}, None
            for c, its in items[name].items():  # chunks: a longer run reuses every chunk a shorter one scored
                scored[c] = []
                for i in range(0, len(its), chunk_size):
                    chunk = its[i:i + chunk_size]
                    ids = {it["id"] for it in chunk}
                    chunk_file = scores_root / _slug(m.name) / name / f"{c}_{sha256_json(chunk)[:12]}.json"
                    run = stages.score_condition(m, [q for q in qs if q["id"] in ids], chunk, str(chunk_file),
                                                 use_chat_template, debias, acc_norm, device, dtype)
                    scored[c] += run["rows"]
                    n_params = run["n_params"]
            summary = stages.summarize(qs, scored, str(out / "summary.json"), n_boot, seed)
            title = f"{m.name} on {name} (n={len(qs)})"
            pngs = stages.plot_results(qs, scored, summary, str(out), title)
            markdown = report.summary_markdown(title, summary, retrieval_acc[name])
            write_text(out / "results.md", markdown)
            publish(m.name, name, summary, markdown, pngs, retrieval_acc[name])
            results[m.name][name] = {"n_params": n_params, "summary": summary, "plots": pngs}
            print("\n" + markdown)

    # Scaling chart: every model measured on the same questions and settings (a sweep's children add theirs)
    scaling = {}
    for name in sets:
        points_dir = root / "scaling" / name
        for model_name, per_set in results.items():
            write_json(points_dir / f"{_slug(model_name)}.json",
                       {"model": model_name, "n_params": per_set[name]["n_params"],
                        "conditions": per_set[name]["summary"]["conditions"]})
        points = [read_structured(p) for p in sorted(points_dir.glob("*.json"))]
        metric = "acc_debiased" if debias else "acc"
        png = plots.scaling_chart(points, metric, root / f"scaling_{name}.png",
                                  f"{name}: {metric} by model size (measured, 95 % CIs)")
        scaling[name] = {"png": str(png), "models": [p["model"] for p in points]}
    create_markdown_artifact(
        "# Instruction retrieval: scaling\n\n" + "\n".join(
            f"## {name} ({', '.join(s['models'])})\n\n{image_markdown(s['png'], f'scaling on {name}')}\n\n`{s['png']}`"
            for name, s in scaling.items()),
        key="instruction-retrieval-scaling")
    publish_run_folder(root, key="instruction-retrieval-run-folder", description="Scores, summaries and plots")
    forwards = forward_passes() - forwards_before
    print(f"forward passes this run: {forwards}")
    return {"run_dir": str(root), "results": {m: {s: {"plots": r["plots"], "conditions": r["summary"]["conditions"],
                                                      "differences": r["summary"]["differences"]}
                                                  for s, r in per.items()} for m, per in results.items()},
            "retrieval_accuracy": retrieval_acc, "scaling": scaling, "forward_passes": forwards}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _local_file(spec: str) -> Path | None:
    """The file behind a question source, so its content keys the cache (None for Hub sources)."""
    if spec == "seed":
        return paths.find_input(question_sources.SEED_FILE)
    if spec == "medqa":
        return datasets.locate_file("medqa")
    if spec in ("medqa-hub", "medmcqa") or spec.startswith("hub:"):
        return None
    return paths.find_input(spec)


def publish(model: str, name: str, summary: dict, markdown: str, pngs: dict[str, str], retrieval: list[dict]) -> None:
    key = _slug(f"instruction-retrieval-{model}-{name}")
    create_table_artifact(
        [{"condition": c["condition"], "n": c["n"],
          **{k: (round(100 * c[k], 1) if c.get(k) is not None else None) for k in ("acc", "acc_debiased", "acc_norm")},
          **{f"{k} CI": (f"[{100 * c[k + '_ci'][0]:.1f}, {100 * c[k + '_ci'][1]:.1f}]" if c.get(k + "_ci") else None)
             for k in ("acc", "acc_debiased", "acc_norm")},
          "predicted letters": " ".join(f"{k}{100 * v:.0f}" for k, v in (c.get("pred_letters") or {}).items()),
          "info gain (bits)": round(c["info_gain_bits"], 4) if c.get("info_gain_bits") is not None else None,
          "Brier": round(c["brier"], 4) if c.get("brier") is not None else None,
          "ECE": round(c["ece"], 4) if c.get("ece") is not None else None}
         for c in summary["conditions"]], key=key, description=f"{model} on {name}: accuracy per condition")
    create_table_artifact(
        [{**d, "diff": round(d["diff"], 4), "low": round(d["low"], 4), "high": round(d["high"], 4)}
         for d in summary["differences"]], key=key + "-differences",
        description=f"{model} on {name}: paired differences (bootstrap 95 % CI, McNemar)")
    create_markdown_artifact(
        markdown + "\n## Plots\n\n" + "\n\n".join(f"### {k}\n\n{image_markdown(v, k)}\n\n`{v}`"
                                                      for k, v in pngs.items()),
        key=key + "-report")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", nargs="+", default=["seed", "medqa"])
    parser.add_argument("--n-questions", type=int, default=500)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--library", default=DEFAULT_LIBRARY)
    parser.add_argument("--domains", default=None, help="YAML {source: {id: domain}}, e.g. data/medqa_domains.yaml")
    parser.add_argument("--embedder", default="all-minilm-l6-v2")
    parser.add_argument("--retriever", default="rrf", choices=["dense", "bm25", "rrf"])
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--use-chat-template", action="store_true")
    parser.add_argument("--no-debias", action="store_true")
    parser.add_argument("--no-acc-norm", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=25)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    try:
        out = instruction_retrieval(questions=args.questions, n_questions=args.n_questions, start=args.start,
                                    library=args.library, domains=args.domains, embedder=args.embedder, retriever=args.retriever,
                                    top_k=args.top_k, models=args.models, use_chat_template=args.use_chat_template,
                                    debias=not args.no_debias, acc_norm=not args.no_acc_norm, seed=args.seed, chunk_size=args.chunk_size,
                                    device=args.device, dtype=args.dtype)
    except ReasonlabError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"run_dir": out["run_dir"], "scaling": out["scaling"], "forward_passes": out["forward_passes"]}))


if __name__ == "__main__":
    main()
