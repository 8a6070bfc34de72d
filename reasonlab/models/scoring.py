"""Held-out perplexity of a causal LM, one way for every pipeline.

    heldout_perplexity(model, [[5, 9, 2, ...], ...])        # token sequences (three_stage's packed blocks)
    text_perplexity(model, tokenizer, ["Once upon ...", ...])  # texts, each cut to max_tokens (concept_sft)

Every predicted position counts: a sequence of n tokens contributes its n − 1 next-token targets. Sequences of
different lengths are batched by length and right-padded under an attention mask, so a padded position is
neither seen nor scored.
"""

from __future__ import annotations

from reasonlab import stats


def heldout_perplexity(model, sequences: list[list[int]], batch_size: int = 8) -> dict:
    """Summed next-token NLL (nats) over every predicted position of `sequences`:
    {"nll": mean per token, "tokens": positions scored, "perplexity": exp(mean)}."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = [sequences[i] for i in order[start:start + batch_size]]
            width = max(len(s) for s in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)      # [batch, width], right-padded
            mask = torch.zeros((len(batch), width), dtype=torch.long)     # [batch, width], 1 = a real token
            for row, seq in enumerate(batch):
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # [batch, width - 1, vocab]
            targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)              # [batch, width - 1]
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                       ignore_index=-100, reduction="sum").item()
            count += int(mask[:, 1:].sum())
    model.train(was_training)
    perplexity = stats.perplexity(total, count)
    return {"nll": total / count, "tokens": count, "perplexity": perplexity}


def text_perplexity(model, tokenizer, texts: list[str], max_tokens: int = 256, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) over every predicted token of `texts` (each encoded, cut to `max_tokens`)."""
    return heldout_perplexity(model, [tokenizer.encode(t)[:max_tokens] for t in texts], batch_size)["perplexity"]
