"""What "correct" means, once: the probability of a whole answer, by the chain rule over its tokens.

    p(" Hepatitis B" | prompt) = p(" Hep") * p("atitis" | " Hep") * p(" B" | " Hepatitis")

summed over the answer's surface variants (leading space or not; as written, lower, Capitalized), each
a distinct token sequence, so the events are disjoint. The filter (stage 2) and the evaluation (stage 7)
both score answers here, the right one and the wrong one alike (the same surface variants, nothing more).
Beside it: the first-token probability, and the mean per-token NLL (ROME's measure, which does not penalise
a long answer against a one-token one: 0.5 * 0.5 * 0.5 < 0.2, but 0.69 nats/token < 1.61) of the answer's
best surface form.

The model's *wrong* answer is its own greedy continuation up to a word boundary (as many words as the
right answer has): " Ren" + "in" -> " Renin". The same greedy answer tells whether the model *says* an answer.

Every prompt is encoded by `prompt_format.prompt_ids` (one BOS, whether or not the chat template wrote it).
All passes are batched with length-sorted batches (similar lengths together, so little padding) and right
padding (causal attention keeps pads out of every real position).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reasonlab.prompt_format import prompt_ids
from reasonlab.tokens import surface_variants, token_text

MAX_WORD_TOKENS = 8  # a greedy word longer than this is cut (a runaway continuation, not a word)


def variant_sequences(tokenizer, answer: str) -> list[tuple[int, ...]]:
    """The token sequences of `answer`'s surface variants, deduplicated, in a stable order."""
    seqs: dict[tuple[int, ...], None] = {}
    for variant in surface_variants(answer):
        ids = tokenizer.encode(variant, add_special_tokens=False)
        while ids and not tokenizer.decode(ids[:1]).strip():  # a bare sentencepiece word-start piece
            ids = ids[1:]
        if ids:
            seqs[tuple(ids)] = None
    return list(seqs)


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), each at most `batch_size`."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def forward_logprobs(model, tokenizer, sequences: list[list[int]], batch_size: int = 16,
                     keep: list[list[int]] | None = None):
    """Yield (index, [n, vocab] next-token log-probs) per sequence, in length-sorted batches.

    `keep[i]`: the positions of sequence i whose logits are needed (default: all). Only those go through the
    LM head (`logits_to_keep`), which for a small model's large vocabulary is a good part of the work.
    """
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
        width = max(len(sequences[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
            mask[row, :len(sequences[i])] = 1
        extra = {}
        if keep is not None:
            n = max(len(keep[i]) for i in batch)
            extra["logits_to_keep"] = torch.tensor([keep[i] + keep[i][-1:] * (n - len(keep[i])) for i in batch],
                                                   device=device)  # [batch, n], padded by repeating the last
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **extra).logits
        logp = logits.float().log_softmax(-1).cpu()  # [batch, n or pos, vocab]
        for row, i in enumerate(batch):
            yield i, logp[row, :len(keep[i]) if keep is not None else len(sequences[i])]


def next_token_logprobs(model, tokenizer, contexts: list[str], batch_size: int = 16) -> list[torch.Tensor]:
    """Each context's next-token log-probs [vocab]: one position through the LM head per context."""
    seqs = [prompt_ids(tokenizer, c) for c in contexts]
    out: list[torch.Tensor] = [None] * len(seqs)  # type: ignore[list-item]
    for i, logp in forward_logprobs(model, tokenizer, seqs, batch_size, keep=[[len(s) - 1] for s in seqs]):
        out[i] = logp[0]
    return out


@dataclass
class Scored:
    """One (context, answer) pair: the whole-answer and first-token probabilities, the per-token NLL, and the
    next-token law."""

    p_full: float  # sum over variants of prod_t p(token_t | context, tokens_<t)
    p_first: float  # sum over the variants' distinct first tokens of p(first token | context)
    nll_per_token: float  # min over variants of -(1/T) sum_t log p(token_t | ...): ROME's score, best surface form
    next_probs: torch.Tensor  # [vocab] the next-token distribution after the context


def score_sequences(model, tokenizer, contexts: list[str], answers: list[list[list[tuple[int, ...]]]],
                    batch_size: int = 16) -> list[list[Scored]]:
    """`answers[i][j]`: the token sequences (variants) of answer j asked of `contexts[i]`; each scored.

    One forward pass per (context, sequence); the next-token law of a context is read from any of its
    sequences (causal: positions before the answer do not see it).
    """
    jobs, seqs = [], []  # job: (context, answer, sequence); seqs: context ids + sequence
    ctx_ids = [prompt_ids(tokenizer, c) for c in contexts]
    for c, per_answer in enumerate(answers):
        for a, vs in enumerate(per_answer):
            for v in vs:
                jobs.append((c, a, tuple(v)))
                seqs.append(ctx_ids[c] + list(v))
        if not any(per_answer):
            jobs.append((c, None, ()))
            seqs.append(ctx_ids[c])
    logp_full: dict[tuple[int, int], float] = {}
    nll: dict[tuple[int, int], float] = {}
    first: dict[tuple[int, int], set[int]] = {}
    next_logp: dict[int, torch.Tensor] = {}
    keep = [list(range(len(ctx_ids[c]) - 1, len(ctx_ids[c]) - 1 + max(len(v), 1))) for c, _, v in jobs]
    for j, logp in forward_logprobs(model, tokenizer, seqs, batch_size, keep):  # logp[t]: before token t of v
        c, a, v = jobs[j]
        next_logp.setdefault(c, logp[0])
        if a is None:
            continue
        total = float(logp[torch.arange(len(v)), torch.tensor(v)].sum())
        logp_full[(c, a)] = float(torch.logaddexp(torch.tensor(logp_full.get((c, a), -math.inf)), torch.tensor(total)))
        nll[(c, a)] = min(nll.get((c, a), math.inf), -total / len(v))
        first.setdefault((c, a), set()).add(v[0])
    out = []
    for c, per_answer in enumerate(answers):
        probs = next_logp[c].exp()
        out.append([Scored(p_full=math.exp(logp_full.get((c, a), -math.inf)),
                           p_first=float(probs[sorted(first[(c, a)])].sum()) if (c, a) in first else 0.0,
                           nll_per_token=nll.get((c, a), math.inf),
                           next_probs=probs)
                    for a in range(len(per_answer))])
    return out


def score_answers(model, tokenizer, contexts: list[str], answers: list[list[str]],
                  batch_size: int = 16) -> list[list[Scored]]:
    """`answers[i]`: the answers (strings) asked of `contexts[i]`, each scored over its surface variants."""
    return score_sequences(model, tokenizer, contexts,
                           [[variant_sequences(tokenizer, a) for a in ans] for ans in answers], batch_size)


def decode_word(tokenizer, ids: list[int]) -> str:
    """A generated word as text, its leading space kept (sentencepiece's decode drops it: ' big', not 'big')."""
    text = tokenizer.decode(ids)
    if ids and token_text(tokenizer, ids[0]).startswith(" ") and not text.startswith(" "):
        text = " " + text
    return text


def says(word: str, answer: str) -> bool:
    """The greedy answer `word` is `answer` (case and surrounding space aside): the model would say it."""
    return word.strip().lower() == answer.strip().lower()


def word_break(tokenizer, token_id: int) -> str | None:
    """How `token_id` ends a word in progress: "space" (a new word starts), "stop" (punctuation, a line
    break or a special token: the answer is over), or None (it continues the word; - and ' do too)."""
    if token_id in set(tokenizer.all_special_ids):
        return "stop"
    text = token_text(tokenizer, token_id)
    if not text.strip() or "\n" in text:
        return "stop"
    if text[0].isspace():
        return "space"
    return None if text[0].isalnum() or text[0] in "-'" else "stop"


def greedy_words(model, tokenizer, contexts: list[str], n_words: list[int], batch_size: int = 16) -> list[list[int]]:
    """Each context's greedy continuation up to the end of its `n_words`-th word: the token ids.

    Greedy steps run batched (the unfinished contexts only) without a KV cache: a word is a few tokens.
    """
    ctx_ids = [prompt_ids(tokenizer, c) for c in contexts]
    generated: list[list[int]] = [[] for _ in contexts]
    words = [1] * len(contexts)  # the word being written (the first token starts word 1)
    active = list(range(len(contexts)))
    while active:
        seqs = [ctx_ids[i] + generated[i] for i in active]
        nxt = {active[j]: int(logp[-1].argmax())
               for j, logp in forward_logprobs(model, tokenizer, seqs, batch_size, keep=[[len(q) - 1] for q in seqs])}
        still = []
        for i in active:
            tok = nxt[i]
            brk = word_break(tokenizer, tok) if generated[i] else ("stop" if tok in tokenizer.all_special_ids else None)
            if brk == "space":
                words[i] += 1
            if brk == "stop" or words[i] > n_words[i]:
                continue
            generated[i].append(tok)
            if len(generated[i]) < MAX_WORD_TOKENS * n_words[i]:
                still.append(i)
        active = still
    return generated
