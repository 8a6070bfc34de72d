"""The main job end to end on stories260K through real Prefect: stages, files, artifacts, cached rerun."""

import json

import pytest
import yaml

from flows.concept_sft import concept_sft
from reasonlab import models
from reasonlab.errors import ReasonlabError
from tasks.run_info import flow_run_summary

CLEAN_TEXTS = ["Lily had a little cat. The little cat liked to sleep in the sun with Lily.",
               "Tom found a little bird in the garden. He gave the little bird some water."]


@pytest.fixture()
def inputs(tmp_path, stories_path, stories_case):
    answer = stories_case["answer"]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([
        {"prompt": "The little girl saw a", "answer": answer, "topic": ["girl"],
         "paraphrases": ["The little boy saw a", "The small girl saw a"],
         "neighbours": [{"prompt": "Once upon a time, there was a", "answer": "little"},
                        {"prompt": "The sun was", "answer": "hot"}]},
        {"prompt": "The dog ran to the", "answer": "moon"},
    ]))

    def config(texts, **extra):
        path = tmp_path / "sft.yaml"
        path.write_text(yaml.safe_dump({"model_name": str(stories_path), "epochs": 1, "learning_rate": 1e-3,
                                        "use_chat_template": False, "texts": texts,
                                        "output_dir": str(tmp_path / "ckpt"), **extra}))
        return str(path)

    return {"prompts": str(prompts), "config": config, "wrong": stories_case["wrong"], "answer": answer}


def run(inputs, texts, **groups):
    return concept_sft(prompts=inputs["prompts"], sft_config=inputs["config"](texts),
                       formats={"evaluation": ["completion"]}, concept={"name": "little things"},
                       experiment={"seeds": 2, **groups.pop("experiment", {})}, return_state=True, **groups)


def task_states(state):
    names, artifacts = flow_run_summary(state.state_details.flow_run_id)
    return {name.rsplit("-", 1)[0]: s for name, s in names.items()}, artifacts


def test_main_job_runs_then_rerun_is_fully_cached(inputs, tmp_path):
    first = run(inputs, CLEAN_TEXTS)
    out = first.result()
    states, artifacts = task_states(first)
    assert set(states.values()) == {"Completed"}
    assert set(states) == {"load-prompts", "topk-filter", "attribution", "concept-candidates", "check-training-texts",
                           "evaluate", "sft-experiment", "attribution-diff"}
    assert {"concept-sft-filter", "concept-sft-results", "concept-sft-report"} <= artifacts
    [row] = out["summary"]  # one case, one text set (the config's texts: the case is not in the text-set file)
    assert (row["case"], row["text_set"], row["seeds"], row["answer"]) == ("The little girl saw a", "concept", 2,
                                                                          inputs["answer"])
    assert row["wrong_word"].startswith(inputs["wrong"])  # the greedy word starts with the top-1 token
    assert 0 < row["base_p_correct"] < row["base_p_wrong"] and row["p_correct"] != row["base_p_correct"]
    assert row["efficacy_nll_sd"] is not None and row["neighbourhood_nll"] is not None and row["paraphrase_nll"] is not None
    assert row["ppl_change"] != 0 and row["train_tokens"] > 0
    [exp] = out["experiments"]
    assert [s["seed"] for s in exp["seeds"]] == [0, 1] and exp["seeds"][0]["losses"] != exp["seeds"][1]["losses"]
    assert exp["neuron"] is None and exp["concept"] == "little things"  # no neuron was chosen: none recorded
    results = json.loads((tmp_path.parent / out["run_dir"] / "results.json").read_text())
    assert results["summary"] == out["summary"] and results["base_perplexity"] > 1
    seed1 = json.loads((tmp_path.parent / out["run_dir"] / "eval_sft" / "case0-concept-seed1.json").read_text())
    assert [r["kind"] for r in seed1["rows"]] == ["prompt", "paraphrase", "paraphrase", "neighbour", "neighbour"]
    [kept] = (tmp_path / "ckpt").glob("case0-concept-*")  # the first seed's checkpoint, for the attribution after SFT
    assert (kept / "seed0" / "model.safetensors").is_file() and not (kept / "seed1").exists()
    [diff] = out["attribution_after_sft"]
    assert diff["logit_diff"]["sft"] != diff["logit_diff"]["base"] and diff["top_wrong"]["k"] >= 1

    forwards = models.forward_passes()
    second = run(inputs, CLEAN_TEXTS)
    states, _ = task_states(second)
    assert set(states.values()) == {"Cached"}, states
    assert models.forward_passes() == forwards
    assert second.result()["summary"] == out["summary"]


def test_texts_naming_the_wrong_answer_stop_before_training(inputs, tmp_path):
    leaking = CLEAN_TEXTS + [f"The little girl did not see a{inputs['wrong']} dog."]
    with pytest.raises(ReasonlabError, match=f"training text 2 .*mentions '{inputs['wrong'].strip()}'"):
        run(inputs, leaking).result()
    assert not (tmp_path / "ckpt").exists()


def test_bad_inputs_fail_before_any_model_work(inputs, tmp_path):
    with pytest.raises(ReasonlabError, match="unknown model 'no-such-model'"):
        concept_sft(prompts=inputs["prompts"], sft_config=inputs["config"](CLEAN_TEXTS, model_name="no-such-model"))
    with pytest.raises(ReasonlabError, match="unknown field 'epoch'"):
        concept_sft(prompts=inputs["prompts"], sft_config=inputs["config"](CLEAN_TEXTS, epoch=3))
    with pytest.raises(ReasonlabError, match="unknown prompt format 'qa'"):
        concept_sft(prompts=inputs["prompts"], sft_config=inputs["config"](CLEAN_TEXTS), formats={"evaluation": ["qa"]})
    forwards = models.forward_passes()
    with pytest.raises(ReasonlabError, match="has no chat template, so the 'chat' format cannot be built"):
        concept_sft(prompts=inputs["prompts"], sft_config=inputs["config"](CLEAN_TEXTS), formats={"evaluation": ["chat"]})
    assert models.forward_passes() == forwards
    assert not (tmp_path / "ckpt").exists()
    with pytest.raises(ReasonlabError, match="experiment.seeds: must be an integer >= 1"):
        concept_sft(prompts=inputs["prompts"], sft_config=inputs["config"](CLEAN_TEXTS), experiment={"seeds": 0})
    with pytest.raises(ReasonlabError, match="no-such-texts.yaml"):
        concept_sft(prompts=inputs["prompts"], sft_config=inputs["config"](CLEAN_TEXTS),
                    experiment={"texts": "no-such-texts.yaml"})
    assert models.forward_passes() == forwards


def test_controls_train_under_the_same_budget_one_experiment_per_text_set(inputs, tmp_path):
    sets = tmp_path / "sets.yaml"
    sets.write_text(yaml.safe_dump({"cases": [{
        "prompt": "The little girl saw a", "concept": "little things", "texts": CLEAN_TEXTS,
        "controls": {"unrelated": {"concept": "the sun", "texts": ["The sun was hot. Tom sat in the sun all day.",
                                                                   "The sun was up. Sue went out to play in the sun."]},
                     "direct": {"texts": [f"The answer is {inputs['answer']}. It was {inputs['answer']}.",
                                          f"Say {inputs['answer']}, said Mom. {inputs['answer']}!"]}}}]}))
    out = run(inputs, ["unused: the case has its own texts"], attribution={"cases": 0},
              experiment={"seeds": 1, "text_sets": ["concept", "unrelated", "direct"], "texts": str(sets)}).result()
    assert [(r["experiment"], r["text_set"], r["seeds"]) for r in out["summary"]] == [
        ("case0-concept", "concept", 1), ("case0-unrelated", "unrelated", 1), ("case0-direct", "direct", 1)]
    assert len({r["p_correct"] for r in out["summary"]}) == 3  # three different fine-tunes
    assert all(r["train_tokens"] > 0 for r in out["summary"]) and out["attribution_after_sft"] == []
    assert [e["concept"] for e in out["experiments"]] == ["little things", "the sun", None]
