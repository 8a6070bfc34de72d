"""The study across cases end to end on stories260K through real Prefect, its texts from a loopback
OpenAI-compatible server that follows the requests it gets (one arm's texts always leak): every stage, the
study report, the recorded skips, the cached rerun without any forward pass or LLM call, and bad input."""

import json
import re
from pathlib import Path

import pytest
import yaml

from flows.concept_study import concept_study
from loopback_llm import ScriptedLLM
from reasonlab import models
from reasonlab.errors import ReasonlabError
from tasks.run_info import flow_run_summary

REPO = Path(__file__).resolve().parents[1]
WORDS = ["sun", "tree", "river", "bread", "song", "window", "garden", "rain", "stone", "hill", "boat", "lamp",
         "cloud", "apple", "road", "bell", "moon", "fish", "cake", "bird", "door", "snow", "kite", "shoe"]


def story(i: int, extra: str = "") -> str:
    """A short text of its own words: two texts share no word trigram."""
    words = [WORDS[(i * 7 + j * 5) % len(WORDS)] for j in range(12)]
    return f"{extra} " + " ".join(f"the {w} was near." if k % 3 == 0 else w for k, w in enumerate(words))


def responder(leaky_arm: str):
    """Answers each request the way a careful LLM would, except that `leaky_arm`'s texts always name the first
    word the request forbids."""
    calls = {"n": 0}

    def answer(body: dict) -> tuple:
        ask = body["messages"][-1]["content"]
        calls["n"] += 1
        if "Unfinished sentence" in ask:
            return "ok", json.dumps(["Once, the small child saw a", "Later that day the little kid saw a"])
        if "intermediate concept" in ask:
            ids = re.findall(r"- id (\S+):", ask)
            return "ok", json.dumps({"concept": "small things matter", **({"candidate": ids[0]} if ids else {})})
        n = int(re.search(r"Write (\d+) (?:new )?texts", ask).group(1))
        texts = [story(calls["n"] * 3 + i) for i in range(n)]
        wrong = re.search(r'mentions the wrong answer "([^"]+)"', ask)
        if wrong:  # negated_wrong: the arm's point is to name it
            texts = [f"It was not a {wrong.group(1)}. " + t for t in texts]
        right = re.search(r'states the right answer "([^"]+)"', ask)
        if right:
            texts = [f"The answer is {right.group(1)}. " + t for t in texts]
        forbidden = re.search(r"Never use these words, not even to negate them: ([^,.]+)", ask)
        if leaky_arm in ARM_MARKS and ARM_MARKS[leaky_arm] in ask and forbidden:
            texts = [f"{forbidden.group(1)} " + t for t in texts]
        return "ok", json.dumps({"concept": "rivers run to the sea", "texts": texts})

    return answer, calls


ARM_MARKS = {"abstract": "abstract category reasoning", "direct": "states the right answer"}


@pytest.fixture()
def study_inputs(tmp_path, stories_path, stories_case):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([
        {"prompt": "The little girl saw a", "answer": stories_case["answer"], "topic": ["girl"]},
        {"prompt": "The dog ran to the", "answer": "moon"},
        {"prompt": "The little boy saw a", "answer": "tree"},
    ]))
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({"model_name": str(stories_path), "epochs": 1, "learning_rate": 1e-3,
                                      "use_chat_template": False, "texts": []}))
    return {"prompts": str(prompts), "sft_config": str(config)}


def run_study(study_inputs, llm_url: str, **study):
    import os

    os.environ["REASONLAB_LLM_BASE_URL"], os.environ["REASONLAB_LLM_MODEL"] = llm_url, "loopback"
    return concept_study(**study_inputs, formats={"filter": "completion"},
                         experiment={"seeds": 2, "workers": 1},
                         study={"arms": ["concept", "direct", "prompt", "abstract"], "n_texts": 2,
                                "min_tokens": 30, "max_tokens": 400, **study}, return_state=True)


def test_study_runs_each_arm_judges_across_cases_records_skips_and_reruns_cached(study_inputs):
    answer, calls = responder(leaky_arm="abstract")
    with ScriptedLLM([answer]) as llm:
        first = run_study(study_inputs, llm.base_url)
        out = first.result()
        requests_first = llm.posts()
        names, artifacts = flow_run_summary(first.state_details.flow_run_id)
        assert {"concept-sft-study-report", "concept-sft-study-findings"} <= artifacts
        cases = {r["case"] for r in out["rows"]}
        assert len(cases) >= 1 and {r["arm"] for r in out["rows"]} == {"concept", "direct", "prompt"}
        assert len(out["rows"]) == len(cases) * 3 * 2  # case x arm x seed: abstract never had valid texts
        assert all(s["arm"] == "abstract" and "leak" in s["reason"] for s in out["skipped"]) and out["skipped"]
        assert all(f["verdict"] == "cannot tell" for f in out["findings"])  # fewer cases than a test needs
        assert all(f["p_holm"] is None or f["p_holm"] != f["p_holm"] for f in out["findings"])  # and no p-value
        tokens = {r["arm"]: r["train_tokens"] for r in out["rows"]}
        assert max(tokens.values()) <= 1.1 * min(tokens.values())  # the arms of a case share a budget
        [concept_arm] = [t["arms"]["concept"] for t in out["texts"]][:1]
        assert concept_arm["concept"] == "small things matter" and concept_arm["neuron"]  # a real candidate
        report = open(out["run_dir"] + "/study/study.md").read()
        assert "cannot tell" in report and "abstract" in report and "leak" in report

        forwards = models.forward_passes()
        second = run_study(study_inputs, llm.base_url)
        states, _ = flow_run_summary(second.state_details.flow_run_id)
        assert set(states.values()) == {"Cached"}, states
        assert llm.posts() == requests_first and models.forward_passes() == forwards
        assert json.dumps(second.result()["findings"]) == json.dumps(out["findings"])  # NaN p-values alike


def test_bad_study_input_is_one_clear_error(study_inputs, tmp_path):
    with pytest.raises(ReasonlabError, match="study.arms.0: unknown arm 'nope'"):
        concept_study(**study_inputs, study={"arms": ["nope"]})
    empty = tmp_path / "none.json"
    empty.write_text(json.dumps([{"prompt": "Once upon a time, there was a", "answer": "little"}]))
    with ScriptedLLM([("ok", "[]")]) as llm:
        with pytest.raises(ReasonlabError, match="yields no target case"):
            run_study({**study_inputs, "prompts": str(empty)}, llm.base_url).result()
        assert llm.posts() == 0


def test_a_study_killed_mid_run_resumes_with_its_finished_experiments_cached(study_inputs, tmp_path):
    """kill -9 once the first experiment has finished; the rerun takes it (and every stage before) from the cache."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterState, \
        TaskRunFilterStateName
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort
    from prefect.settings import PREFECT_API_URL

    def finished_experiments() -> int:
        with get_client(sync_client=True) as client:
            return len(client.read_task_runs(task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(like_="sft-experiment"),
                state=TaskRunFilterState(name=TaskRunFilterStateName(any_=["Completed"]))),
                limit=200, sort=TaskRunSort.ID_DESC))

    config = yaml.safe_load(open(study_inputs["sft_config"]))
    Path(study_inputs["sft_config"]).write_text(yaml.safe_dump({**config, "learning_rate": 2e-3}))  # own cache keys
    answer, _ = responder(leaky_arm="none")
    with ScriptedLLM([answer]) as llm:
        env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), REASONLAB_LLM_BASE_URL=llm.base_url,
                   REASONLAB_LLM_MODEL="loopback", PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "flows.concept_study", "--prompts", study_inputs["prompts"], "--sft-config",
               study_inputs["sft_config"], "--filter-format", "completion", "--seeds", "2", "--arms", "concept",
               "direct", "prompt", "--n-texts", "2", "--min-tokens", "30", "--max-tokens", "400", "--max-cases", "1"]
        before = finished_experiments()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and finished_experiments() == before:
            time.sleep(0.2)
        assert proc.poll() is None, "the study ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        finished = finished_experiments() - before
        assert 1 <= finished < 6, f"{finished} experiments finished before the kill (of 3 arms x 2 seeds)"

        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["experiments"] == 6
        with get_client(sync_client=True) as client:
            [run] = client.read_flow_runs(limit=1, sort=FlowRunSort.START_TIME_DESC)
        states, _ = flow_run_summary(run.id)
        experiments = [s for name, s in states.items() if name.startswith("sft-experiment")]
        assert experiments.count("Cached") == finished and experiments.count("Completed") == 6 - finished
        assert all(s == "Cached" for name, s in states.items() if name.startswith(("topk-filter", "attribution",
                                                                                   "write-arm-texts")))
