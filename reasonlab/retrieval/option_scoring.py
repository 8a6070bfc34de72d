"""Option scoring: lm-evaluation-harness's prompt layout, with the model's own softmax as the distribution.

`acc`: the log-likelihood of each option letter (" A", " B", ...) as the next token after "Answer:"; all letters
are read from ONE forward pass at the last position (`letter_logprobs`). The distribution over options is the
softmax of those log-likelihoods (renormalised over the question's letters); `letter_mass` records how much of
the vocabulary's probability the letters hold. Each question is scored with its own letters (`score_items`
keeps one token table per letter set), so a file mixing 4- and 5-option questions is scored right.

`acc_option_text_norm`: the log-likelihood of " {option text}" as the continuation of the same prompt (which
lists the options and ends in "Answer:"), divided by the option text's length in characters; the option with
the highest normalised score is the prediction. This is NOT lm-eval's `acc_norm` on MedQA: there (task
`medqa_4options`) the choices are the letters themselves (`doc_to_choice: [A, B, C, D]`), every choice is one
character long, and its acc_norm equals its acc. Here the choices are the option texts, after a prompt that
already lists them. The prompt is run once with a KV cache, repeated for the options, whose continuations go
through in one batched forward (`option_text_logliks`).

Debiasing (`debias=True`): the prompt is also shown with its options cyclically shifted by 1..n-1 positions (one
batched forward); each shift's letter distribution is mapped back to the original options and the n are averaged,
so a letter preference can no longer pick the same original option every time.

Per question, `score_question` needs two forwards whatever it computes: the prompt's shared part (instruction and
question) once with a KV cache, then one batch of the rest (`shared_prefix_logprobs`). The per-option references
(`letter_logprobs_per_option`, `option_text_scores_unbatched`) do the same work the naive way, for the benchmark
and the tests.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from reasonlab.errors import ReasonlabError
from reasonlab.retrieval.prompts import model_prompt, rotate

VERSION = "2"


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
def shared_prefix_logprobs(model, seqs: list[list[int]], reads: list[list[int]]) -> list[torch.Tensor]:
    """Next-token log-probabilities at the `reads` positions of every sequence, in two forwards: the sequences'
    longest common prefix once (KV cache), then every suffix in one right-padded batch over the repeated cache.

    Exact: each sequence's tokens are its own (the prefix is found on token ids, no re-tokenisation). Only the
    columns read go through the LM head. Returns one [len(reads[r]), vocab] tensor per sequence."""
    device = _device(model)
    n = len(seqs)
    p = 0
    while p < min(len(x) for x in seqs) and all(x[p] == seqs[0][p] for x in seqs):
        p += 1
    p = min(p, min(min(r) for r in reads), min(len(x) for x in seqs) - 1)  # every row keeps >= 1 token and its reads
    past = None
    if p > 0:
        past = model(input_ids=torch.tensor([seqs[0][:p]], device=device), use_cache=True,
                     logits_to_keep=1).past_key_values
        past.batch_repeat_interleave(n)
    suffixes = [x[p:] for x in seqs]
    width = max(len(x) for x in suffixes)
    ids = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, x in enumerate(suffixes):  # right-padded: real tokens stay contiguous (sliding-window layers count on it)
        ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
    positions = torch.arange(p, p + width).unsqueeze(0).expand(n, -1)
    full_mask = torch.cat([torch.ones((n, p), dtype=torch.long), mask], dim=1)
    cols = [[r - p for r in rs] for rs in reads]
    keep = torch.unique(torch.tensor([c for cs in cols for c in cs]))
    out = model(input_ids=ids.to(device), attention_mask=full_mask.to(device), position_ids=positions.to(device),
                past_key_values=past, use_cache=past is not None, logits_to_keep=keep.to(device))
    index = {int(c): j for j, c in enumerate(keep)}
    return [_log_softmax_rows(out.logits[i, [index[c] for c in cs]]) for i, cs in enumerate(cols)]


def option_text_rows(tokenizer, prompt: str, texts: list[str]) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """(sequences prompt + " text", positions to read, continuation tokens) for acc_option_text_norm."""
    seqs, reads, conts = [], [], []
    for t in texts:
        ctx, cont = continuation_ids(tokenizer, prompt, " " + t)
        if not cont:
            raise ReasonlabError(f"option text {t!r} encodes to no tokens")
        seqs.append(ctx + cont)
        reads.append([len(ctx) - 1 + j for j in range(len(cont))])
        conts.append(cont)
    return seqs, reads, conts


def continuation_loglik(position_lp: torch.Tensor, cont: list[int]) -> float:
    return sum(float(position_lp[j, tok]) for j, tok in enumerate(cont))


def option_text_logliks(model, tokenizer, prompt: str, texts: list[str]) -> list[float]:
    """Sum log p(" text" | prompt) per option: the prompt once, the continuations in one batch."""
    seqs, reads, conts = option_text_rows(tokenizer, prompt, texts)
    return [continuation_loglik(lp, c) for lp, c in zip(shared_prefix_logprobs(model, seqs, reads), conts)]


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
                   debias: bool = False, option_text_norm: bool = True,
                   letter_tokens: tuple[list[int], list[list[int]]] | None = None) -> dict:
    """Letter log-likelihoods, the softmax over options, the option texts' normalised scores and (debias) the
    shift-averaged softmax. `letter_tokens`: `letter_ids` of exactly this question's letters.

    Two forwards per question whatever the options: the part every prompt shares (instruction, question) once,
    then one batch of the rest: the options in each cyclic order (debias) + "Answer:", and the option texts'
    continuations (option_text_norm)."""
    letters = list(question["options"])
    texts = list(question["options"].values())
    n = len(letters)
    extra, conts = letter_tokens or letter_ids(tokenizer, letters)
    if len(conts) != n:
        raise ReasonlabError(f"question {question['id']!r} has {n} options but {len(conts)} letter token lists")
    shifts = list(range(n)) if debias else [0]
    prompts = [model_prompt(tokenizer, question["question"], rotate(question["options"], s), instruction,
                            use_chat_template) for s in shifts]
    encoded = [encode(tokenizer, p) for p in prompts]
    check_length(model, max(len(e) for e in encoded) + 32, question["id"])  # + room for the longest option text
    seqs = [e + extra for e in encoded]
    reads = [[len(e) - 1 + j for j in range(len(extra) + 1)] for e in encoded]
    if option_text_norm:
        text_seqs, text_reads, text_conts = option_text_rows(tokenizer, prompts[0], texts)
        seqs, reads = seqs + text_seqs, reads + text_reads
    lps = shared_prefix_logprobs(model, seqs, reads)
    letter_lp = letter_logliks(lps[0], extra, conts)
    probs = _softmax(letter_lp)
    row: dict[str, Any] = {
        "id": question["id"], "answer": question["answer"], "n_prompt_tokens": len(encoded[0]),
        "letter_logprobs": [round(v, 6) for v in letter_lp], "letter_mass": round(sum(math.exp(v) for v in letter_lp), 6),
        "probs": [round(p, 6) for p in probs], "pred": letters[probs.index(max(probs))],
    }
    if option_text_norm:
        sums = [continuation_loglik(lp, c) for lp, c in zip(lps[len(shifts):], text_conts)]
        norm = [s / len(t) for s, t in zip(sums, texts)]  # per character of the option text
        row.update(option_loglik=[round(v, 6) for v in sums], option_text_norm_scores=[round(v, 6) for v in norm],
                   option_text_pred=letters[norm.index(max(norm))])
    if debias:
        per_shift = [probs]
        for s in range(1, n):
            shown = _softmax(letter_logliks(lps[s], extra, conts))  # shown position j = original option (j+s) % n
            original = [0.0] * n
            for j in range(n):
                original[(j + s) % n] = shown[j]
            per_shift.append(original)
        averaged = [sum(p[i] for p in per_shift) / n for i in range(n)]
        row.update(shift_probs=[[round(v, 6) for v in p] for p in per_shift],
                   debiased_probs=[round(v, 6) for v in averaged], debiased_pred=letters[averaged.index(max(averaged))])
    return row


def score_items(model, tokenizer, questions: list[dict], items: list[dict], use_chat_template: bool = False,
                debias: bool = True, option_text_norm: bool = True, progress=None) -> list[dict]:
    """Score each item ({id, domains, instruction}) on its question, each question with its own letters.

    `progress(i, n)` is called after each item. Returns one `score_question` row per item, plus its domains."""
    by_id = {q["id"]: q for q in questions}
    tables: dict[tuple[str, ...], tuple[list[int], list[list[int]]]] = {}  # letter set -> its tokens
    rows = []
    for i, item in enumerate(items, 1):
        question = by_id[item["id"]]
        letters = tuple(question["options"])
        if letters not in tables:
            tables[letters] = letter_ids(tokenizer, list(letters))
        rows.append({**score_question(model, tokenizer, question, item["instruction"], use_chat_template, debias,
                                      option_text_norm, tables[letters]), "domains": item["domains"]})
        if progress:
            progress(i, len(items))
    return rows
