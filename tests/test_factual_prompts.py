"""data/factual_prompts.json: the general-knowledge prompts of the top-k batching benchmark, valid and varied."""

import re

from reasonlab.concept_sft.prompts import load_prompts
from reasonlab.paths import project_root

PATH = project_root() / "data" / "factual_prompts.json"


def test_a_few_hundred_valid_rows():
    items = load_prompts(PATH)  # every row passes the concept-SFT study's rules, or this raises naming the row
    assert len(items) >= 300
    keys = [" ".join(it.prompt.lower().split()) for it in items]
    assert len(set(keys)) == len(keys)
    assert all(1 <= len(it.answer.split()) <= 2 for it in items)
    assert all(it.topic for it in items)


def test_answers_are_not_given_away():
    for it in load_prompts(PATH):
        words = set(re.findall(r"\w+", it.prompt.lower()))
        assert it.answer.lower() not in words, it.prompt
        assert all(it.answer.lower() != t.lower() for t in it.topic), it.prompt


def test_lengths_vary_so_padding_matters():
    lengths = sorted(len(it.prompt.split()) for it in load_prompts(PATH))
    short = sum(n <= 8 for n in lengths)
    long = sum(n >= 20 for n in lengths)
    assert short >= 100 and long >= 40, (short, long)
    assert lengths[-1] >= 4 * lengths[0]


def test_topics_span_general_knowledge():
    text = " ".join(it.prompt.lower() for it in load_prompts(PATH))
    for marker in ["capital of", "chemical symbol", "si unit", "painted by", "composed by", "written by",
                   "in the year", "human body", "planet", "word for"]:
        assert marker in text, marker
