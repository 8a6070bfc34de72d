"""Token-level helpers shared by the filter and the evaluation: readable token text, answer variants."""

from __future__ import annotations


def token_text(tokenizer, token_id: int) -> str:
    """The token as it appears in text, leading space included (' ren', not 'ren')."""
    text = tokenizer.decode([token_id])
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(piece, str) and piece.startswith("▁") and not text.startswith(" "):
        text = " " + text  # sentencepiece's decode drops the word-start marker of a lone token
    return text


def surface_variants(word: str) -> list[str]:
    """How a word may start a completion: with/without a leading space, as written, lower, Capitalized."""
    word = word.strip()
    forms = dict.fromkeys([word, word.lower(), word[:1].upper() + word[1:], word.capitalize()])
    return [p + f for f in forms for p in (" ", "")]


def first_token_ids(tokenizer, word: str) -> set[int]:
    """Ids of the first token of each surface variant of `word` (multi-word answers: the first word's)."""
    ids: set[int] = set()
    for variant in surface_variants(word):
        encoded = tokenizer.encode(variant, add_special_tokens=False)
        # sentencepiece may emit a bare word-start piece first; the answer starts after it
        while encoded and not tokenizer.decode(encoded[:1]).strip():
            encoded = encoded[1:]
        if encoded:
            ids.add(encoded[0])
    return ids


def single_token_ids(tokenizer, word: str) -> set[int]:
    """Ids of the surface variants of `word` that are one token each (for a wrong token like ' ren')."""
    ids: set[int] = set()
    for variant in surface_variants(word):
        encoded = tokenizer.encode(variant, add_special_tokens=False)
        if len(encoded) == 1:
            ids.add(encoded[0])
    return ids
