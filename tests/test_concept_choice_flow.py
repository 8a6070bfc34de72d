"""Stages 3-4 inside the main job on stories260K: the attribution artifacts, the unattended choice, and a
run that pauses for the researcher and is resumed with typed input through Prefect's API (as the UI does)."""

import json
import threading
import time
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.flow_runs import resume_flow_run
from prefect.input.run_input import keyset_from_paused_state

from flows.concept_sft import concept_sft
from flows.sweep_spec import merge_parameters
from reasonlab.errors import ReasonlabError
from tasks.run_info import flow_run_summary

TEXTS = ["Lily had a little cat. The little cat liked to sleep in the sun with Lily.",
         "Tom found a little bird in the garden. He gave the little bird some water."]
RESEARCHER_TEXTS = TEXTS[1:]  # the researcher keeps one of the two texts


@pytest.fixture()
def job(tmp_path, stories_chat):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "Lily and Tom went to the", "answer": "garden"},
                                   {"prompt": "The little girl saw a", "answer": "bird"}]))
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({"model_name": str(stories_chat), "epochs": 1, "learning_rate": 1e-3,
                                      "use_chat_template": False, "texts": TEXTS,
                                      "output_dir": str(tmp_path / "ckpt")}))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Lily went to the park.\n\nTom had a red ball and a big dog.\n\nThe cat sat on the mat.")
    return dict(prompts=str(prompts), sft_config=str(config), filter={"max_rank": 10},
                formats={"evaluation": ["completion"], "attribution": "completion"}, attribution={"max_nodes": 8},
                concept={"corpus": str(corpus)}, experiment={"seeds": 1, "attribution_after": False})


def test_unattended_run_attributes_publishes_and_takes_the_concept_from_parameters(job):
    state = concept_sft(**merge_parameters(job, {"concept": {"name": "playing outside"}}), return_state=True)
    out = state.result()
    if out["target_cases"] == 0:
        pytest.fail("stories260K should give a target case for these prompts")
    [graph] = out["attribution"]
    assert len(out["experiments"]) == out["target_cases"]  # one experiment per target case
    assert all(e["concept"] == "playing outside" and e["neuron"] is None  # a concept named, no neuron chosen
               for e in out["experiments"])
    saved = json.loads(Path(graph["files"]["json"]).read_text())
    assert saved["format"] == "completion" and saved["prune"]["max_nodes"] == 8 and saved["nodes"]
    assert Path(graph["files"]["png"]).is_file() and Path(graph["files"]["html"]).is_file()
    candidates = json.loads((Path(graph["files"]["json"]).parent / "candidates.json").read_text())
    assert candidates["candidates"]  # candidates were found, and none was recorded as chosen
    chosen = concept_sft(**merge_parameters(job, {"concept": {"name": "playing outside",
                                                              "neuron": candidates["candidates"][0]["id"]}}))
    assert chosen["experiments"][0]["neuron"] == candidates["candidates"][0]["id"]  # chosen by a parameter
    names, artifacts = flow_run_summary(state.state_details.flow_run_id)
    assert {"concept-sft-attribution", "concept-sft-candidates", "concept-sft-attribution-report"} <= artifacts
    assert {n.rsplit("-", 1)[0] for n in names} >= {"attribution", "concept-candidates"}


def paused_run(flow_name: str = "concept-sft", timeout: float = 240):
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
                limit=5, sort=FlowRunSort.START_TIME_DESC)
            if runs:
                return runs[0]
            time.sleep(0.5)
    raise AssertionError("the flow run never paused")


def test_interactive_run_pauses_for_the_researcher_and_resumes_with_input(job, tmp_path):
    box = {}
    job = merge_parameters(job, {"concept": {"interactive": True, "pause_timeout": 150},
                                 "experiment": {"joint": True}})  # one fine-tune over every case: one pause
    runner = threading.Thread(target=lambda: box.update(state=concept_sft(**job, return_state=True)))
    runner.start()
    try:
        run = paused_run()
        keyset = keyset_from_paused_state(run.state)
        with get_client(sync_client=True) as client:
            description = client.read_flow_run_input(run.id, keyset["description"])
            schema = json.loads(client.read_flow_run_input(run.id, keyset["schema"]))
        assert "Choose the intermediate concept" in description and "graph.png" in description
        assert {"concept", "neuron", "texts"} <= set(schema["properties"])
        assert schema["properties"]["texts"]["default"] == TEXTS  # the form is prefilled with the config's texts
        assert schema["properties"]["neuron"].get("default") is None  # no neuron suggested as if chosen
        resume_flow_run(run.id, run_input={"concept": "balls and parks", "neuron": "L3/N7@2",
                                           "texts": RESEARCHER_TEXTS})
    finally:
        runner.join(timeout=600)
    out = box["state"].result()
    [exp] = out["experiments"]
    assert (exp["name"], exp["concept"], exp["neuron"], exp["texts"]) == ("joint-concept", "balls and parks",
                                                                        "L3/N7@2", RESEARCHER_TEXTS)
    results = json.loads((Path(out["run_dir"]) / "results.json").read_text())
    [seed] = results["experiments"][0]["seeds"]
    assert len(seed["losses"]) == 1  # one text, one step
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state.type == StateType.COMPLETED


def test_bad_attribution_parameters_fail_before_model_work(job, tmp_path):
    for bad, match in [({"tau": 1.5}, r"attribution.tau: tau must be a number in \(0, 1\)"),
                       ({"tau": 0}, r"tau must be a number in \(0, 1\)"),
                       ({"prune_mode": "top"}, "attribution.prune_mode: unknown pruning mode 'top'"),
                       ({"contrastive": [" Lily"]}, "contrastive needs exactly two tokens")]:
        with pytest.raises(ReasonlabError, match=match):
            concept_sft(**merge_parameters(job, {"attribution": bad}))
    assert not (tmp_path / "ckpt").exists()


def test_contrastive_tokens_that_are_not_one_token_name_their_pieces(job, tmp_path):
    with pytest.raises(ReasonlabError, match=r"contrastive token ' elephant' is not one token: it becomes \[' e', "):
        concept_sft(**merge_parameters(job, {"attribution": {"contrastive": [" elephant", " the"]}}))
    assert not (tmp_path / "ckpt").exists()
