"""The concept-SFT job's parameters in typed groups, one documented field per knob. No Prefect here.

The flow (`flows/concept_sft.py`) takes the job's inputs (`prompts`, `sft_config`, `model`,
`use_chat_template`) plus one argument per group below, so the Prefect UI shows one nested form per
group; the CLI's flags and their help are generated from the same fields (`flows/cli_params.py`).
A bad value is one `ReasonlabError` naming `group.field`, raised before any model work.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from reasonlab.concept_sft.attribution import METHODS, PRUNE_MODE, PRUNE_MODES, check_tau
from reasonlab.concept_sft.text_sets import TEXT_SETS
from reasonlab.errors import ReasonlabError
from reasonlab.params import Group, one_of, parse_group as parse_any_group
from reasonlab.prompt_format import FORMATS


Format = Annotated[Literal[FORMATS], one_of("prompt format", FORMATS)]
PruneMode = Annotated[Literal[PRUNE_MODES], one_of("pruning mode", PRUNE_MODES)]
Method = Annotated[Literal[METHODS], one_of("attribution method", METHODS)]
TextSetName = Annotated[Literal[TEXT_SETS], one_of("text set", TEXT_SETS)]


class FilterParams(Group):
    """Stage 2, the top-k filter: which prompts become target cases (the model's top-1 is clearly wrong)."""

    top_k: int = Field(10, ge=1, description="how many next tokens the filter and the evaluation look at")
    max_rank: int = Field(5, ge=2, description="the answer must sit at rank 2..max_rank for a prompt to be a target case")


class FormatParams(Group):
    """How each stage shows a prompt to the model: "completion" (the raw prompt) or "chat" (the chat template
    + the answer prefix, the concept-SFT study's)."""

    filter: Format = Field("completion", description="the top-k filter's prompt format")
    evaluation: list[Format] = Field(["chat", "completion"], min_length=1,
                                     description="the formats the evaluation measures, base vs SFT")
    attribution: Format | None = Field(None, description="the attribution graph's prompt format "
                                                         "(default: the filter's, where the target case was found)")
    answer_prefix: str = Field(" Answer:", description="text after the assistant header in the chat format")


class AttributionParams(Group):
    """Stages 3-4: a contrastive attribution graph per target case, pruned, then concept candidates from it."""

    cases: int = Field(1, ge=0, description="how many target cases get an attribution graph (0 skips stages 3-4)")
    contrastive: Annotated[list[str], Field(min_length=2, max_length=2)] | None = Field(
        None, description="(correct, wrong) single tokens of the metric logit(correct) - logit(wrong); "
                          "default: from each case (' Ald', ' Ren' for SmolLM2 in chat)")
    tau: Annotated[float, BeforeValidator(check_tau)] = Field(
        0.05, gt=0, lt=1, description="pruning threshold in (0, 1), a fraction of |influence| (see prune_mode)")
    prune_mode: PruneMode = Field(PRUNE_MODE, description='"max" keeps |I| >= tau max|I|; "total" |I| >= tau sum|I|; '
                                                     '"cumulative" the fewest top nodes reaching (1 - tau) of sum|I|')
    method: Method = Field("act_x_grad", description='"act_x_grad" (one backward) or "integrated_gradients"')
    max_nodes: int = Field(30, ge=1, description="cap on the nodes kept by pruning (edges cost one batched "
                                                 "backward over them)")

    @field_validator("contrastive", mode="before")
    @classmethod
    def _pair(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, (list, tuple)) or len(value) != 2):
            raise ReasonlabError(f"contrastive needs exactly two tokens (correct, wrong), got {value!r}")
        return value


class ConceptParams(Group):
    """Stages 4-5: the intermediate concept the training texts strengthen, and who chooses it."""

    name: str | None = Field(None, description="the concept (recorded with the results; overrides the text-set "
                                               "file's); interactive runs prefill the form with it")
    neuron: str | None = Field(None, description="the attribution node the concept comes from (e.g. L22/N13255@9), "
                                                 "recorded only when given here, in the text-set file or by the "
                                                 "researcher; never guessed")
    corpus: str | None = Field("data/reference_corpus.jsonl", description="reference texts for the candidates' "
                                                                        "top-activating contexts (general facts "
                                                                        "and medicine; see data/reference_corpus.md)")
    label: bool = Field(False, description="ask the LLM (the llm group) for a label per candidate")
    interactive: bool = Field(False, description="pause after stage 4 for the researcher's concept and texts "
                                                 "(UI form or API); off: the concept given here and the SFT "
                                                 "config's texts")
    pause_timeout: int = Field(3600, ge=1, description="seconds a paused run waits for the researcher before failing")


class ExperimentParams(Group):
    """Stages 5-7 as a study: one SFT experiment per target case x text set x seed, judged like a knowledge edit."""

    texts: str = Field("data/concept_texts.yaml", description="text-set file: per case the concept texts and "
                                                              "the controls (a case missing there trains on "
                                                              "the SFT config's texts)")
    seeds: int = Field(3, description="SFT repeats per experiment (seeds 0..N-1): figures are mean ± sd")
    text_sets: list[TextSetName] = Field(["concept"], min_length=1,
                                         description="what each case trains on: its concept texts, and the controls "
                                                     "'unrelated' (another concept) and 'direct' (the answer stated "
                                                     "directly), each under the same budget")
    learning_rate: float | None = Field(None, gt=0, description="overrides the SFT config's learning rate")
    epochs: int | None = Field(None, ge=1, description="overrides the SFT config's epochs")
    joint: bool = Field(False, description="one fine-tune over every case's texts instead of one per case")
    neighbour_tolerance: float = Field(2.0, gt=1, description="a neighbour has moved when its top-1 changed or its "
                                                              "answer probability moved by more than this factor, "
                                                              "up or down")
    heldout: str = Field("data/heldout_text.txt", description="general text for the perplexity (fluency) check")
    attribution_after: bool = Field(True, description="redo the attribution graph on the first seed's concept "
                                                      "model and diff it against the base graph")
    workers: int = Field(1, ge=1, description="experiments run at once: 1 runs them one after another in the flow's "
                                              "process; N > 1 in N worker processes, each with its share of the "
                                              "cores for torch (the `gpu` tag's concurrency limit still applies)")
    ray_address: str | None = Field(None, description="fan the experiments out on Ray instead: a cluster address, "
                                                      "or 'local' to start one here (workers is then unused)")

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ReasonlabError(f"must be an integer >= 1 (the SFT repeats per experiment), got {value!r}")
        return value


class GenerationParams(Group):
    """Stage 1 (opt-in): generate the prompts with an LLM instead of reading `prompts`."""

    enabled: bool = Field(False, description="generate the prompts with the LLM (the llm group)")
    n: int = Field(25, ge=1, description="prompts asked for per batch")
    batches: int = Field(4, ge=1, description="generation batches")
    domain: str = Field("medical", min_length=1, description="the prompts' domain")


class LLMParams(Group):
    """The LLM behind prompt generation and candidate labels: a block, else REASONLAB_LLM_* env vars, else a
    local model."""

    endpoint: str | None = Field(None, description="name of an LLMEndpoint block")
    local_model: str | None = Field(None, description="a model served offline on loopback (`transformers serve`) "
                                                      "when neither a block nor env vars are set")


GROUPS: dict[str, type[Group]] = {"filter": FilterParams, "formats": FormatParams, "attribution": AttributionParams,
                                  "concept": ConceptParams, "experiment": ExperimentParams,
                                  "generation": GenerationParams, "llm": LLMParams}


def parse_group(name: str, value: Any) -> Any:
    """The group `name` from a model, a (partial) mapping or None (all defaults); one error naming the field."""
    return parse_any_group(GROUPS, name, value, "concept-sft parameters")
