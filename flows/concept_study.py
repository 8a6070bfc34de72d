"""The main job as a study across many cases: every target case a prompts file yields gets its attribution
graph, a concept named by an LLM from the graph's candidates, training texts for each arm written by the LLM
(checked, retried, matched in budget), and one SFT experiment per case x arm x seed, fanned out; then one paired
verdict across cases on each of the concept-SFT study's four findings.

    python -m flows.concept_study --prompts data/factual_prompts.json --local-llm qwen2.5-coder-0.5b-instruct \\
        --seeds 2 --workers 2
    python -m flows.concept_study --arms concept direct prompt --max-cases 8    # fewer arms, the first 8 cases

Every stage is a cached task: a killed run resumes with its finished experiments Cached, and a rerun makes no
forward pass and no LLM call.
"""

from __future__ import annotations

import argparse
import json
import time

from prefect import flow

from flows.cli_params import add_flow_arguments, flow_parameters
from flows.concept_sft import FLAGS as JOB_FLAGS, check_inputs
from reasonlab import paths
from reasonlab.concept_sft.params import (AttributionParams, ConceptParams, ExperimentParams, FilterParams,
                                          FormatParams, LLMParams, parse_group)
from reasonlab.concept_sft.study_params import StudyParams, parse_study
from reasonlab.concept_sft.study_plan import study_key
from reasonlab.errors import ReasonlabError
from tasks import attribution as attr_stages
from tasks import concept_sft as stages
from tasks import study as study_stages

DEFAULT_PROMPTS = "data/factual_prompts.json"
DEFAULT_SFT_CONFIG = "configs/concept_sft_default.yaml"


@flow(name="concept-sft-study", log_prints=True, validate_parameters=False)
def concept_study(
    prompts: str = DEFAULT_PROMPTS,
    sft_config: str = DEFAULT_SFT_CONFIG,
    model: str | None = None,
    use_chat_template: bool | None = None,
    filter: FilterParams = FilterParams(),
    formats: FormatParams = FormatParams(),
    attribution: AttributionParams = AttributionParams(),
    concept: ConceptParams = ConceptParams(),
    experiment: ExperimentParams = ExperimentParams(),
    study: StudyParams = StudyParams(),
    llm: LLMParams = LLMParams(),
) -> dict:
    """Every target case x arm x seed, trained and judged; one paired verdict per finding across cases.

    Args:
        prompts: JSON/YAML prompts file; every target case it yields is studied (see study.max_cases).
        sft_config: YAML SFT config (epochs, learning_rate, ...).
        model: registry name, local folder, Hub id, or block:NAME; default: the config's model_name.
        use_chat_template: SFT texts under the chat template (false for base models); default: the config's.
        filter: the top-k filter: which prompts become target cases.
        formats: how each stage shows a prompt; the study judges each edit in the filter's format.
        attribution: the graph and its concept candidates, made for every target case.
        concept: the reference corpus of the candidates' contexts (name/neuron/interactive are the main job's).
        experiment: seeds, learning rate, epochs, workers, held-out text; the text-set file keeps the last word.
        study: the arms, how many cases, the texts' rules, the budget matching.
        llm: the LLM that names concepts and writes texts (block, env vars, or a local model).
    """
    started = time.monotonic()
    inputs = check_inputs(prompts, sft_config, model, use_chat_template, filter=filter,
                          formats=judged_where_found(formats), attribution=attribution, concept=concept,
                          experiment=experiment, llm=llm)
    config, base, groups, study = inputs.config, inputs.base, inputs.groups, parse_study(study)
    filter, formats, attribution, concept, experiment, llm = (groups[name] for name in (
        "filter", "formats", "attribution", "concept", "experiment", "llm"))
    rows = stages.load_prompts(inputs.prompts_path)
    run_dir = paths.runs_dir() / "concept_study" / study_key(base.fingerprint, rows, config.model_dump(), groups,
                                                             study, inputs.text_sets)
    filtered = stages.filter_prompts(base, rows, str(run_dir / "filtered_prompts.json"), k=filter.top_k,
                                     max_rank=filter.max_rank, fmt=formats.filter, system_prompt=config.system_prompt,
                                     answer_prefix=formats.answer_prefix, device=config.device, dtype=config.dtype)
    stages.publish_filter(filtered)
    cases = study_stages.target_cases(filtered, study.max_cases, inputs.prompts_path)

    # The graph and candidates of every case; the concept named and each arm's texts written by the LLM
    graph_args = attr_stages.graph_arguments(inputs.attr_fmt, config, formats.answer_prefix, attribution)
    _, candidates = attr_stages.attribute_cases(base, cases, run_dir, graph_args, concept.model_copy(
        update={"label": False}), llm)
    cases, texts = study_stages.write_study_texts(base, config, cases, candidates, rows, inputs.text_sets, study,
                                                  llm, run_dir)
    experiments, skipped = study_stages.plan_study(cases, texts, study.arms)

    # One SFT experiment per case x arm x seed, fanned out by the flow's task runner; the base scored once
    heldout = paths.find_input(experiment.heldout)
    base_eval = stages.evaluate_model(base, cases, formats.evaluation, str(run_dir / "eval_base.json"), heldout,
                                      system_prompt=config.system_prompt, device=config.device, dtype=config.dtype,
                                      answer_prefix=formats.answer_prefix, k=filter.top_k)
    stages.run_experiments(base, experiments, config, heldout, formats, filter.top_k,
                           experiment.model_copy(update={"attribution_after": False}))
    return study_stages.publish_study(base, base_eval, experiments, texts, skipped, study, experiment, formats,
                                      run_dir, time.monotonic() - started)


def judged_where_found(formats: FormatParams | dict | None) -> FormatParams:
    """The study judges each edit in the format the filter found the case in (one format, one verdict)."""
    parsed = parse_group("formats", formats)
    return parsed.model_copy(update={"evaluation": [parsed.filter]})


FLAGS = {**{k: v for k, v in JOB_FLAGS.items() if k.split(".")[0] in
            ("filter", "formats", "attribution", "experiment", "llm") or k == "concept.corpus"},
         "study.arms": "--arms", "study.max_cases": "--max-cases", "study.n_texts": "--n-texts",
         "study.min_tokens": "--min-tokens", "study.max_tokens": "--max-tokens",
         "study.max_attempts": "--max-attempts", "study.budget_tolerance": "--budget-tolerance"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flow_arguments(parser, concept_study, FLAGS)
    params = flow_parameters(parser.parse_args(argv))
    try:
        study = parse_study(params.pop("study", None))
        params["formats"] = judged_where_found(params.get("formats"))
        check_inputs(**params)  # bad input is one line here, before Prefect starts a flow run
        out = concept_study(**params, study=study)
    except ReasonlabError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({k: out[k] for k in ("run_dir", "cases", "experiments")}))


if __name__ == "__main__":
    main()
