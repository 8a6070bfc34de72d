"""Stage-3/4 data: `{prompt, chosen, rejected}` preference pairs.

    pairs, report = load_preferences("hh-helpful")               # a named set, a file, or hub:OWNER/NAME
    train, heldout, report = split_by_conversation(pairs, 0.2, seed=0)  # no dialogue on both sides
    rows, fit = tokenize_pairs(tokenizer, train, max_length=256)  # keep the end: HH pairs differ at the end

Checks (one `ReasonlabError` naming the rows): a row without chosen or rejected. Rows whose chosen equals
rejected are skipped and counted (HH's published test splits hold some). TRL's RewardTrainer drops pairs
longer than `max_length` without a word; `tokenize_pairs` counts them and either keeps each sequence's
last `max_length` tokens (`truncation="keep_end"`: the shared prompt is cut from the left, the differing
replies survive) or drops them (`"drop"`), and refuses a setting that would drop most pairs.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from reasonlab.errors import ReasonlabError
from reasonlab.io import read_rows
from reasonlab import datasets
from reasonlab.paths import find_input, project_root

HH = "\n\nHuman:"
AST = "\n\nAssistant:"

# Named sets: (a dataset of reasonlab.datasets, or "project" for the repo's own files, and the file in it).
NAMED = {
    "pharma": ("project", "data/three_stage/pharma_preferences.jsonl"),
    "hh-helpful": ("hh-rlhf", "helpful-base_test.jsonl"),
    "hh-harmless": ("hh-rlhf", "harmless-base_test.jsonl"),
    "hh-helpful-rs": ("hh-rlhf", "helpful-rejection-sampled_test.jsonl"),
    "hh-harmless-train5k-lastturn": ("hh-rlhf-train5k-lastturn", "train.jsonl"),
    "ultrafeedback-train": ("ultrafeedback-subset", "train_clean.jsonl"),
    "ultrafeedback-eval": ("ultrafeedback-subset", "eval_clean.jsonl"),
}


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str

    def to_dict(self) -> dict:
        return asdict(self)


def named_path(name: str) -> Path:
    where, rel = NAMED[name]
    return (project_root() if where == "project" else datasets.locate(where)) / rel


def _read_rows(path: Path) -> list:
    if not path.is_file():
        raise ReasonlabError(f"preference file {path}: no such file")
    return read_rows(path)


def _hub_rows(spec: str) -> list:
    """hub:OWNER/NAME[:split] through `datasets` (needs the network; offline, the named sets stand in)."""
    from datasets import load_dataset

    ident, _, split = spec[len("hub:"):].partition(":")
    try:
        return list(load_dataset(ident, split=split or "train"))
    except Exception as e:
        raise ReasonlabError(f"preference dataset {spec!r} could not be loaded from the Hub "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); offline, use a "
                             f"file or a named set ({', '.join(NAMED)})") from None


def split_transcript(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """HH's original `{chosen, rejected}` transcripts -> (prompt up to the last "Assistant:", two replies)."""
    i = chosen.rfind(AST)
    if i < 0:
        return None
    prompt = chosen[:i + len(AST)]
    if not rejected.startswith(prompt):
        return None
    return prompt, chosen[len(prompt):], rejected[len(prompt):]


def validate_rows(rows: list, where: str, fields: tuple[str, str, str] = ("prompt", "chosen", "rejected")
                  ) -> tuple[list[Pair], dict]:
    """Pairs from raw rows: one error for missing fields; identical chosen/rejected skipped and counted."""
    p_key, c_key, r_key = fields
    missing, pairs, identical, unsplittable = [], [], [], 0
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            missing.append((n, "not an object"))
            continue
        lacks = [k for k in (c_key, r_key) if not isinstance(row.get(k), str)]  # "" is a real (empty) reply
        if lacks:
            missing.append((n, " and ".join(lacks)))
            continue
        chosen, rejected = row[c_key], row[r_key]
        prompt = row.get(p_key)
        if prompt is None:  # implicit prompt (HH originals): the shared transcript up to the last reply
            split = split_transcript(chosen, rejected)
            if split is None:
                unsplittable += 1
                continue
            prompt, chosen, rejected = split
        if not isinstance(prompt, str):
            missing.append((n, p_key))
            continue
        if chosen.strip() == rejected.strip():
            identical.append(n)
            continue
        pairs.append(Pair(prompt, chosen, rejected))
    if missing:
        shown = ", ".join(f"row {n} ({what})" for n, what in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ReasonlabError(f"{where}: {len(missing)} of {len(rows)} preference rows lack "
                             f"'{c_key}' or '{r_key}' (a string): {shown}{more}")
    report = {"rows": len(rows), "pairs": len(pairs), "identical_skipped": len(identical),
              "identical_rows": identical[:20], "unsplittable_skipped": unsplittable}
    if not pairs:
        raise ReasonlabError(f"{where}: no usable preference pairs ({json.dumps(report)})")
    return pairs, report


def load_preferences(source: str, limit: int | None = None) -> tuple[list[Pair], dict]:
    """Pairs from a named set, a .json/.jsonl(.gz) file, or hub:OWNER/NAME[:split]; plus a data report."""
    if source in NAMED:
        rows = _read_rows(named_path(source))
    elif source.startswith("hub:"):
        rows = _hub_rows(source)
    else:
        path = find_input(source)
        if not path.exists() and not Path(source).suffix:
            raise ReasonlabError(f"unknown preference data {source!r}: not a named set ({', '.join(NAMED)}), "
                                 "not a file, and not hub:OWNER/NAME")
        rows = _read_rows(path)
    pairs, report = validate_rows(rows, f"preferences {source!r}")
    if limit is not None:
        pairs = pairs[:limit]
    return pairs, {"source": source, **report, "used": len(pairs)}


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def conversation_key(prompt: str) -> str:
    """The conversation a pair comes from: its first human turn, normalised. HH-RLHF holds several pairs per
    dialogue (a later pair's prompt is an earlier prompt + a reply + more turns); all share this key.
    A prompt without turns is its own conversation."""
    return _normalised(prompt.split(AST, 1)[0])


def _in_heldout(key: str, fraction: float, seed: int) -> bool:
    h = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def split_leaks(train: list[Pair], heldout: list[Pair]) -> dict:
    """How many held-out pairs a training pair gives away: `continued_in_train` (a training prompt is the held-out
    prompt + its chosen reply + later turns) and `opening_in_train` (a training pair opens with the same
    human turn)."""
    train_prompts = [_normalised(p.prompt) for p in train]
    openings = {conversation_key(p.prompt) for p in train}
    continued = sum(any(t.startswith(_normalised(h.prompt + h.chosen)) for t in train_prompts) for h in heldout)
    return {"heldout": len(heldout), "continued_in_train": continued,
            "opening_in_train": sum(conversation_key(h.prompt) in openings for h in heldout)}


def split_by_conversation(pairs: list[Pair], heldout_fraction: float, seed: int = 0
                          ) -> tuple[list[Pair], list[Pair], dict]:
    """Train / held-out by a hash of the conversation's first human turn: every pair of a dialogue lands on
    one side (splitting by the whole prompt puts a dialogue's later turns beside its held-out earlier ones)."""
    if not 0 < heldout_fraction < 1:
        raise ReasonlabError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    held_out = [_in_heldout(conversation_key(p.prompt), heldout_fraction, seed) for p in pairs]
    heldout = [p for p, h in zip(pairs, held_out) if h]
    train = [p for p, h in zip(pairs, held_out) if not h]
    if not train or not heldout:
        raise ReasonlabError(f"splitting {len(pairs)} pairs by conversation left {len(train)} for training and "
                             f"{len(heldout)} held out: use more pairs or another heldout_fraction")
    return train, heldout, {"by": "conversation (first human turn)", "train": len(train), **split_leaks(train, heldout)}


def dedupe_across(train: list[Pair], heldout: list[Pair]) -> tuple[list[Pair], dict]:
    """Drop training pairs from a conversation the held-out set also holds (the held-out set stays fixed)."""
    held = {conversation_key(p.prompt) for p in heldout}
    kept = [p for p in train if conversation_key(p.prompt) not in held]
    return kept, {"train_dropped_shared_conversation": len(train) - len(kept)}


def to_messages(prompt: str, reply: str) -> list[dict]:
    """An HH-style transcript ("\\n\\nHuman: ... \\n\\nAssistant:") or a plain prompt, as chat messages."""
    if HH not in prompt and not prompt.startswith("Human:"):
        return [{"role": "user", "content": prompt.strip()}, {"role": "assistant", "content": reply.strip()}]
    turns = re.split(r"(?:^|\n\n)(Human|Assistant):", prompt)
    messages = []
    for speaker, text in zip(turns[1::2], turns[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + text.strip()
        elif text.strip() or role == "user":
            messages.append({"role": role, "content": text.strip()})
    if messages and messages[-1]["role"] == "assistant":  # the prompt ends with an empty "Assistant:"
        messages[-1]["content"] = (messages[-1]["content"] + "\n\n" + reply.strip()).strip()
    else:
        messages.append({"role": "assistant", "content": reply.strip()})
    return messages


def render(tokenizer, prompt: str, reply: str, use_chat_template: bool) -> str:
    """The text the reward model reads: the conversation under the chat template, or prompt + reply + EOS."""
    if use_chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ReasonlabError(f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template: "
                                 "set use_chat_template: false")
        return tokenizer.apply_chat_template(to_messages(prompt, reply), tokenize=False)
    return prompt + reply + (tokenizer.eos_token or "")


def tokenize_pairs(tokenizer, pairs: list[Pair], max_length: int, use_chat_template: bool = True,
                   truncation: str = "keep_end", max_drop_fraction: float = 0.5, where: str = "pairs"
                   ) -> tuple[list[dict], dict]:
    """`{chosen_ids, rejected_ids}` rows no longer than `max_length`, and a report of what length did.

    `over_length`: pairs TRL would drop silently at this max_length. keep_end keeps the last tokens of
    each sequence (both still end with their own reply); drop removes them, and more than
    `max_drop_fraction` of the pairs dropped is refused. Pairs whose kept tokens are identical are
    dropped and counted (`identical_after_truncation`).
    """
    if truncation not in ("keep_end", "drop"):
        raise ReasonlabError(f"unknown truncation {truncation!r}: use keep_end or drop")
    rows, over, identical = [], 0, 0
    for p in pairs:
        c = tokenizer(render(tokenizer, p.prompt, p.chosen, use_chat_template), add_special_tokens=False)["input_ids"]
        r = tokenizer(render(tokenizer, p.prompt, p.rejected, use_chat_template), add_special_tokens=False)["input_ids"]
        if len(c) > max_length or len(r) > max_length:
            over += 1
            if truncation == "drop":
                continue
            c, r = c[-max_length:], r[-max_length:]
        if c == r:
            identical += 1
            continue
        rows.append({"chosen_ids": c, "rejected_ids": r})
    report = {"pairs": len(pairs), "kept": len(rows), "over_length": over, "max_length": max_length,
              "truncation": truncation, "dropped_over_length": over if truncation == "drop" else 0,
              "identical_after_truncation": identical}
    if pairs and truncation == "drop" and over > max_drop_fraction * len(pairs):
        raise ReasonlabError(f"{where}: max_length={max_length} would drop {over} of {len(pairs)} pairs "
                             f"(TRL drops over-long pairs silently): raise max_length or use truncation: keep_end")
    if not rows:
        raise ReasonlabError(f"{where}: no pair left after fitting to max_length={max_length} ({json.dumps(report)})")
    return rows, report
