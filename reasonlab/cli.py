"""reasonlab's command line for set-up work outside flows.

    reasonlab models list
    reasonlab models setup smollm2-135m-instruct      # materialize an offline model (idempotent)
"""

from __future__ import annotations

import argparse
import sys

from reasonlab.errors import ReasonlabError
from reasonlab.models import DEFAULT_MODEL, REGISTRY, is_materialized, materialized_path, resolve_model


def models_list() -> None:
    for name, spec in REGISTRY.items():
        offline = ("materialized at " + str(materialized_path(spec))) if is_materialized(spec) else (
            "offline source: PyPI wheels" if spec.offline else "Hub only")
        print(f"{name:32} {spec.hub_id or '':40} {offline}{'  (default)' if name == DEFAULT_MODEL else ''}")


def models_setup(names: list[str], source: str) -> None:
    for name in names or [DEFAULT_MODEL]:
        resolved = resolve_model(name, source=source)
        print(f"{name}: {resolved.source} ({resolved.fingerprint})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="reasonlab")
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="action", required=True)
    models.add_parser("list", help="registry entries and where each comes from")
    setup = models.add_parser("setup", help="make models available offline (default: the default model)")
    setup.add_argument("names", nargs="*")
    setup.add_argument("--source", default="offline", choices=["auto", "hub", "offline", "local"])
    args = parser.parse_args(argv)
    try:
        if args.action == "list":
            models_list()
        else:
            models_setup(args.names, args.source)
    except ReasonlabError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
