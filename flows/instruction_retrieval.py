"""Instruction retrieval on medical multiple-choice questions: does a retrieved instruction help a small model?

    python -m flows.instruction_retrieval                                   # seed + 500 MedQA, SmolLM2-135M
    python -m flows.instruction_retrieval --models smollm2-135m-instruct gemma-3-270m --n-questions 500
    python -m flows.instruction_retrieval --questions seed medmcqa --embedder BAAI/bge-small-en-v1.5

Stages: questions -> instruction library -> retrieval (dense / BM25 / RRF, retrieval accuracy) -> conditions
(none, top-1, top-k, oracle, random-other) -> option scoring per model and condition (acc, acc_debiased,
acc_option_text_norm) -> figures (Wilson CIs, paired bootstrap, McNemar, entropy, information gain, KL, Brier,
ECE) -> plots -> scaling chart over models. Every stage is a cached task: a rerun with the same inputs does no
model work.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from prefect import flow

from blocks.resolve import resolve_model_ref
from flows.cli_params import add_flow_arguments, flow_parameters
from reasonlab import paths
from reasonlab.errors import ReasonlabError
from reasonlab.io import write_json
from reasonlab.models import ResolvedModel, forward_passes, load_tokenizer
from reasonlab.retrieval import experiment, option_scoring
from reasonlab.retrieval.conditions import build_condition_items
from reasonlab.retrieval.embedders import EmbedderSpec, resolve_embedder
from reasonlab.retrieval.library import library_hash, load_library
from reasonlab.retrieval.params import (GROUPS, AnalysisParams, QuestionParams, RetrievalParams, ScoringParams,
                                        parse_group)
from tasks import retrieval as stages
from tasks.artifacts import publish_run_folder

DEFAULT_MODELS = ["smollm2-135m-instruct"]


@flow(name="instruction-retrieval", log_prints=True, validate_parameters=False)  # the groups check themselves
def instruction_retrieval(
    model: str | None = None,
    models: list[str] | None = None,
    questions: QuestionParams = QuestionParams(),
    retrieval: RetrievalParams = RetrievalParams(),
    scoring: ScoringParams = ScoringParams(),
    analysis: AnalysisParams = AnalysisParams(),
) -> dict:
    """Score every question with no instruction, the retrieved one(s), the gold domain's and a random other's.

    Args:
        model: one model (registry name, folder, Hub id, or block:NAME); the sweep sets this.
        models: several models (the scaling chart over their sizes); default: smollm2-135m-instruct.
        questions: which questions: sources, how many from each, gold domains for sources without them.
        retrieval: the instruction library and how its domains are ranked (dense, BM25, RRF; top-k).
        scoring: how each model reads the options: chat template, letter debiasing, option-text scoring, device.
        analysis: the random seed and the bootstrap size behind the figures.
    """
    inputs = check_inputs(model, models, questions=questions, retrieval=retrieval, scoring=scoring, analysis=analysis)
    r, s, a = inputs.retrieval, inputs.scoring, inputs.analysis
    run = experiment.RunFolders.of(inputs.settings, inputs.sets)
    forwards_before = forward_passes()

    # Retrieval: domain rankings per question, retrieval accuracy, each condition's instruction per question
    ranked = {name: stages.retrieve_domains(qs, inputs.library, inputs.embedder) for name, qs in inputs.sets.items()}
    retrieval_acc = {name: experiment.retrieval_table(qs, ranked[name], r.top_k) for name, qs in inputs.sets.items()}
    items = {name: build_condition_items(qs, ranked[name], inputs.library, r.method, r.top_k, a.seed)
             for name, qs in inputs.sets.items()}
    write_json(run.root / "retrieval.json", {"settings": inputs.settings, "retrieval_accuracy": retrieval_acc,
                                             "rankings": ranked})

    # Scoring and figures per model and question set
    results: dict[str, dict] = {}
    for m in inputs.models:
        results[m.name] = {}
        for name, qs in inputs.sets.items():
            out = run.results_dir(m.name, name)
            scored, n_params = stages.score_conditions(m, name, qs, items[name], run, s)
            summary = stages.summarize(qs, scored, str(out / "summary.json"), a.n_boot, a.seed)
            pngs = stages.plot_results(qs, scored, summary, str(out), f"{m.name} on {name} (n={len(qs)})")
            stages.publish_results(m.name, name, summary, pngs, retrieval_acc[name], out)
            results[m.name][name] = {"n_params": n_params, "summary": summary, "plots": pngs}

    # Publishing: the figures' tables, the scaling chart over every model measured with these settings
    stages.publish_tables(results)
    scaling = stages.publish_scaling(run, results, inputs.sets, s.debias)
    publish_run_folder(run.root, key="instruction-retrieval-run-folder", description="Scores, summaries and plots")
    forwards = forward_passes() - forwards_before
    print(f"forward passes this run: {forwards}")
    return experiment.flow_result(run.root, results, retrieval_acc, scaling, forwards)


@dataclass(frozen=True)
class Inputs:
    """The checked inputs: parsed groups, the library, the embedder, the models, the question sets, the settings."""

    questions: QuestionParams
    retrieval: RetrievalParams
    scoring: ScoringParams
    analysis: AnalysisParams
    library: dict
    embedder: EmbedderSpec
    models: list[ResolvedModel]
    sets: dict[str, list[dict]]
    settings: dict


def check_inputs(model: str | None = None, models: list[str] | None = None, **groups) -> Inputs:
    """Everything that can be checked before any model work, each failure one `ReasonlabError`: the groups
    (`group.field` named), the library, top_k, the embedder, the questions and their domains, each model's
    letter tokens and chat template. The CLI calls it before Prefect starts a run."""
    q, r, s, a = (parse_group(name, groups.get(name)) for name in GROUPS)
    library = load_library(paths.find_input(r.library))
    experiment.check_top_k(r.top_k, library)
    embedder = resolve_embedder(r.embedder)
    refs = ([model] if model else []) + list(models or ([] if model else DEFAULT_MODELS))
    resolved = [resolve_model_ref(m) for m in refs]
    sets = experiment.load_question_sets(q.sources, q.start, q.n, q.domains, library)
    for m in resolved:
        tokenizer = load_tokenizer(m)
        for letters in experiment.letter_sets(sets):
            option_scoring.letter_ids(tokenizer, letters)
        if s.use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ReasonlabError(f"model {m.name!r} has no chat template: set scoring.use_chat_template false")
    settings = dict(library=library_hash(library), embedder=embedder.to_dict(), retriever=r.method, top_k=r.top_k,
                    use_chat_template=s.use_chat_template, debias=s.debias, option_text_norm=s.option_text_norm,
                    seed=a.seed)
    return Inputs(q, r, s, a, library, embedder, resolved, sets, settings)


FLAGS: dict[str, str] = {
    "questions.sources": "--questions", "questions.n": "--n-questions", "questions.start": "--start",
    "questions.domains": "--domains",
    "retrieval.library": "--library", "retrieval.embedder": "--embedder", "retrieval.method": "--retriever",
    "retrieval.top_k": "--top-k",
    "scoring.use_chat_template": "--use-chat-template", "scoring.debias": "--debias",
    "scoring.option_text_norm": "--option-text-norm",
    "scoring.chunk_size": "--chunk-size", "scoring.device": "--device", "scoring.dtype": "--dtype",
    "analysis.seed": "--seed", "analysis.n_boot": "--n-boot",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flow_arguments(parser, instruction_retrieval, FLAGS)
    params = flow_parameters(parser.parse_args(argv))
    try:
        check_inputs(**params)  # bad input is one line here, before Prefect starts (and fails) a flow run
        out = instruction_retrieval(**params)
    except ReasonlabError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"run_dir": out["run_dir"], "scaling": out["scaling"], "forward_passes": out["forward_passes"]}))


if __name__ == "__main__":
    main()
