"""One SFT experiment per target case and text set (or one joint), planned from the text-set file."""

import pytest

from reasonlab.concept_sft.text_sets import CaseTexts, load_text_sets, plan_experiments
from reasonlab.errors import ReasonlabError

A = {"prompt": "The primary hormone regulating blood pressure is", "answer": "aldosterone"}
B = {"prompt": "A common side effect of opioid analgesics is", "answer": "constipation"}
C = {"prompt": "The dog ran to the", "answer": "park"}
SETS = {"the primary hormone regulating blood pressure is": CaseTexts(
    prompt=A["prompt"], concept="aldosterone is a hormone", neuron=None, texts=["a1", "a2"],
    controls={"unrelated": {"concept": "haemoglobin", "texts": ["u1", "u2"]}, "direct": {"texts": ["d1", "d2"]}}),
    "a common side effect of opioid analgesics is": CaseTexts(prompt=B["prompt"], texts=["b1"])}


def test_one_experiment_per_case_and_text_set_and_controls_on_request():
    plain, skipped = plan_experiments([A, B, C], SETS, [])
    assert [(e["name"], e["texts"]) for e in plain] == [("case0-concept", ["a1", "a2"]), ("case1-concept", ["b1"])]
    assert skipped == [{"case": C["prompt"], "text_set": "concept",
                        "reason": "no training texts: add the case to the text-set file or to the SFT config"}]
    full, skipped = plan_experiments([A, B, C], SETS, ["fallback"], text_sets_wanted=["concept", "unrelated", "direct"])
    assert [e["name"] for e in full] == ["case0-concept", "case0-unrelated", "case0-direct", "case1-concept",
                                         "case2-concept"]
    assert full[-1]["texts"] == ["fallback"] and [e["cases"] for e in full[:3]] == [[A]] * 3
    assert [(s["case"], s["text_set"]) for s in skipped] == [(B["prompt"], "unrelated"), (B["prompt"], "direct"),
                                                             (C["prompt"], "unrelated"), (C["prompt"], "direct")]
    assert full[1]["neuron"] is None and full[0]["concept"] == "aldosterone is a hormone"


def test_the_neuron_is_recorded_only_when_chosen():
    [e], _ = plan_experiments([A], SETS, [])
    assert e["neuron"] is None
    [e], _ = plan_experiments([A], SETS, [], neuron="L22/N13255@9", concept="hormone class")
    assert (e["neuron"], e["concept"]) == ("L22/N13255@9", "hormone class")


def test_joint_trains_one_model_per_text_set_over_every_case():
    joint, _ = plan_experiments([A, B], SETS, [], joint=True, text_sets_wanted=("concept", "unrelated", "direct"))
    only_direct, _ = plan_experiments([A, B], SETS, [], text_sets_wanted=["direct"])
    assert [(e["name"], e["texts"]) for e in only_direct] == [("case0-direct", ["d1", "d2"])]
    assert [(e["name"], e["texts"], len(e["cases"])) for e in joint] == [
        ("joint-concept", ["a1", "a2", "b1"], 2), ("joint-unrelated", ["u1", "u2"], 1), ("joint-direct", ["d1", "d2"], 1)]


@pytest.mark.parametrize("text, message", [
    ("cases:\n  - prompt: p\n    texts: []\n", "texts"),
    ("cases:\n  - prompt: p\n    texts: [t]\n    controls: {shuffled: {texts: [x]}}\n", "unknown control"),
    ("cases:\n  - prompt: p\n    texts: [t]\n  - prompt: P\n    texts: [u]\n", "a second entry for 'P'"),
])
def test_bad_text_set_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "sets.yaml"
    path.write_text(text)
    with pytest.raises(ReasonlabError, match=message):
        load_text_sets(path)
