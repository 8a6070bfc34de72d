"""One encoding of a built prompt: under a chat template that writes BOS itself (Gemma, Llama 3), every scoring
path (the filter's top-k, whole answers and greedy word; the evaluation) and the attribution see one BOS."""

from __future__ import annotations

import shutil

import pytest

from reasonlab.concept_sft import answer_prob as AP
from reasonlab.concept_sft import attribution as A
from reasonlab.concept_sft.evaluate import evaluate_cases
from reasonlab.concept_sft.prompts import PromptItem
from reasonlab.concept_sft.topk_filter import filter_prompts
from reasonlab.models import load_model, resolve_model
from reasonlab.prompt_format import build_prompt

# the tiny template of conftest, begun with BOS as Gemma's and Llama 3's templates are
BOS_CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                     "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def bos_chat_models(tiny_models, tmp_path_factory):
    from transformers import AutoTokenizer

    out = {}
    for arch in ("gemma3", "llama"):
        folder = tmp_path_factory.mktemp("bos-chat") / arch
        shutil.copytree(tiny_models[arch], folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.chat_template = BOS_CHAT_TEMPLATE
        tokenizer.save_pretrained(folder)
        out[arch] = folder
    return out


def record_inputs(model) -> tuple[list[list[list[int]]], object]:
    """Every input_ids batch the model is run on (a forward pre-hook: the real model, only watched)."""
    seen: list[list[list[int]]] = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kwargs: seen.append(kwargs["input_ids"].tolist()),
                                           with_kwargs=True)
    return seen, hook


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_a_chat_prompt_that_begins_with_bos_is_scored_with_one_bos(arch, bos_chat_models):
    model, tok = load_model(resolve_model(str(bos_chat_models[arch])))
    prompt = "The dog ran to the"
    text = build_prompt(tok, prompt, "chat")
    assert text.startswith(tok.bos_token) and tok(prompt)["input_ids"][0] == tok.bos_token_id  # the tokenizer adds one
    one_bos = tok(text, add_special_tokens=False)["input_ids"]
    assert one_bos.count(tok.bos_token_id) == 1 and one_bos[0] == tok.bos_token_id

    case = {"prompt": prompt, "answer": "park", "wrong_word": " moon", "wrong_ids": [],
            "paraphrases": ["The cat ran to the"], "neighbours": [{"prompt": "The sun was", "answer": "hot"}]}
    seen, hook = record_inputs(model)
    try:
        filter_prompts(model, tok, [PromptItem(prompt, "park")], fmt="chat", k=10, max_rank=10)
        first_filter_pass = list(seen[0])
        AP.score_answers(model, tok, [text], [["park", "moon"]])
        AP.greedy_words(model, tok, [text], [2])
        evaluation_from = len(seen)
        evaluate_cases(model, tok, [case], ["chat"], k=5)
    finally:
        hook.remove()
    assert first_filter_pass == [one_bos]  # the filter's top-k pass: exactly the attribution's ids
    assert A.encode_prompt(tok, text, "cpu")[0].tolist() == one_bos
    assert any(ids[:len(one_bos)] == one_bos for batch in seen[evaluation_from:] for ids in batch)
    starts = [ids[:2] for batch in seen for ids in batch]
    assert len(starts) >= 6
    for start in starts:  # right padding: every sequence starts with its prompt, so with one BOS
        assert start[0] == tok.bos_token_id and start[1] != tok.bos_token_id, start
    # the completion format (no template) still gets the tokenizer's BOS, once
    assert A.encode_prompt(tok, prompt, "cpu")[0].tolist() == tok(prompt)["input_ids"]
