"""The main job end to end on stories260K through real Prefect: stages, files, artifacts, cached rerun."""

import json

import pytest
import yaml

from flows.concept_sft import concept_sft
from reasonlab import models
from reasonlab.errors import ReasonlabError
from reasonlab.models import load_model, resolve_model
from reasonlab.concept_sft.topk_filter import next_token_topk
from tasks.run_info import flow_run_summary

CLEAN_TEXTS = ["Lily had a little cat. The little cat liked to sleep in the sun with Lily.",
               "Tom found a little bird in the garden. He gave the little bird some water."]


@pytest.fixture()
def inputs(tmp_path, stories_path):
    model, tokenizer = load_model(resolve_model(str(stories_path)))
    [top] = next_token_topk(model, tokenizer, ["The little girl saw a"], k=10)
    answer = next(t.token.strip() for t in top[1:5] if t.token.strip().isalpha() and len(t.token.strip()) >= 3)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([
        {"prompt": "The little girl saw a", "answer": answer, "topic": ["girl"]},
        {"prompt": "The dog ran to the", "answer": "moon"},
    ]))

    def config(texts, **extra):
        path = tmp_path / "sft.yaml"
        path.write_text(yaml.safe_dump({"model_name": str(stories_path), "epochs": 1, "learning_rate": 1e-3,
                                        "use_chat_template": False, "texts": texts,
                                        "output_dir": str(tmp_path / "ckpt"), **extra}))
        return str(path)

    return {"prompts": str(prompts), "config": config, "wrong": top[0].token, "answer": answer}


def run(inputs, texts):
    return concept_sft(prompts=inputs["prompts"], sft_config=inputs["config"](texts),
                       formats={"evaluation": ["completion"]}, concept={"name": "little things"}, return_state=True)


def task_states(state):
    names, artifacts = flow_run_summary(state.state_details.flow_run_id)
    return {name.rsplit("-", 1)[0]: s for name, s in names.items()}, artifacts


def test_main_job_runs_then_rerun_is_fully_cached(inputs, tmp_path):
    first = run(inputs, CLEAN_TEXTS)
    out = first.result()
    states, artifacts = task_states(first)
    assert set(states.values()) == {"Completed"}
    assert set(states) == {"load-prompts", "topk-filter", "attribution", "concept-candidates", "check-training-texts",
                           "sft", "evaluate"}
    assert {"concept-sft-filter", "concept-sft-results", "concept-sft-report"} <= artifacts
    [row] = out["table"]
    assert row["wrong_token"] == inputs["wrong"] and row["answer"] == inputs["answer"]
    assert 0 < row["base_p_correct"] < row["base_p_wrong"] and row["sft_p_correct"] != row["base_p_correct"]
    results = json.loads((tmp_path.parent / out["run_dir"] / "results.json").read_text())
    assert results["concept"] == "little things" and (tmp_path / "ckpt" / "model.safetensors").is_file()

    forwards = models.forward_passes()
    second = run(inputs, CLEAN_TEXTS)
    states, _ = task_states(second)
    assert set(states.values()) == {"Cached"}, states
    assert models.forward_passes() == forwards
    assert second.result()["table"] == out["table"]


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
