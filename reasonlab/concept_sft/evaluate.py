"""Stage 7 of concept SFT: score a model on every target case, its paraphrases and its neighbours.

Per (case, format) and per text shown (the prompt, each paraphrase, each neighbour):
    p_correct / p_wrong           whole-answer probabilities (`answer_prob`: chain rule, surface variants summed);
                                  the wrong answer is the case's greedy wrong word from the filter
    p_correct_first / p_wrong_first   the first-token figures beside them (the seed's)
    top_k, top1                   the next-token top-k
Neighbours are scored on their own answer only. Fluency: `reasonlab.models.scoring.text_perplexity`.
The comparison base vs SFT is `edit_metrics`.
"""

from __future__ import annotations

from pathlib import Path

from reasonlab.concept_sft import answer_prob as AP
from reasonlab.concept_sft.topk_filter import top_tokens
from reasonlab.errors import ReasonlabError
from reasonlab.prompt_format import Format, build_prompt

VERSION = "2"  # 2: whole answers, paraphrases, neighbours


def evaluation_rows(cases: list[dict], formats: list[Format]) -> list[dict]:
    """The texts to score, one row each: (case, format, kind, text, answer, wrong_word)."""
    rows = []
    for c in cases:
        for fmt in formats:
            shown = [("prompt", c["prompt"], c["answer"])] + [("paraphrase", p, c["answer"])
                                                               for p in c.get("paraphrases", [])]
            shown += [("neighbour", n["prompt"], n["answer"]) for n in c.get("neighbours", [])]
            rows += [{"case": c["prompt"], "format": fmt, "kind": kind, "text": text, "answer": answer,
                      "wrong_word": c["wrong_word"] if kind != "neighbour" else None} for kind, text, answer in shown]
    return rows


def evaluate_cases(model, tokenizer, cases: list[dict], formats: list[Format], *, k: int = 10,
                   system_prompt: str | None = "", answer_prefix: str = " Answer:", batch_size: int = 16) -> list[dict]:
    """One row per (case, format, text shown) with the whole-answer and first-token probabilities."""
    rows = evaluation_rows(cases, formats)
    wrong_ids = {c["prompt"]: c.get("wrong_ids", []) for c in cases}
    contexts = [build_prompt(tokenizer, r["text"], r["format"], system_prompt, answer_prefix) for r in rows]
    asked = [[AP.variant_sequences(tokenizer, r["answer"])]
             + ([AP.word_sequences(tokenizer, r["wrong_word"], wrong_ids[r["case"]])] if r["wrong_word"] else [])
             for r in rows]
    for row, scored in zip(rows, AP.score_sequences(model, tokenizer, contexts, asked, batch_size), strict=True):
        correct, *wrong = scored
        top = top_tokens(tokenizer, correct.next_probs, k)
        row.update({"p_correct": correct.p_full, "p_correct_first": correct.p_first,
                    "p_wrong": wrong[0].p_full if wrong else None, "p_wrong_first": wrong[0].p_first if wrong else None,
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

