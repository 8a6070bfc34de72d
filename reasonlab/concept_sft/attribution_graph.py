"""An attribution graph for one prompt: build it (math in `attribution.py`), save it, draw it.

    graph = attribution_graph(model, tokenizer, "The primary hormone regulating blood pressure is",
                              contrastive=(" Ald", " Ren"), tau=0.05)   # the concept-SFT study's analyze.py call
    write_graph(graph, "outputs/my_analysis")   # graph.json, graph.png, graph.html

Nodes are named as the concept-SFT study names them, `L22/N13255`, plus `@pos` for the position (`L22/N13255@9`);
each carries layer, position, token, neuron, activation, influence and where it came from ("tau": kept by
pruning; "prompt": one of the top `n_prompt_nodes` nodes at the user's own tokens in middle layers,
which the concept-SFT study's stage 4 looks for and which pruning alone may drown in template-position nodes).
Edges: {source, target, weight}; the target `logit_diff` is the metric itself (weight = influence).
The ablation check zero-ablates each of the top `ablate_top` nodes and compares the real change of the
logit difference with the predicted one (-influence): Spearman's rho is the graph's credibility figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from reasonlab.concept_sft import attribution as A
from reasonlab.errors import ReasonlabError
from reasonlab.concept_sft.graph_render import LOGIT, render_html, render_png
from reasonlab.io import atomic_path, write_json, write_text
from reasonlab.prompt_format import adds_special_tokens, build_prompt
from reasonlab.tokens import token_text

VERSION = "2"  # 2: a layout without overlapping labels, the strongest edges only, hover cards


def node_id(layer: int, neuron: int, position: int | None = None) -> str:
    return f"L{layer}/N{neuron}" + ("" if position is None else f"@{position}")


def prompt_positions(tokenizer, text: str, prompt: str, n_tokens: int) -> list[int]:
    """Positions of the tokens that come from the user's prompt (not the template, not the answer prefix)."""
    start = text.rfind(prompt)
    if start < 0 or not getattr(tokenizer, "is_fast", False):
        return list(range(n_tokens - 1))
    enc = tokenizer(text, add_special_tokens=adds_special_tokens(tokenizer, text), return_offsets_mapping=True)
    end = start + len(prompt)
    return [i for i, (s, e) in enumerate(enc["offset_mapping"])
            if e > s and s >= start and e <= end and i < n_tokens - 1]


def output_tokens(model, tokenizer, layer: int, neurons: list[int], k: int = 5) -> list[dict]:
    """Logit lens of each neuron's output direction: the tokens its down-projection column writes most (and least)."""
    proj = A.down_projections(model)[layer]
    unembed = model.get_output_embeddings().weight  # [vocab, d_model]
    with torch.no_grad():
        cols = proj.weight[:, neurons].to(unembed.dtype)  # [d_model, n]
        scores = (unembed @ cols).float().T  # [n, vocab]
        up = torch.topk(scores, k, dim=-1).indices
        down = torch.topk(-scores, k, dim=-1).indices
    return [{"promotes": [token_text(tokenizer, int(i)) for i in up[j]],
             "suppresses": [token_text(tokenizer, int(i)) for i in down[j]],
             "promotes_ids": [int(i) for i in up[j]], "suppresses_ids": [int(i) for i in down[j]]}
            for j in range(len(neurons))]


def case_contrastive(tokenizer, case: dict, fmt: str) -> tuple[str, str]:
    """(correct, wrong) tokens for a target case of the top-k filter, as they would start the answer in `fmt`.

    Completion format: the filter's own tokens (' al', ' ren'). Chat format, after " Answer:": the answer
    word and the wrong token capitalised (' Ald', ' Ren', the concept-SFT study's pair), each kept only if one token.
    """
    correct, wrong = case["correct_token"], case["wrong_token"]
    if fmt != "chat":
        return correct, wrong

    def first_piece(word: str, fallback: str) -> str:
        word = word.strip()
        ids = tokenizer.encode(" " + word[:1].upper() + word[1:], add_special_tokens=False)
        return token_text(tokenizer, ids[0]) if ids and token_text(tokenizer, ids[0]).strip() else fallback

    correct = first_piece(case["answer"].split()[0], correct)
    wrong = first_piece(wrong, wrong)
    return (correct, wrong) if correct != wrong else (case["correct_token"], case["wrong_token"])


def attribution_graph(model, tokenizer, prompt: str, contrastive: tuple[str, str] | list[str], *, fmt: str = "chat",
                      system_prompt: str | None = "", answer_prefix: str = " Answer:", tau: float = 0.05,
                      prune_mode: str = A.PRUNE_MODE, method: str = "act_x_grad", ig_steps: int = 8, max_nodes: int = 30,
                      n_prompt_nodes: int = 8, late_layers: int | None = None, early_layers: int | None = None,
                      ablate_top: int = 20, counterfactual: str | None = None) -> dict[str, Any]:
    """Attribution, pruning, edges and the ablation check for one prompt, as a plain-data graph.

    With `counterfactual` (a prompt of the same token length in the same format, whose answer is the other
    side of the contrast), a second check: the `patching` section patches each checked node's activation
    from the counterfactual run into the clean one (see `attribution.patching_effects`).
    """
    A.check_tau(tau)
    if method not in A.METHODS:
        raise ReasonlabError(f"unknown attribution method {method!r}: use one of {A.METHODS}")
    if prune_mode not in A.PRUNE_MODES:
        raise ReasonlabError(f"unknown pruning mode {prune_mode!r}: use one of {A.PRUNE_MODES}")
    a, b = A.contrastive_ids(tokenizer, contrastive)
    if fmt == "chat":
        A.check_answer_prefix(tokenizer, build_prompt(tokenizer, prompt, "chat", system_prompt, ""), answer_prefix)
    text = build_prompt(tokenizer, prompt, fmt, system_prompt, answer_prefix)
    device = next(model.parameters()).device
    ids = A.encode_prompt(tokenizer, text, device)  # [1, pos]
    tokens = A.token_texts(tokenizer, ids)
    cf_ids = encode_counterfactual(tokenizer, counterfactual, ids, prompt, fmt, system_prompt, answer_prefix)

    attr = A.attribute(model, ids, a, b, method, ig_steps)
    n_layers, n_pos, d_mlp = attr.influence.shape
    late = late_layers if late_layers is not None else max(1, round(0.15 * n_layers))
    early = early_layers if early_layers is not None else round(0.15 * n_layers)  # token-level layers
    pruned = A.prune_nodes(attr.influence, tau, prune_mode, max_nodes)
    positions = prompt_positions(tokenizer, text, prompt, n_pos)
    nodes, origin = with_prompt_nodes(list(pruned.nodes), attr.influence, positions, early, n_layers - late,
                                      n_prompt_nodes)

    edges = A.compute_edges(model, ids, nodes, a, b)  # [n, n]
    order = sorted(range(len(nodes)), key=lambda i: -abs(float(attr.influence[nodes[i]])))
    checked = [nodes[i] for i in order[:ablate_top]]
    clean, deltas = A.ablation_effects(model, ids, checked, a, b)
    predicted = [-float(attr.influence[n]) for n in checked]
    rho = A.rank_agreement(predicted, deltas)
    patching = None if cf_ids is None else patching_section(model, tokenizer, attr, ids, cf_ids, checked, a, b,
                                                            counterfactual)

    node_rows = describe_nodes(model, tokenizer, attr, nodes, origin, tokens, a, b)
    edge_rows = [{"source": node_rows[i]["id"], "target": node_rows[j]["id"], "weight": float(edges[i, j])}
                 for i in range(len(nodes)) for j in range(len(nodes)) if float(edges[i, j]) != 0.0]
    edge_rows += [{"source": r["id"], "target": LOGIT, "weight": r["influence"]} for r in node_rows]
    graph = {
        "version": VERSION, "prompt": prompt, "format": fmt, "system_prompt": system_prompt,
        "answer_prefix": answer_prefix, "text": text, "tokens": tokens, "contrastive": list(contrastive),
        "contrastive_ids": [a, b], "metric": f"logit({contrastive[0]!r}) - logit({contrastive[1]!r})",
        "logit_diff": attr.metric, "method": method, "n_layers": n_layers, "d_mlp": d_mlp,
        "prompt_positions": positions, "late_layers": late, "early_layers": early,
        "prune": {"tau": tau, "mode": prune_mode, "max_nodes": max_nodes, "threshold": pruned.threshold,
                  "kept": len(pruned.nodes), "capped": pruned.capped, "total_abs_influence": pruned.total_abs,
                  "kept_abs_influence": pruned.kept_abs},
        "nodes": node_rows, "edges": edge_rows,
        "ablation": {"method": "zero-ablate one neuron at one position", "clean_logit_diff": clean,
                     "nodes": [node_id(l, n, p) for l, p, n in checked], "predicted": predicted, "real": deltas,
                     "spearman": rho},
    }
    if patching is not None:
        graph["patching"] = patching
    return graph


def encode_counterfactual(tokenizer, counterfactual: str | None, ids: torch.Tensor, prompt: str, fmt: str,
                          system_prompt: str | None, answer_prefix: str) -> torch.Tensor | None:
    """The counterfactual prompt's ids [1, pos], checked to be as long as the prompt's (None without one)."""
    if counterfactual is None:
        return None
    if not isinstance(counterfactual, str) or not counterfactual.strip():
        raise ReasonlabError(f"the counterfactual prompt must be a non-empty string, got {counterfactual!r}")
    cf_ids = A.encode_prompt(tokenizer, build_prompt(tokenizer, counterfactual, fmt, system_prompt, answer_prefix),
                             ids.device)
    if cf_ids.shape != ids.shape:
        raise ReasonlabError(f"the counterfactual prompt {counterfactual!r} is {cf_ids.shape[1]} tokens long in "
                             f"{fmt} format and the prompt {prompt!r} is {ids.shape[1]}: activation patching needs "
                             "the same length (reword the counterfactual)")
    return cf_ids


def with_prompt_nodes(nodes: list[tuple], influence: torch.Tensor, positions: list[int], first_layer: int,
                      end_layer: int, n_prompt_nodes: int) -> tuple[list[tuple], dict[tuple, str]]:
    """The pruned nodes plus the top `n_prompt_nodes` at the prompt's own tokens in layers [first, end): the
    upstream intermediate concepts. influence: [layers, pos, d_mlp]; returns (nodes, node -> "tau" | "prompt")."""
    origin = {n: "tau" for n in nodes}
    if n_prompt_nodes and positions and end_layer > first_layer:
        mask = torch.zeros_like(influence, dtype=torch.bool)
        mask[first_layer:end_layer, positions, :] = True
        scores = torch.where(mask, influence.abs(), torch.zeros(()))
        for idx in torch.topk(scores.flatten(), n_prompt_nodes).indices:
            node = tuple(int(i) for i in torch.unravel_index(idx, scores.shape))
            if scores[node] > 0 and node not in origin:
                nodes.append(node)
                origin[node] = "prompt"
    return nodes, origin


def patching_section(model, tokenizer, attr, ids: torch.Tensor, cf_ids: torch.Tensor, checked: list[tuple],
                     a: int, b: int, counterfactual: str) -> dict[str, Any]:
    """Activation patching of each checked node from the counterfactual run, against the attribution's estimate."""
    n_pos = ids.shape[1]
    _, patch_pred, patch_real = A.patching_effects(model, ids, cf_ids, checked, a, b, gradients=attr.gradients)
    # nodes before the first differing token see the same activations in both runs (effects exactly 0):
    # the agreement over the nodes at or after it is reported apart, free of those ties
    first = int((ids[0] != cf_ids[0]).nonzero()[0, 0]) if not torch.equal(ids, cf_ids) else n_pos
    with torch.no_grad():
        cf_metric = float(A.logit_diff(model(cf_ids).logits, a, b)[0])  # m on the counterfactual itself
    after = [i for i, (_, p, _) in enumerate(checked) if p >= first]
    return {"method": "patch one neuron at one position from the counterfactual run",
            "counterfactual": counterfactual, "counterfactual_tokens": A.token_texts(tokenizer, cf_ids),
            "counterfactual_logit_diff": cf_metric,
            "nodes": [node_id(l, n, p) for l, p, n in checked], "predicted": patch_pred, "real": patch_real,
            "spearman": A.rank_agreement(patch_pred, patch_real),
            "spearman_vs_influence": A.rank_agreement([float(attr.influence[n]) for n in checked], patch_real),
            "first_changed_position": first, "downstream_nodes": len(after),
            "spearman_downstream": A.rank_agreement([patch_pred[i] for i in after], [patch_real[i] for i in after]),
            "spearman_vs_influence_downstream": A.rank_agreement(
                [float(attr.influence[checked[i]]) for i in after], [patch_real[i] for i in after])}


def describe_nodes(model, tokenizer, attr, nodes: list[tuple], origin: dict, tokens: list[str], a: int,
                   b: int) -> list[dict]:
    """One row per node (layer, position, neuron): its activation, gradient, influence and what it writes."""
    lens: dict[tuple[int, int], dict] = {}
    for layer in sorted({l for l, _, _ in nodes}):
        neurons = sorted({n for l, _, n in nodes if l == layer})
        lens.update({(layer, n): o for n, o in zip(neurons, output_tokens(model, tokenizer, layer, neurons))})
    rows = []
    for (l, p, n) in nodes:
        out = lens[(l, n)]
        rows.append({"id": node_id(l, n, p), "name": node_id(l, n), "layer": l, "position": p, "token": tokens[p],
                     "neuron": n, "hook": A.HOOK.format(layer=l), "activation": float(attr.activations[l, p, n]),
                     "gradient": float(attr.gradients[l, p, n]), "influence": float(attr.influence[l, p, n]),
                     "origin": origin[(l, p, n)], "promotes": out["promotes"], "suppresses": out["suppresses"],
                     "writes_contrastive": a in out["promotes_ids"] + out["suppresses_ids"]
                     or b in out["promotes_ids"] + out["suppresses_ids"]})
    return rows


# ---------------------------------------------------------------------------- persistence and pictures

def write_graph(graph: dict, out_dir: Path | str) -> dict[str, str]:
    """graph.json, graph.png and graph.html under out_dir (each written atomically); returns their paths."""
    out_dir = Path(out_dir)
    files = {"json": out_dir / "graph.json", "png": out_dir / "graph.png", "html": out_dir / "graph.html"}
    write_json(files["json"], graph)
    with atomic_path(files["png"]) as tmp:
        render_png(graph, tmp)
    write_text(files["html"], render_html(graph))
    return {k: str(v) for k, v in files.items()}


def read_graph(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ReasonlabError(f"no attribution graph at {path}")
    return json.loads(path.read_text())
