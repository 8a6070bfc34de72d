"""Concept-SFT stages 3-4 as Prefect tasks: the attribution graph of a target case, its concept candidates, and
the same graph re-attributed on the SFT model (the diff after stage 6)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from reasonlab.concept_sft import attribution, attribution_diff as ad
from reasonlab.concept_sft import attribution_graph as ag
from reasonlab.concept_sft import concepts
from reasonlab.concept_sft.concepts import candidates_markdown
from reasonlab import paths
from reasonlab.concept_sft.run_record import attribution_key
from reasonlab.errors import ReasonlabError
from reasonlab.concept_sft.graph_render import render_html
from reasonlab.io import write_json, write_text
from reasonlab.llm_client import EndpointConfig
from reasonlab.models import ResolvedModel, load_model, resolve_model
from tasks.artifacts import image_markdown, publish_image, url_for
from tasks.conventions import task_options
from tasks.prompt_generation import open_client, resolve_endpoint


@task(name="attribution", **task_options(ag.VERSION + "." + concepts.VERSION, gpu=True, retries=1))
def attribute_case(model: ResolvedModel, case: dict, out_dir: str, fmt: str = "chat", system_prompt: str = "",
                   answer_prefix: str = " Answer:", contrastive: list[str] | None = None, tau: float = 0.05,
                   prune_mode: str = attribution.PRUNE_MODE, method: str = "act_x_grad", max_nodes: int = 30,
                   n_prompt_nodes: int = 8, ablate_top: int = 20, device: str = "auto", dtype: str = "auto",
                   counterfactual: str | None = None) -> dict:
    """Stage 3: graph.json / graph.png / graph.html under out_dir for one target case; returns the summary.

    `counterfactual`: a same-length prompt whose answer is the other side of the contrast; adds the graph's
    activation-patching check (`patching` section, `patching_spearman` in the summary)."""
    lm, tokenizer = load_model(model, device, dtype)
    pair = tuple(contrastive) if contrastive else ag.case_contrastive(tokenizer, case, fmt)
    graph = ag.attribution_graph(lm, tokenizer, case["prompt"], pair, fmt=fmt, system_prompt=system_prompt,
                                 answer_prefix=answer_prefix, tau=tau, prune_mode=prune_mode, method=method,
                                 max_nodes=max_nodes, n_prompt_nodes=n_prompt_nodes, ablate_top=ablate_top,
                                 counterfactual=counterfactual)
    files = ag.write_graph(graph, out_dir)
    rho = graph["ablation"]["spearman"]
    get_run_logger().info(f"{case['prompt']!r}: {graph['metric']} = {graph['logit_diff']:+.3f}, "
                          f"{len(graph['nodes'])} nodes, ablation rho = {'n/a' if rho is None else f'{rho:.3f}'} "
                          f"-> {files['png']}")
    top = sorted(graph["nodes"], key=lambda n: -abs(n["influence"]))[:10]
    summary = {"prompt": case["prompt"], "contrastive": list(pair), "metric": graph["metric"],
               "logit_diff": graph["logit_diff"], "nodes": len(graph["nodes"]), "edges": len(graph["edges"]),
               "spearman": rho, "ablated": len(graph["ablation"]["nodes"]), "files": files,
               "top_nodes": [{k: n[k] for k in ("id", "token", "influence", "activation", "origin")} for n in top]}
    if "patching" in graph:
        summary["patching_spearman"] = graph["patching"]["spearman"]
        summary["patching_spearman_vs_influence"] = graph["patching"]["spearman_vs_influence"]
    return summary


@task(name="attribution-diff", **task_options(ag.VERSION + "." + ad.VERSION, gpu=True, retries=1))
def attribution_diff(base: ResolvedModel, graph_file: Path, sft: ResolvedModel, out_dir: str, fmt: str = "chat",
                     system_prompt: str = "", answer_prefix: str = " Answer:", contrastive: list[str] | None = None,
                     tau: float = 0.05, prune_mode: str = attribution.PRUNE_MODE, method: str = "act_x_grad", max_nodes: int = 30,
                     n_prompt_nodes: int = 8, ablate_top: int = 20, top_k: int = 10, device: str = "auto",
                     dtype: str = "auto") -> dict:
    """After SFT: the base graph's nodes re-attributed on the SFT model (diff.json, diff.md) and the SFT model's
    own graph (sft/graph.*) under out_dir. The format arguments are attribute_case's: they must be the ones the
    base graph was made with (checked, so that a node means the same position and metric on both models)."""
    graph = ag.read_graph(graph_file)
    given = {"format": fmt, "system_prompt": system_prompt, "answer_prefix": answer_prefix, "method": method,
             "tau": tau, "prune_mode": prune_mode, "max_nodes": max_nodes}
    made = {"format": graph["format"], "system_prompt": graph["system_prompt"], "answer_prefix": graph["answer_prefix"],
            "method": graph["method"], "tau": graph["prune"]["tau"], "prune_mode": graph["prune"]["mode"],
            "max_nodes": graph["prune"]["max_nodes"]}
    if contrastive:
        given["contrastive"], made["contrastive"] = list(contrastive), graph["contrastive"]
    wrong = [f"{k}={given[k]!r} (the graph has {made[k]!r})" for k in given if given[k] != made[k]]
    if wrong:
        raise ReasonlabError(f"attribution diff: {graph_file} was made with other settings: {', '.join(wrong)}")
    base_lm, base_tok = load_model(base, device, dtype)
    sft_lm, sft_tok = load_model(sft, device, dtype)
    diff, sft_graph = ad.attribution_diff(graph, base_lm, base_tok, sft_lm, sft_tok, top_k=top_k,
                                          n_prompt_nodes=n_prompt_nodes, ablate_top=ablate_top)
    files = ad.write_diff(diff, sft_graph, out_dir)
    m, w = diff["logit_diff"], diff["top_wrong"]
    get_run_logger().info(f"{graph['prompt']!r} after SFT: {graph['metric']} {m['base']:+.3f} -> {m['sft']:+.3f}; "
                          f"{w['lost_abs_influence']}/{w['k']} top wrong-pushing nodes lost |influence| "
                          f"(by {w['lost_total']:.3f}) -> {files['markdown']}")
    return {"prompt": graph["prompt"], "logit_diff": m, "top_wrong": w, "top_right": diff["top_right"],
            "spearman_union": diff["spearman_union"], "new_nodes": diff["new_nodes_total"], "checks": diff["checks"],
            "files": files}


@task(name="concept-candidates", **task_options(concepts.VERSION, gpu=True, retries=1))
def concept_candidates(model: ResolvedModel, graph_file: Path, out_file: str, corpus: Path | None = None,
                       n_candidates: int = 5, n_contexts: int = 32, k: int = 3, device: str = "auto",
                       dtype: str = "auto") -> list[dict]:
    """Stage 4: rank the graph's nodes as concept candidates, describe each by its top corpus contexts."""
    graph = ag.read_graph(graph_file)
    ranked = concepts.rank_candidates(graph, n_candidates)
    logger = get_run_logger()
    if corpus is None and not concepts.default_corpus().is_file():
        logger.warning(f"no reference corpus at {concepts.default_corpus()}: candidates without top contexts")
        contexts = [[] for _ in ranked["candidates"]]
    else:
        lm, tokenizer = load_model(model, device, dtype)
        texts = concepts.load_corpus(corpus, n_contexts)
        contexts = concepts.top_activating_contexts(lm, tokenizer, texts,
                                                    [(c["layer"], c["neuron"]) for c in ranked["candidates"]], k=k)
    described = concepts.describe(ranked["candidates"], contexts)
    write_json(out_file, {"graph": str(graph_file), "candidates": described, "rejected": ranked["rejected"]})
    write_text(Path(graph_file).with_name("graph.html"), render_html(graph, described))  # hover: contexts
    logger.info(f"{len(described)} concept candidates ({len(ranked['rejected'])} nodes rejected) -> {out_file}")
    return described


@task(name="label-concepts", **task_options(concepts.VERSION, retries=1))
def label_concepts(endpoint: EndpointConfig, candidates: list[dict], key_block: str | None = None) -> list[dict]:
    """Stage 4, optional (the concept-SFT study's analyze.py without --no-llm): an LLM-written label per candidate."""
    with open_client(endpoint, key_block) as (client, _info):
        labels = [(client.chat(concepts.label_messages(c, c["contexts"]), label="concept-label", max_tokens=24,
                               temperature=0.0).content or "").strip().splitlines()[0:1] for c in candidates]
    return [{**c, "label": (lab[0].strip(" .\"'") if lab else None)} for c, lab in zip(candidates, labels)]


def graph_arguments(fmt: str, config, answer_prefix: str, attribution) -> dict:
    """The attribution settings every graph of a run shares (base and after SFT alike)."""
    a = attribution
    return dict(fmt=fmt, system_prompt=config.system_prompt, answer_prefix=answer_prefix, contrastive=a.contrastive,
                tau=a.tau, prune_mode=a.prune_mode, method=a.method, max_nodes=a.max_nodes, device=config.device,
                dtype=config.dtype)


def attribute_cases(base: ResolvedModel, cases: list[dict], run_dir: Path, graph_args: dict, concept,
                    llm) -> tuple[list[dict], list[list[dict]]]:
    """Stages 3-4 for each case: its graph (+ activation patching from the row's counterfactual, when it has one),
    its concept candidates with their top corpus contexts, optionally LLM labels; then published."""
    graphs, candidates = [], []
    for case in cases:
        out_dir = run_dir / "attribution" / attribution_key(case, graph_args)
        graphs.append(attribute_case(base, case, str(out_dir), counterfactual=case.get("counterfactual"),
                                     **graph_args))
        candidates.append(concept_candidates(
            base, Path(graphs[-1]["files"]["json"]), str(out_dir / "candidates.json"),
            corpus=paths.find_input(concept.corpus) if concept.corpus else None,
            device=graph_args["device"], dtype=graph_args["dtype"]))
    if concept.label and candidates:
        endpoint = resolve_endpoint(llm.endpoint, llm.local_model)
        candidates = [label_concepts(endpoint, c, key_block=llm.endpoint) for c in candidates]
        for g, c in zip(graphs, candidates):  # the page's hover cards show the labels too
            write_text(g["files"]["html"], render_html(ag.read_graph(g["files"]["json"]), c))
    publish_attribution(graphs, candidates, labelled=concept.label)
    return graphs, candidates


def diffs_after_sft(base: ResolvedModel, graphs: list[dict], experiments: list[dict], graph_args: dict) -> list[dict]:
    """Each graph re-attributed on the first seed's concept model of its case, diffed against the base graph."""
    diffs = []
    for g in graphs:
        e = next((e for e in experiments if e["text_set"] == "concept"
                  and any(c["prompt"] == g["prompt"] for c in e["cases"])), None)
        if e and e["runs"][0]["checkpoint"]:
            diffs.append(attribution_diff(base, Path(g["files"]["json"]), resolve_model(e["runs"][0]["checkpoint"]),
                                          str(Path(g["files"]["json"]).parent / f"after_{e['name']}"), **graph_args))
    return diffs


def publish_attribution(graphs: list[dict], candidates: list[list[dict]], labelled: bool) -> None:
    if not graphs:
        return
    no_label = "(not labelled: run with --label-concepts and an LLM)" if not labelled else "(the LLM gave no label)"
    create_table_artifact(
        [{"prompt": g["prompt"], "contrastive": " vs ".join(map(repr, g["contrastive"])),
          "logit diff": round(g["logit_diff"], 4), "nodes": g["nodes"], "edges": g["edges"],
          "ablation rho (top %d)" % g["ablated"]: None if g["spearman"] is None else round(g["spearman"], 3),
          "top node": g["top_nodes"][0]["id"] if g["top_nodes"] else "(no node above tau)",
          "picture": url_for(g["files"]["png"]) or g["files"]["png"]}
         for g in graphs], key="concept-sft-attribution", description="Stage 3: contrastive attribution graphs")
    create_table_artifact(
        [{"prompt": g["prompt"], "rank": i, "neuron": c["id"], "token": c["token"], "influence": round(c["influence"], 4),
          "label": c.get("label") or no_label,
          "top context": c["contexts"][0]["text"] if c["contexts"] else "(no corpus context activates it)"}
         for g, cs in zip(graphs, candidates) for i, c in enumerate(cs, 1)],
        key="concept-sft-candidates", description="Stage 4: intermediate-concept candidates")
    create_markdown_artifact(
        "# Attribution and concept candidates\n\n" + "\n".join(
            f"{image_markdown(g['files']['png'], 'attribution graph')}\n\n"
            f"`{g['files']['png']}` / `{g['files']['html']}`\n\n"
            + candidates_markdown({"prompt": g["prompt"], "metric": g["metric"], "logit_diff": g["logit_diff"],
                                   "contrastive": g["contrastive"]}, cs)
            for g, cs in zip(graphs, candidates)), key="concept-sft-attribution-report")
    for i, g in enumerate(graphs):
        publish_image(g["files"]["png"], key=f"concept-sft-attribution-graph-{i}",
                      description=f"Attribution graph: {g['prompt']}")
