"""Whole-answer probabilities against an unbatched chain rule on stories260K; stage 7's rows; the edit measures."""

from __future__ import annotations

import math

import pytest
import torch

from reasonlab.concept_sft import answer_prob as AP
from reasonlab.concept_sft.edit_metrics import aggregate, beyond_spread, case_figures, results_markdown, verdict
from reasonlab.concept_sft.evaluate import evaluate_cases
from reasonlab.models.scoring import text_perplexity
from reasonlab.models import load_model, resolve_model


@pytest.fixture(scope="module")
def stories(stories_path):
    return load_model(resolve_model(str(stories_path)))


def chain_rule(model, tokenizer, context: str, continuation: list[int]) -> float:
    """p(continuation | context) one token at a time, one unbatched forward per step."""
    ids, p = tokenizer.encode(context), 1.0
    for tok in continuation:
        with torch.no_grad():
            probs = model(input_ids=torch.tensor([ids])).logits[0, -1].float().softmax(-1)
        p *= float(probs[tok])
        ids = ids + [tok]
    return p


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_whole_answer_is_the_chain_rule_summed_over_variants(stories, batch_size):
    model, tok = stories
    contexts = ["The little girl saw a", "Once upon a time, there was a", "The dog ran to the"]
    answers = [["big dog", "little"], ["girl"], ["park", "sunflower"]]
    scored = AP.score_answers(model, tok, contexts, answers, batch_size=batch_size)
    n_multi = 0
    for ctx, ans, rows in zip(contexts, answers, scored, strict=True):
        for answer, s in zip(ans, rows, strict=True):
            variants = AP.variant_sequences(tok, answer)
            assert len(variants) >= 2  # " x", "x", " X", "X" are distinct sequences
            n_multi += any(len(v) > 1 for v in variants)
            assert s.p_full == pytest.approx(sum(chain_rule(model, tok, ctx, list(v)) for v in variants), rel=1e-4)
            first = {v[0] for v in variants}
            assert s.p_first == pytest.approx(float(s.next_probs[sorted(first)].sum()), rel=1e-5)
            assert s.p_full <= s.p_first + 1e-7
    assert n_multi >= 2  # multi-token answers really exercise the chain rule


def test_greedy_word_stops_at_the_word_boundary(stories):
    model, tok = stories
    contexts = ["The little girl saw a", "Once upon a time, there was a"]
    [one, two] = AP.greedy_words(model, tok, contexts, [1, 2], batch_size=4)
    for ctx, ids, n_words in ((contexts[0], one, 1), (contexts[1], two, 2)):
        greedy, seq = [], tok.encode(ctx)
        for _ in range(len(ids) + 1):  # the reference: argmax one step at a time, unbatched
            with torch.no_grad():
                nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            greedy.append(nxt)
            seq.append(nxt)
        assert greedy[:len(ids)] == ids
        assert AP.word_break(tok, greedy[len(ids)]) is not None  # the next token starts a word or stops
        assert len(tok.decode(ids).split()) == n_words


def test_length_sorted_batches_group_similar_lengths():
    assert AP.length_sorted_batches([3, 9, 1, 8, 2], 2) == [[1, 3], [0, 4], [2]]


CASE = {"prompt": "The little girl saw a", "answer": "little", "wrong_word": " big", "wrong_ids": [],
        "paraphrases": ["The small girl saw a"], "neighbours": [{"prompt": "The dog ran to the", "answer": "park"}]}


def test_rows_cover_prompt_paraphrases_and_neighbours_with_the_same_definition(stories):
    model, tok = stories
    rows = evaluate_cases(model, tok, [CASE], ["completion"], k=5)
    assert [(r["kind"], r["text"]) for r in rows] == [("prompt", CASE["prompt"]), ("paraphrase", "The small girl saw a"),
                                                      ("neighbour", "The dog ran to the")]
    [[c, w]] = AP.score_answers(model, tok, [CASE["prompt"]], [["little", "big"]])
    assert (rows[0]["p_correct"], rows[0]["p_wrong"]) == (pytest.approx(c.p_full, rel=1e-4), pytest.approx(w.p_full, rel=1e-4))
    assert rows[0]["p_correct_first"] == pytest.approx(c.p_first, rel=1e-4)
    assert rows[2]["p_wrong"] is None and rows[2]["answer"] == "park"
    assert len(rows[0]["top_k"]) == 5 and rows[0]["top1"] == rows[0]["top_k"][0]["token"]


def test_perplexity_is_exp_mean_nll_over_every_predicted_token(stories):
    model, tok = stories
    texts = ["Once upon a time, there was a little girl.", "The dog ran to the park and played."]
    nll, n = 0.0, 0
    for t in texts:
        ids = tok.encode(t)
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        nll -= float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
        n += len(ids) - 1
    assert text_perplexity(model, tok, texts, batch_size=2) == pytest.approx(math.exp(nll / n), rel=1e-5)


def rows(kind_probs, top1=" a"):
    """[(kind, text, p_correct, p_wrong, top1)] -> evaluation rows of one case."""
    return [{"case": "c", "format": "completion", "kind": k, "text": t, "answer": "x", "wrong_word": " y",
             "p_correct": pc, "p_wrong": pw, "p_correct_first": pc, "top1": t1} for k, t, pc, pw, t1 in kind_probs]


def test_case_figures_efficacy_paraphrases_and_neighbourhood():
    base = rows([("prompt", "p", .1, .4, " y"), ("paraphrase", "q1", .1, .3, " y"), ("paraphrase", "q2", .2, .3, " y"),
                 ("neighbour", "n1", .5, None, " n"), ("neighbour", "n2", .4, None, " m"), ("neighbour", "n3", .4, None, " k")])
    sft = rows([("prompt", "p", .5, .2, " x"), ("paraphrase", "q1", .4, .2, " x"), ("paraphrase", "q2", .2, .3, " y"),
                ("neighbour", "n1", .3, None, " n"),   # within a factor 2: holds
                ("neighbour", "n2", .1, None, " m"),   # fell by 4x: damaged
                ("neighbour", "n3", .4, None, " z")])  # top-1 moved: damaged
    f = case_figures(base, sft, tolerance=2.0)
    assert (f["base_efficacy"], f["efficacy"], f["base_paraphrase"], f["paraphrase"]) == (0.0, 1.0, 0.0, 0.5)
    assert f["neighbourhood"] == pytest.approx(1 / 3) and f["correct_gain"] == pytest.approx(0.4)
    assert case_figures(base, sft, tolerance=5.0)["neighbourhood"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="do not line up"):
        case_figures(base, sft[::-1])


def test_seeds_aggregate_to_mean_and_sd_and_a_shift_inside_the_spread_is_not_a_result():
    runs = [{"case": "c", "format": "f", "answer": "x", "wrong_word": " y", "text_set": "concept", "base_efficacy": 0.0,
             "base_paraphrase": 0.0, "base_p_correct": .1, "base_p_wrong": .4, "base_top1": " y",
             "efficacy": e, "paraphrase": p, "neighbourhood": 1.0, "ppl_change": .01, "p_correct": .1 + g,
             "p_wrong": .3, "correct_gain": g} for e, p, g in ((1.0, 0.0, .3), (1.0, 0.5, .35), (0.0, 0.0, .25))]
    out = aggregate(runs)
    assert out["efficacy"] == pytest.approx(2 / 3) and out["efficacy_sd"] == pytest.approx(0.57735, rel=1e-4)
    assert out["seeds"] == 3 and out["gain_beyond_spread"] is True and out["verdict"] == "memorised"
    assert beyond_spread([0.1, -0.1, 0.05]) is False and beyond_spread([0.2]) is None
    assert "memorised" in results_markdown([out]) and "67% ± 58%" in results_markdown([out])


@pytest.mark.parametrize("efficacy, paraphrase, expected", [
    (1.0, 1.0, "learned"), (1.0, 0.0, "memorised"), (0.0, 1.0, "not flipped"), (1 / 3, 1.0, "not flipped"),
    (1.0, None, "flipped (no paraphrases to tell learned from memorised)")])
def test_verdict(efficacy, paraphrase, expected):
    assert verdict(efficacy, paraphrase) == expected
    assert verdict(efficacy, paraphrase, base_efficacy=1.0) == "already right before SFT (in this format)"
    moved = verdict(efficacy, paraphrase, neighbourhood=0.4)
    assert moved == ("over-generalised (most neighbours moved)" if expected == "learned" else expected)
    assert verdict(efficacy, paraphrase, neighbourhood=0.5) == expected
