"""The concept-SFT pipeline (the main job): filter -> attribution -> concept choice -> leak check -> SFT -> evaluate.

    python -m flows.concept_sft                                  # defaults: SmolLM2, the seed's 3 prompts
    python -m flows.concept_sft --prompts data/target_prompts.json --sft-config configs/concept_sft_default.yaml
    python -m flows.concept_sft --interactive        # pauses after stage 4 for the researcher's choice (UI form)

Every stage is a cached task: a rerun with the same inputs and weights skips all of them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefect import flow, pause_flow_run
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.input import RunInput

from blocks.resolve import resolve_model_ref
from reasonlab.concept_sft import attribution
from reasonlab import paths
from reasonlab.concept_sft.concepts import candidates_markdown
from reasonlab.errors import ReasonlabError
from reasonlab.concept_sft.evaluate import compare, results_markdown
from reasonlab.io import sha256_json, write_json, write_text
from reasonlab.models import load_tokenizer, resolve_model
from reasonlab.prompt_format import FORMATS, require_formats
from reasonlab.concept_sft.sft_config import load_sft_config
from tasks import attribution as attr_stages
from tasks import concept_sft as stages
from tasks.prompt_generation import generate_prompts, resolve_endpoint

DEFAULT_PROMPTS = "data/target_prompts.json"
DEFAULT_SFT_CONFIG = "configs/concept_sft_default.yaml"


@flow(name="concept-sft", log_prints=True)
def concept_sft(
    prompts: str = DEFAULT_PROMPTS,
    sft_config: str = DEFAULT_SFT_CONFIG,
    model: str | None = None,
    use_chat_template: bool | None = None,
    top_k: int = 10,
    max_rank: int = 5,
    filter_format: str = "completion",
    eval_formats: list[str] = ["chat", "completion"],
    answer_prefix: str = " Answer:",
    concept: str | None = None,
    generate: bool = False,
    llm_endpoint: str | None = None,
    local_llm: str | None = None,
    gen_n: int = 25,
    gen_batches: int = 4,
    gen_domain: str = "medical",
    attribution_cases: int = 1,
    attribution_format: str | None = None,
    contrastive: list[str] | None = None,
    tau: float = 0.05,
    prune_mode: str = "max",
    attribution_method: str = "act_x_grad",
    max_nodes: int = 30,
    concept_corpus: str | None = None,
    label_concepts: bool = False,
    interactive: bool = False,
    pause_timeout: int = 3600,
) -> dict:
    """Find prompts the model gets clearly wrong, train the intermediate concept, measure the shift.

    Args:
        prompts: JSON/YAML file of {prompt, answer, topic} rows.
        sft_config: YAML SFT config (the seed's fields: texts, epochs, learning_rate, ...; `lora:` optional).
        model: registry name, local folder, Hub id, or block:NAME (a reasonlab-model block); overrides
            the config's model_name.
        use_chat_template: overrides the config's use_chat_template (SFT texts under the chat template);
            false for base models that have none.
        top_k: how many next tokens the filter and evaluation look at.
        max_rank: the answer must sit at rank 2..max_rank for a prompt to be a target case.
        filter_format: "completion" (the raw prompt) or "chat" (chat template + answer prefix).
        eval_formats: formats to evaluate; "chat" is the seed's (template + " Answer:").
        answer_prefix: text after the assistant header in the chat format.
        concept: the intermediate concept the texts strengthen (recorded with the results).
        generate: generate the prompts with an LLM (stage 1) instead of reading `prompts`.
        llm_endpoint: name of an LLMEndpoint block; else REASONLAB_LLM_* env vars, else `local_llm`.
        local_llm: a model served offline on loopback (`transformers serve`) for generation.
        gen_n, gen_batches, gen_domain: prompts per batch, batches, and domain of the generation.
        attribution_cases: how many target cases get an attribution graph (stage 3; 0 skips stages 3-4).
        attribution_format: the graph's prompt format; default "chat" when evaluated in chat, else filter_format.
        contrastive: (correct, wrong) single tokens; default: from each case (' Ald', ' Ren' for SmolLM2 in chat).
        tau: pruning threshold in (0, 1); prune_mode "max" (|I| >= tau max|I|), "total" or "cumulative".
        attribution_method: "act_x_grad" (one backward) or "integrated_gradients".
        max_nodes: cap on the nodes kept by pruning (edges cost one batched backward over them).
        concept_corpus: reference texts for the candidates' top-activating contexts (default: PubMedQA).
        label_concepts: ask the LLM (llm_endpoint / env / local_llm) for a label per candidate (off = --no-llm).
        interactive: pause after stage 4 for the researcher (concept + texts through the UI or the API);
            off (default), the concept and texts come from the parameters and the SFT config.
        pause_timeout: seconds the paused run waits before failing.
    """
    for fmt in [filter_format, *eval_formats, *([attribution_format] if attribution_format else [])]:
        if fmt not in FORMATS:
            raise ReasonlabError(f"unknown prompt format {fmt!r}: use one of {FORMATS}")
    attribution.check_tau(tau)
    if prune_mode not in attribution.PRUNE_MODES:
        raise ReasonlabError(f"unknown pruning mode {prune_mode!r}: use one of {attribution.PRUNE_MODES}")
    if attribution_method not in attribution.METHODS:
        raise ReasonlabError(f"unknown attribution method {attribution_method!r}: use one of {attribution.METHODS}")
    if contrastive is not None and len(contrastive) != 2:
        raise ReasonlabError(f"contrastive needs exactly two tokens (correct, wrong), got {contrastive!r}")
    config = load_sft_config(paths.find_input(sft_config))
    if use_chat_template is not None:
        config = config.model_copy(update={"use_chat_template": use_chat_template})
    prompts_path = paths.find_input(prompts)

    base = resolve_model_ref(model or config.model_name)  # a name, folder, Hub id, or block:NAME
    attr_fmt = attribution_format or ("chat" if "chat" in eval_formats else filter_format)
    sft_format = ["chat"] if config.use_chat_template else []
    require_formats(load_tokenizer(base), [filter_format, *eval_formats, attr_fmt, *sft_format], base.name)

    # Stage 1 - prompts: generated by an LLM (opt-in: the default job needs no key), else read from a file
    if generate:
        endpoint = resolve_endpoint(llm_endpoint, local_llm)  # one clear error if nothing is configured
        prompts_path = paths.runs_dir() / "prompt_generation" / f"{gen_domain}_prompts.json"
        generated = generate_prompts(endpoint, {"n": gen_n, "batches": gen_batches, "domain": gen_domain},
                                     str(prompts_path), key_block=llm_endpoint)
        if generated["accepted"] == 0:
            raise ReasonlabError(f"prompt generation accepted no prompts; see the reasons in {prompts_path}")
    rows = stages.load_prompts(prompts_path)
    run_dir = paths.runs_dir() / "concept_sft" / sha256_json(
        [base.fingerprint, rows, config.model_dump(), top_k, max_rank, filter_format, eval_formats, answer_prefix]
    )[:16]

    # Stage 2 - top-k filter
    filtered = stages.filter_prompts(base, rows, str(run_dir / "filtered_prompts.json"), k=top_k, max_rank=max_rank,
                                     fmt=filter_format, system_prompt=config.system_prompt,
                                     answer_prefix=answer_prefix, device=config.device, dtype=config.dtype)
    cases = filtered["target_cases"]
    publish_filter(filtered)
    if not cases:
        print("no target cases: nothing to train (see the filter artifact for each prompt's reason)")
        return {"run_dir": str(run_dir), "target_cases": 0}

    # Stage 3 - contrastive attribution graph per target case (the first `attribution_cases`)
    graphs, candidates = [], []
    for case in cases[:attribution_cases]:
        key = sha256_json([case["prompt"], attr_fmt, contrastive, tau, prune_mode, attribution_method, max_nodes])
        out_dir = run_dir / "attribution" / key[:12]
        graphs.append(attr_stages.attribute_case(
            base, case, str(out_dir), fmt=attr_fmt, system_prompt=config.system_prompt, answer_prefix=answer_prefix,
            contrastive=contrastive, tau=tau, prune_mode=prune_mode, method=attribution_method, max_nodes=max_nodes,
            device=config.device, dtype=config.dtype))
        # Stage 4 - concept candidates: upstream, at the prompt's tokens, not lexical; top corpus contexts
        candidates.append(attr_stages.concept_candidates(
            base, Path(graphs[-1]["files"]["json"]), str(out_dir / "candidates.json"),
            corpus=paths.find_input(concept_corpus) if concept_corpus else None,
            device=config.device, dtype=config.dtype))
    if label_concepts and candidates:
        endpoint = resolve_endpoint(llm_endpoint, local_llm)
        candidates = [attr_stages.label_concepts(endpoint, c, key_block=llm_endpoint) for c in candidates]
    publish_attribution(graphs, candidates)
    choice = choose_concept(graphs, candidates, concept, config.texts, interactive, pause_timeout)
    concept = choice["concept"]

    # Stage 5 - training texts, leak-checked against every target's wrong answer and topic
    texts = stages.check_training_texts(choice["texts"], cases, config.forbidden_terms)

    # Stage 6 - SFT
    train_config = config.model_copy(update={"texts": texts}).model_dump()
    sft = stages.run_sft(base, train_config, config.output_dir or str(run_dir / "sft"))
    tuned = resolve_model(sft["checkpoint"])

    # Stage 7 - evaluate base vs SFT
    eval_args = dict(system_prompt=config.system_prompt, answer_prefix=answer_prefix, device=config.device,
                     dtype=config.dtype, k=top_k)
    before = stages.evaluate_model(base, cases, eval_formats, str(run_dir / "eval_base.json"), **eval_args)
    after = stages.evaluate_model(tuned, cases, eval_formats, str(run_dir / "eval_sft.json"), **eval_args)
    table = compare(before, after)
    results = {"model": base.to_dict(), "sft_checkpoint": sft["checkpoint"], "concept": concept,
               "concept_neuron": choice["neuron"], "concept_source": choice["source"],
               "attribution": graphs, "train_losses": sft["losses"], "table": table}
    write_json(run_dir / "results.json", results)
    write_text(run_dir / "results.md", results_markdown(table))
    publish_results(table, sft, concept)
    print("\n" + results_markdown(table))
    return {"run_dir": str(run_dir), "target_cases": len(cases), "table": table, "concept": concept,
            "concept_neuron": choice["neuron"], "concept_source": choice["source"], "attribution": graphs}


class ConceptChoice(RunInput):
    """What the researcher gives a paused run (the UI shows it as a form, prefilled with the defaults)."""

    concept: str
    neuron: str | None = None  # the candidate the concept comes from, e.g. "L22/N13255@9"
    texts: list[str]


def choose_concept(graphs: list[dict], candidates: list[list[dict]], concept: str | None, texts: list[str],
                   interactive: bool, timeout: int) -> dict:
    """The concept and the training texts: from the parameters, or (interactive) from the researcher."""
    top = next((c[0] for c in candidates if c), None)
    neuron = top["id"] if top else None
    if not interactive:
        return {"concept": concept, "neuron": neuron, "texts": texts, "source": "parameters"}
    default = concept or (top and (top.get("label") or f"{top['id']} ({top['token'].strip()!r})")) or ""
    description = ("## Choose the intermediate concept to strengthen\n\n"
                   + "".join(f"Graph: `{g['files']['png']}` (interactive: `{g['files']['html']}`), "
                             f"{g['metric']} = {g['logit_diff']:+.3f}, ablation rho = {g['spearman']}\n\n"
                             for g in graphs)
                   + "\n".join(candidates_markdown({"prompt": g["prompt"], "metric": g["metric"],
                                                   "logit_diff": g["logit_diff"], "contrastive": g["contrastive"]}, c)
                               for g, c in zip(graphs, candidates))
                   + "\nEnter the concept, the neuron it comes from (optional) and the training texts (edit or approve).")
    choice = pause_flow_run(wait_for_input=ConceptChoice.with_initial_data(description=description, concept=default,
                                                                            neuron=neuron, texts=list(texts)),
                            timeout=timeout, poll_interval=2, key="concept-choice")
    if not choice.concept.strip():
        raise ReasonlabError("the researcher's concept is empty: enter the concept the texts strengthen")
    if not choice.texts or not all(t.strip() for t in choice.texts):
        raise ReasonlabError("the researcher's training texts are empty: enter or approve at least one text")
    return {"concept": choice.concept.strip(), "neuron": choice.neuron, "texts": list(choice.texts),
            "source": "researcher"}


def publish_attribution(graphs: list[dict], candidates: list[list[dict]]) -> None:
    if not graphs:
        return
    create_table_artifact(
        [{"prompt": g["prompt"], "contrastive": " vs ".join(map(repr, g["contrastive"])),
          "logit diff": round(g["logit_diff"], 4), "nodes": g["nodes"], "edges": g["edges"],
          "ablation rho (top %d)" % g["ablated"]: None if g["spearman"] is None else round(g["spearman"], 3),
          "top node": g["top_nodes"][0]["id"] if g["top_nodes"] else "", "picture": g["files"]["png"]}
         for g in graphs], key="concept-sft-attribution", description="Stage 3: contrastive attribution graphs")
    create_table_artifact(
        [{"prompt": g["prompt"], "rank": i, "neuron": c["id"], "token": c["token"], "influence": round(c["influence"], 4),
          "label": c.get("label") or "", "top context": c["contexts"][0]["text"] if c["contexts"] else ""}
         for g, cs in zip(graphs, candidates) for i, c in enumerate(cs, 1)],
        key="concept-sft-candidates", description="Stage 4: intermediate-concept candidates")
    create_markdown_artifact(
        "# Attribution and concept candidates\n\n" + "\n".join(
            f"![graph]({g['files']['png']})\n\n`{g['files']['png']}` / `{g['files']['html']}`\n\n"
            + candidates_markdown({"prompt": g["prompt"], "metric": g["metric"], "logit_diff": g["logit_diff"],
                                   "contrastive": g["contrastive"]}, cs)
            for g, cs in zip(graphs, candidates)), key="concept-sft-attribution-report")


def publish_filter(filtered: dict) -> None:
    rows = [{"prompt": c["prompt"], "wrong (top-1)": f"{c['wrong_token']!r} {c['wrong_prob']:.1%}",
             "correct": f"{c['correct_token']!r} {c['correct_prob']:.1%}", "rank": c["correct_rank"], "kept": "yes"}
            for c in filtered["target_cases"]]
    rows += [{"prompt": r["prompt"], "wrong (top-1)": f"{r['top_k'][0]['token']!r} {r['top_k'][0]['prob']:.1%}",
              "correct": r["answer"], "rank": r["correct_rank"], "kept": f"no: {r['reason']}"}
             for r in filtered["rejected"]]
    create_table_artifact(rows, key="concept-sft-filter", description="Top-k filter: target cases and rejections")


def publish_results(table: list[dict], sft: dict, concept: str | None) -> None:
    create_table_artifact(table, key="concept-sft-results", description="Base vs SFT: p(wrong) and p(correct)")
    losses = ", ".join(f"{x:.3f}" for x in sft["losses"])
    create_markdown_artifact(
        f"# Concept SFT\n\nConcept: {concept or '(not named)'}\n\n{results_markdown(table)}\n"
        f"Checkpoint: `{sft['checkpoint']}` ({sft['steps']} steps; loss per step: {losses})\n",
        key="concept-sft-report",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default=DEFAULT_PROMPTS)
    parser.add_argument("--sft-config", default=DEFAULT_SFT_CONFIG)
    parser.add_argument("--model", default=None)
    parser.add_argument("--use-chat-template", default=None, action=argparse.BooleanOptionalAction,
                        help="override the SFT config's use_chat_template")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--max-rank", type=int, default=5)
    parser.add_argument("--filter-format", default="completion", choices=FORMATS)
    parser.add_argument("--eval-formats", nargs="+", default=["chat", "completion"], choices=FORMATS)
    parser.add_argument("--concept", default=None)
    parser.add_argument("--generate", action="store_true", help="generate the prompts with an LLM (stage 1)")
    parser.add_argument("--llm-endpoint", default=None, help="LLMEndpoint block name")
    parser.add_argument("--local-llm", default=None, help="model to serve offline for generation")
    parser.add_argument("--n", type=int, default=25)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--attribution-cases", type=int, default=1)
    parser.add_argument("--attribution-format", default=None, choices=FORMATS,
                        help="the graph's prompt format (default: chat when evaluated in chat)")
    parser.add_argument("--contrastive", nargs=2, default=None, metavar=("CORRECT", "WRONG"))
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--prune-mode", default="max", choices=attribution.PRUNE_MODES)
    parser.add_argument("--attribution-method", default="act_x_grad", choices=attribution.METHODS)
    parser.add_argument("--max-nodes", type=int, default=30)
    parser.add_argument("--label-concepts", action="store_true", help="LLM label per candidate (default: --no-llm)")
    parser.add_argument("--no-llm", action="store_true", help="no LLM labels (the default; the seed's flag)")
    parser.add_argument("--interactive", action="store_true", help="pause for the researcher's concept choice")
    args = parser.parse_args(argv)
    try:
        out = concept_sft(prompts=args.prompts, sft_config=args.sft_config, model=args.model,
                          use_chat_template=args.use_chat_template, top_k=args.top_k,
                          max_rank=args.max_rank, filter_format=args.filter_format, eval_formats=args.eval_formats,
                          concept=args.concept, generate=args.generate, llm_endpoint=args.llm_endpoint,
                          local_llm=args.local_llm, gen_n=args.n, gen_batches=args.batches,
                          attribution_cases=args.attribution_cases, attribution_format=args.attribution_format,
                          contrastive=args.contrastive, tau=args.tau,
                          prune_mode=args.prune_mode, attribution_method=args.attribution_method,
                          max_nodes=args.max_nodes, label_concepts=args.label_concepts and not args.no_llm,
                          interactive=args.interactive)
    except ReasonlabError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"run_dir": out["run_dir"], "target_cases": out["target_cases"]}))


if __name__ == "__main__":
    main()
