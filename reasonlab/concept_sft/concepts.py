"""Stage 4: rank the graph's neurons as intermediate-concept candidates and describe them.

The criteria, each a check with a reason when it fails:
    upstream      not in the last `late_layers` layers (they *are* the output decision), and not in the
                  first `early_layers` (token-level detectors: lexical, not conceptual)
    intermediate  at one of the user's prompt tokens, not the final position or the chat template
    conceptual    not lexical: neither contrastive token is among the tokens its output direction
                  writes most or least (logit lens of its down-projection column)
Candidates pass all three and are ranked by |influence|. Each is described by its top-activating
contexts over a reference corpus of real text (by default data/reference_corpus.jsonl: Wikipedia intros,
PubMed abstracts and clinical facts, see data/reference_corpus.md), and optionally by an
LLM-written label (`label_messages` + the project's LLM client; off unless asked, like `--no-llm`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from reasonlab.concept_sft import attribution as A
from reasonlab import paths
from reasonlab.errors import ReasonlabError

VERSION = "1"
DEFAULT_CORPUS = "data/reference_corpus.jsonl"


def rank_candidates(graph: dict, n: int = 5) -> dict[str, list[dict]]:
    """{"candidates": top n passing every criterion, "rejected": the other nodes with their reasons}."""
    last = len(graph["tokens"]) - 1
    prompt_pos = set(graph["prompt_positions"])
    late_from = graph["n_layers"] - graph["late_layers"]
    good, rejected = [], []
    for node in sorted(graph["nodes"], key=lambda r: -abs(r["influence"])):
        reasons = []
        if node["layer"] >= late_from:
            reasons.append(f"late layer (L{node['layer']} of {graph['n_layers']}: the output decision)")
        if node["layer"] < graph.get("early_layers", 0):
            reasons.append(f"early layer (L{node['layer']}: token-level)")
        if node["position"] == last:
            reasons.append(f"final position {node['token']!r}")
        elif node["position"] not in prompt_pos:
            reasons.append(f"template position {node['token']!r}")
        if node["writes_contrastive"]:
            reasons.append("lexical: its output direction writes one of the contrastive tokens")
        row = {k: node[k] for k in ("id", "name", "layer", "position", "token", "neuron", "activation", "influence",
                                    "promotes", "suppresses")}
        (rejected if reasons else good).append({**row, "reasons": reasons})
    return {"candidates": good[:n], "rejected": rejected}


def default_corpus() -> Path:
    """The reference corpus that ships with the repo (general facts and medicine)."""
    return paths.project_root() / DEFAULT_CORPUS


def load_corpus(path: Path | str | None = None, n: int = 64) -> list[str]:
    """Reference texts: PubMedQA contexts (JSON dict of {CONTEXTS: [...]}), a JSON list of strings, or a .txt/.jsonl."""
    path = Path(path) if path else default_corpus()
    if not path.is_file():
        raise ReasonlabError(f"reference corpus {path} not found (pass a PubMedQA ori_pqal.json or a text file)")
    if path.suffix == ".txt":
        texts = [p.strip() for p in path.read_text().split("\n\n") if p.strip()]
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        texts = [r if isinstance(r, str) else r.get("text") or " ".join(r.get("CONTEXTS", [])) for r in rows]
    else:
        data = json.loads(path.read_text())
        rows = data.values() if isinstance(data, dict) else data
        texts = [r if isinstance(r, str) else " ".join(r.get("CONTEXTS", [])) or r.get("text", "") for r in rows]
    texts = [t for t in texts if t]
    if not texts:
        raise ReasonlabError(f"reference corpus {path} holds no texts")
    return texts[:n]


def top_activating_contexts(model, tokenizer, texts: list[str], neurons: list[tuple[int, int]], k: int = 5,
                            max_tokens: int = 96, window: int = 12, batch_size: int = 8) -> list[list[dict]]:
    """For each (layer, neuron): the k corpus tokens where it fires most, with `window` tokens of context before.

    Returns per neuron [{activation, text (the firing token in [[ ]]), doc, position}], highest first.
    """
    if not neurons:
        return []
    layers = {l for l, _ in neurons}
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    best: list[list[tuple[float, int, int]]] = [[] for _ in neurons]  # (activation, doc, position)
    encoded = [tokenizer.encode(t, add_special_tokens=False)[:max_tokens] for t in texts]
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        width = max(len(c) for c in chunk)
        ids = torch.tensor([c + [pad] * (width - len(c)) for c in chunk], device=device)  # [batch, pos] right-padded
        mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk], device=device)
        with torch.no_grad(), A.mlp_post_hooks(model, layers=layers) as acts:
            model(input_ids=ids, attention_mask=mask)
        for j, (layer, neuron) in enumerate(neurons):
            vals = acts[layer][:, :, neuron].float().masked_fill(mask == 0, float("-inf")).cpu()  # [batch, pos]
            for row in range(vals.shape[0]):
                top = torch.topk(vals[row], min(k, len(chunk[row])))
                best[j] += [(float(v), start + row, int(p)) for v, p in zip(top.values, top.indices)]
            best[j] = sorted(best[j], reverse=True)[:k]
    out = []
    for j in range(len(neurons)):
        rows = []
        for act, doc, pos in best[j]:
            toks = encoded[doc]
            before = tokenizer.decode(toks[max(0, pos - window):pos])
            rows.append({"activation": act, "doc": doc, "position": pos,
                         "text": f"{before}[[{tokenizer.decode(toks[pos:pos + 1])}]]{tokenizer.decode(toks[pos + 1:pos + 4])}"})
        out.append(rows)
    return out


def label_messages(candidate: dict, contexts: list[dict]) -> list[dict]:
    """Chat messages asking an LLM for a 2-5 word concept label of one neuron."""
    shown = "\n".join(f"- ({c['activation']:.2f}) {c['text']}" for c in contexts)
    return [
        {"role": "system", "content": "You label neurons of a language model. Reply with a 2-5 word concept label only."},
        {"role": "user", "content": (
            f"Neuron {candidate['name']} fires most on the token in [[ ]] in these contexts:\n{shown}\n"
            f"Its output direction promotes {candidate['promotes']} and suppresses {candidate['suppresses']}.\n"
            "What concept does it represent?")},
    ]


def describe(candidates: list[dict], contexts: list[list[dict]], labels: list[str | None] | None = None) -> list[dict]:
    labels = labels or [None] * len(candidates)
    return [{**c, "contexts": ctx, "label": lab} for c, ctx, lab in zip(candidates, contexts, labels)]


def candidates_markdown(graph: dict, described: list[dict]) -> str:
    """The researcher's view of stage 4: the candidates, why, and where they fire."""
    lines = [f"### Concept candidates for {graph['prompt']!r}",
             f"{graph['metric']} = {graph['logit_diff']:+.3f}; positive influence favours {graph['contrastive'][0]!r}.",
             "", "| # | neuron | token | influence | label | writes | top context |", "|---|---|---|---|---|---|---|"]
    if described and not any(c.get("label") for c in described):
        lines[2:2] = ["Labels: none (an LLM names each candidate with --label-concepts; read `writes` and the "
                      "contexts meanwhile).", ""]
    for i, c in enumerate(described, 1):
        ctx = (c["contexts"][0]["text"].replace("|", "\\|").replace("\n", " ") if c["contexts"]
               else "(no corpus context activates it)")
        lines.append(f"| {i} | `{c['id']}` | {c['token']!r} | {c['influence']:+.3f} | {c.get('label') or '—'} | "
                     f"{', '.join(map(repr, c['promotes'][:3]))} | {ctx} |")
    if not described:
        lines.append("| - | no node passes the criteria (upstream, prompt position, not lexical) | | | | | |")
    return "\n".join(lines) + "\n"


def summary(described: list[dict]) -> list[dict[str, Any]]:
    return [{"id": c["id"], "token": c["token"], "influence": c["influence"], "label": c.get("label"),
             "contexts": [x["text"] for x in c["contexts"][:3]]} for c in described]
