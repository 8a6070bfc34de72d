"""The DSPy-compile job's parameters in typed groups, one documented field per knob. No Prefect here.

The flow (`flows/dspy_compile.py`) takes the job's inputs (`task`, `models`, `model`) plus one argument per
group below, so the Prefect UI shows one nested form per group; the CLI's flags and their help are
generated from the same fields (`flows/cli_params.py`). A bad value is one `ReasonlabError` naming
`group.field`, raised before any model work.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from reasonlab.dspy_compile.data import TASKS
from reasonlab.dspy_compile.optimizers import APPROACHES
from reasonlab.errors import ReasonlabError
from reasonlab.params import Group, one_of, parse_group as parse_any_group

APPROACH_NAMES = tuple(APPROACHES)
ADAPTERS = ("chat", "json")
DEVICES = ("cpu", "cuda")
RETRIEVERS = ("bm25",)
DEFAULT_DEMOS = {"gsm8k": "data/dspy_demos_gsm8k.json", "hotpotqa": "data/dspy_demos_hotpotqa.json"}

Task = Annotated[Literal[TASKS], one_of("task", TASKS)]
Approach = Annotated[Literal[APPROACH_NAMES], one_of("optimizer/approach", APPROACH_NAMES)]
Adapter = Annotated[Literal[ADAPTERS], one_of("adapter", ADAPTERS)]
Device = Annotated[Literal[DEVICES], one_of("device", DEVICES)]
Retriever = Annotated[Literal[RETRIEVERS], one_of("retriever", RETRIEVERS)]


def _json_mapping(value: Any) -> Any:
    """The CLI passes optimizer options as JSON text; the UI and the API as a mapping."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ReasonlabError(f"not valid JSON ({e.msg}): {value!r}") from None
    if value is not None and not isinstance(value, dict):
        raise ReasonlabError(f"must map an approach to its options, got {value!r}")
    for name, options in (value or {}).items():
        if name not in APPROACHES:
            raise ReasonlabError(f"options for unknown approach {name!r}: use one of {APPROACH_NAMES}")
        if not isinstance(options, dict):
            raise ReasonlabError(f"options of {name!r} must be a mapping, got {options!r}")
    return value


class DataParams(Group):
    """The deterministic train / dev / test subsets (DSPy's GSM8K convention: 200 train, 300 dev)."""

    source: str | None = Field(None, description='a local data file or folder, "hub", or none (default: '
                                                  'reasonlab.datasets: stored, a mirror, else the Hub)')
    train_size: int = Field(200, ge=0, description="training examples the optimizers bootstrap demos from")
    dev_size: int = Field(300, ge=0, description="dev examples the search optimizers score candidate programs on")
    test_size: int = Field(100, ge=1, description="test examples every approach (and the reference) is scored on")
    seed: int = Field(0, ge=0, description="random seed of the subsets and of the optimizers")
    demos: str | None = Field(None, description='hand-picked demos for the "manual" approach, a JSON/YAML list '
                                                "(default: data/dspy_demos_<task>.json)")


class CompileParams(Group):
    """The approaches compiled for every model (one table row each) and the optimizers' settings."""

    approaches: list[Approach] = Field(["predict", "cot", "manual", "bootstrap", "random_search"], min_length=1,
                                       description="zero-shot programs and DSPy optimizers: "
                                                   + ", ".join(f"{k} ({v['help']})" for k, v in APPROACHES.items()))
    teacher: str | None = Field(None, description="teacher LM of the bootstrapping optimizers (default: the "
                                                  "student itself)")
    options: Annotated[dict[str, dict[str, Any]] | None, BeforeValidator(_json_mapping)] = Field(
        None, description='{approach: {option: value}} over the optimizers\' defaults, e.g. '
                          '{"random_search": {"num_candidate_programs": 4}} (JSON on the command line)')
    baseline: Approach = Field("cot", description="the approach each row's paired bootstrap difference is "
                                                  "taken against (same model, same test examples)")


class ReferenceParams(Group):
    """The reference model, really run on the same test set: the small models' scores and costs as % of its."""

    model: str | None = Field(None, description="the reference LM (an offline model, endpoint:<LLMEndpoint "
                                                "block> or env); default: no reference rows")
    approach: Approach = Field("cot", description="the approach the reference model runs")


class SamplingParams(Group):
    """How every LM is called: sampling, DSPy's output format, concurrency, device and the price of compute."""

    temperature: float = Field(0.0, ge=0, description="sampling temperature of every LM (0: greedy)")
    max_tokens: int = Field(256, ge=1, description="most tokens an LM writes per call")
    adapter: Adapter = Field("chat", description="DSPy's output format, chat or json (small models break it: "
                                                 "parse failures are counted)")
    num_threads: int = Field(1, ge=1, description="DSPy's threads for evaluation and candidate scoring (an "
                                                  "offline model batches the concurrent requests)")
    device: Device = Field("cpu", description="where offline models run")
    usd_per_hour: float = Field(0.0, ge=0, description="price of an hour of local compute (0: local cost is "
                                                       "reported in compute seconds)")


class ProgramParams(Group):
    """HotPotQA's program: all 10 paragraphs, or BM25 retrieval over them, hop by hop."""

    retriever: Retriever | None = Field(None, description="bm25, or none: the program reads every paragraph")
    k: int = Field(3, ge=1, description="paragraphs retrieved per hop")
    hops: int = Field(2, ge=1, description="retrieval hops (from 2 on, the program writes a follow-up query)")


GROUPS: dict[str, type[Group]] = {"data": DataParams, "compile": CompileParams, "reference": ReferenceParams,
                                  "sampling": SamplingParams, "program": ProgramParams}


def check_task(task: Any) -> str:
    if task not in TASKS:
        raise ReasonlabError(f"dspy-compile parameters: unknown task {task!r}: use one of {TASKS}")
    return task


def parse_group(name: str, value: Any) -> Any:
    """The group `name` from a model, a (partial) mapping or None (all defaults); one error naming the field."""
    return parse_any_group(GROUPS, name, value, "dspy-compile parameters")
