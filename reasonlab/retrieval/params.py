"""The instruction-retrieval flow's parameters in typed groups, one documented field per knob. No Prefect here.

The flow (`flows/instruction_retrieval.py`) takes the model(s) plus one argument per group below, so the Prefect
UI shows one nested form per group; the CLI's flags and their help come from the same fields
(`flows/cli_params.py`). A bad value is one `ReasonlabError` naming `group.field`, raised before any model work.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from reasonlab.params import Group, one_of, parse_group as parse_any_group
from reasonlab.retrieval.library import DEFAULT_LIBRARY
from reasonlab.retrieval.retrieve import METHODS

DTYPES = ("auto", "float32", "bfloat16", "float16")
Method = Annotated[Literal[METHODS], one_of("retrieval method", METHODS)]
Dtype = Annotated[Literal[DTYPES], one_of("dtype", DTYPES)]


class QuestionParams(Group):
    """Which multiple-choice questions, how many of each source, and gold domains for sources without them."""

    sources: list[str] = Field(["seed", "medqa"], min_length=1, description=(
        "question sources, each: seed (the three example questions of the notebook the pipeline comes from), "
        "medqa (the shared local copy, else the Hub's GBaker/MedQA-USMLE-4-options-hf), medqa-hub, medmcqa (Hub), "
        "hub:DATASET[:SPLIT], or a local .jsonl/.json/.yaml file"))
    n: int = Field(500, ge=1, description="questions per source, from `start` (seed has 3)")
    start: int = Field(0, ge=0, description="index of the first question taken from each source")
    domains: str | None = Field(None, description=(
        "a YAML {source: {question id: gold domain}} for sources without domains, e.g. data/medqa_domains.yaml: "
        "enables the oracle condition and retrieval accuracy there (default: none)"))


class RetrievalParams(Group):
    """The instruction library and how its domains are ranked for each question."""

    library: str = Field(DEFAULT_LIBRARY, min_length=1,
                         description="the instruction library YAML (domain -> description, knowledge, reasoning)")
    embedder: str = Field("all-minilm-l6-v2", min_length=1, description=(
        "dense retrieval's sentence embedder: all-minilm-l6-v2 (offline), a sentence-transformers folder, or a "
        "Hub id"))
    method: Method = Field("rrf", description=(
        "the ranking that picks the instructions: dense, bm25, or rrf (their reciprocal-rank fusion; ties by "
        "domain name)"))
    top_k: int = Field(3, ge=1, description=(
        "instructions in the top-k condition (1 leaves that condition out); fewer than the library's domains"))


class ScoringParams(Group):
    """How each model reads and scores the options."""

    use_chat_template: bool = Field(False, description="the prompt as a user turn under the model's chat template")
    debias: bool = Field(True, description=(
        "also score the cyclic shifts of the options and average them (the letter-bias control, acc_debiased)"))
    option_text_norm: bool = Field(True, description=(
        "also score each option's text after the prompt, per character (acc_option_text_norm; not lm-eval's "
        "acc_norm, which on MedQA scores the letters)"))
    chunk_size: int = Field(25, ge=1, description=(
        "questions per cached scoring task (a longer run reuses the chunks of a shorter one)"))
    device: str = Field("auto", min_length=1,
                        description="auto (cuda when present, else cpu), cpu, cuda or cuda:N")
    dtype: Dtype = Field("auto", description="auto (bf16 on cuda, fp32 on cpu), float32, bfloat16 or float16")


class AnalysisParams(Group):
    """The random seed and the bootstrap behind the figures."""

    seed: int = Field(0, ge=0, description="random seed: the random-other domain per question and the bootstraps")
    n_boot: int = Field(2000, ge=100, description="bootstrap resamples of the paired differences")


GROUPS: dict[str, type[Group]] = {"questions": QuestionParams, "retrieval": RetrievalParams,
                                  "scoring": ScoringParams, "analysis": AnalysisParams}


def parse_group(name: str, value: Any) -> Any:
    """The group `name` from a model, a (partial) mapping or None (all defaults); one error naming the field."""
    return parse_any_group(GROUPS, name, value, "instruction-retrieval parameters")
