"""The project's error type: one clear message naming what is wrong."""

from __future__ import annotations

from typing import Any, TypeVar

M = TypeVar("M")


class ReasonlabError(ValueError):
    """Bad input or an unobtainable resource, with a message a researcher can act on."""


def validation_problems(error: Any, prefix: str = "") -> list[str]:
    """A pydantic ValidationError as short phrases, each naming its field (`prefix.field`)."""
    problems = []
    for err in error.errors():
        field = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "") or "(top level)"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown field {field!r}")
        elif err["type"] == "missing":
            problems.append(f"missing field {field!r}")
        elif err["type"] == "value_error":  # a validator's own message, which already says what is wrong
            problems.append(f"{field}: {err['ctx']['error']}")
        else:
            problems.append(f"field {field!r}: {err['msg']} (got {err.get('input')!r})")
    return problems


def check_model(model: type[M], data: Any, where: str, prefix: str = "") -> M:
    """`model` validated from `data` (or `data` itself if already one); else one ReasonlabError naming the field."""
    from pydantic import ValidationError

    if isinstance(data, model):
        return data
    if not isinstance(data, dict):
        raise ReasonlabError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return model.model_validate(data)  # type: ignore[attr-defined]
    except ValidationError as e:
        raise ReasonlabError(f"{where}: " + "; ".join(validation_problems(e, prefix))) from None
