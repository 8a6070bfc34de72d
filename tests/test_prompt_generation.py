"""Stage 1 (prompt generation) against real loopback servers: rules, faults, caching, key hygiene, local model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect import flow

from loopback_llm import ScriptedLLM, items
from reasonlab import paths
from reasonlab.errors import ReasonlabError
from reasonlab.llm_client import EndpointConfig
from reasonlab.concept_sft.prompt_rules import check_item
from reasonlab.llm_output import parse_items
from reasonlab.concept_sft.prompts import load_prompts, validate_item
from tasks.prompt_generation import generate_prompts, resolve_endpoint

SECRET = "sk-test-DO-NOT-LEAK-7f3a9c"
GOOD = [("The hormone that lowers blood glucose is", "insulin"),
        ("The largest artery in the human body is the", "aorta")]


@pytest.mark.parametrize("row, reason", [
    ({"prompt": "What causes diabetes?", "answer": "insulin"}, "question"),
    ({"prompt": "Is dopamine involved in reward", "answer": "yes"}, "question"),
    ({"prompt": "Dopamine involvement in reward is", "answer": "true"}, "yes/no"),
    ({"prompt": "The treatment for gout includes", "answer": "colchicine"}, "several valid answers"),
    ({"prompt": "The largest organ of the body is", "answer": "the skin"}, "article"),
    ({"prompt": "The organ that filters blood is", "answer": "their kidneys"}, "determiner"),
    ({"prompt": "The heart pumps blood.", "answer": "heart"}, "finished sentence"),
    ({"prompt": "The ___ produces insulin", "answer": "pancreas"}, "fill-in-the-blank"),
    ({"prompt": "Insulin is produced by the pancreas in the", "answer": "pancreas"}, "contains its answer"),
    ({"prompt": "Scurvy is caused by a lack of", "answer": "vitamin C deficiency"}, "1-2 words"),
    ({"prompt": "Malaria is transmitted by", "answer": "mosquitoes/flies"}, "single"),
])
def test_rules_reject_with_reason(row, reason):
    with pytest.raises(ReasonlabError, match=reason):
        check_item(row, "x")


def test_tolerant_parser():
    assert parse_items(items(*GOOD))[1] == "json"
    fenced = "Sure!\n```json\n" + items(*GOOD) + "\n```"
    assert len(parse_items(fenced)[0]) == 2
    truncated = items(*GOOD)[:-20]  # cut mid-second object: the first survives
    rows, how = parse_items(truncated)
    assert how == "salvaged objects" and rows[0]["answer"] == "insulin"
    assert parse_items('{"items": [{"prompt": "a b c", "answer": "d",},]}')[1] == "json"  # trailing commas
    assert parse_items("not json at all")[1].startswith("malformed JSON")
    check_item({"prompt": GOOD[0][0], "answer": "insulin", "explanation": "extra keys are dropped"}, "x")


@flow
def stage1(endpoint: EndpointConfig, params: dict, out_file: str, key_block: str | None = None) -> dict:
    return generate_prompts(endpoint, params, out_file, key_block=key_block)


def test_faults_never_crash_never_lose_prompts_and_rerun_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FAULT_TEST_KEY", SECRET)
    bad = ("What is the most common cause of anemia?", "iron")
    script = [
        ("ok", items(*GOOD, bad, ("The largest artery in the human body is the", "aorta"))),   # batch 0
        ("status", 429, {"retry-after": "1"}),                                                   # batch 1 ...
        ("ok", items(("Scurvy is caused by a lack of", "vitamin C"), GOOD[0])),                  # ... retried
        ("status", 500), ("status", 500), ("status", 500),                                       # batch 2: gives up
        ("sleep", 2.0, "{}"),  ("ok", "I will list them: prompt = heart, answer = ???"),         # batch 3: timeout,
        ("ok", "still {not json"),                                                               # malformed twice
        ("refusal", "I can't help with medical content."),                                       # batch 4
        ("ok", items(("The bone in the upper arm is the", "humerus"))),                          # batch 5
    ]
    out = tmp_path / "medical_prompts.json"
    (tmp_path / "seed.json").write_text("[]")
    params = {"n": 3, "batches": 6, "domain": "medical", "topics": ["endocrinology", "anatomy"], "parse_retries": 1}
    with ScriptedLLM(script) as srv:
        endpoint = EndpointConfig(base_url=srv.base_url, model="gpt-test", api_key_env="FAULT_TEST_KEY",
                                  timeout_s=1.0, max_retries=2, backoff_base_s=0.05,
                                  price_input_per_1k=0.0025, price_output_per_1k=0.01)
        summary = stage1(endpoint, params, str(out))
        posts = srv.posts()
        assert all(r["authorization"] == f"Bearer {SECRET}" for r in srv.requests)
        assert "response_format" in srv.requests[0]["body"]  # structured output asked for
        again = stage1(endpoint, params, str(out))  # cached: no LLM call at all
        assert srv.posts() == posts
    assert again == summary

    data = json.loads(out.read_text())
    accepted = [r["prompt"] for r in data["prompts"]]
    assert accepted == [GOOD[0][0], GOOD[1][0], "Scurvy is caused by a lack of", "The bone in the upper arm is the"]
    for i, row in enumerate(data["prompts"]):
        validate_item(row, f"row {i}")
    assert len(load_prompts(out)) == 4  # what the filter stage reads
    reasons = [r["reason"] for r in data["rejected"]]
    assert any("question" in r for r in reasons) and sum("duplicate" in r for r in reasons) == 2
    status = {b["batch"]: (b["status"], b.get("reason", "")) for b in data["batches"]}
    assert status[2][0] == "failed" and "HTTP 500" in status[2][1]
    assert status[3][0] == "rejected" and "malformed JSON" in status[3][1]
    assert status[4][0] == "rejected" and status[4][1].startswith("refusal")
    assert summary["usage"]["prompt_tokens"] > 0 and summary["usage"]["cost_usd"] > 0

    # the key never reaches results, output files, logs or artifacts
    _assert_no_secret([paths.home(), tmp_path])


def _assert_no_secret(folders: list[Path]) -> None:
    for folder in folders:
        for f in Path(folder).rglob("*"):
            if f.is_file():
                assert SECRET.encode() not in f.read_bytes(), f"key leaked into {f}"

    text = "".join(api_text(kind) for kind in ("logs", "artifacts", "task_runs", "flow_runs"))
    assert SECRET not in text and "generate-prompts" in text


PAGE = 200  # the server's largest page


def api_text(kind: str) -> str:
    """Every record of `kind` the session's Prefect API holds, page by page (the raw JSON text)."""
    from prefect.client.orchestration import get_client

    pages, offset = [], 0
    with get_client(sync_client=True) as c:
        while True:
            resp = c._client.post(f"/{kind}/filter", json={"limit": PAGE, "offset": offset})
            resp.raise_for_status()
            pages.append(resp.text)
            if len(resp.json()) < PAGE:
                return "".join(pages)
            offset += PAGE


def test_paraphrases_and_neighbours_pass_the_same_rules_one_by_one(tmp_path):
    from reasonlab.concept_sft.prompt_generation import generate_prompts as generate
    from reasonlab.concept_sft.prompt_generation import GenerationParams
    from reasonlab.llm_client import LLMClient

    reply = json.dumps({"items": [
        {"prompt": GOOD[0][0], "answer": "insulin", "topic": ["glucose"],
         "paraphrases": ["The glucose-lowering hormone is", "Which hormone lowers glucose?", GOOD[0][0]],
         "neighbours": [{"prompt": "The hormone that raises blood glucose is", "answer": "glucagon"},
                        {"prompt": GOOD[1][0], "answer": "aorta"},            # the next item: a target
                        {"prompt": "The gland that makes insulin is the", "answer": "the pancreas"}]},
        {"prompt": GOOD[1][0], "answer": "aorta", "topic": ["artery"], "paraphrases": [],
         "neighbours": [{"prompt": "The glucose-lowering hormone is", "answer": "insulin"}]}]})  # item 0's paraphrase
    out = tmp_path / "p.json"
    with ScriptedLLM([("ok", reply)]) as srv:
        client = LLMClient(EndpointConfig(base_url=srv.base_url, model="gpt-test", max_retries=0))
        summary = generate(client, GenerationParams(n=2, batches=1), out)
    data = json.loads(out.read_text())
    first, second = data["prompts"]
    assert first["paraphrases"] == ["The glucose-lowering hormone is"]
    assert first["neighbours"] == [{"prompt": "The hormone that raises blood glucose is", "answer": "glucagon"}]
    assert second["neighbours"] == []
    dropped = {(d["kind"], d["prompt"]): d["reason"] for d in data["rejected"]}
    assert "is a question" in dropped[("paraphrase", "Which hormone lowers glucose?")]
    assert "repeats the prompt" in dropped[("paraphrase", GOOD[0][0])]
    assert "starts with an article" in dropped[("neighbour", "The gland that makes insulin is the")]
    assert "is itself a target prompt" in dropped[("neighbour", "The glucose-lowering hormone is")]
    assert "is itself a target prompt" in dropped[("neighbour", GOOD[1][0])]  # became one with the next item
    assert (summary["accepted"], summary["rejected"], summary["dropped_extras"]) == (2, 0, 5)
    assert [it.neighbours for it in load_prompts(out)] == [first["neighbours"], []]  # the file loads cleanly


def test_the_leak_scan_reads_every_log_not_the_first_page():
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client

    marker = f"leak-scan-marker-{Path(paths.home()).name}"
    now = datetime.now(timezone.utc).isoformat()
    logs = [{"name": "scan", "level": 20, "message": f"filler {i}", "timestamp": now} for i in range(2 * PAGE + 5)]
    later = datetime.now(timezone.utc).isoformat()
    with get_client(sync_client=True) as c:
        c._client.post("/logs/", json=logs).raise_for_status()
        c._client.post("/logs/", json=[{"name": "scan", "level": 20, "message": marker, "timestamp": later}])
    text = api_text("logs")
    assert marker in text and text.count('"filler ') >= 2 * PAGE + 5


def test_key_in_block_is_used_but_never_stored_in_results(tmp_path):
    from blocks.llm_endpoint import LLMEndpoint

    with ScriptedLLM([("ok", items(("The vitamin needed for blood clotting is", "vitamin K")))]) as srv:
        LLMEndpoint(base_url=srv.base_url, model="gpt-test", api_key=SECRET, timeout_s=5).save("test-llm", overwrite=True)
        cfg = resolve_endpoint("test-llm")
        assert SECRET not in json.dumps(cfg.to_dict())
        summary = stage1(cfg, {"n": 1, "batches": 1}, str(tmp_path / "p.json"), key_block="test-llm")
        assert srv.requests[0]["authorization"] == f"Bearer {SECRET}"
    assert summary["accepted"] == 1
    _assert_no_secret([paths.results_dir(), tmp_path])


def test_no_endpoint_and_no_offline_model_is_one_clear_error(monkeypatch):
    for var in ("REASONLAB_LLM_BASE_URL", "REASONLAB_LLM_MODEL", "REASONLAB_LLM_LOCAL_MODEL", "REASONLAB_LLM_API_KEY_ENV"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ReasonlabError) as e:
        resolve_endpoint(None, None)
    msg = str(e.value)
    assert "no LLM endpoint configured" in msg and "REASONLAB_LLM_BASE_URL" in msg and "LLMEndpoint" in msg


def test_local_model_server_end_to_end(stories_chat, tmp_path):
    """A real `transformers serve` on loopback (stories260K): the stage runs, every item has a fate, server stops."""
    cfg = EndpointConfig(local_model=str(stories_chat))
    out = tmp_path / "p.json"
    summary = stage1(cfg, {"n": 2, "batches": 2, "max_tokens": 24, "temperature": 0.0}, str(out))
    data = json.loads(out.read_text())
    assert len(data["batches"]) == 2 and summary["usage"]["completion_tokens"] > 0
    assert all(b["status"] in ("ok", "rejected") for b in data["batches"])  # stories writes no JSON: rejected
    assert all(b.get("reason") or b["status"] == "ok" for b in data["batches"])
    assert data["endpoint"]["served_at"].startswith("http://127.0.0.1:")


@pytest.mark.slow
def test_smollm2_generates_prompts_for_the_filter(tmp_path):
    """SmolLM2-135M-Instruct behind `transformers serve`: generated prompts pass validation and feed the filter."""
    from reasonlab.models import load_model, resolve_model
    from reasonlab.concept_sft.topk_filter import filter_prompts

    resolve_model("smollm2-135m-instruct", source="offline")  # materialized from its wheel if needed
    out = tmp_path / "medical_prompts.json"
    summary = stage1(EndpointConfig(local_model="smollm2-135m-instruct"),
                     {"n": 3, "batches": 1, "max_tokens": 120, "temperature": 0.0, "parse_retries": 0}, str(out))
    data = json.loads(out.read_text())
    print(json.dumps(summary, indent=1))
    # greedy decoding: the same items on every run. The model wrote parseable items and each has a fate (accepted,
    # or rejected naming the rule it broke); then the filter classifies every item the model wrote, accepted or not.
    [batch] = data["batches"]
    assert batch["status"] == "ok", batch
    assert summary["usage"]["completion_tokens"] > 0
    items_rejected = [r for r in data["rejected"] if "kind" not in r]  # not the dropped paraphrases / neighbours
    assert batch["accepted"] == len(data["prompts"]) and batch["rejected"] == len(items_rejected)
    assert batch["accepted"] + batch["rejected"] >= 1, data
    assert all(r["reason"] and r["batch"] == 0 for r in data["rejected"])
    for i, row in enumerate(data["prompts"]):
        check_item(row, f"row {i}")
    from reasonlab.concept_sft.prompts import PromptItem

    written = [PromptItem(str(r["prompt"]), str(r["answer"])) for r in data["prompts"] + data["rejected"]
               if str(r.get("prompt") or "").strip() and str(r.get("answer") or "").strip()]
    assert written, data
    lm, tok = load_model(resolve_model("smollm2-135m-instruct"))
    result = filter_prompts(lm, tok, written, k=10, max_rank=5)
    decided = [r["prompt"] for r in result["target_cases"] + result["rejected"]]
    assert sorted(decided) == sorted(it.prompt for it in written)
    assert all(r["reason"] for r in result["rejected"])
