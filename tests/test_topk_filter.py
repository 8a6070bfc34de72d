"""The top-k filter: its decisions on constructed top-k lists, and batching equal to a per-prompt loop."""

import pytest

from reasonlab.models import load_model, resolve_model
from reasonlab.concept_sft.prompts import PromptItem
from reasonlab.concept_sft.topk_filter import TokenProb, classify, decide, filter_prompts, next_token_topk

ITEM = PromptItem("The primary hormone regulating blood pressure is", "aldosterone", ["blood pressure"])


def topk(*tokens):
    return [TokenProb(t, i, p) for i, (t, p) in enumerate(tokens)]


@pytest.mark.parametrize("tokens, reason", [
    ([(" the", .3), (" al", .1)], "function word"),
    ([(" al", .3), (" ren", .1)], "answer's first token"),
    ([(" ald", .3), (" ren", .1)], "prefix of the answer"),
    ([(" aldosterones", .3), (" ren", .1)], "variant of the answer"),
    ([(",", .3), (" al", .1)], "punctuation"),
    ([(" ren", .3), (" a", .1), (" b", .1), (" c", .1), (" d", .1), (" e", .05), (" al", .01)], "rank 7, beyond rank 5"),
    ([(" ren", .3), (" sodium", .1)], "not in the top-2"),
])
def test_rejections_say_why(tokens, reason):
    correct_ids = {i for i, (t, _) in enumerate(tokens) if t == " al"}
    row = classify(ITEM, topk(*tokens), correct_ids, special_ids=set())
    assert row["status"] == "rejected" and reason in row["reason"]


def test_special_token_top1_is_rejected_as_special():
    tokens = [("</s>", .4), (" ren", .2), (" al", .1)]
    row = classify(ITEM, topk(*tokens), {2}, special_ids={0})
    assert row["status"] == "rejected" and row["reason"] == "top-1 '</s>' is a special token"
    assert row["correct_rank"] == 3
    # the same list without special ids: '</s>' is then an ordinary wrong word and the case is a target
    assert classify(ITEM, topk(*tokens), {2}, special_ids=set())["status"] == "target"


@pytest.mark.parametrize("max_rank", [2, 3, 5])
def test_max_rank_is_inclusive_and_one_more_is_rejected(max_rank):
    filler = [(f" w{i}x", .01) for i in range(10)]
    for rank in (2, max_rank - 1, max_rank, max_rank + 1):
        if rank < 2:
            continue
        tokens = [(" ren", .3), *filler[: rank - 2], (" al", .05), *filler[rank - 2:]]
        row = classify(ITEM, topk(*tokens), {rank - 1}, special_ids=set(), max_rank=max_rank)
        assert row["correct_rank"] == rank
        if rank <= max_rank:
            assert row["status"] == "target", (rank, row.get("reason"))
        else:
            assert row["status"] == "rejected" and row["reason"] == f"answer at rank {rank}, beyond rank {max_rank}"


def test_target_case_like_the_seed_table():
    tokens = [(" ren", .23), (" sodium", .18), (" the", .10), (" a", .05), (" al", .05)]
    row = classify(ITEM, topk(*tokens), {4}, special_ids=set())
    assert row["status"] == "target"
    assert (row["wrong_token"], row["correct_token"], row["correct_rank"]) == (" ren", " al", 5)
    assert row["wrong_prob"] == .23 and row["topic"] == ["blood pressure"]


def test_multi_token_answer_matches_its_first_word_prefix():
    item = PromptItem("Ground-glass hepatocytes is characteristic of", "Hepatitis B")
    row = classify(item, topk((" alpha", .3), (" hepat", .07)), correct_ids=set(), special_ids=set())
    assert row["status"] == "target" and row["correct_rank"] == 2


PROMPTS = ["Once upon a time, there was a little", "The dog ran to the", "She was very happy because",
           "Lily and Tom went to the park. They saw a", "One day, a big", "The sun was"]


@pytest.mark.parametrize("which", ["stories", "llama", "qwen2", "gemma3"])
def test_batched_equals_per_prompt(which, stories_path, tiny_models):
    folder = stories_path if which == "stories" else tiny_models[which]
    model, tokenizer = load_model(resolve_model(str(folder)))
    batched = next_token_topk(model, tokenizer, PROMPTS, k=10, batch_size=4)
    single = [next_token_topk(model, tokenizer, [p], k=10, batch_size=1)[0] for p in PROMPTS]
    assert len(batched) == len(single) == len(PROMPTS)
    for b, s in zip(batched, single, strict=True):
        assert len(b) == len(s) == 10
        assert [t.token_id for t in b[:5]] == [t.token_id for t in s[:5]]
        assert max(abs(x.prob - y.prob) for x, y in zip(b, s, strict=True)) < 1e-4


def test_the_whole_filter_decides_the_same_batched_and_prompt_by_prompt(stories_path):
    model, tokenizer = load_model(resolve_model(str(stories_path)))
    runner_up = [next((t.token.strip() for t in top[1:5] if word(t)), "moon")
                 for top in next_token_topk(model, tokenizer, PROMPTS, k=10)]
    items = [PromptItem(p, a) for p, a in zip(PROMPTS, runner_up)]
    runs = [filter_prompts(model, tokenizer, items, batch_size=b) for b in (1, 4)]
    rows = [{r["prompt"]: r for r in run["target_cases"] + run["rejected"]} for run in runs]
    assert rows[0].keys() == rows[1].keys() == {it.prompt for it in items}
    for p in rows[0]:
        one, four = rows[0][p], rows[1][p]
        assert (one["status"], one.get("reason"), one["correct_rank"], one.get("wrong_word")) == \
               (four["status"], four.get("reason"), four["correct_rank"], four.get("wrong_word"))
        for key in ("p_wrong", "p_correct"):
            assert (one.get(key) is None and four.get(key) is None) or one[key] == pytest.approx(four[key], rel=1e-4)
    assert sum("wrong_word" in r for r in rows[0].values()) >= 1  # the whole-answer step really ran


def word(t):
    return t.token.strip().isalpha() and len(t.token.strip()) >= 3


def test_filter_finds_a_real_target_on_stories(stories_path):
    """stories260K puts ' big' first and ' little' third after 'The little girl saw a'."""
    model, tokenizer = load_model(resolve_model(str(stories_path)))
    [top] = next_token_topk(model, tokenizer, ["The little girl saw a"], k=10)
    assert word(top[0])
    runner_up = next(t for t in top[1:5] if word(t))
    items = [PromptItem("The little girl saw a", runner_up.token.strip()), PromptItem("The dog ran to the", "moon")]
    result = filter_prompts(model, tokenizer, items, k=10)
    [case] = result["target_cases"]
    assert case["wrong_token"] == top[0].token and case["correct_rank"] == top.index(runner_up) + 1
    assert [r["prompt"] for r in result["rejected"]] == ["The dog ran to the"]


def test_rows_hold_every_field_the_later_stages_read():
    tokens = [(" ren", .23), (" sodium", .18), (" al", .05)]
    row = classify(ITEM, topk(*tokens), {2}, special_ids=set())
    head = {"prompt": ITEM.prompt, "answer": "aldosterone", "topic": ["blood pressure"], "paraphrases": [],
            "neighbours": []}
    assert row == {**head, "top_k": [{"token": t, "token_id": i, "prob": p} for i, (t, p) in enumerate(tokens)],
                   "status": "target", "wrong_token": " ren", "wrong_token_id": 0, "wrong_prob": .23,
                   "correct_token": " al", "correct_token_id": 2, "correct_prob": .05, "correct_first_rank": 3,
                   "correct_rank": 3}
    final = decide(row, " renin", [0, 7], p_wrong=.2, p_correct=.049, p_correct_first=.05, max_rank=5)
    assert final == {**row, "wrong_word": " renin", "wrong_ids": [0, 7], "p_wrong": .2, "p_correct": .049,
                     "p_correct_first": .05, "correct_rank": 3}
    rejected = classify(ITEM, topk((" the", .3), (" al", .1)), {1}, special_ids=set())
    assert rejected == {**head, "top_k": [{"token": " the", "token_id": 0, "prob": .3},
                                          {"token": " al", "token_id": 1, "prob": .1}],
                        "status": "rejected", "reason": "top-1 ' the' is a function word", "correct_rank": 2}


BBC = PromptItem("The British public broadcaster is the", "BBC")


def test_a_one_letter_first_token_does_not_make_a_target_when_the_whole_answer_is_far_behind():
    """' B' at rank 3 starts 'BBC', but p(' BBC') is below the tokens at ranks 4-7: the whole answer ranks 7."""
    tokens = [(" British", .3), (" UK", .12), (" B", .1)] + [(f" w{i}x", .05 - i * .001) for i in range(7)]
    row = classify(BBC, topk(*tokens), {2}, special_ids=set())
    assert row["status"] == "target" and row["correct_first_rank"] == 3  # the first token alone would keep it
    final = decide(row, " British", [0], p_wrong=.25, p_correct=.046, p_correct_first=.1, max_rank=5)
    assert final["status"] == "rejected" and final["correct_rank"] == 7
    assert final["reason"] == ("whole answer at rank 7, beyond rank 5 (p=4.60%; its first token ' B' ranks 3)")
    assert decide(row, " British", [0], p_wrong=.25, p_correct=.09, p_correct_first=.1, max_rank=5)["status"] == "target"


def test_other_tokens_that_start_the_answer_are_part_of_it_not_ahead_of_it():
    tokens = [(" ren", .3), (" al", .05), (" Ald", .045), (" so", .01)]
    row = classify(ITEM, topk(*tokens), {1, 2}, special_ids=set())
    # p(whole answer) = 4 % is below both ' al' and ' Ald', which are the answer's own pieces: it still ranks 2
    final = decide(row, " renin", [0], p_wrong=.25, p_correct=.04, p_correct_first=.095, max_rank=5,
                   answer_tokens={1, 2})
    assert final["status"] == "target" and final["correct_rank"] == 2
    assert decide(row, " renin", [0], p_wrong=.25, p_correct=.04, p_correct_first=.095, max_rank=5)["correct_rank"] == 3


@pytest.mark.parametrize("word, p_wrong, p_correct, reason", [
    (" Aldosterone", .3, .1, "the greedy answer 'Aldosterone' is the answer"),
    (" aldo", .3, .1, "is a prefix or variant of the answer 'aldosterone'"),
    (" renin", .05, .05, "the whole answer (5.00%) is at least as probable as the greedy wrong answer 'renin' (5.00%)"),
])
def test_the_greedy_wrong_word_must_be_another_answer_and_ahead_of_the_right_one(word, p_wrong, p_correct, reason):
    row = classify(ITEM, topk((" ren", .3), (" al", .1)), {1}, special_ids=set())
    final = decide(row, word, [0], p_wrong=p_wrong, p_correct=p_correct, p_correct_first=.1, max_rank=5)
    assert final["status"] == "rejected" and reason in final["reason"]


def test_a_two_letter_prefix_starts_the_answer_and_one_letter_does_not():
    item = PromptItem("The hormone is", "Ne")
    assert classify(item, topk((" ren", .3), (" ne", .1)), set(), special_ids=set())["correct_rank"] == 2
    one = classify(PromptItem("The letter is", "nu"), topk((" ren", .3), (" n", .1)), set(), special_ids=set())
    assert one["status"] == "rejected" and one["correct_rank"] is None


def test_top_tokens_are_the_largest_probabilities_with_their_ids(stories_path):
    import torch

    from reasonlab.concept_sft.topk_filter import top_tokens

    _, tokenizer = load_model(resolve_model(str(stories_path)))
    probs = torch.zeros(512)
    probs[[370, 376, 393]] = torch.tensor([0.2, 0.5, 0.3])
    assert len(top_tokens(tokenizer, probs)) == 10  # the default k
    top = top_tokens(tokenizer, probs, k=3)
    assert [(t.token, t.token_id, t.prob) for t in top] == [(" little", 376, 0.5), (" happy", 393, pytest.approx(0.3)),
                                                           (" big", 370, pytest.approx(0.2))]


def test_filter_defaults_are_the_chat_prompt_with_an_empty_system_prompt_and_the_answer_prefix(tiny_models):
    """filter_prompts with its defaults decides exactly as classify on the documented prompt text."""
    from reasonlab.prompt_format import build_prompt
    from reasonlab.tokens import first_token_ids

    model, tokenizer = load_model(resolve_model(str(tiny_models["llama"])))
    items = [PromptItem("The little girl saw a", "little"), PromptItem("The dog ran to the", "park")]
    for fmt, kwargs, system, prefix in (("chat", {"fmt": "chat"}, "", " Answer:"), ("completion", {}, "", " Answer:"),
                                        ("chat", {"fmt": "chat", "system_prompt": "Be brief.", "answer_prefix": " A:"},
                                         "Be brief.", " A:")):
        result = filter_prompts(model, tokenizer, items, **kwargs)
        texts = [build_prompt(tokenizer, it.prompt, fmt, system, prefix) for it in items]
        assert fmt == "completion" or all(t.endswith(f"<|assistant|>{prefix}") and f"<|system|>{system}\n" in t
                                          for t in texts)
        expected = [classify(it, tk, first_token_ids(tokenizer, it.answer), set(tokenizer.all_special_ids), 5)
                    for it, tk in zip(items, next_token_topk(model, tokenizer, texts, k=10), strict=True)]
        got = {r["prompt"]: r for r in result["target_cases"] + result["rejected"]}
        for e in expected:  # the first-token step decides the same; the whole-answer step only adds to it
            r = got[e["prompt"]]
            assert [t["token_id"] for t in r["top_k"]] == [t["token_id"] for t in e["top_k"]]
            assert [t["prob"] for t in r["top_k"]] == pytest.approx([t["prob"] for t in e["top_k"]], rel=1e-4)
            same = {k for k in e if k not in ("correct_rank", "top_k", "wrong_prob", "correct_prob")}
            assert {k: r[k] for k in same} == {k: e[k] for k in same} \
                or (e["status"] == "target" and r["status"] == "rejected" and "wrong_word" in r)
        assert (result["format"], result["top_k"], result["max_rank"]) == (fmt, 10, 5)


def test_filter_passes_k_and_max_rank_through(stories_path):
    model, tokenizer = load_model(resolve_model(str(stories_path)))
    [top] = next_token_topk(model, tokenizer, ["The little girl saw a"], k=10)
    third = top[2].token.strip()  # the answer at rank 3: a target with max_rank 5, rejected with max_rank 2
    items = [PromptItem("The little girl saw a", third)]
    wide = filter_prompts(model, tokenizer, items, k=5)
    assert [len(r["top_k"]) for r in wide["target_cases"] + wide["rejected"]] == [5] and wide["top_k"] == 5
    narrow = filter_prompts(model, tokenizer, items, max_rank=2)
    [case] = wide["target_cases"]  # stories260K: ' big', then ' red', ' little', ...
    assert case["correct_rank"] == 3
    [r] = narrow["rejected"]
    assert r["reason"] == "answer at rank 3, beyond rank 2" and narrow["max_rank"] == 2
