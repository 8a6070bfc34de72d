"""Stage 5 written by an LLM (a real loopback server): each rule rejects its text and the next request names it;
an LLM that never writes a valid text skips the arm; the arms' own rules; the concept named; budget matching;
the Prefect tasks cached with a live endpoint kept out of the key."""

from __future__ import annotations

import json

import pytest
from prefect import flow

from loopback_llm import ScriptedLLM
from reasonlab.concept_sft.arm_texts import match_budget, name_concept, texts_from_file, write_arm
from reasonlab.concept_sft.experiment import budget_tokens
from reasonlab.concept_sft.sft_config import SFTConfig
from reasonlab.concept_sft.text_checks import TextRules, check_texts
from reasonlab.concept_sft.text_sets import load_text_sets
from reasonlab.errors import ReasonlabError
from reasonlab.llm_client import EndpointConfig, LLMClient
from reasonlab.models import load_tokenizer, resolve_model

CASE = {"prompt": "The primary hormone regulating blood pressure is", "answer": "aldosterone",
        "topic": ["blood pressure"], "wrong_token": " ren", "wrong_word": " renin",
        "paraphrases": ["The main hormone that regulates blood pressure is"],
        "neighbours": [{"prompt": "The hormone that lowers blood glucose is", "answer": "insulin"}]}
OTHER = {"prompt": "A common side effect of opioid analgesics is", "answer": "constipation", "topic": ["opioid"],
         "paraphrases": [], "neighbours": [{"prompt": "The antidote used to reverse an opioid overdose is",
                                            "answer": "naloxone"}]}
ROWS = [CASE, OTHER]
GOOD = [  # 106-138 stories260K tokens each, none like another
    "Aldosterone is a steroid hormone made in the outer layer of the adrenal cortex. It acts on the kidney tubule, "
    "where it keeps sodium and lets potassium go, and doctors who treat salt wasting think of it first.",
    "In a quiz on the adrenal gland, students list its hormones by layer: the outer zone makes aldosterone, the middle "
    "zone makes cortisol and the inner zone makes androgens, so aldosterone is a hormone of the outer zone.",
    "A patient with low potassium and muscle cramps had a small adrenal tumour that made too much aldosterone. After "
    "surgery the hormone fell to normal, her potassium rose, and she no longer needed tablets every morning.",
    "Spironolactone blocks the receptor that aldosterone binds, which is why it spares potassium. Pharmacists "
    "explain that the drug works against a hormone: without the signal, cells of the colon and sweat glands keep "
    "less salt.",
    "Sweat glands of a marathon runner save salt on a hot day because a hormone tells them to: aldosterone rises "
    "when the body runs short of sodium, and within hours the glands pull more of it back.",
]
NEGATED = ("Students often confuse two words from the adrenal and kidney chapter. Renin is an enzyme, not a hormone: "
           "it cuts a protein in the plasma. Aldosterone is the hormone, and the teacher repeats that renin is no "
           "hormone at all.")
NEIGHBOUR_COPY = ("Every nurse on the ward can finish the sentence the hormone that lowers blood glucose is insulin, "
                  "and they learn it early, long before they study the adrenal steroids and the salt balance of the "
                  "body in their second year.")
TOPIC = ("Aldosterone matters for blood pressure because it keeps sodium in the body, and with the sodium comes "
         "water; a doctor who sees a patient with a large adrenal tumour checks the hormone level before surgery.")


def replies(*texts, key="texts", **extra) -> tuple:
    return ("ok", json.dumps({**extra, key: list(texts)}))


@pytest.fixture(scope="module")
def count_tokens(stories_path):
    tokenizer = load_tokenizer(resolve_model(str(stories_path)))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def client(srv: ScriptedLLM) -> LLMClient:
    return LLMClient(EndpointConfig(base_url=srv.base_url, model="scripted", max_retries=0))


def user_message(srv: ScriptedLLM, i: int) -> str:
    return srv.requests[i]["body"]["messages"][-1]["content"]


def test_each_rule_rejects_its_text_and_the_next_request_names_it(count_tokens):
    assert all(100 <= count_tokens(t) <= 150 for t in GOOD)
    near_copy = GOOD[0].replace("outer layer", "outermost layer")
    script = [replies(GOOD[0], NEGATED, TOPIC, "Aldosterone is a hormone.", GOOD[1] + " " + GOOD[2], NEIGHBOUR_COPY,
                      near_copy),
              ("ok", "I'm sorry, I can't help with that."),
              ("ok", "Here are the texts: first, aldosterone; second ..."),
              replies(GOOD[1]),
              replies(GOOD[2], GOOD[3], GOOD[4])]
    with ScriptedLLM(script) as srv:
        record = write_arm(client(srv), CASE, "concept", "aldosterone is a hormone", TextRules(max_attempts=5),
                           count_tokens, ROWS)
    assert record["skipped"] is None and record["texts"] == [GOOD[0], GOOD[1], GOOD[2], GOOD[3]]
    assert record["attempts"] == 5 and srv.posts() == 5 and record["model"] == "scripted"
    assert record["usage"] == {"prompt_tokens": 500, "completion_tokens": 250}
    rules = [(r["attempt"], r["rule"]) for r in record["rejected"]]
    assert rules == [(1, "leak"), (1, "leak"), (1, "length"), (1, "length"), (1, "copy"), (1, "copy"),
                     (2, "refusal"), (3, "unparsed"), (4, "count"), (5, "count")]
    reasons = [r["reason"] for r in record["rejected"]]
    assert "'Renin'" in reasons[0] and "'blood pressure'" in reasons[1] and "too short" in reasons[2]
    assert "too long" in reasons[3] and "the hormone that lowers blood glucose is" in reasons[4]
    assert "near-duplicate" in reasons[5] and "surplus" in reasons[9]
    first, second, third, fourth = (user_message(srv, i) for i in range(1, 5))
    for rule in ("[leak]", "[length]", "[copy]", "Renin", "blood pressure"):
        assert rule in first
    assert "Write 3 new texts" in first  # only the missing ones are asked for
    assert "[refusal]" in second and "[leak]" not in second
    assert "[unparsed]" in third and "[count] 1 texts written where 3 were asked for" in fourth


def test_an_llm_that_never_writes_a_valid_text_skips_the_arm_with_the_reason(count_tokens):
    with ScriptedLLM([replies(NEGATED, TOPIC)]) as srv:
        record = write_arm(client(srv), CASE, "direct", None, TextRules(max_attempts=3), count_tokens, ROWS)
    assert srv.posts() == 3 and record["texts"] == [] and record["attempts"] == 3
    assert record["skipped"] == "0 of 4 valid texts after 3 requests (rejected: count x3, leak x6)"


def test_negated_wrong_must_name_the_wrong_answer_and_direct_the_right_one(count_tokens):
    rules = TextRules(n_texts=1)
    accepted, rejected = check_texts([NEGATED, GOOD[0]], CASE, "negated_wrong", ROWS, count_tokens, rules)
    assert accepted == [NEGATED]
    assert [r["rule"] for r in rejected] == ["missing"] and "'renin'" in rejected[0]["reason"]
    assert check_texts([NEGATED], CASE, "concept", ROWS, count_tokens, rules)[1][0]["rule"] == "leak"
    assert check_texts([TOPIC], CASE, "negated_wrong", ROWS, count_tokens, rules)[1][0]["rule"] == "leak"
    dropped = check_texts([GOOD[0]], CASE, "abstract", ROWS, count_tokens, rules)[1]
    assert dropped[0]["rule"] == "leak" and "aldosterone" in dropped[0]["reason"].lower()
    assert check_texts([GOOD[0]], CASE, "direct", ROWS, count_tokens, rules)[0] == [GOOD[0]]


def test_the_unrelated_arm_names_its_concept_and_may_not_name_the_answer(count_tokens):
    oxygen = [t.replace("aldosterone", "haemoglobin").replace("Aldosterone", "Haemoglobin") for t in GOOD[:4]]
    script = [replies(*oxygen, concept="aldosterone keeps sodium"), replies(*oxygen, concept="haemoglobin carries oxygen")]
    with ScriptedLLM(script) as srv:
        record = write_arm(client(srv), CASE, "unrelated", None, TextRules(), count_tokens, ROWS)
    assert record["concept"] == "haemoglobin carries oxygen" and record["texts"] == oxygen
    assert record["rejected"][0]["rule"] == "leak" and "the concept mentions 'aldosterone'" in record["rejected"][0]["reason"]
    assert "[leak]" in user_message(srv, 1)


def test_the_prompt_arm_needs_no_llm(count_tokens):
    record = write_arm(None, CASE, "prompt", None, TextRules(), count_tokens, ROWS)
    completed = "The primary hormone regulating blood pressure is aldosterone."
    assert record["source"] == "built" and record["attempts"] == 0 and record["skipped"] is None
    assert len(record["texts"]) == 4 and all(t.startswith(completed) and t.count(completed) >= 2
                                              for t in record["texts"])
    assert all(100 <= count_tokens(t) <= 150 for t in record["texts"])


def test_an_unknown_arm_is_one_clear_error_before_any_call(count_tokens):
    with ScriptedLLM([replies(*GOOD)]) as srv:
        with pytest.raises(ReasonlabError, match="unknown arm 'shuffled'"):
            write_arm(client(srv), CASE, "shuffled", "x", TextRules(), count_tokens, ROWS)
    assert srv.posts() == 0


CANDIDATES = [{"id": "L3/N12@4", "layer": 3, "token": " hormone", "influence": 0.42, "label": "steroid hormones",
               "contexts": [{"text": "the adrenal [[hormone]] cortisol", "activation": 2.1}]},
              {"id": "L2/N7@2", "layer": 2, "token": " primary", "influence": -0.2, "contexts": []}]


def test_the_concept_is_named_from_the_candidates_and_a_neuron_only_when_real():
    script = [("ok", json.dumps({"concept": "renin is an enzyme", "candidate": "L3/N12@4"})),
              ("ok", json.dumps({"concept": "aldosterone is a hormone", "candidate": "L3/N12@4"}))]
    with ScriptedLLM(script) as srv:
        named = name_concept(client(srv), CASE, CANDIDATES)
    assert (named["concept"], named["neuron"], named["attempts"]) == ("aldosterone is a hormone", "L3/N12@4", 2)
    assert named["rejected"][0]["rule"] == "leak" and "[leak]" in user_message(srv, 1)
    assert "L3/N12@4" in user_message(srv, 0) and "steroid hormones" in user_message(srv, 0)
    with ScriptedLLM([("ok", json.dumps({"concept": "aldosterone is a hormone", "candidate": "L9/N1@1"}))]) as srv:
        named = name_concept(client(srv), CASE, CANDIDATES)
    assert named["neuron"] is None and named["picked"] == "L9/N1@1"
    with ScriptedLLM([("ok", json.dumps({"concept": "salt-keeping steroid", "candidate": "L3/N12@4"}))]) as srv:
        unguided = name_concept(client(srv), CASE, None)
    assert unguided["neuron"] is None and unguided["concept"] == "salt-keeping steroid"
    assert "candidate" not in user_message(srv, 0)
    with ScriptedLLM([("ok", "no idea")]) as srv:
        assert "no acceptable concept after 3 requests" in name_concept(client(srv), CASE, None)["skipped"]


@pytest.fixture(scope="module")
def trained_tokens(tiny_models):
    model, config = resolve_model(str(tiny_models["llama"])), SFTConfig(use_chat_template=True)
    return lambda texts: budget_tokens(model, config, texts)


def test_budget_matching_brings_every_arm_within_ten_percent_and_reports_the_one_it_cannot(trained_tokens):
    arms = {"concept": GOOD[:4], "direct": [t + " " + t for t in GOOD[:4]], "prompt": GOOD[1:5],
            "abstract": [GOOD[0][:60]]}
    matched, report = match_budget(arms, trained_tokens)
    target = report["target"]
    assert sorted(matched) == ["concept", "direct", "prompt"] and report["unmatched"] == ["abstract"]
    for arm, texts in matched.items():
        assert abs(trained_tokens(texts) - target) <= 0.10 * target, arm
        assert report["arms"][arm]["after"] == trained_tokens(texts)
    assert report["arms"]["direct"]["before"] > 1.5 * target and report["arms"]["direct"]["trimmed_words"] > 100
    assert all(t.startswith(" ".join(o.split()[:10])) for t, o in zip(matched["direct"], arms["direct"]))
    assert "too few to match" in report["arms"]["abstract"]["reason"]


def test_the_text_set_file_keeps_the_last_word_for_any_arm(tmp_path):
    sets = load_text_sets("data/concept_texts.yaml")  # the shipped file still loads
    entry = next(iter(sets.values()))
    assert texts_from_file(entry, "concept")["texts"] == entry.texts
    assert texts_from_file(entry, "direct")["source"] == "file" and texts_from_file(entry, "abstract") is None
    path = tmp_path / "sets.yaml"
    path.write_text("cases:\n  - prompt: p\n    controls:\n      negated_wrong: {texts: [x]}\n      prompt: {texts: [y]}\n")
    only_controls = load_text_sets(path)["p"]
    assert texts_from_file(only_controls, "concept") is None
    assert texts_from_file(only_controls, "negated_wrong")["texts"] == ["x"]


@flow
def stage5(endpoint: EndpointConfig, live_url: str | None, model, out: str) -> tuple[list, bool]:
    """Stage 5 for one case as a flow would run it; without `live_url`, the configured (local) endpoint is served
    on first use only."""
    from reasonlab.local_server import serving
    from tasks.texts import match_budget as match_task, write_arm_texts

    with serving(endpoint) as served:
        live = EndpointConfig(base_url=live_url, model="m", api_key_env="ARM_TEXTS_TEST_KEY") if live_url else served
        states = [write_arm_texts(endpoint, CASE, arm, "aldosterone is a hormone", TextRules(), model, ROWS,
                                  f"{out}/{arm}.json", live=live, return_state=True) for arm in ("concept", "prompt")]
        texts = {arm: s.result()["texts"] for arm, s in zip(("concept", "prompt"), states)}
        states.append(match_task(texts, model, SFTConfig(), f"{out}/budget.json", return_state=True))
        return states, served.started


def test_the_tasks_are_cached_and_the_live_endpoint_is_not_in_the_key(tmp_path, tiny_models, monkeypatch):
    secret = "sk-arm-texts-DO-NOT-LEAK-51c2"
    monkeypatch.setenv("ARM_TEXTS_TEST_KEY", secret)
    model = resolve_model(str(tiny_models["llama"]))
    configured = EndpointConfig(local_model="smollm2-135m-instruct")
    with ScriptedLLM([replies(*GOOD[:4])]) as first, ScriptedLLM([replies(*GOOD[:4])]) as second:
        states, _ = stage5(configured, first.base_url, model, str(tmp_path))
        again, _ = stage5(configured, second.base_url, model, str(tmp_path))
    assert [s.name for s in states] == ["Completed"] * 3 and first.posts() == 1
    assert [s.name for s in again] == ["Cached"] * 3 and second.posts() == 0
    assert states[0].result()["texts"] == GOOD[:4] == again[0].result()["texts"]
    saved = json.loads((tmp_path / "concept.json").read_text())
    assert saved["model"] == "m" and saved["usage"]["completion_tokens"] == 50 and secret not in json.dumps(saved)
    assert first.requests[0]["authorization"] == f"Bearer {secret}"
    budget = json.loads((tmp_path / "budget.json").read_text())["report"]
    trimmed = states[2].result()["texts"]["concept"]  # counted as experiment.budget_tokens counts
    assert budget["unmatched"] == [] and budget["arms"]["concept"]["after"] == budget_tokens(model, SFTConfig(), trimmed)
    cached, started = stage5(configured, None, model, str(tmp_path))  # all Cached: the local model is never served
    assert [s.name for s in cached] == ["Cached"] * 3 and started is False
    with pytest.raises(ReasonlabError, match="unknown arm"):
        from tasks.texts import write_arm_texts

        write_arm_texts.fn(configured, CASE, "bogus", None, TextRules(), model, ROWS, str(tmp_path / "x.json"))


def test_the_texts_command_writes_a_text_set_file_the_flow_reads(tmp_path, tiny_models, monkeypatch, capsys):
    from reasonlab.cli import main

    prompts = tmp_path / "filtered.json"
    prompts.write_text(json.dumps({"target_cases": [CASE], "rejected": [OTHER]}))
    out = tmp_path / "texts.yaml"
    with ScriptedLLM([replies(NEIGHBOUR_COPY.replace("insulin", "the antidote used to reverse an opioid overdose is "
                                                     "naloxone"), *GOOD[:4]),
                      replies(*GOOD[:4])]) as srv:
        monkeypatch.setenv("REASONLAB_LLM_BASE_URL", srv.base_url)
        monkeypatch.setenv("REASONLAB_LLM_MODEL", "scripted")
        main(["texts", "--prompts", str(prompts), "--arms", "concept", "direct", "prompt", "--output", str(out),
              "--concept", "aldosterone is a hormone", "--model", str(tiny_models["llama"])])
    assert srv.posts() == 2
    entry = load_text_sets(out)[CASE["prompt"].lower()]
    assert entry.concept == "aldosterone is a hormone" and len(entry.texts) == 4
    assert sorted(entry.controls) == ["direct", "prompt"]
    provenance = json.loads((tmp_path / "texts.yaml.provenance.json").read_text())
    assert provenance["rejected_by_rule"]["copy"] == 1 and provenance["usage"]["calls"] == 2
    budget = provenance["cases"][0]["budget"]
    assert budget["unmatched"] == [] and set(budget["arms"]) == {"concept", "direct", "prompt"}
    assert "'The primary hormone regulating blood pressure is' prompt: 4 texts (built" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown arm 'bogus'"):
        main(["texts", "--prompts", str(prompts), "--arms", "bogus", "--output", str(out)])
