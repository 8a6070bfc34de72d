"""Contrastive attribution of MLP neurons: why does the model prefer token B over token A?

The metric is the logit difference at the last position, m = logit(A) - logit(B) (the concept-SFT study's
`--contrastive " Ald" " Ren"`: positive influence pushes toward A, the correct token; negative toward B).
A *node* is one MLP neuron at one position: the input of the down-projection, hooked as
`blocks.{l}.mlp.hook_post` (Llama/Qwen2/Gemma/Gemma3 `mlp.down_proj`, Phi `mlp.fc2`).

    influence (act x grad)   I[l, p, n] = a[l, p, n] * dm/da[l, p, n]          one forward + one backward
    integrated gradients     I[l, p, n] = a * mean_k dm/da(alpha_k * a_l)      per layer, `steps` alphas batched
    edge u -> d              W[u, d]    = a_u * d(a_d * g_d)/da_u              g_d = dm/da_d held fixed
    edge d -> logit diff     W[d, m]    = I[d]

An edge is the first-order share of the downstream node's influence that flows through the upstream
node, over every path (total effect, not only the direct path): one backward per kept downstream node.

Pruning (`prune_nodes`), with tau in (0, 1):
    "max"         keep a node when |I| >= tau * max |I| (the default everywhere: parameters, task, CLI)
    "total"       keep a node when |I| >= tau * sum |I| over all nodes (the concept-SFT study's `--tau`)
    "cumulative"  keep the fewest top nodes whose |I| sum reaches (1 - tau) of the total (circuit-tracer's)
then at most `max_nodes`, largest |I| first. Pure functions on tensors; persistence is in
`attribution_graph.py`, and nothing here imports Prefect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from reasonlab.errors import ReasonlabError
from reasonlab.models import decoder_layers
from reasonlab.prompt_format import prompt_ids
from reasonlab.tokens import token_text

VERSION = "1"
HOOK = "blocks.{layer}.mlp.hook_post"  # the input of layer {layer}'s MLP down-projection
METHODS = ("act_x_grad", "integrated_gradients")
PRUNE_MODES = ("total", "max", "cumulative")
PRUNE_MODE = "max"


# ---------------------------------------------------------------------------- model plumbing

def down_projections(model) -> list[torch.nn.Module]:
    """Per layer, the MLP's down-projection (its input is the neuron activation vector)."""
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        mlp = getattr(layer, "mlp", None)
        proj = next((getattr(mlp, n) for n in ("down_proj", "fc2", "c_proj", "dense_4h_to_h") if hasattr(mlp, n)),
                    None)
        if proj is None:
            raise ReasonlabError(f"layer {i} of {type(model).__name__} has no MLP down-projection "
                                 "(expected mlp.down_proj or mlp.fc2)")
        out.append(proj)
    return out


Edit = Callable[[int, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def mlp_post_hooks(model, edit: Edit | None = None, layers: set[int] | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Capture (and optionally replace) `blocks.{l}.mlp.hook_post` for every layer (or `layers`).

    Yields a dict layer -> activation [batch, pos, d_mlp], filled during each forward.
    `edit(layer, x)` returns the tensor the down-projection sees instead of x (the captured one).
    """
    acts: dict[int, torch.Tensor] = {}
    handles = []

    def make(layer: int):
        def hook(module, args):
            x = args[0]
            if edit is not None:
                x = edit(layer, x)
            acts[layer] = x
            return (x, *args[1:])
        return hook

    for layer, proj in enumerate(down_projections(model)):
        if layers is None or layer in layers:
            handles.append(proj.register_forward_pre_hook(make(layer)))
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def logit_diff(logits: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """m = logit(a) - logit(b) at the last position. logits [batch, pos, vocab] -> [batch]."""
    return logits[:, -1, a] - logits[:, -1, b]


# ---------------------------------------------------------------------------- inputs

def check_tau(tau: float) -> float:
    if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not 0.0 < float(tau) < 1.0:
        raise ReasonlabError(f"tau must be a number in (0, 1) (a fraction of |influence|, see the pruning mode), got {tau!r}")
    return float(tau)


def contrastive_ids(tokenizer, tokens: tuple[str, str] | list[str]) -> tuple[int, int]:
    """The ids of the two contrastive tokens; each must be exactly one token."""
    if len(tokens) != 2:
        raise ReasonlabError(f"contrastive needs exactly two tokens (correct, wrong), got {list(tokens)!r}")
    ids = []
    for tok in tokens:
        if not isinstance(tok, str) or not tok:
            raise ReasonlabError(f"contrastive token {tok!r} must be a non-empty string")
        encoded = tokenizer.encode(tok, add_special_tokens=False)
        if len(encoded) != 1 and tok.startswith(" "):  # sentencepiece: ' dog' is the vocabulary piece '▁dog'
            piece = tokenizer.convert_tokens_to_ids("▁" + tok[1:])
            if isinstance(piece, int) and piece != tokenizer.unk_token_id:
                encoded = [piece]
        if len(encoded) != 1:
            pieces = [token_text(tokenizer, i) for i in encoded]
            raise ReasonlabError(f"contrastive token {tok!r} is not one token: it becomes {pieces!r}")
        ids.append(encoded[0])
    if ids[0] == ids[1]:
        raise ReasonlabError(f"the two contrastive tokens {list(tokens)!r} are the same token")
    return ids[0], ids[1]


def check_answer_prefix(tokenizer, template_text: str, answer_prefix: str) -> None:
    """The answer prefix must survive tokenization: the prompt's tokens end with the prefix's tokens."""
    if not answer_prefix:
        return
    special = [t for t in getattr(tokenizer, "all_special_tokens", []) if t and t in answer_prefix]
    if special:
        raise ReasonlabError(f"the answer prefix {answer_prefix!r} contains the special token {special[0]!r}: "
                             "the chat template cannot take it inside the assistant turn")
    full = tokenizer.encode(template_text + answer_prefix, add_special_tokens=False)
    alone = tokenizer.encode(template_text, add_special_tokens=False)
    if full[: len(alone)] != alone or not tokenizer.decode(full[len(alone):]).endswith(answer_prefix.strip()):
        raise ReasonlabError(f"the answer prefix {answer_prefix!r} does not tokenize cleanly after the chat template: "
                             "it merges with the template's last token; start it with a space or a newline")


def encode_prompt(tokenizer, text: str, device) -> torch.Tensor:
    """input_ids [1, pos] of a fully built prompt: `prompt_format.prompt_ids`, the ids the filter and the
    evaluation score (one BOS, whether or not the chat template wrote it)."""
    ids = prompt_ids(tokenizer, text)
    if not ids:
        raise ReasonlabError("the prompt is empty after tokenization")
    return torch.tensor([ids], device=device)


# ---------------------------------------------------------------------------- influence

@dataclass
class Attribution:
    """Influence of every neuron at every position on m. Tensors [layer, pos, d_mlp] on CPU, float32."""

    activations: torch.Tensor
    gradients: torch.Tensor  # dm/da at the clean activations
    influence: torch.Tensor  # act x grad, or integrated gradients
    metric: float  # m on the clean prompt
    method: str


def act_x_grad(model, input_ids: torch.Tensor, a: int, b: int) -> Attribution:
    """I = a * dm/da for every neuron at every position: one forward, one backward (no parameter grads)."""
    with torch.enable_grad(), mlp_post_hooks(model) as acts:
        embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)  # [1, pos, d_model]
        m = logit_diff(model(inputs_embeds=embeds).logits, a, b)[0]
        layers = sorted(acts)
        grads = torch.autograd.grad(m, [acts[l] for l in layers])
    A = torch.stack([acts[l][0].detach().float().cpu() for l in layers])  # [L, pos, d_mlp]
    G = torch.stack([g[0].detach().float().cpu() for g in grads])
    return Attribution(A, G, A * G, float(m.detach()), "act_x_grad")


def integrated_gradients(model, input_ids: torch.Tensor, a: int, b: int, steps: int = 8) -> Attribution:
    """Per layer l: I = a_l * mean_k dm/da_l at alpha_k * a_l (midpoint Riemann sum, alphas batched).

    Only layer l is scaled (baseline: its neurons all zero); the rest of the network runs as usual, so
    sum_n I[l, :, n] ~ m(clean) - m(layer l's neurons zeroed) (completeness, up to the Riemann error).
    Cost: one forward+backward of batch `steps` per layer.
    """
    if steps < 1:
        raise ReasonlabError(f"integrated gradients needs steps >= 1, got {steps}")
    clean = act_x_grad(model, input_ids, a, b)
    device = _device(model)
    alphas = (torch.arange(steps, dtype=torch.float32, device=device) + 0.5) / steps  # [steps]
    batch = input_ids.expand(steps, -1)
    influence = torch.zeros_like(clean.activations)
    for layer in range(clean.activations.shape[0]):
        def scale(l: int, x: torch.Tensor, layer=layer) -> torch.Tensor:
            if l != layer:
                return x
            x = x.detach() * alphas.to(x.dtype)[:, None, None]  # [steps, pos, d_mlp]
            return x.requires_grad_(True)

        with torch.enable_grad(), mlp_post_hooks(model, edit=scale, layers={layer}) as acts:
            m = logit_diff(model(batch).logits, a, b).sum()
            [g] = torch.autograd.grad(m, [acts[layer]])
        influence[layer] = clean.activations[layer] * g.float().mean(0).cpu()
    return Attribution(clean.activations, clean.gradients, influence, clean.metric, "integrated_gradients")


def attribute(model, input_ids: torch.Tensor, a: int, b: int, method: str = "act_x_grad", steps: int = 8) -> Attribution:
    if method == "act_x_grad":
        return act_x_grad(model, input_ids, a, b)
    if method == "integrated_gradients":
        return integrated_gradients(model, input_ids, a, b, steps)
    raise ReasonlabError(f"unknown attribution method {method!r}: use one of {METHODS}")


# ---------------------------------------------------------------------------- pruning

Node = tuple[int, int, int]  # (layer, position, neuron)


@dataclass
class Pruned:
    nodes: list[Node]  # kept, largest |influence| first
    threshold: float  # the |influence| a node needed (before the max_nodes cap)
    total_abs: float  # sum |I| over all nodes
    kept_abs: float  # sum |I| over the kept nodes
    capped: bool  # True when max_nodes removed nodes that passed the threshold


def prune_nodes(influence: torch.Tensor, tau: float, mode: str = PRUNE_MODE, max_nodes: int | None = None) -> Pruned:
    """Keep the nodes whose |influence| passes tau (see the module docstring), then at most max_nodes."""
    tau = check_tau(tau)
    if mode not in PRUNE_MODES:
        raise ReasonlabError(f"unknown pruning mode {mode!r}: use one of {PRUNE_MODES}")
    if max_nodes is not None and max_nodes < 1:
        raise ReasonlabError(f"max_nodes must be >= 1, got {max_nodes}")
    flat = influence.abs().flatten()
    total = float(flat.sum())
    values, order = torch.sort(flat, descending=True)
    if total == 0.0:
        n, threshold = 0, 0.0
    elif mode == "total":
        threshold = tau * total
        n = int((values >= threshold).sum())
    elif mode == "max":
        threshold = tau * float(values[0])
        n = int((values >= threshold).sum())
    else:  # cumulative: fewest nodes reaching (1 - tau) of the total
        cum = torch.cumsum(values.double(), 0)
        n = int(torch.searchsorted(cum, torch.tensor((1.0 - tau) * total, dtype=torch.float64))) + 1
        n = min(n, len(values))
        threshold = float(values[n - 1])
    capped = max_nodes is not None and n > max_nodes
    n = min(n, max_nodes) if max_nodes is not None else n
    shape = influence.shape
    nodes = [tuple(int(i) for i in torch.unravel_index(idx, shape)) for idx in order[:n]]
    return Pruned(nodes, threshold, total, float(values[:n].sum()), capped)


# ---------------------------------------------------------------------------- edges

def compute_edges(model, input_ids: torch.Tensor, nodes: list[Node], a: int, b: int,
                  batched: bool = True) -> torch.Tensor:
    """W [n, n]: W[u, d] = a_u * d(a_d * g_d)/da_u for kept u upstream of kept d (0 elsewhere).

    One forward, one backward for g = dm/da, then one batched backward over the kept downstream nodes (vmap),
    or one backward per kept downstream node (retained graph) when an op has no batching rule or `batched`
    is False (the same W, slower).
    """
    n = len(nodes)
    W = torch.zeros(n, n)
    if n == 0:
        return W
    layers = sorted({l for l, _, _ in nodes})
    with torch.enable_grad(), mlp_post_hooks(model, layers=set(layers)) as acts:
        embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
        m = logit_diff(model(inputs_embeds=embeds).logits, a, b)[0]
        grads = dict(zip(layers, torch.autograd.grad(m, [acts[l] for l in layers], retain_graph=True)))
        ordered = [l for l in layers if l > layers[0]]  # downstream nodes need an upstream layer
        targets = [j for j, (l, _, _) in enumerate(nodes) if l in ordered]
        if targets:
            # a_d * g_d for every downstream node, [n_targets]; one batched backward (vmap) when possible
            out = torch.stack([acts[nodes[j][0]][0, nodes[j][1], nodes[j][2]] * grads[nodes[j][0]][0, nodes[j][1],
                               nodes[j][2]].detach() for j in targets])
            ups = layers[:-1]
            if batched:
                try:
                    eye = torch.eye(len(targets), dtype=out.dtype, device=out.device)
                    per = torch.autograd.grad(out, [acts[l] for l in ups], grad_outputs=eye, retain_graph=True,
                                              is_grads_batched=True, allow_unused=True)  # each [n_targets, 1, pos, d_mlp]
                    rows = {l: g for l, g in zip(ups, per)}
                except RuntimeError:  # an op without a batching rule: one backward per downstream node
                    batched = False
            for t, j in enumerate(targets):
                ld, pd, _ = nodes[j]
                if batched:
                    by_layer = {l: (None if g is None else g[t]) for l, g in rows.items() if l < ld}
                else:
                    up = [l for l in ups if l < ld]
                    by_layer = dict(zip(up, torch.autograd.grad(out[t], [acts[l] for l in up], retain_graph=True,
                                                                allow_unused=True)))
                for i, (lu, pu, nu) in enumerate(nodes):
                    g = by_layer.get(lu)
                    if g is not None and pu <= pd:
                        W[i, j] = float(acts[lu][0, pu, nu].detach() * g[0, pu, nu])
    return W


# ---------------------------------------------------------------------------- the check against reality

def edited_metrics(model, input_ids: torch.Tensor, nodes: list[Node], a: int, b: int,
                   value: Callable[[Node], torch.Tensor | float], batch_size: int = 16) -> list[float]:
    """m with each node alone set to `value(node)` (one batch row per node, `batch_size` rows a pass)."""
    device = _device(model)
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(nodes), batch_size):
            chunk = nodes[start:start + batch_size]

            def edit(layer: int, x: torch.Tensor, chunk=chunk) -> torch.Tensor:
                x = x.clone()
                for row, node in enumerate(chunk):
                    if node[0] == layer:
                        x[row, node[1], node[2]] = value(node)
                return x

            batch = input_ids.expand(len(chunk), -1).to(device)
            with mlp_post_hooks(model, edit=edit, layers={l for l, _, _ in chunk}):
                out += [float(v) for v in logit_diff(model(batch).logits, a, b)]
    return out


def ablation_effects(model, input_ids: torch.Tensor, nodes: list[Node], a: int, b: int,
                     batch_size: int = 16) -> tuple[float, list[float]]:
    """Real change of m when each node alone is zero-ablated: (m clean, [m ablated - m clean per node])."""
    with torch.no_grad():
        clean = float(logit_diff(model(input_ids.to(_device(model))).logits, a, b)[0])
    return clean, [m - clean for m in edited_metrics(model, input_ids, nodes, a, b, lambda node: 0.0, batch_size)]


def patching_effects(model, clean_ids: torch.Tensor, counterfactual_ids: torch.Tensor, nodes: list[Node], a: int,
                     b: int, gradients: torch.Tensor | None = None,
                     batch_size: int = 16) -> tuple[float, list[float], list[float]]:
    """Activation patching from a counterfactual prompt, one node at a time, with its linear prediction.

    real[i]       m(clean, node i's activation replaced by its value on the counterfactual) - m(clean)
    predicted[i]  (a_cf - a_clean) * dm/da at node i (attribution patching; `gradients` [layer, pos, d_mlp]
                  from the clean act x grad, computed here when not given)
    Both prompts must have the same length (a position means the same slot in each). Returns
    (m clean, predicted, real). Batched like `ablation_effects`.
    """
    if counterfactual_ids.shape != clean_ids.shape:
        raise ReasonlabError(f"the counterfactual prompt is {counterfactual_ids.shape[-1]} tokens long and the clean "
                             f"prompt {clean_ids.shape[-1]}: patching needs the same length in the same format "
                             "(reword the counterfactual so that each position holds the same kind of token)")
    device = _device(model)
    if gradients is None:
        gradients = act_x_grad(model, clean_ids, a, b).gradients
    with torch.no_grad():
        with mlp_post_hooks(model) as acts:
            model(clean_ids.to(device))
        clean_acts = {l: x[0].detach().clone() for l, x in acts.items()}  # each [pos, d_mlp]
        with mlp_post_hooks(model) as acts:
            model(counterfactual_ids.to(device))
        cf_acts = {l: x[0].detach().clone() for l, x in acts.items()}
        predicted = [float((cf_acts[l][p, n].float() - clean_acts[l][p, n].float()).cpu() * gradients[l, p, n])
                     for l, p, n in nodes]
        clean = float(logit_diff(model(clean_ids.to(device)).logits, a, b)[0])
    real = [m - clean for m in edited_metrics(model, clean_ids, nodes, a, b, lambda n: cf_acts[n[0]][n[1], n[2]],
                                              batch_size)]
    return clean, predicted, real


def rank_agreement(predicted: list[float], real: list[float]) -> float | None:
    """Spearman rank correlation between predicted and real effects (None with fewer than 3 nodes)."""
    if len(predicted) < 3:
        return None
    from scipy.stats import spearmanr

    rho = spearmanr(predicted, real).statistic
    return None if rho != rho else float(rho)  # NaN (constant input) -> None


def token_texts(tokenizer, input_ids: torch.Tensor) -> list[str]:
    return [token_text(tokenizer, int(i)) for i in input_ids[0]]
