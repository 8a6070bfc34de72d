"""Stage 7 of concept SFT: score a model on every target case, its paraphrases and its neighbours.

Per (case, format) and per text shown (the prompt, each paraphrase, each neighbour):
    p_correct / p_wrong           whole-answer probabilities (`answer_prob`: chain rule, surface variants summed);
                                  the wrong answer is the case's greedy wrong word from the filter
    p_correct_first / p_wrong_first   the first-token probabilities beside them
    nll_correct / nll_wrong       mean per-token NLL of each answer's best surface form (ROME's measure)
    p_edited / nll_edited         on a neighbour: the same for the case's answer (the edit leaking in there)
    greedy, says_answer           the model's greedy answer to the text, and whether it is the row's answer
    top_k, top1                   the next-token top-k
On a neighbour the row's answer is the neighbour's own and there is no wrong word. Fluency:
`reasonlab.models.scoring.text_perplexity`. The comparison base vs SFT is `edit_metrics`.
"""

from __future__ import annotations

from pathlib import Path

from reasonlab.concept_sft import answer_prob as AP
from reasonlab.concept_sft.topk_filter import top_tokens
from reasonlab.errors import ReasonlabError
from reasonlab.prompt_format import Format, build_prompt

VERSION = "3"  # 3: one BOS under the chat template, wrong word on its surface variants only, NLL, greedy answers


def evaluation_rows(cases: list[dict], formats: list[Format]) -> list[dict]:
    """The texts to score, one row each: (case, format, kind, text, answer, wrong_word, edited_answer)."""
    rows = []
    for c in cases:
        for fmt in formats:
            shown = [("prompt", c["prompt"], c["answer"])] + [("paraphrase", p, c["answer"])
                                                               for p in c.get("paraphrases", [])]
            shown += [("neighbour", n["prompt"], n["answer"]) for n in c.get("neighbours", [])]
            rows += [{"case": c["prompt"], "format": fmt, "kind": kind, "text": text, "answer": answer,
                      "wrong_word": c["wrong_word"] if kind != "neighbour" else None,
                      "edited_answer": c["answer"] if kind == "neighbour" else None} for kind, text, answer in shown]
    return rows


def _field(scored: AP.Scored | None, name: str) -> float | None:
    return None if scored is None else getattr(scored, name)


def evaluate_cases(model, tokenizer, cases: list[dict], formats: list[Format], *, k: int = 10,
                   system_prompt: str | None = "", answer_prefix: str = " Answer:", batch_size: int = 16) -> list[dict]:
    """One row per (case, format, text shown): the answers' probabilities and NLLs, and the greedy answer."""
    rows = evaluation_rows(cases, formats)
    contexts = [build_prompt(tokenizer, r["text"], r["format"], system_prompt, answer_prefix) for r in rows]
    asked = [[r["answer"]] + [a for a in (r["wrong_word"], r["edited_answer"]) if a] for r in rows]
    greedy = AP.greedy_words(model, tokenizer, contexts, [len(r["answer"].split()) for r in rows], batch_size)
    scored = AP.score_answers(model, tokenizer, contexts, asked, batch_size)
    for row, (correct, *other), ids in zip(rows, scored, greedy, strict=True):
        wrong = other[0] if row["wrong_word"] else None
        edited = other[0] if row["edited_answer"] else None
        top = top_tokens(tokenizer, correct.next_probs, k)
        word = AP.decode_word(tokenizer, ids)
        row.update({"p_correct": correct.p_full, "p_correct_first": correct.p_first,
                    "nll_correct": correct.nll_per_token,
                    "p_wrong": _field(wrong, "p_full"), "p_wrong_first": _field(wrong, "p_first"),
                    "nll_wrong": _field(wrong, "nll_per_token"),
                    "p_edited": _field(edited, "p_full"), "nll_edited": _field(edited, "nll_per_token"),
                    "greedy": word, "says_answer": AP.says(word, row["answer"]),
                    "top1": top[0].token, "top_k": [{"token": t.token, "prob": t.prob} for t in top]})
    return rows


def load_heldout(path: Path | str) -> list[str]:
    """General held-out text for the fluency check: paragraphs of a .txt file (blank-line separated)."""
    path = Path(path)
    if not path.is_file():
        raise ReasonlabError(f"held-out text {path} not found (a .txt file of paragraphs)")
    texts = [p.strip() for p in path.read_text().split("\n\n") if p.strip()]
    if not texts:
        raise ReasonlabError(f"held-out text {path} holds no paragraphs")
    return texts

