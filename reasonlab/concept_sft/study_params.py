"""The study's own parameter group (the study flow also takes the main job's groups: filter, formats,
attribution, concept, experiment, llm). No Prefect here."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from reasonlab.errors import ReasonlabError

from reasonlab.concept_sft.study import ARMS
from reasonlab.params import Group, one_of, parse_group as parse_any_group

ArmName = Annotated[Literal[ARMS], one_of("arm", ARMS)]


class StudyParams(Group):
    """Stage 5 written by an LLM for every target case and arm, and the cross-case verdict."""

    arms: list[ArmName] = Field(list(ARMS), min_length=1,
                                description="the arms each case trains: concept (attribution-guided), "
                                            "concept_unguided (concept named from the prompt alone), unrelated, "
                                            "direct (the answer stated in other contexts), prompt (the prompt "
                                            "completed with the answer), negated_wrong (the wrong answer named to "
                                            "negate it), abstract (category reasoning); concept is always run")
    max_cases: int | None = Field(None, ge=1, description="study at most this many target cases, in the filter's "
                                                          "order (default: every one the prompts file yields)")
    n_texts: int = Field(4, ge=1, description="training texts per arm and case")
    min_tokens: int = Field(100, ge=1, description="shortest text, in the trained model's tokens")
    max_tokens: int = Field(150, ge=1, description="longest text, in the trained model's tokens")
    max_attempts: int = Field(3, ge=1, description="LLM requests per arm and case before the arm is skipped for "
                                                   "that case (each retry names the rule the last texts broke)")
    budget_tolerance: float = Field(0.10, gt=0, lt=1, description="the arms of a case train on token counts within "
                                                                   "this share of each other")

    @model_validator(mode="after")
    def _lengths(self) -> "StudyParams":
        if self.min_tokens > self.max_tokens:
            raise ReasonlabError(f"min_tokens ({self.min_tokens}) is above max_tokens ({self.max_tokens})")
        return self


GROUPS = {"study": StudyParams}


def parse_study(value) -> StudyParams:
    params = parse_any_group(GROUPS, "study", value, "concept-sft study parameters")
    arms = list(dict.fromkeys(["concept", *params.arms]))  # every comparison is against concept
    return params.model_copy(update={"arms": arms})
