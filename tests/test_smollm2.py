"""The real default model: materialized from its PyPI wheel, it shows the concept-SFT study's renin failure."""

import pytest

from reasonlab.models import load_model, resolve_model
from reasonlab.concept_sft.prompts import load_prompts
from reasonlab.paths import project_root
from reasonlab.concept_sft.topk_filter import filter_prompts


@pytest.mark.slow
def test_smollm2_puts_renin_first_and_aldosterone_fifth():
    resolved = resolve_model("smollm2-135m-instruct", source="offline")
    assert resolved.fingerprint.startswith("gguf:b179c952")
    model, tokenizer = load_model(resolved)
    result = filter_prompts(model, tokenizer, load_prompts(project_root() / "data" / "target_prompts.json"))
    [case] = result["target_cases"]
    assert case["prompt"].startswith("The primary hormone regulating blood pressure")
    assert (case["wrong_token"], case["correct_token"], case["correct_rank"]) == (" ren", " al", 5)
    assert 0.15 < case["wrong_prob"] < 0.35 and 0.02 < case["correct_prob"] < 0.1
    assert {r["reason"] for r in result["rejected"]} == {"top-1 ' the' is a function word"}
