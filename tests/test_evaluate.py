"""Whole-answer probabilities against an unbatched chain rule on stories260K; stage 7's rows; the edit measures."""

from __future__ import annotations

import math

import pytest
import torch

from reasonlab.concept_sft import answer_prob as AP
from reasonlab.concept_sft.edit_metrics import aggregate, beyond_spread, case_figures, results_markdown, summarize, verdict
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


def per_token_nll(model, tokenizer, context: str, answer: str) -> float:
    """ROME's measure on the answer's best surface form: min over variants of -(1/T) log p(variant)."""
    return min(-math.log(chain_rule(model, tokenizer, context, list(v))) / len(v)
               for v in AP.variant_sequences(tokenizer, answer))


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
    # the neighbour is scored on the edited answer too (the case's), to see it leak in
    [[park, little]] = AP.score_answers(model, tok, ["The dog ran to the"], [["park", "little"]])
    assert rows[2]["p_edited"] == pytest.approx(little.p_full, rel=1e-4) and rows[2]["edited_answer"] == "little"
    # the greedy answer: stories260K says ' big' after "The little girl saw a", not the answer
    [ids] = AP.greedy_words(model, tok, [CASE["prompt"]], [1])
    assert rows[0]["greedy"] == AP.decode_word(tok, ids) and rows[0]["says_answer"] is (rows[0]["greedy"].strip() == "little")
    assert rows[0]["greedy"].strip() == "big" and rows[0]["says_answer"] is False


def test_rows_give_rome_per_token_nll_of_each_answer(stories):
    model, tok = stories
    rows = evaluate_cases(model, tok, [CASE], ["completion"], k=5)
    for row in rows:
        assert row["nll_correct"] == pytest.approx(per_token_nll(model, tok, row["text"], row["answer"]), rel=1e-4)
    assert rows[0]["nll_wrong"] == pytest.approx(per_token_nll(model, tok, CASE["prompt"], "big"), rel=1e-4)
    assert rows[2]["nll_edited"] == pytest.approx(per_token_nll(model, tok, "The dog ran to the", "little"), rel=1e-4)
    assert rows[2]["nll_wrong"] is None and rows[0]["nll_edited"] is None


def test_the_wrong_answer_is_scored_over_the_same_token_paths_as_the_right_one(tiny_models):
    """Swap the two answers and the scores swap: the model's own ids (here ' b'+'ig', not how the tokenizer
    writes ' big') add no path the right answer does not get."""
    model, tok = load_model(resolve_model(str(tiny_models["llama"])))
    spelled = tok.convert_tokens_to_ids(["\u2581b", "ig"])
    assert tok.unk_token_id not in spelled and tuple(spelled) not in AP.variant_sequences(tok, "big")
    case = {**CASE, "wrong_ids": spelled, "paraphrases": [], "neighbours": []}
    swapped = {**case, "answer": "big", "wrong_word": " little", "wrong_ids": []}
    [row], [other] = (evaluate_cases(model, tok, [c], ["completion"]) for c in (case, swapped))
    assert chain_rule(model, tok, CASE["prompt"], spelled) > 1e-4 * other["p_correct"]  # the extra path would show
    assert row["p_wrong"] == pytest.approx(other["p_correct"], rel=1e-5)
    assert row["p_correct"] == pytest.approx(other["p_wrong"], rel=1e-5)


def test_the_filter_scores_both_answers_alike(stories_path, stories_case):
    from reasonlab.concept_sft.prompts import PromptItem
    from reasonlab.concept_sft.topk_filter import filter_prompts

    model, tok = load_model(resolve_model(str(stories_path)))
    [case] = filter_prompts(model, tok, [PromptItem(stories_case["prompt"], stories_case["answer"])])["target_cases"]
    [[c, w]] = AP.score_answers(model, tok, [case["prompt"]], [[case["answer"], case["wrong_word"]]])
    assert (case["p_correct"], case["p_wrong"]) == (pytest.approx(c.p_full, rel=1e-5), pytest.approx(w.p_full, rel=1e-5))


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


def row(kind, text, pc, pw=None, *, nll=(1.0, 2.0), edited=None, greedy=" y", says=False, top1=" a"):
    """One evaluation row. `nll`: (NLL/token of the row's answer, of its rival: the wrong word, or on a neighbour
    the edited answer); `edited`: p(edited answer) on a neighbour."""
    neighbour = kind == "neighbour"
    return {"case": "c", "format": "chat", "kind": kind, "text": text, "answer": "x" if not neighbour else "n",
            "wrong_word": None if neighbour else " y", "edited_answer": "x" if neighbour else None,
            "p_correct": pc, "p_wrong": pw, "p_edited": edited, "p_correct_first": pc, "nll_correct": nll[0],
            "nll_wrong": None if neighbour else nll[1], "nll_edited": nll[1] if neighbour else None,
            "greedy": greedy, "says_answer": says, "top1": top1}


def judge(base_rows, sft_rows, tolerance=2.0):
    [out] = summarize({"rows": base_rows, "perplexity": 10.0}, [{"rows": sft_rows, "perplexity": 10.1}],
                      [{"prompt": "c"}], ["chat"], tolerance)
    return out


PROMPT_FLIPS = ([row("prompt", "p", .1, .4, nll=(2.0, 1.0))], [row("prompt", "p", .5, .2, greedy=" x", says=True)])
PARAPHRASE_FLIPS = ([row("paraphrase", "q", .1, .3, nll=(2.0, 1.0))],
                    [row("paraphrase", "q", .4, .2, greedy=" x", says=True)])


def test_a_neighbour_made_more_right_is_a_move_not_damage():
    """A neighbour's own answer rises from 10 % to 45 %, its top-1 unchanged: moved, not leaked, still learned."""
    base = PROMPT_FLIPS[0] + PARAPHRASE_FLIPS[0] + [row("neighbour", "n", .10, nll=(1.0, 3.0), edited=.01)]
    sft = PROMPT_FLIPS[1] + PARAPHRASE_FLIPS[1] + [row("neighbour", "n", .45, nll=(0.5, 3.0), edited=.01)]
    out = judge(base, sft)
    assert out["verdict"] == "learned"
    assert (out["neighbourhood_nll"], out["neighbours_leaked"], out["neighbours_moved"]) == (1.0, 0.0, 1.0)


def test_the_edited_answer_leaking_into_a_neighbour_is_detected():
    """The neighbour's own answer holds within a factor 2, its top-1 unchanged, but the edited answer now beats
    it: ROME's neighbourhood score falls and the case is over-generalised."""
    base = PROMPT_FLIPS[0] + PARAPHRASE_FLIPS[0] + [row("neighbour", "n", .30, nll=(1.0, 3.0), edited=.01)]
    sft = PROMPT_FLIPS[1] + PARAPHRASE_FLIPS[1] + [row("neighbour", "n", .20, nll=(1.3, 0.9), edited=.35)]
    out = judge(base, sft)
    assert out["verdict"] == "over-generalised (the answer took over most neighbours)"
    assert (out["base_neighbourhood_nll"], out["neighbourhood_nll"], out["neighbours_leaked"]) == (1.0, 0.0, 1.0)
    assert out["neighbours_moved"] == 0.0


def test_a_paraphrase_right_before_sft_is_no_generalisation():
    base = PROMPT_FLIPS[0] + [row("paraphrase", "q", .5, .1, nll=(0.7, 2.3), greedy=" x", says=True)]
    sft = PROMPT_FLIPS[1] + [row("paraphrase", "q", .6, .1, nll=(0.5, 2.3), greedy=" x", says=True)]
    out = judge(base, sft)
    assert out["verdict"] == "says it on its prompt (no paraphrase it did not already say, to tell learned from memorised)"
    assert (out["base_paraphrase_nll"], out["paraphrase_nll"], out["paraphrases_newly_said"]) == (1.0, 1.0, None)
    # one paraphrase newly said and one not: half; none newly said: memorised
    base += PARAPHRASE_FLIPS[0]
    assert judge(base, sft + PARAPHRASE_FLIPS[1])["verdict"] == "learned"
    assert judge(base, sft + [row("paraphrase", "q", .2, .3, nll=(2.0, 1.0))])["verdict"] == "memorised"


def test_beating_the_wrong_word_at_a_fraction_of_a_percent_is_not_being_right():
    """Before SFT p(correct) 0.2 % > p(wrong) 0.1 %, but the model says ' The': not 'already right'."""
    base = [row("prompt", "p", .002, .001, nll=(6.2, 6.9), greedy=" The")]
    sft = [row("prompt", "p", .003, .001, nll=(5.8, 6.9), greedy=" The")]
    out = judge(base, sft)
    assert out["verdict"] == "not learned (it does not say the answer after SFT)"
    assert (out["base_efficacy_prob"], out["base_says_answer"], out["base_answer"]) == (1.0, 0.0, " The")
    assert "| 'The' |" in results_markdown([out])
    said = [row("prompt", "p", .4, .1, nll=(0.9, 2.3), greedy=" x", says=True)]
    assert judge(said, said)["verdict"] == "already said the answer before SFT (in this format)"


def test_efficacy_per_token_nll_beside_the_whole_answer_product():
    """A three-token answer at 0.5 a token (12.5 %) against a one-token wrong word at 20 %."""
    base = [row("prompt", "p", .01, .5, nll=(4.0, 0.7))]
    sft = [row("prompt", "p", .5 ** 3, .2, nll=(-math.log(.5), -math.log(.2)), greedy=" x", says=True)]
    out = judge(base, sft)
    assert (out["efficacy_prob"], out["efficacy_nll"], out["base_efficacy_nll"]) == (0.0, 1.0, 0.0)
    header = results_markdown([out]).splitlines()[0]
    assert "Efficacy: p(correct) > p(wrong)" in header and "Efficacy (ROME): NLL/token correct < wrong" in header


def test_case_figures_line_up_base_and_sft_rows():
    base = PROMPT_FLIPS[0] + PARAPHRASE_FLIPS[0]
    with pytest.raises(ValueError, match="do not line up"):
        case_figures(base, PROMPT_FLIPS[1][::-1] + [row("prompt", "q2", .1, .1)])
    f = case_figures(base, PROMPT_FLIPS[1] + PARAPHRASE_FLIPS[1])
    assert (f["correct_gain"], f["n_paraphrases"], f["n_neighbours"]) == (pytest.approx(0.4), 1, 0)
    assert f["neighbourhood_nll"] is None and f["neighbours_moved"] is None


def test_seeds_aggregate_to_mean_and_sd_and_a_shift_inside_the_spread_is_not_a_result():
    runs = [{"case": "c", "format": "f", "answer": "x", "wrong_word": " y", "text_set": "concept",
             "base_answer": " y", "base_says_answer": 0.0, "base_p_correct": .1, "base_p_wrong": .4, "base_top1": " y",
             "base_paraphrase_nll": 0.0, "base_neighbourhood_nll": 1.0,
             "says_answer": e, "efficacy_prob": e, "efficacy_nll": e, "paraphrase_nll": p,
             "paraphrases_newly_said": p, "neighbourhood_nll": 1.0, "neighbours_leaked": 0.0, "neighbours_moved": 0.0,
             "ppl_change": .01, "p_correct": .1 + g, "p_wrong": .3, "correct_gain": g}
            for e, p, g in ((1.0, 0.0, .3), (1.0, 0.5, .35), (0.0, 0.0, .25))]
    out = aggregate(runs)
    assert out["efficacy_nll"] == pytest.approx(2 / 3) and out["efficacy_nll_sd"] == pytest.approx(0.57735, rel=1e-4)
    assert out["seeds"] == 3 and out["gain_beyond_spread"] is True and out["verdict"] == "memorised"
    assert beyond_spread([0.1, -0.1, 0.05]) is False and beyond_spread([0.2]) is None
    assert "memorised" in results_markdown([out]) and "67% ± 58%" in results_markdown([out])


@pytest.mark.parametrize("says, newly_said, expected", [
    (1.0, 1.0, "learned"), (1.0, 0.0, "memorised"), (0.0, 1.0, "not learned (it does not say the answer after SFT)"),
    (1 / 3, 1.0, "not learned (it does not say the answer after SFT)"),
    (1.0, None, "says it on its prompt (no paraphrase it did not already say, to tell learned from memorised)")])
def test_verdict(says, newly_said, expected):
    assert verdict(says, newly_said) == expected
    assert verdict(says, newly_said, base_says_answer=1.0) == "already said the answer before SFT (in this format)"
    leaked = verdict(says, newly_said, neighbours_leaked=0.6)
    assert leaked == ("over-generalised (the answer took over most neighbours)" if expected == "learned"
                      else expected + "; yet it took over most neighbours" if expected.startswith("not learned")
                      else expected)
    assert verdict(says, newly_said, neighbours_leaked=0.5) == expected
