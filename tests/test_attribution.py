"""Contrastive attribution on real tiny models: gradients vs finite differences, IG completeness,
pruning, edges, the ablation check, the graph files, concept candidates, and bad input."""

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PhiConfig

from reasonlab.concept_sft import attribution as A
from reasonlab.concept_sft import concepts
from reasonlab.concept_sft.attribution_graph import attribution_graph, write_graph
from reasonlab.errors import ReasonlabError
from reasonlab.models import load_model, resolve_model

IDS = torch.tensor([[1, 57, 300, 45, 99, 410, 23, 77]])  # [1, pos]: any ids below the tiny vocab (512)
A_ID, B_ID = 300, 45


def f64(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()


@pytest.fixture(scope="module")
def tiny64(tiny_models):
    models = {arch: f64(folder) for arch, folder in tiny_models.items()}
    torch.manual_seed(0)
    phi = PhiConfig(vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=256)
    models["phi"] = AutoModelForCausalLM.from_config(phi).to(torch.float64).eval()  # mlp.fc2
    return models


def reference_metric(logits) -> float:
    """m = logit(A) - logit(B) at the last position, written out here (not A.logit_diff): the references
    of every test below use it, so a flipped sign in the module is seen by each of them."""
    return float(logits[0, -1, A_ID]) - float(logits[0, -1, B_ID])


def metric_with(model, edit):
    with torch.no_grad(), A.mlp_post_hooks(model, edit=edit):
        return reference_metric(model(IDS).logits)


def test_metric_is_correct_minus_wrong_and_positive_influence_favours_the_correct_token(tiny64):
    model = tiny64["llama"]
    with torch.no_grad():
        logits = model(IDS).logits
    m = A.logit_diff(logits, A_ID, B_ID)
    assert m.shape == (1,) and float(m[0]) == pytest.approx(reference_metric(logits))
    assert float(m[0]) == pytest.approx(float(logits[0, -1, A_ID] - logits[0, -1, B_ID])) and float(m[0]) != 0
    # the node with the largest positive influence: removing it (a -> 0) lowers logit(A) - logit(B)
    # by about its influence, i.e. it was pushing toward A, the correct token
    attr = A.act_x_grad(model, IDS, A_ID, B_ID)
    assert attr.metric == pytest.approx(reference_metric(logits))
    node = tuple(int(i) for i in torch.unravel_index(attr.influence.argmax(), attr.influence.shape))
    assert float(attr.influence[node]) > 0
    ablated = metric_with(model, nudge(node, -float(attr.activations[node])))
    assert ablated < attr.metric
    clean, [delta] = A.ablation_effects(model, IDS, [node], A_ID, B_ID)
    assert clean == pytest.approx(attr.metric) and delta == pytest.approx(ablated - attr.metric, rel=1e-5, abs=1e-7)


def nudge(node, eps):
    layer, pos, neuron = node

    def edit(l, x):
        if l != layer:
            return x
        x = x.clone()
        x[:, pos, neuron] += eps
        return x
    return edit


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "phi"])
def test_gradient_attribution_equals_finite_differences(tiny64, arch):
    model = tiny64[arch]
    attr = A.act_x_grad(model, IDS, A_ID, B_ID)
    n_layers, n_pos, d_mlp = attr.influence.shape
    assert (n_layers, n_pos) == (2, IDS.shape[1]) and attr.metric == pytest.approx(metric_with(model, None))
    torch.manual_seed(1)
    nodes = [(l, p, int(n)) for l in range(n_layers) for p in (0, 3, n_pos - 1) for n in torch.randint(0, d_mlp, (2,))]
    nodes += [tuple(int(i) for i in torch.unravel_index(attr.influence.abs().argmax(), attr.influence.shape))]
    eps = 1e-3  # HF norms compute in float32 even in a float64 model: a smaller step drowns in rounding
    for node in nodes:
        fd = (metric_with(model, nudge(node, eps)) - metric_with(model, nudge(node, -eps))) / (2 * eps)
        assert float(attr.gradients[node]) == pytest.approx(fd, rel=3e-3, abs=2e-5), node
        assert float(attr.influence[node]) == pytest.approx(float(attr.activations[node]) * fd, rel=3e-3, abs=2e-5)
    assert attr.influence.abs().max() > 0


def test_integrated_gradients_are_complete_per_layer(tiny64):
    model = tiny64["llama"]
    ig = A.integrated_gradients(model, IDS, A_ID, B_ID, steps=64)
    for layer in range(2):
        zeroed = metric_with(model, lambda l, x, layer=layer: x * 0 if l == layer else x)
        assert float(ig.influence[layer].sum()) == pytest.approx(ig.metric - zeroed, rel=0.02, abs=1e-6)


def test_edges_equal_finite_differences_of_the_downstream_influence(tiny64):
    model = tiny64["llama"]
    attr = A.act_x_grad(model, IDS, A_ID, B_ID)
    kept = A.prune_nodes(attr.influence, 0.05, "max", max_nodes=12).nodes
    nodes = sorted(kept, key=lambda n: n[0])
    assert {l for l, _, _ in nodes} == {0, 1}
    W = A.compute_edges(model, IDS, nodes, A_ID, B_ID)
    assert W.abs().sum() > 0
    eps = 1e-3
    for i, up in enumerate(nodes):
        for j, down in enumerate(nodes):
            if up[0] >= down[0] or up[1] > down[1]:
                assert W[i, j] == 0
                continue
            acts = {}

            def value(edit):
                with torch.no_grad(), A.mlp_post_hooks(model, edit=edit) as captured:
                    model(IDS)
                    return float(captured[down[0]][0, down[1], down[2]])
            d_act = (value(nudge(up, eps)) - value(nudge(up, -eps))) / (2 * eps)
            expected = float(attr.activations[up]) * d_act * float(attr.gradients[down])
            assert float(W[i, j]) == pytest.approx(expected, rel=5e-3, abs=1e-5), (up, down, acts)


def test_pruning_keeps_what_it_says():
    torch.manual_seed(0)
    infl = torch.randn(3, 5, 7) ** 3  # [layer, pos, neuron], heavy-tailed like real influence
    absf = infl.abs().flatten()
    for tau in (0.01, 0.05, 0.2):
        total = A.prune_nodes(infl, tau, "total")
        assert {tuple(n) for n in total.nodes} == {tuple(int(i) for i in torch.unravel_index(k, infl.shape))
                                                   for k in torch.nonzero(absf >= tau * absf.sum()).flatten()}
        big = A.prune_nodes(infl, tau, "max")
        assert len(big.nodes) == int((absf >= tau * absf.max()).sum())
        assert all(abs(float(infl[n])) >= big.threshold for n in big.nodes)
        cum = A.prune_nodes(infl, tau, "cumulative")
        kept = sum(abs(float(infl[n])) for n in cum.nodes)
        assert kept >= (1 - tau) * float(absf.sum()) - 1e-4
        assert kept - abs(float(infl[cum.nodes[-1]])) < (1 - tau) * float(absf.sum())  # the fewest that reach it
        vals = [abs(float(infl[n])) for n in cum.nodes]
        assert vals == sorted(vals, reverse=True)
    capped = A.prune_nodes(infl, 0.01, "max", max_nodes=4)
    assert capped.capped and len(capped.nodes) == 4
    assert [abs(float(infl[n])) for n in capped.nodes] == sorted(absf.tolist(), reverse=True)[:4]
    for bad in (0, 1, -0.1, 1.5, "0.05", True):
        with pytest.raises(ReasonlabError, match="tau must be a number in \\(0, 1\\)"):
            A.prune_nodes(infl, bad)
    with pytest.raises(ReasonlabError, match="unknown pruning mode 'top'"):
        A.prune_nodes(infl, 0.05, "top")


def test_ablation_effects_are_real_single_neuron_ablations(tiny64):
    model = tiny64["qwen2"]
    attr = A.act_x_grad(model, IDS, A_ID, B_ID)
    nodes = A.prune_nodes(attr.influence, 0.05, "max", max_nodes=5).nodes
    clean, deltas = A.ablation_effects(model, IDS, nodes, A_ID, B_ID, batch_size=2)
    assert clean == pytest.approx(metric_with(model, None)) and len(deltas) == len(nodes) == 5
    for node, delta in zip(nodes, deltas, strict=True):
        one = metric_with(model, nudge(node, -float(attr.activations[node])))  # a + (-a) = 0
        assert delta == pytest.approx(one - clean, rel=1e-5, abs=1e-7)
    assert A.rank_agreement([1.0, 2.0, 3.0], [0.1, 0.3, 0.2]) == pytest.approx(0.5)
    assert A.rank_agreement([1.0, 2.0], [1.0, 2.0]) is None
    assert A.rank_agreement([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert A.rank_agreement([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # constant: no rank order


def test_graph_on_stories_chat_prompt_writes_json_png_html(tiny_models, tmp_path):
    model, tokenizer = load_model(resolve_model(str(tiny_models["llama"])))
    graph = attribution_graph(model, tokenizer, "Lily saw a big dog", (" Lily", " the"), tau=0.05, max_nodes=10,
                              n_prompt_nodes=4, early_layers=0, late_layers=1, ablate_top=8)
    assert graph["text"].startswith("<|system|>") and graph["text"].endswith(" Answer:")
    assert graph["metric"] == "logit(' Lily') - logit(' the')"
    assert graph["prune"]["kept"] == 10 and graph["prune"]["capped"]
    by_origin = {o: [n for n in graph["nodes"] if n["origin"] == o] for o in ("tau", "prompt")}
    assert len(by_origin["tau"]) == 10 and 1 <= len(by_origin["prompt"]) <= 4
    assert all(n["layer"] == 0 and n["position"] in graph["prompt_positions"] for n in by_origin["prompt"])
    assert "".join(graph["tokens"][p] for p in graph["prompt_positions"]).strip() == "Lily saw a big dog"
    for n in graph["nodes"]:
        assert re.fullmatch(r"L\d+/N\d+@\d+", n["id"]) and n["name"] == n["id"].split("@")[0]
        assert n["token"] == graph["tokens"][n["position"]] and n["hook"] == f"blocks.{n['layer']}.mlp.hook_post"
    ids = {n["id"] for n in graph["nodes"]}
    assert all(e["source"] in ids and e["target"] in ids | {"logit_diff"} for e in graph["edges"])
    assert len(graph["ablation"]["real"]) == 8
    from scipy.stats import spearmanr
    abl = graph["ablation"]
    assert abl["spearman"] == pytest.approx(spearmanr(abl["predicted"], abl["real"]).statistic)
    files = write_graph(graph, tmp_path / "g")
    assert json.loads(open(files["json"]).read())["nodes"] == graph["nodes"]
    assert open(files["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "<table id='nodes'>" in open(files["html"]).read()
    ranked = concepts.rank_candidates(graph, n=3)
    for c in ranked["candidates"]:
        assert c["layer"] < graph["n_layers"] - graph["late_layers"] and c["position"] in graph["prompt_positions"]
    assert all(r["reasons"] for r in ranked["rejected"])
    assert any("final position" in why for r in ranked["rejected"] for why in r["reasons"])


def test_top_activating_contexts_are_the_real_maxima(stories_path, tmp_path):
    model, tokenizer = load_model(resolve_model(str(stories_path)))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Lily went to the park.\n\nTom had a red ball and a big dog.\n\nThe cat sat on the mat.")
    texts = concepts.load_corpus(corpus)
    neurons = [(0, 3), (3, 100)]
    [first, second] = concepts.top_activating_contexts(model, tokenizer, texts, neurons, k=2, batch_size=2)
    for (layer, neuron), best in zip(neurons, [first, second]):
        assert len(best) == 2 and best[0]["activation"] >= best[1]["activation"] and "[[" in best[0]["text"]
        every = []
        for doc, text in enumerate(texts):  # recompute one text at a time (no padding)
            ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
            with torch.no_grad(), A.mlp_post_hooks(model) as acts:
                model(ids)
            every += [(float(v), doc) for v in acts[layer][0, :, neuron]]
        assert best[0]["activation"] == pytest.approx(max(every)[0], abs=1e-4)
    with pytest.raises(ReasonlabError, match="reference corpus .* not found"):
        concepts.load_corpus(tmp_path / "missing.json")


def test_bad_inputs_are_one_clear_error(tiny_models):
    model, tokenizer = load_model(resolve_model(str(tiny_models["gemma3"])))
    prompt = "Lily saw a big dog"
    with pytest.raises(ReasonlabError, match=r"contrastive token ' elephant' is not one token: it becomes \[' e', "):
        attribution_graph(model, tokenizer, prompt, (" elephant", " the"))
    with pytest.raises(ReasonlabError, match="contrastive needs exactly two tokens"):
        attribution_graph(model, tokenizer, prompt, (" Lily",))
    with pytest.raises(ReasonlabError, match=r"answer prefix '</s> Answer:' contains the special token '</s>'"):
        attribution_graph(model, tokenizer, prompt, (" Lily", " the"), answer_prefix="</s> Answer:")
    with pytest.raises(ReasonlabError, match=r"tau must be a number in \(0, 1\).*got 1.5"):
        attribution_graph(model, tokenizer, prompt, (" Lily", " the"), tau=1.5)
    with pytest.raises(ReasonlabError, match="unknown attribution method 'saliency'"):
        attribution_graph(model, tokenizer, prompt, (" Lily", " the"), method="saliency")
    plain = AutoTokenizer.from_pretrained(tiny_models["gemma3"])
    plain.chat_template = None
    with pytest.raises(ReasonlabError, match="has no chat template"):
        attribution_graph(model, plain, prompt, (" Lily", " the"))


@pytest.mark.slow
def test_smollm2_aldosterone_graph_agrees_with_ablation():
    model, tokenizer = load_model(resolve_model("smollm2-135m-instruct"))
    graph = attribution_graph(model, tokenizer, "The primary hormone regulating blood pressure is", (" Ald", " Ren"),
                              tau=0.05, max_nodes=20, n_prompt_nodes=4, ablate_top=16)
    assert graph["tokens"][-2:] == [" Answer", ":"] and graph["contrastive_ids"][0] != graph["contrastive_ids"][1]
    assert graph["ablation"]["spearman"] > 0.3, graph["ablation"]
    with pytest.raises(ReasonlabError, match=r"' Aldosterone' is not one token: it becomes \[' Ald', 'osterone'\]"):
        A.contrastive_ids(tokenizer, [" Aldosterone", " Ren"])


# ---------------------------------------------------------------------------- the math's edges (mutation-tested)

def test_attribution_needs_no_parameter_gradients_and_names_its_method(tiny64):
    model = tiny64["qwen2"]
    ref = A.act_x_grad(model, IDS, A_ID, B_ID)
    model.requires_grad_(False)  # an inference-loaded model: gradients flow from the activations alone
    try:
        frozen = A.act_x_grad(model, IDS, A_ID, B_ID)
        ig = A.attribute(model, IDS, A_ID, B_ID, "integrated_gradients", steps=2)
        nodes = A.prune_nodes(frozen.influence, 0.05, "max", max_nodes=6).nodes
        W = A.compute_edges(model, IDS, nodes, A_ID, B_ID)
    finally:
        model.requires_grad_(True)
    assert torch.equal(frozen.influence, ref.influence) and frozen.method == "act_x_grad"
    assert ig.method == "integrated_gradients" and W.abs().sum() > 0
    assert torch.equal(ig.activations, ref.activations) and torch.equal(ig.gradients, ref.gradients)
    assert all(p.grad is None for p in model.parameters())


def test_integrated_gradients_use_midpoint_alphas(tiny64):
    """steps=2: I = a * mean(dm/da at 0.25 a, dm/da at 0.75 a), layer by layer (the midpoint rule)."""
    model = tiny64["llama"]
    ig = A.integrated_gradients(model, IDS, A_ID, B_ID, steps=2)
    assert A.attribute(model, IDS, A_ID, B_ID, "integrated_gradients", steps=2).influence.equal(ig.influence)
    eight = A.integrated_gradients(model, IDS, A_ID, B_ID, steps=8)
    assert A.integrated_gradients(model, IDS, A_ID, B_ID).influence.equal(eight.influence)  # the default: 8 steps
    assert A.attribute(model, IDS, A_ID, B_ID, "integrated_gradients").influence.equal(eight.influence)
    assert A.attribute(model, IDS, A_ID, B_ID).influence.equal(A.act_x_grad(model, IDS, A_ID, B_ID).influence)
    for layer in (0, 1):
        grads = []
        for alpha in (0.25, 0.75):
            def scaled(l, x, layer=layer, alpha=alpha):
                if l != layer:
                    return x
                return (x.detach() * alpha).requires_grad_(True)
            with torch.enable_grad(), A.mlp_post_hooks(model, edit=scaled, layers={layer}) as acts:
                logits = model(IDS).logits
                m = logits[0, -1, A_ID] - logits[0, -1, B_ID]
                [g] = torch.autograd.grad(m, [acts[layer]])
            grads.append(g[0])
        expected = ig.activations[layer] * (grads[0] + grads[1]) / 2
        assert torch.allclose(ig.influence[layer], expected.float(), rtol=1e-4, atol=1e-7)
    one = A.integrated_gradients(model, IDS, A_ID, B_ID, steps=1)
    assert one.influence.shape == ig.influence.shape
    for bad in (0, -1):
        with pytest.raises(ReasonlabError, match=f"integrated gradients needs steps >= 1, got {bad}"):
            A.integrated_gradients(model, IDS, A_ID, B_ID, steps=bad)
    with pytest.raises(ReasonlabError, match=r"unknown attribution method 'saliency': use one of \('act_x_grad'"):
        A.attribute(model, IDS, A_ID, B_ID, "saliency")


def test_pruning_at_exact_thresholds_and_totals():
    infl = torch.tensor([[[0.5, -0.25, 0.25, 0.0]]])  # sum |I| = 1.0 exactly, ties at 0.25
    total = A.prune_nodes(infl, 0.25, "total")
    assert total.nodes == [(0, 0, 0), (0, 0, 1), (0, 0, 2)] or total.nodes == [(0, 0, 0), (0, 0, 2), (0, 0, 1)]
    assert (total.threshold, total.total_abs, total.kept_abs, total.capped) == (0.25, 1.0, 1.0, False)
    top = A.prune_nodes(infl, 0.5, "max")
    assert len(top.nodes) == 3 and top.threshold == 0.25  # >= tau * max keeps the ties
    cum = A.prune_nodes(infl, 0.5, "cumulative")
    assert cum.nodes == [(0, 0, 0)] and cum.threshold == 0.5 and cum.kept_abs == 0.5
    cum = A.prune_nodes(infl, 0.25, "cumulative")
    assert len(cum.nodes) == 2 and cum.threshold == 0.25 and cum.kept_abs == 0.75
    # float64 for the cumulative cut: float32(0.9) < 0.9, so the top node alone does not reach 90 % of the total
    near = A.prune_nodes(torch.tensor([0.9, 0.1]), 0.1, "cumulative")
    assert len(near.nodes) == 2 and near.total_abs == 1.0
    exact = A.prune_nodes(infl, 0.25, "total", max_nodes=3)
    assert len(exact.nodes) == 3 and not exact.capped  # the cap equals the count: nothing removed
    one = A.prune_nodes(infl, 0.25, "total", max_nodes=1)
    assert one.nodes == [(0, 0, 0)] and one.capped and one.kept_abs == 0.5
    zero = A.prune_nodes(torch.zeros(2, 3, 4), 0.05)
    assert (zero.nodes, zero.threshold, zero.total_abs, zero.kept_abs, zero.capped) == ([], 0.0, 0.0, 0.0, False)
    for bad in (0, -3):
        with pytest.raises(ReasonlabError, match=f"max_nodes must be >= 1, got {bad}"):
            A.prune_nodes(infl, 0.25, max_nodes=bad)


def test_edges_over_three_layers_batched_equal_one_backward_per_node():
    from transformers import LlamaConfig

    torch.manual_seed(2)
    cfg = LlamaConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = AutoModelForCausalLM.from_config(cfg).to(torch.float64).eval()
    attr = A.act_x_grad(model, IDS, A_ID, B_ID)
    nodes = sorted({*A.prune_nodes(attr.influence, 0.01, "max", max_nodes=9).nodes,
                    (0, 2, 1), (1, 3, 2), (1, 5, 7), (2, 5, 3), (2, 7, 4)}, key=lambda n: n[0])
    assert {l for l, _, _ in nodes} == {0, 1, 2}
    W = A.compute_edges(model, IDS, nodes, A_ID, B_ID)
    assert torch.allclose(W, A.compute_edges(model, IDS, nodes, A_ID, B_ID, batched=False), rtol=1e-9, atol=1e-12)
    eps = 1e-3
    for i, up in enumerate(nodes):
        for j, down in enumerate(nodes):
            if up[0] >= down[0] or up[1] > down[1]:
                assert W[i, j] == 0, (up, down)
                continue

            def value(edit, down=down):
                with torch.no_grad(), A.mlp_post_hooks(model, edit=edit) as captured:
                    model(IDS)
                    return float(captured[down[0]][0, down[1], down[2]])
            d_act = (value(nudge(up, eps)) - value(nudge(up, -eps))) / (2 * eps)
            expected = float(attr.activations[up]) * d_act * float(attr.gradients[down])
            assert float(W[i, j]) == pytest.approx(expected, rel=5e-3, abs=1e-6), (up, down)
    assert (W[:, [j for j, n in enumerate(nodes) if n[0] == 2]] != 0).any()  # layer 0 -> 2 and 1 -> 2 both
    assert A.compute_edges(model, IDS, [], A_ID, B_ID).shape == (0, 0)
    assert A.compute_edges(model, IDS, [nodes[0]], A_ID, B_ID).tolist() == [[0.0]]
