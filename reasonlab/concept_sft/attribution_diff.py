"""Attribution after SFT, diffed against the base model's graph: did the problematic neurons lose influence?

    diff, sft_graph = attribution_diff(base_graph, base_model, base_tok, sft_model, sft_tok, top_k=10)
    write_diff(diff, sft_graph, "outputs/my_analysis")   # diff.json, diff.md, sft/graph.{json,png,html}

The SFT model is attributed on the very same token ids as the base graph (same prompt text, format,
answer prefix, contrastive pair: a different tokenization or chat template is an error, since a node is a
(layer, position, neuron) and positions must mean the same token). For every base-graph node: its influence
on the base and on the SFT model (act x grad, or the graph's method), the change, and its rank by |influence|
among all neurons at all positions of each model (1 = the largest). Summary figures:

    metric          m = logit(correct) - logit(wrong), base vs SFT
    top_wrong       the base graph's top_k most wrong-pushing nodes (most negative influence): how many lost
                    |influence| after SFT, by how much in total, how many still push toward the wrong token
    top_right       the same for the top_k most right-pushing nodes (the contrast)
    spearman_union  Spearman's rho of base vs SFT influence over the union of both graphs' nodes
    new_nodes       the SFT graph's own top nodes that are not in the base graph

Pure functions on models and plain data; `write_diff` is the persistence. Nothing here imports Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from reasonlab.concept_sft import attribution as A
from reasonlab.concept_sft.attribution_graph import attribution_graph, write_graph
from reasonlab.errors import ReasonlabError
from reasonlab.io import write_json, write_text
from reasonlab.prompt_format import build_prompt

VERSION = "1"

Node = A.Node


def abs_rank(influence: torch.Tensor, node: Node) -> int:
    """1 + the number of neurons (all layers, all positions) with a strictly larger |influence| than `node`."""
    return int((influence.abs() > abs(float(influence[node]))).sum()) + 1


def _key(row: dict) -> Node:
    return (int(row["layer"]), int(row["position"]), int(row["neuron"]))


def same_ids(base_tokenizer, sft_tokenizer, graph: dict, device) -> torch.Tensor:
    """The base graph's input ids, checked to be what the SFT tokenizer makes of the same prompt."""
    text = graph["text"]
    sft_text = build_prompt(sft_tokenizer, graph["prompt"], graph["format"], graph["system_prompt"],
                            graph["answer_prefix"])
    if sft_text != text:
        raise ReasonlabError(f"the SFT model's tokenizer builds a different {graph['format']} prompt than the base "
                             f"graph's: {sft_text!r} vs {text!r} (its chat template changed): the graphs cannot be "
                             "compared position by position")
    base_ids = A.encode_prompt(base_tokenizer, text, device)
    sft_ids = A.encode_prompt(sft_tokenizer, text, device)
    if A.token_texts(base_tokenizer, base_ids) != graph["tokens"]:
        raise ReasonlabError("the base graph's tokens are not what the base model's tokenizer makes of its text: "
                             "the graph was made with another model")
    if not torch.equal(base_ids.cpu(), sft_ids.cpu()):
        b, s = base_ids[0].tolist(), sft_ids[0].tolist()
        at = next((i for i, (x, y) in enumerate(zip(b, s)) if x != y), min(len(b), len(s)))
        raise ReasonlabError(f"the SFT tokenizer encodes the prompt differently from the base tokenizer "
                             f"({len(s)} vs {len(b)} tokens, first difference at position {at}: "
                             f"{s[at] if at < len(s) else None} vs {b[at] if at < len(b) else None}): "
                             "nodes cannot be matched by position")
    pair = graph["contrastive"]
    ids = [list(A.contrastive_ids(tok, pair)) for tok in (base_tokenizer, sft_tokenizer)]
    if ids[0] != ids[1] or ids[0] != list(graph["contrastive_ids"]):
        raise ReasonlabError(f"the contrastive tokens {pair!r} have ids {ids[1]} for the SFT tokenizer and "
                             f"{graph['contrastive_ids']} in the base graph")
    return base_ids


def group_change(rows: list[dict], k: int, sign: int) -> dict:
    """Among the k base nodes pushing hardest toward one side (sign -1: wrong token, +1: correct token)."""
    side = sorted((r for r in rows if sign * r["base_influence"] > 0), key=lambda r: -sign * r["base_influence"])[:k]
    lost = [r for r in side if abs(r["sft_influence"]) < abs(r["base_influence"])]
    return {
        "k": len(side), "nodes": [r["id"] for r in side],
        "lost_abs_influence": len(lost),
        "lost_total": sum(abs(r["base_influence"]) - abs(r["sft_influence"]) for r in lost),
        "base_abs_total": sum(abs(r["base_influence"]) for r in side),
        "sft_abs_total": sum(abs(r["sft_influence"]) for r in side),
        "still_same_side": sum(1 for r in side if sign * r["sft_influence"] > 0),
        "median_sft_rank": (sorted(r["sft_rank"] for r in side)[len(side) // 2] if side else None),
    }


def attribution_diff(base_graph: dict, base_model, base_tokenizer, sft_model, sft_tokenizer, *, top_k: int = 10,
                     new_top: int = 10, n_prompt_nodes: int = 8, ablate_top: int = 20,
                     ig_steps: int = 8) -> tuple[dict[str, Any], dict[str, Any]]:
    """(diff, SFT graph): the base graph's nodes re-attributed on the SFT model, and the SFT model's own graph.

    The SFT graph is built with the base graph's settings (and its counterfactual when it has a patching check).
    """
    if top_k < 1 or new_top < 0:
        raise ReasonlabError(f"top_k must be >= 1 and new_top >= 0, got {top_k} and {new_top}")
    device = next(sft_model.parameters()).device
    ids = same_ids(base_tokenizer, sft_tokenizer, base_graph, device)
    a, b = base_graph["contrastive_ids"]
    method = base_graph["method"]
    base_attr = A.attribute(base_model, ids.to(next(base_model.parameters()).device), a, b, method, ig_steps)
    drift = abs(base_attr.metric - base_graph["logit_diff"])
    if drift > 0.05 * (1.0 + abs(base_graph["logit_diff"])):
        raise ReasonlabError(f"the base model gives {base_attr.metric:+.4f} for {base_graph['metric']} but the base "
                             f"graph says {base_graph['logit_diff']:+.4f}: the graph was made with another model "
                             "(or dtype)")
    sft_attr = A.attribute(sft_model, ids, a, b, method, ig_steps)
    prune = base_graph["prune"]
    patching = base_graph.get("patching")
    sft_graph = attribution_graph(
        sft_model, sft_tokenizer, base_graph["prompt"], base_graph["contrastive"], fmt=base_graph["format"],
        system_prompt=base_graph["system_prompt"], answer_prefix=base_graph["answer_prefix"], tau=prune["tau"],
        prune_mode=prune["mode"], method=method, ig_steps=ig_steps, max_nodes=prune["max_nodes"],
        n_prompt_nodes=n_prompt_nodes, late_layers=base_graph["late_layers"], early_layers=base_graph["early_layers"],
        ablate_top=ablate_top, counterfactual=patching["counterfactual"] if patching else None)

    rows = []
    for r in base_graph["nodes"]:
        node = _key(r)
        base_i, sft_i = float(r["influence"]), float(sft_attr.influence[node])
        rows.append({"id": r["id"], "token": r["token"], "layer": node[0], "position": node[1], "neuron": node[2],
                     "origin": r["origin"], "base_influence": base_i, "sft_influence": sft_i,
                     "change": sft_i - base_i, "abs_change": abs(sft_i) - abs(base_i),
                     "base_rank": abs_rank(base_attr.influence, node), "sft_rank": abs_rank(sft_attr.influence, node),
                     "base_activation": float(r["activation"]), "sft_activation": float(sft_attr.activations[node])})
    rows.sort(key=lambda r: r["base_influence"])  # the most wrong-pushing first

    base_nodes = {_key(r) for r in base_graph["nodes"]}
    union = sorted(base_nodes | {_key(r) for r in sft_graph["nodes"]})
    rho = A.rank_agreement([float(base_attr.influence[n]) for n in union], [float(sft_attr.influence[n]) for n in union])
    new = [r for r in sorted(sft_graph["nodes"], key=lambda r: -abs(r["influence"])) if _key(r) not in base_nodes]
    new_rows = [{"id": r["id"], "token": r["token"], "origin": r["origin"], "sft_influence": r["influence"],
                 "base_influence": float(base_attr.influence[_key(r)]),
                 "sft_rank": abs_rank(sft_attr.influence, _key(r)), "base_rank": abs_rank(base_attr.influence, _key(r))}
                for r in new[:new_top]]
    diff = {
        "version": VERSION, "prompt": base_graph["prompt"], "format": base_graph["format"], "text": base_graph["text"],
        "contrastive": base_graph["contrastive"], "metric": base_graph["metric"], "method": method,
        "logit_diff": {"base": base_attr.metric, "base_graph": base_graph["logit_diff"], "sft": sft_attr.metric,
                       "change": sft_attr.metric - base_attr.metric},
        "top_wrong": group_change(rows, top_k, -1), "top_right": group_change(rows, top_k, +1),
        "spearman_union": rho, "union_nodes": len(union),
        "total_abs_influence": {"base": float(base_attr.influence.abs().sum()),
                                "sft": float(sft_attr.influence.abs().sum())},
        "checks": {"base_ablation_spearman": base_graph["ablation"]["spearman"],
                   "sft_ablation_spearman": sft_graph["ablation"]["spearman"],
                   "base_patching_spearman": patching["spearman"] if patching else None,
                   "sft_patching_spearman": sft_graph["patching"]["spearman"] if patching else None},
        "nodes": rows, "new_nodes": new_rows, "new_nodes_total": len(new),
    }
    return diff, sft_graph


# ---------------------------------------------------------------------------- persistence

def render_markdown(diff: dict) -> str:
    m, w, r = diff["logit_diff"], diff["top_wrong"], diff["top_right"]

    def f(x) -> str:
        return "n/a" if x is None else f"{x:+.3f}" if isinstance(x, float) else str(x)

    lines = [f"# Attribution after SFT: {diff['prompt']!r}", "",
             f"{diff['metric']} ({diff['format']}, {diff['method']}): base {m['base']:+.3f} -> SFT {m['sft']:+.3f} "
             f"(change {m['change']:+.3f})", "",
             f"- top {w['k']} wrong-pushing base nodes: {w['lost_abs_influence']} lost |influence| "
             f"(by {w['lost_total']:.3f} in total); |influence| {w['base_abs_total']:.3f} -> {w['sft_abs_total']:.3f}; "
             f"{w['still_same_side']} still push toward the wrong token",
             f"- top {r['k']} right-pushing base nodes: {r['lost_abs_influence']} lost |influence|; "
             f"|influence| {r['base_abs_total']:.3f} -> {r['sft_abs_total']:.3f}",
             f"- Spearman base vs SFT influence over {diff['union_nodes']} nodes (union): {f(diff['spearman_union'])}",
             f"- new top nodes in the SFT graph: {diff['new_nodes_total']}", "",
             "| node | token | base infl. | SFT infl. | change | base rank | SFT rank |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {x['id']} | {x['token']!r} | {x['base_influence']:+.4f} | {x['sft_influence']:+.4f} | "
              f"{x['change']:+.4f} | {x['base_rank']} | {x['sft_rank']} |" for x in diff["nodes"]]
    if diff["new_nodes"]:
        lines += ["", "New in the SFT graph:", "", "| node | token | SFT infl. | base infl. | SFT rank | base rank |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {x['id']} | {x['token']!r} | {x['sft_influence']:+.4f} | {x['base_influence']:+.4f} | "
                  f"{x['sft_rank']} | {x['base_rank']} |" for x in diff["new_nodes"]]
    return "\n".join(lines) + "\n"


def write_diff(diff: dict, sft_graph: dict, out_dir: Path | str) -> dict[str, str]:
    """diff.json, diff.md and the SFT graph (sft/graph.json, .png, .html) under out_dir, each atomically."""
    out_dir = Path(out_dir)
    files = {"diff": str(write_json(out_dir / "diff.json", diff)),
             "markdown": str(write_text(out_dir / "diff.md", render_markdown(diff)))}
    files.update({f"sft_{k}": v for k, v in write_graph(sft_graph, out_dir / "sft").items()})
    return files

