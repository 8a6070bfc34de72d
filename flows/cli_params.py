"""A flow's CLI flags from its Prefect parameter schema: the same descriptions and defaults the UI's run form shows.

    parser = argparse.ArgumentParser(description=...)
    add_flow_arguments(parser, my_flow, flags={"filter.top_k": "--top-k"})
    my_flow(**flow_parameters(parser.parse_args(argv)))   # only what was given: the flow's defaults do the rest

A plain parameter becomes `--name`; a group (a pydantic-model parameter, one nested form in the UI) becomes
an argparse group whose fields are `--group-field` unless `flags` names them (`Flag` for a second "off"
switch or a metavar). Every flag's help is the field's description plus its default; enums become
choices, lists take several values (exactly N when the schema fixes the length), booleans are switches
(`--x/--no-x` unless the default is false). Values are checked by the flow's own models, not here.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any

OFF = ":off"  # dest suffix of an off switch
TYPES = {"string": str, "integer": int, "number": float}


@dataclass(frozen=True)
class Flag:
    """A field's flag: `name`, optionally an `off` switch that sets the boolean to false (and wins over `name`)."""

    name: str
    off: str | None = None
    metavar: str | tuple[str, ...] | None = None


def add_flow_arguments(parser: argparse.ArgumentParser, flow: Any, flags: dict[str, str | Flag] | None = None,
                       title: str = "job") -> None:
    """Flags for every parameter of a Prefect `flow` (its `parameters` schema), and `--verbose`."""
    add_schema_arguments(parser, flow.parameters.model_dump_for_openapi(), flags, title)
    parser.add_argument("--verbose", action=VerboseAction, help="show the libraries' progress bars, info logs and "
                                                                "deprecation warnings (default: off)")


class VerboseAction(argparse.Action):
    """`--verbose`: sets REASONLAB_VERBOSE=1 for this process and its task runs; never a flow parameter."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        os.environ["REASONLAB_VERBOSE"] = "1"
        from reasonlab import console

        console.configure(loud=True)


def add_schema_arguments(parser: argparse.ArgumentParser, schema: dict[str, Any],
                         flags: dict[str, str | Flag] | None = None, title: str = "job") -> None:
    """Flags for every property of an OpenAPI parameter schema (`definitions` hold the groups)."""
    flags = {k: v if isinstance(v, Flag) else Flag(v) for k, v in (flags or {}).items()}
    defs = schema.get("definitions", {})
    unused = set(flags)
    plain = parser.add_argument_group(title)
    for name, prop in sorted(schema.get("properties", {}).items(), key=lambda kv: kv[1].get("position", 0)):
        ref = _ref(prop)
        if ref is None:
            unused.discard(name)
            _add(plain, name, prop, flags.get(name) or Flag(_dashed(name)))
            continue
        group = defs[ref]
        text = prop.get("description") or group.get("description") or ""
        container = parser.add_argument_group(name, _escape(" ".join(text.split())))
        for field, fprop in group.get("properties", {}).items():
            dest = f"{name}.{field}"
            unused.discard(dest)
            _add(container, dest, fprop, flags.get(dest) or Flag(_dashed(f"{name}_{field}")))
    if unused:
        raise ValueError(f"flags for parameters the flow does not have: {sorted(unused)}")


def flow_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as flow parameters: `{"prompts": ..., "filter": {"top_k": 5}}`, only those given."""
    given = vars(args)
    out: dict[str, Any] = {}
    for dest, value in given.items():
        if dest.endswith(OFF):
            continue
        if given.get(dest + OFF):
            value = False
        _set(out, dest, value)
    for dest in given:
        if dest.endswith(OFF) and dest[: -len(OFF)] not in given:
            _set(out, dest[: -len(OFF)], False)
    return out


def _set(out: dict[str, Any], dest: str, value: Any) -> None:
    group, _, field = dest.partition(".")
    if field:
        out.setdefault(group, {})[field] = value
    else:
        out[group] = value


def _dashed(name: str) -> str:
    return "--" + name.replace("_", "-")


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def _ref(prop: dict[str, Any]) -> str | None:
    """The definition a property points at (`$ref`, or `allOf: [{$ref}]`), else None."""
    ref = prop.get("$ref") or next((s["$ref"] for s in prop.get("allOf", []) if "$ref" in s), None)
    return ref.rsplit("/", 1)[-1] if ref else None


def _unwrap(prop: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the non-null alternative of an Optional, whether null is allowed)."""
    options = prop.get("anyOf")
    if not options:
        return prop, False
    real = [o for o in options if o.get("type") != "null"]
    return (real[0] if len(real) == 1 else {}), len(real) < len(options)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return " ".join(_show(v) for v in value) or "[]"
    if isinstance(value, str):
        return repr(value) if value != value.strip() or not value else value
    return json.dumps(value)


def _add(container: Any, dest: str, prop: dict[str, Any], flag: Flag) -> None:
    inner, nullable = _unwrap(prop)
    kind = inner.get("type")
    default = prop.get("default")
    text = " ".join((prop.get("description") or "").split()) or dest
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS}
    if default is None and "default" in text.lower():
        pass  # the description says what an unset value means
    elif kind == "boolean":
        text += f" (default: {'on' if default else 'off'})"
    else:
        text += f" (default: {_show(default)})"
    if kind == "boolean":
        plain_switch = default is False and not nullable
        kwargs["action"] = "store_true" if plain_switch else argparse.BooleanOptionalAction
    elif kind == "array":
        items = inner.get("items", {})
        low, high = inner.get("minItems"), inner.get("maxItems")
        kwargs.update(nargs=low if low is not None and low == high else "+", type=TYPES.get(items.get("type"), str),
                      choices=items.get("enum"))
    else:
        kwargs.update(type=TYPES.get(kind, str), choices=inner.get("enum"))
    if kind != "boolean":
        kwargs["metavar"] = flag.metavar or (None if kwargs.get("choices") else dest.rsplit(".", 1)[-1].upper())
    kwargs["help"] = _escape(text)
    container.add_argument(flag.name, **kwargs)
    if flag.off:
        container.add_argument(flag.off, dest=dest + OFF, action="store_true", default=argparse.SUPPRESS,
                               help=_escape(f"the same as leaving {flag.name} out; wins over it"))
