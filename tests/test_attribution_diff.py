"""Activation patching from a counterfactual prompt, attribution after SFT diffed against the base graph, and the
`reasonlab attribute` / `reasonlab sft` commands, on tiny real models (the CLI as real subprocesses)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasonlab.concept_sft import attribution as A
from reasonlab.concept_sft.attribution_diff import abs_rank, attribution_diff, render_markdown, write_diff
from reasonlab.concept_sft.attribution_graph import attribution_graph, read_graph
from reasonlab.errors import ReasonlabError
from reasonlab.models import load_model, resolve_model
from reasonlab.prompt_format import build_prompt

REPO = Path(__file__).resolve().parents[1]
IDS = torch.tensor([[1, 57, 300, 45, 99, 410, 23, 77]])  # [1, pos]
CF = torch.tensor([[1, 57, 300, 123, 99, 410, 23, 77]])  # the counterfactual: position 3 differs
A_ID, B_ID = 300, 45
PROMPT, PAIR = "Lily saw a big dog", (" Lily", " the")
COUNTERFACTUAL = "Tom saw a big dog"  # same length in the tiny chat format


@pytest.fixture(scope="module")
def llama64(tiny_models):
    return AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float64).eval()


def metric_with(model, ids, edit=None) -> float:
    """m = logit(A) - logit(B) at the last position, written out (not A.logit_diff)."""
    with torch.no_grad(), A.mlp_post_hooks(model, edit=edit):
        logits = model(ids).logits
    return float(logits[0, -1, A_ID]) - float(logits[0, -1, B_ID])


def set_to(node, value):
    layer, pos, neuron = node

    def edit(l, x):
        if l != layer:
            return x
        x = x.clone()
        x[:, pos, neuron] = value
        return x
    return edit


def captured(model, ids):
    with torch.no_grad(), A.mlp_post_hooks(model) as acts:
        model(ids)
    return {l: x[0].clone() for l, x in acts.items()}


# ---------------------------------------------------------------------------- patching


def test_patching_equals_real_patches_and_its_linear_prediction(llama64):
    model = llama64
    attr = A.act_x_grad(model, IDS, A_ID, B_ID)
    nodes = A.prune_nodes(attr.influence, 0.01, "max", max_nodes=24).nodes + [(0, 1, 5), (1, 2, 7)]
    clean, predicted, real = A.patching_effects(model, IDS, CF, nodes, A_ID, B_ID, batch_size=5)
    assert clean == pytest.approx(metric_with(model, IDS)) and len(predicted) == len(real) == len(nodes)
    cf_acts, clean_acts = captured(model, CF), captured(model, IDS)
    eps = 1e-3
    for node, pred, got in zip(nodes, predicted, real, strict=True):
        l, p, n = node
        target = float(cf_acts[l][p, n])
        assert got == pytest.approx(metric_with(model, IDS, set_to(node, target)) - clean, rel=1e-6, abs=1e-9), node
        a0 = float(clean_acts[l][p, n])
        grad = (metric_with(model, IDS, set_to(node, a0 + eps)) - metric_with(model, IDS, set_to(node, a0 - eps))) / (2 * eps)
        assert pred == pytest.approx((target - a0) * grad, rel=3e-3, abs=1e-7), node
        if p < 3:  # causal: positions before the changed token hold the same activations
            assert pred == 0.0 and got == pytest.approx(0.0, abs=1e-10)
        else:  # a small, smooth random model: the first-order prediction is close to the real patch
            assert got == pytest.approx(pred, rel=0.1, abs=2e-4), node
    moved = [i for i, (l, p, n) in enumerate(nodes) if p >= 3]
    assert len(moved) >= 10 and any(abs(real[i]) > 1e-4 for i in moved)
    assert A.rank_agreement([predicted[i] for i in moved], [real[i] for i in moved]) > 0.9
    # the prediction uses the gradients it is given (the graph passes the clean act x grad's)
    _, doubled, _ = A.patching_effects(model, IDS, CF, nodes[:3], A_ID, B_ID, gradients=2 * attr.gradients)
    assert doubled == pytest.approx([2 * x for x in predicted[:3]])


def test_patching_with_the_clean_prompt_changes_nothing(llama64):
    attr = A.act_x_grad(llama64, IDS, A_ID, B_ID)
    nodes = A.prune_nodes(attr.influence, 0.01, "max", max_nodes=20).nodes
    _, predicted, real = A.patching_effects(llama64, IDS, IDS.clone(), nodes, A_ID, B_ID)
    assert predicted == [0.0] * 20 and max(abs(x) for x in real) < 1e-10


def test_patching_needs_prompts_of_the_same_length(llama64):
    with pytest.raises(ReasonlabError, match=r"counterfactual prompt is 7 tokens long and the clean prompt 8"):
        A.patching_effects(llama64, IDS, IDS[:, :7], [(0, 1, 2)], A_ID, B_ID)


def test_graph_gets_a_patching_section_only_with_a_counterfactual(tiny_models):
    from scipy.stats import spearmanr

    model, tokenizer = load_model(resolve_model(str(tiny_models["llama"])))
    kwargs = dict(tau=0.05, max_nodes=10, n_prompt_nodes=2, ablate_top=8)
    plain = attribution_graph(model, tokenizer, PROMPT, PAIR, **kwargs)
    graph = attribution_graph(model, tokenizer, PROMPT, PAIR, counterfactual=COUNTERFACTUAL, **kwargs)
    assert "patching" not in plain and {k: v for k, v in graph.items() if k != "patching"} == plain
    pt = graph["patching"]
    assert pt["nodes"] == graph["ablation"]["nodes"] and len(pt["real"]) == len(pt["predicted"]) == 8
    assert pt["counterfactual_tokens"] != graph["tokens"] and len(pt["counterfactual_tokens"]) == len(graph["tokens"])
    assert pt["spearman"] == pytest.approx(spearmanr(pt["predicted"], pt["real"]).statistic)
    by_id = {n["id"]: n["influence"] for n in graph["nodes"]}
    assert pt["spearman_vs_influence"] == pytest.approx(spearmanr([by_id[i] for i in pt["nodes"]], pt["real"]).statistic)
    cf_ids = A.encode_prompt(tokenizer, build_prompt(tokenizer, COUNTERFACTUAL, "chat", "", " Answer:"), "cpu")
    with torch.no_grad():
        cf_logits = model(cf_ids).logits
    a, b = graph["contrastive_ids"]
    assert pt["counterfactual_logit_diff"] == pytest.approx(float(cf_logits[0, -1, a] - cf_logits[0, -1, b]), rel=1e-5)
    first = next(i for i, (x, y) in enumerate(zip(graph["tokens"], pt["counterfactual_tokens"])) if x != y)
    assert pt["first_changed_position"] == first == graph["prompt_positions"][0]  # the first word differs
    after = [i for i, node in enumerate(pt["nodes"]) if int(node.split("@")[1]) >= first]
    assert pt["downstream_nodes"] == len(after) >= 3
    assert all(pt["real"][i] == pytest.approx(0.0, abs=1e-6) and pt["predicted"][i] == 0.0
               for i in range(8) if i not in after)
    assert pt["spearman_downstream"] == pytest.approx(
        spearmanr([pt["predicted"][i] for i in after], [pt["real"][i] for i in after]).statistic)
    with pytest.raises(ReasonlabError, match=r"counterfactual prompt 'Tom saw a very big dog' is \d+ tokens long in "
                                             r"chat format and the prompt 'Lily saw a big dog' is \d+"):
        attribution_graph(model, tokenizer, PROMPT, PAIR, counterfactual="Tom saw a very big dog", **kwargs)


@pytest.mark.slow
def test_smollm2_aldosterone_patching_agrees_with_attribution_patching():
    model, tokenizer = load_model(resolve_model("smollm2-135m-instruct"))
    graph = attribution_graph(model, tokenizer, "The primary hormone regulating blood pressure is", (" Ald", " Ren"),
                              tau=0.05, max_nodes=20, n_prompt_nodes=4, ablate_top=16,
                              counterfactual="The primary hormone regulating sodium retention is")
    pt = graph["patching"]
    assert graph["tokens"][pt["first_changed_position"]] == " blood"
    assert abs(pt["counterfactual_logit_diff"] - graph["logit_diff"]) > 0.5  # the counterfactual moves m
    assert pt["downstream_nodes"] >= 5 and pt["spearman_downstream"] > 0.8, pt


# ---------------------------------------------------------------------------- the diff after SFT


def silenced(folder: Path, dest: Path, layer: int, neuron: int) -> Path:
    """A copy of the model whose neuron writes nothing (its down-projection column zeroed): a stand-in 'SFT'."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        A.down_projections(model)[layer].weight[:, neuron] = 0.0
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(folder).save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def base_graph(tiny_models):
    model, tokenizer = load_model(resolve_model(str(tiny_models["llama"])))
    return attribution_graph(model, tokenizer, PROMPT, PAIR, tau=0.05, max_nodes=10, n_prompt_nodes=2, ablate_top=8,
                             counterfactual=COUNTERFACTUAL)


def test_diff_against_itself_changes_nothing(tiny_models, base_graph):
    model, tokenizer = load_model(resolve_model(str(tiny_models["llama"])))
    diff, sft_graph = attribution_diff(base_graph, model, tokenizer, model, tokenizer, top_k=3, n_prompt_nodes=2,
                                       ablate_top=8)
    assert diff["logit_diff"]["change"] == 0.0 and diff["spearman_union"] == pytest.approx(1.0)
    assert all(r["change"] == 0.0 or abs(r["change"]) < 1e-6 for r in diff["nodes"])
    assert all(r["base_rank"] == r["sft_rank"] for r in diff["nodes"])
    assert diff["new_nodes"] == [] and diff["top_wrong"]["lost_total"] == pytest.approx(0.0, abs=1e-5)
    assert sft_graph["nodes"] == base_graph["nodes"] and "patching" in sft_graph


def test_silenced_wrong_pushing_neuron_loses_its_influence(tiny_models, base_graph, tmp_path):
    worst = min(base_graph["nodes"], key=lambda n: n["influence"])
    assert worst["influence"] < 0
    folder = silenced(tiny_models["llama"], tmp_path / "sft", worst["layer"], worst["neuron"])
    base, base_tok = load_model(resolve_model(str(tiny_models["llama"])))
    sft, sft_tok = load_model(resolve_model(str(folder)))
    diff, sft_graph = attribution_diff(base_graph, base, base_tok, sft, sft_tok, top_k=3, new_top=4, n_prompt_nodes=2,
                                       ablate_top=8)
    rows = {r["id"]: r for r in diff["nodes"]}
    row = rows[worst["id"]]
    assert diff["nodes"][0]["id"] == worst["id"]  # the most wrong-pushing first
    assert row["base_influence"] == worst["influence"] and row["sft_influence"] == 0.0
    assert row["change"] == pytest.approx(-worst["influence"]) and row["sft_activation"] == pytest.approx(
        worst["activation"], rel=1e-4)  # it still fires; what it writes is gone
    sft_attr = A.act_x_grad(sft, A.encode_prompt(sft_tok, base_graph["text"], "cpu"), *base_graph["contrastive_ids"])
    base_attr = A.act_x_grad(base, A.encode_prompt(base_tok, base_graph["text"], "cpu"), *base_graph["contrastive_ids"])
    flat = sorted(base_attr.influence.abs().flatten().tolist(), reverse=True)
    for r in diff["nodes"]:
        node = (r["layer"], r["position"], r["neuron"])
        assert r["sft_influence"] == pytest.approx(float(sft_attr.influence[node]))
        assert r["base_rank"] == flat.index(abs(float(base_attr.influence[node]))) + 1
    assert row["sft_rank"] > row["base_rank"] and abs_rank(sft_attr.influence, (0, 0, 0)) >= 1
    w = diff["top_wrong"]
    assert w["nodes"][0] == worst["id"] and w["k"] == 3 and 1 <= w["lost_abs_influence"] <= 3
    assert w["lost_total"] >= abs(worst["influence"]) - 1e-6
    assert diff["logit_diff"]["sft"] == pytest.approx(sft_attr.metric) and diff["logit_diff"]["change"] != 0
    assert worst["id"] not in {n["id"] for n in sft_graph["nodes"]}
    assert all(n["id"] not in rows for n in diff["new_nodes"]) and len(diff["new_nodes"]) <= 4
    assert diff["checks"]["sft_patching_spearman"] == sft_graph["patching"]["spearman"]
    files = write_diff(diff, sft_graph, tmp_path / "out")
    assert json.loads(Path(files["diff"]).read_text())["top_wrong"] == w
    assert read_graph(files["sft_json"])["nodes"] == sft_graph["nodes"]
    assert Path(files["sft_png"]).read_bytes()[:4] == b"\x89PNG"
    md = Path(files["markdown"]).read_text()
    assert md == render_markdown(diff) and f"| {worst['id']} |" in md


def test_diff_refuses_a_tokenizer_that_encodes_differently(tiny_models, stories_path, base_graph):
    model, tokenizer = load_model(resolve_model(str(tiny_models["llama"])))
    merged = AutoTokenizer.from_pretrained(tiny_models["llama"])
    merged.add_tokens(["saw a"])
    with pytest.raises(ReasonlabError, match=r"SFT tokenizer encodes the prompt differently .* first difference at "
                                             r"position \d+"):
        attribution_diff(base_graph, model, tokenizer, model, merged)
    templated = AutoTokenizer.from_pretrained(tiny_models["llama"])
    templated.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    with pytest.raises(ReasonlabError, match="builds a different chat prompt than the base graph's"):
        attribution_diff(base_graph, model, tokenizer, model, templated)
    other, _ = load_model(resolve_model(str(stories_path)))  # the same vocabulary, trained weights
    with pytest.raises(ReasonlabError, match=r"the base model gives [-+]\d.* but the base graph says .* another model"):
        attribution_diff(base_graph, other, tokenizer, model, tokenizer)


def test_prefect_tasks_attribute_with_counterfactual_then_diff(tiny_models, tmp_path):
    from tasks.attribution import attribute_case
    from tasks.attribution import attribution_diff as diff_task

    base = resolve_model(str(tiny_models["llama"]))
    case = {"prompt": PROMPT}
    common = dict(contrastive=list(PAIR), max_nodes=8, ablate_top=6)
    summary = attribute_case(base, case, str(tmp_path / "g"), counterfactual=COUNTERFACTUAL, **common)
    assert summary["patching_spearman"] == read_graph(summary["files"]["json"])["patching"]["spearman"]
    worst = min(read_graph(summary["files"]["json"])["nodes"], key=lambda n: n["influence"])
    sft = resolve_model(str(silenced(tiny_models["llama"], tmp_path / "sft", worst["layer"], worst["neuron"])))
    graph_file = Path(summary["files"]["json"])
    with pytest.raises(ReasonlabError, match=r"made with other settings: tau=0.1 \(the graph has 0.05\)"):
        diff_task(base, graph_file, sft, str(tmp_path / "d"), tau=0.1, **common)
    out = diff_task(base, graph_file, sft, str(tmp_path / "d"), top_k=2, **common)
    assert out["top_wrong"]["nodes"][0] == worst["id"] and out["top_wrong"]["lost_abs_influence"] >= 1
    assert Path(out["files"]["diff"]).is_file() and Path(out["files"]["sft_html"]).is_file()


# ---------------------------------------------------------------------------- the commands, as subprocesses


def reasonlab(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "reasonlab.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def error_lines(done) -> list[str]:
    """The `error: ...` lines on stderr (libraries may draw progress bars there too)."""
    return [line for line in done.stderr.splitlines() if line.startswith("error: ")]


def test_attribute_command_writes_graph_and_diff(tiny_models, tmp_path):
    llama = tiny_models["llama"]
    worst = min(attribution_graph(*load_model(resolve_model(str(llama))), PROMPT, PAIR, max_nodes=10)["nodes"],
                key=lambda n: n["influence"])
    sft = silenced(llama, tmp_path / "sft", worst["layer"], worst["neuron"])
    out = tmp_path / "out"
    done = reasonlab("attribute", PROMPT, "--contrastive", *PAIR, "--answer-prefix", " Answer:", "--output", str(out),
                     "--model", str(llama), "--max-nodes", "10", "--counterfactual", COUNTERFACTUAL,
                     "--compare-model", str(sft), "--top-k", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    graph = read_graph(out / "graph.json")
    diff = json.loads((out / "diff.json").read_text())
    assert {p.name for p in out.iterdir()} >= {"graph.json", "graph.png", "graph.html", "diff.json", "diff.md", "sft"}
    assert f"logit(' Lily') - logit(' the') = {graph['logit_diff']:+.4f}" in done.stdout
    assert f"ablation rho = {graph['ablation']['spearman']:.3f}" in done.stdout
    assert f"patching rho (real vs attribution patching) = {graph['patching']['spearman']:.3f}" in done.stdout
    assert diff["top_wrong"]["nodes"][0] == worst["id"]
    assert f"top 3 wrong-pushing base nodes: {diff['top_wrong']['lost_abs_influence']} lost |influence|" in done.stdout
    bad = reasonlab("attribute", PROMPT, "--contrastive", *PAIR, "--output", str(tmp_path / "bad"), "--model",
                    str(llama), "--counterfactual", "Tom saw a very big dog")
    assert bad.returncode == 1 and error_lines(bad) == [bad.stderr.strip().splitlines()[-1]]
    assert error_lines(bad)[0].startswith("error: the counterfactual prompt 'Tom saw a very big dog' is ")
    assert not (tmp_path / "bad").exists()


def test_sft_command_trains_and_writes_a_summary(stories_path, tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text(f"model_name: {stories_path}\nepochs: 2\nlearning_rate: 1.0e-3\nuse_chat_template: false\n"
                      "texts:\n  - Lily had a red ball. She liked to play.\n  - Tom saw a big tree and smiled.\n")
    out = tmp_path / "ckpt"
    done = reasonlab("sft", "--config", str(config), "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ckpt.summary.json").read_text())
    assert summary["checkpoint"] == str(out.resolve()) and summary["steps"] == 4 and len(summary["losses"]) == 4
    assert (out / "model.safetensors").is_file() and (out / "reasonlab-model.json").is_file()
    assert "step 4/4" in done.stdout and f"checkpoint {out.resolve()}: 4 steps" in done.stdout
    config.write_text(f"model_name: {stories_path}\nepochs: 2\n")  # no texts
    bad = reasonlab("sft", "--config", str(config), "--output", str(tmp_path / "bad"))
    assert bad.returncode == 1 and len(error_lines(bad)) == 1 and "texts" in error_lines(bad)[0]
    assert not (tmp_path / "bad").exists()
