"""What every pipeline's typed parameter groups share: a strict base class, the enum check with the project's
one message, and parsing a group from a model, a partial mapping or None. No Prefect here.

Each pipeline's `params.py` declares its groups (one documented field per knob, with bounds and enums) and a
`GROUPS` mapping; the flow takes one argument per group, so the Prefect UI shows one nested form per group and
the CLI's flags are generated from the same fields (`flows/cli_params.py`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

from reasonlab.errors import ReasonlabError, check_model


def one_of(what: str, choices: tuple[str, ...]) -> BeforeValidator:
    """The project's message for a value outside `choices` (checked before pydantic's own enum check)."""

    def check(value: Any) -> Any:
        if value not in choices:
            raise ReasonlabError(f"unknown {what} {value!r}: use one of {choices}")
        return value

    return BeforeValidator(check)


class Group(BaseModel):
    """A parameter group: unknown fields are errors, so a typo is never silently ignored."""

    model_config = ConfigDict(extra="forbid")


def parse_group(groups: dict[str, type[Group]], name: str, value: Any, where: str) -> Any:
    """The group `name` of `groups` from a model, a (partial) mapping or None (all defaults); one error naming
    `name.field` and `where` (e.g. "dspy-compile parameters")."""
    model = groups[name]
    return model() if value is None else check_model(model, value, where, prefix=name)
