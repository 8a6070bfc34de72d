"""A bare case made judgeable: neighbours from the prompts file, paraphrases from an LLM (a real loopback
server), each rejected paraphrase named in the next request."""

import json

from loopback_llm import ScriptedLLM
from reasonlab.concept_sft.case_extras import check_paraphrases, file_neighbours, write_paraphrases
from reasonlab.llm_client import EndpointConfig, LLMClient

CASE = {"prompt": "The capital of Ukraine is", "answer": "Kyiv", "wrong_word": " Kiev"}
ROWS = [{"prompt": "The capital of Ukraine is", "answer": "Kyiv"},
        {"prompt": "The capital of Bulgaria is", "answer": "Sofia"},
        {"prompt": "The currency of Sweden is the", "answer": "krona"},
        {"prompt": "The capital of Japan is", "answer": "Tokyo"},
        {"prompt": "The largest city of Ukraine is", "answer": "Kyiv"},
        {"prompt": "Kyiv is the capital of", "answer": "Ukraine"},
        {"prompt": "Scurvy is caused by a lack of vitamin", "answer": "C"}]


def test_neighbours_share_the_relation_and_never_the_answer_or_a_target():
    got = file_neighbours(CASE, ROWS, target_prompts={"the capital of japan is"}, k=3)
    prompts = [n["prompt"] for n in got]
    assert prompts[0] == "The capital of Bulgaria is"  # the most shared content words, not a target, another answer
    assert "The capital of Japan is" not in prompts  # a target case is no neighbour
    assert "The largest city of Ukraine is" not in prompts and "Kyiv is the capital of" not in prompts  # answer Kyiv
    assert "Scurvy is caused by a lack of vitamin" not in prompts  # nothing in common


def test_a_paraphrase_naming_the_answer_or_the_wrong_answer_or_repeating_is_rejected():
    ok, bad = check_paraphrases(["Ukraine's capital city is", "The capital of Ukraine is Kyiv's",
                                 "Ukraine's capital, Kiev, is called", "the capital of ukraine is",
                                 "Ukraine's capital city is"], CASE)
    assert ok == ["Ukraine's capital city is"]
    assert [r["reason"] for r in bad] == ["it names the answer", "it names the wrong answer",
                                          "it repeats the prompt or another rewrite",
                                          "it repeats the prompt or another rewrite"]


def test_the_llm_is_asked_again_naming_what_was_wrong():
    script = [("ok", json.dumps(["The capital of Ukraine is Kyiv", "Ukraine's capital city is"])),
              ("ok", "I think these work well"),
              ("ok", json.dumps(["The city that is the capital of Ukraine is", "The seat of Ukraine's government is"]))]
    with ScriptedLLM(script) as llm:
        client = LLMClient(EndpointConfig(base_url=llm.base_url, model="m", api_key_env=None, json_mode="none"))
        out = write_paraphrases(client, CASE, n=3, max_attempts=3)
        second, third = (r["body"]["messages"][-1]["content"] for r in llm.requests[1:3])
    assert out["paraphrases"] == ["Ukraine's capital city is", "The city that is the capital of Ukraine is",
                                  "The seat of Ukraine's government is"]
    assert out["attempts"] == 3 and out["usage"]["completion_tokens"] == 150
    assert "it names the answer" in second and "no JSON list" in third
