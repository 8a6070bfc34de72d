"""Stage 7's probabilities against an unbatched reference on stories260K, and the comparison table's logic."""

from __future__ import annotations

import pytest
import torch

from reasonlab.concept_sft.evaluate import compare, evaluate_cases, results_markdown
from reasonlab.models import load_model, resolve_model
from reasonlab.prompt_format import build_prompt
from reasonlab.tokens import first_token_ids, single_token_ids

CASES = [{"prompt": "The little girl saw a", "answer": "little", "wrong_token": " big"},
         {"prompt": "Once upon a time, there was a", "answer": "girl", "wrong_token": " little"},
         {"prompt": "The dog ran to the", "answer": "park", "wrong_token": " day"}]


@pytest.fixture(scope="module")
def stories(stories_path):
    return load_model(resolve_model(str(stories_path)))


def reference_probs(model, tokenizer, text: str) -> torch.Tensor:
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1].float().softmax(-1)


def test_probabilities_sum_every_variant_and_equal_an_unbatched_pass(stories):
    model, tok = stories
    cases = [{**c, "wrong_token_id": tok.encode(c["wrong_token"], add_special_tokens=False)[-1]} for c in CASES]
    cases[2]["wrong_token_id"] = tok.convert_tokens_to_ids("▁big")  # not a variant of ' day': both ids count
    rows = evaluate_cases(model, tok, cases, ["completion"], k=5, batch_size=2)
    assert [(r["prompt"], r["format"]) for r in rows] == [(c["prompt"], "completion") for c in CASES]
    for case, row in zip(cases, rows, strict=True):
        probs = reference_probs(model, tok, build_prompt(tok, case["prompt"], "completion", "", " Answer:"))
        wrong = single_token_ids(tok, case["wrong_token"]) | {case["wrong_token_id"]}
        correct = first_token_ids(tok, case["answer"])
        assert len(correct) >= 2 and len(wrong) == (2 if case is cases[2] else 1)  # sums over several ids
        assert row["p_wrong"] == pytest.approx(float(probs[sorted(wrong)].sum()), abs=1e-5)
        assert row["p_correct"] == pytest.approx(float(probs[sorted(correct)].sum()), abs=1e-5)
        assert row["p_wrong"] > float(probs[case["wrong_token_id"]]) - 1e-6
        top = probs.topk(5)
        assert [t["prob"] for t in row["top_k"]] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert [t["token"].strip() for t in row["top_k"]][0] == tok.decode([int(top.indices[0])]).strip()
        assert row["wrong_token"] == case["wrong_token"] and row["answer"] == case["answer"]
        assert "wrong_ids" not in row and "correct_ids" not in row


def row(prompt, p_wrong, p_correct, top1=" x", fmt="chat"):
    return {"prompt": prompt, "answer": "aldosterone", "wrong_token": " ren", "format": fmt,
            "p_wrong": p_wrong, "p_correct": p_correct, "top_k": [{"token": top1, "prob": max(p_wrong, p_correct)}]}


@pytest.mark.parametrize("base, tuned, flipped", [
    ((0.4, 0.1), (0.1, 0.4), True),    # wrong ahead, then correct ahead
    ((0.4, 0.1), (0.3, 0.2), False),   # gained, still behind
    ((0.1, 0.4), (0.1, 0.5), False),   # was right already
    ((0.3, 0.3), (0.1, 0.5), False),   # a tie is not 'wrong ahead'
    ((0.4, 0.1), (0.3, 0.3), False),   # a tie is not 'correct ahead'
])
def test_compare_flips_only_from_wrong_ahead_to_correct_ahead(base, tuned, flipped):
    [r] = compare([row("p", *base, top1=" ren")], [row("p", *tuned, top1=" al")])
    assert r["flipped"] is flipped
    assert r["correct_gain"] == pytest.approx(tuned[1] - base[1])
    assert (r["base_p_wrong"], r["base_p_correct"], r["sft_p_wrong"], r["sft_p_correct"]) == (*base, *tuned)
    assert (r["base_top1"], r["sft_top1"], r["format"], r["answer"]) == (" ren", " al", "chat", "aldosterone")
    line = results_markdown([r]).splitlines()[2]
    assert f"| {tuned[1] - base[1]:+.1%} | {'yes' if flipped else 'no'} | ' ren' | ' al' |" in line


def test_compare_refuses_rows_that_do_not_line_up():
    with pytest.raises(AssertionError):
        compare([row("a", .4, .1)], [row("b", .1, .4)])
    with pytest.raises(AssertionError):
        compare([row("a", .4, .1, fmt="chat")], [row("a", .1, .4, fmt="completion")])
    with pytest.raises(ValueError):  # a missing row is an error, not a shorter table
        compare([row("a", .4, .1), row("b", .4, .1)], [row("a", .1, .4)])


def test_evaluate_defaults_are_ten_tokens_and_the_chat_prompt_with_the_answer_prefix(tiny_models):
    model, tok = load_model(resolve_model(str(tiny_models["llama"])))
    cases = [{"prompt": "The little girl saw a", "answer": "little", "wrong_token": " big",
              "wrong_token_id": tok.convert_tokens_to_ids("▁big")}]
    default = evaluate_cases(model, tok, cases, ["chat"])
    explicit = evaluate_cases(model, tok, cases, ["chat"], k=10, system_prompt="", answer_prefix=" Answer:",
                              batch_size=8)
    assert default == explicit and len(default[0]["top_k"]) == 10
    custom = evaluate_cases(model, tok, cases, ["chat"], system_prompt="Be brief.", answer_prefix=" A:")
    probs = reference_probs(model, tok, build_prompt(tok, cases[0]["prompt"], "chat", "Be brief.", " A:"))
    assert custom[0]["p_correct"] == pytest.approx(float(probs[sorted(first_token_ids(tok, "little"))].sum()), abs=1e-6)
    assert custom[0]["p_correct"] != default[0]["p_correct"]
    text = build_prompt(tok, cases[0]["prompt"], "chat", "", " Answer:")
    assert text.endswith("<|assistant|> Answer:")
    probs = reference_probs(model, tok, text)
    assert default[0]["p_correct"] == pytest.approx(float(probs[sorted(first_token_ids(tok, "little"))].sum()), abs=1e-6)
