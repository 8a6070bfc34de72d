"""Option scoring in lm-evaluation-harness's conventions, with the model's own softmax as the distribution.

`acc`: the log-likelihood of each option letter (" A", " B", ...) as the next token after "Answer:"; all letters
are read from ONE forward pass at the last position (`letter_logprobs`). The distribution over options is the
softmax of those four log-likelihoods (renormalised over the letters); `letter_mass` records how much of the
vocabulary's probability the letters hold.

`acc_norm`: the log-likelihood of " {option text}" as a continuation, divided by the option's length in
characters (lm-eval's acc_norm). The prompt is run once with a KV cache, which is repeated for the options,
whose continuations go through in one batched forward (`option_text_scores`).

Debiasing (`debias=True`): the prompt is also shown with its options cyclically shifted by 1..n-1 positions (one
batched forward); each shift's letter distribution is mapped back to the original options and the n are averaged,
so a letter preference can no longer pick the same original option every time.

The per-option references (`letter_logprobs_per_option`, `option_text_scores_unbatched`) do the same work the
naive way, for the benchmark and the tests.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from reasonlab.errors import ReasonlabError
from reasonlab.retrieval.prompts import model_prompt, rotate

VERSION = "1"


def encode(tokenizer, text: str) -> list[int]:
    bos = getattr(tokenizer, "bos_token", None)
    special = not (bos and text.startswith(bos))  # a chat template may already start with BOS
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def continuation_ids(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval splits them: encode(context + continuation) after the context."""
    ctx = encode(tokenizer, context)
    whole = encode(tokenizer, context + continuation)
    if whole[:len(ctx)] != ctx:  # the tokenizer merged across the boundary: fall back to separate encoding
        return ctx, tokenizer(continuation, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def letter_ids(tokenizer, letters: list[str]) -> tuple[list[int], list[list[int]]]:
    """(extra tokens, each letter's continuation tokens) of " X" after "Answer:".

    Most tokenizers have " A" as one token (no extra tokens). Some split some letters (stories260K: ' A' is
    '▁' + 'A' but ' B' is '▁B'); the split letters' leading tokens are then appended to the prompt, so every
    letter's full log-likelihood is still read from one forward. Letters whose leading tokens differ are refused."""
    conts = [continuation_ids(tokenizer, "Question: q\nA. a\nAnswer:", f" {letter}")[1] for letter in letters]
    extra = max((c[:-1] for c in conts), key=len)
    if any(not c or c[:-1] != extra[:len(c) - 1] for c in conts):
        raise ReasonlabError(f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')!r} encodes the option letters "
                             f"after 'Answer:' as {conts}: letter scoring needs their leading tokens to be shared")
    if len({tuple(c) for c in conts}) != len(conts):
        raise ReasonlabError(f"option letters {letters} encode to the same tokens {conts}")
    return extra, conts


def letter_logliks(position_lp: torch.Tensor, extra: list[int], conts: list[list[int]]) -> list[float]:
    """Each letter's continuation log-likelihood from the log-probabilities after prompt + extra[:j], j = 0..len(extra)."""
    out = []
    for c in conts:
        total = sum(float(position_lp[j, extra[j]]) for j in range(len(c) - 1))
        out.append(total + float(position_lp[len(c) - 1, c[-1]]))
    return out


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _log_softmax_rows(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def last_position_logprobs(model, prompts_ids: list[list[int]], use_cache: bool = False, extra: list[int] = ()):
    """Vocabulary log-probabilities after each prompt and after prompt + extra[:j], from ONE right-padded forward.

    Returns (logprobs [n, len(extra) + 1, vocab]; [:, 0] is the prompt's last position, past_key_values or None).
    Only the positions read go through the LM head (`logits_to_keep`)."""
    device = _device(model)
    extra = list(extra)
    seqs = [list(p) + extra for p in prompts_ids]
    n, longest, m = len(seqs), max(len(s) for s in seqs), len(extra)
    ids = torch.zeros((n, longest), dtype=torch.long)
    mask = torch.zeros((n, longest), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
    wanted = torch.tensor([[len(seq) - 1 - m + j for j in range(m + 1)] for seq in seqs])  # [n, m + 1]
    keep = torch.unique(wanted)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=use_cache,
                logits_to_keep=keep.to(device))
    col = torch.searchsorted(keep, wanted).to(out.logits.device)
    rows = torch.arange(n, device=out.logits.device)[:, None]
    return _log_softmax_rows(out.logits[rows, col]), (out.past_key_values if use_cache else None)


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


@torch.no_grad()
def option_text_scores(model, tokenizer, prompt: str, prompt_logprobs: torch.Tensor, past, texts: list[str]) -> list[float]:
    """Sum log p(" text" | prompt) per option, one batched forward over the shared prefix's KV cache."""
    device = _device(model)
    ctx_ids = encode(tokenizer, prompt)
    conts = [continuation_ids(tokenizer, prompt, " " + t)[1] for t in texts]
    if any(not c for c in conts):
        raise ReasonlabError("an option text encodes to no tokens")
    n, longest = len(conts), max(len(c) for c in conts)
    ids = torch.full((n, longest), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros((n, longest), dtype=torch.long)
    for i, c in enumerate(conts):
        ids[i, :len(c)] = torch.tensor(c)
        mask[i, :len(c)] = 1
    past.batch_repeat_interleave(n)
    full_mask = torch.cat([torch.ones((n, len(ctx_ids)), dtype=torch.long), mask], dim=1)
    positions = torch.arange(len(ctx_ids), len(ctx_ids) + longest).unsqueeze(0).expand(n, -1)
    out = model(input_ids=ids.to(device), attention_mask=full_mask.to(device), past_key_values=past,
                position_ids=positions.to(device), use_cache=True)
    logprobs = _log_softmax_rows(out.logits)  # [n, longest, vocab]
    scores = []
    for i, c in enumerate(conts):
        total = float(prompt_logprobs[c[0]])
        for j in range(1, len(c)):
            total += float(logprobs[i, j - 1, c[j]])
        scores.append(total)
    return scores


@torch.no_grad()
def option_text_scores_unbatched(model, tokenizer, prompt: str, texts: list[str]) -> list[float]:
    """The reference: one forward over prompt + option per option, no shared cache."""
    device = _device(model)
    scores = []
    for t in texts:
        ctx, cont = continuation_ids(tokenizer, prompt, " " + t)
        ids = torch.tensor([ctx + cont], device=device)
        logprobs = _log_softmax_rows(model(input_ids=ids).logits[0])
        scores.append(sum(float(logprobs[len(ctx) - 1 + j, tok]) for j, tok in enumerate(cont)))
    return scores


@torch.no_grad()
def letter_logprobs_per_option(model, tokenizer, prompt: str, letters: list[str]) -> list[float]:
    """The reference: one forward over prompt + " X" per letter, reading that continuation's log-likelihood."""
    device = _device(model)
    out = []
    for letter in letters:
        ctx, cont = continuation_ids(tokenizer, prompt, f" {letter}")
        ids = torch.tensor([ctx + cont], device=device)
        logprobs = _log_softmax_rows(model(input_ids=ids).logits[0])
        out.append(sum(float(logprobs[len(ctx) - 1 + j, tok]) for j, tok in enumerate(cont)))
    return out


def check_length(model, n_tokens: int, qid: str) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and n_tokens > limit:
        raise ReasonlabError(f"question {qid!r}: the prompt needs about {n_tokens} tokens but the model takes at most "
                             f"{limit}: use a shorter instruction library or a smaller top_k")


def score_question(model, tokenizer, question: dict[str, Any], instruction: str = "", use_chat_template: bool = False,
                   debias: bool = False, acc_norm: bool = True,
                   letter_tokens: tuple[list[int], list[list[int]]] | None = None) -> dict:
    """Letter log-likelihoods, the softmax over options, acc_norm scores and (debias) the shift-averaged softmax."""
    letters = list(question["options"])
    texts = list(question["options"].values())
    extra, conts = letter_tokens or letter_ids(tokenizer, letters)
    prompt = model_prompt(tokenizer, question["question"], question["options"], instruction, use_chat_template)
    ids = encode(tokenizer, prompt)
    check_length(model, len(ids) + 32, question["id"])  # + room for the longest option text
    shared = acc_norm and not extra  # the letters' forward is also the option texts' shared prefix
    logprobs, past = last_position_logprobs(model, [ids], use_cache=shared, extra=extra)
    letter_lp = letter_logliks(logprobs[0], extra, conts)
    probs = _softmax(letter_lp)
    row: dict[str, Any] = {
        "id": question["id"], "answer": question["answer"], "n_prompt_tokens": len(ids),
        "letter_logprobs": [round(v, 6) for v in letter_lp], "letter_mass": round(sum(math.exp(v) for v in letter_lp), 6),
        "probs": [round(p, 6) for p in probs], "pred": letters[probs.index(max(probs))],
    }
    if acc_norm:
        prompt_lp = logprobs
        if not shared:  # the letters needed extra tokens after the prompt: one more forward for the prefix cache
            prompt_lp, past = last_position_logprobs(model, [ids], use_cache=True)
        sums = option_text_scores(model, tokenizer, prompt, prompt_lp[0, 0], past, texts)
        norm = [s / len(t) for s, t in zip(sums, texts)]
        row.update(option_loglik=[round(v, 6) for v in sums], norm_scores=[round(v, 6) for v in norm],
                   norm_pred=letters[norm.index(max(norm))])
    if debias:
        n = len(letters)
        shifted = [model_prompt(tokenizer, question["question"], rotate(question["options"], s), instruction,
                                use_chat_template) for s in range(1, n)]
        shift_lp, _ = last_position_logprobs(model, [encode(tokenizer, p) for p in shifted], extra=extra)
        per_shift = [probs]
        for s in range(1, n):
            shown = _softmax(letter_logliks(shift_lp[s - 1], extra, conts))  # shown position j = original (j+s) % n
            original = [0.0] * n
            for j in range(n):
                original[(j + s) % n] = shown[j]
            per_shift.append(original)
        averaged = [sum(p[i] for p in per_shift) / n for i in range(n)]
        row.update(shift_probs=[[round(v, 6) for v in p] for p in per_shift],
                   debiased_probs=[round(v, 6) for v in averaged], debiased_pred=letters[averaged.index(max(averaged))])
    return row
