"""reasonlab's command line: set-up work, and each pipeline's stages run alone, under the pipeline's name.

    reasonlab models list
    reasonlab models setup smollm2-135m-instruct      # materialize an offline model (idempotent)
    reasonlab data fetch gsm8k mbpp                   # store datasets under $REASONLAB_HOME/data for offline use
    reasonlab concept-sft filter --input data/target_prompts.json --output filtered.json   # concept-SFT stages
    reasonlab concept-sft attribute "<prompt>" --contrastive " Ald" " Ren" --output DIR  # (concept_sft/stage_cli.py)
    reasonlab concept-sft sft --config my_sft.yaml
    reasonlab concept-sft evaluate --model CHECKPOINT --prompts filtered.json --base smollm2-135m-instruct
    reasonlab texts --prompts filtered.json --arms concept direct --output texts.yaml   # stage 5 by an LLM
    reasonlab instruction-retrieval library generate nephrology --output my_library.yaml   # LLM-written entries
    reasonlab study --prompts data/factual_prompts.json --local-llm qwen2.5-coder-0.5b-instruct   # the study flow

The whole pipelines are flows: `python -m flows.<pipeline> --help`. The older spellings `reasonlab filter |
attribute | sft | evaluate` and `reasonlab library generate` still work.
"""

from __future__ import annotations

import argparse
import os
import sys

from reasonlab.concept_sft import stage_cli, texts_cli
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


def data_fetch(names: list[str], refresh: bool) -> None:
    from reasonlab import datasets

    for name in names:
        folder, origin = datasets.fetch(name, refresh=refresh)
        print(f"{name}: {folder} (from {origin})")


def library_generate(domains: list[str], library: str, output: str, hints: list[str], attempts: int) -> None:
    """New instruction-library entries from the endpoint in REASONLAB_LLM_* env vars, checked, written atomically."""
    from reasonlab import paths
    from reasonlab.io import write_json, write_text
    from reasonlab.llm_client import LLMClient, endpoint_from_env
    from reasonlab.retrieval.library import load_library
    from reasonlab.retrieval.library_generation import generate_entry, library_yaml

    hint_of = {}
    for h in hints:
        if "=" not in h:
            raise ReasonlabError(f"--hint {h!r}: use DOMAIN=text")
        domain, text = h.split("=", 1)
        hint_of[domain.strip()] = text.strip()
    lib = load_library(paths.find_input(library))
    client = LLMClient(endpoint_from_env().validate())
    provenance = []
    for domain in domains:
        entry, record = generate_entry(client, domain, lib, hint_of.get(domain, ""), attempts=attempts)
        lib = {**lib, domain: entry}
        provenance.append(record)
        print(f"{domain}: accepted after {record['attempts']} attempt(s), {len(entry['knowledge'])} facts, "
              f"{len(entry['reasoning'])} steps")
    out = write_text(output, library_yaml(lib))
    write_json(out.with_name(out.stem + ".generated.json"), {"entries": provenance, "usage": client.usage_summary()})
    print(f"wrote {out} ({len(lib)} domains)")


# the older spellings: `reasonlab filter ...` is `reasonlab concept-sft filter ...`
ALIASES = {**{name: "concept-sft" for name in stage_cli.COMMANDS}, "library": "instruction-retrieval"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["study"]:  # the concept-SFT study across cases is a flow: its CLI is the flow's own
        os.execv(sys.executable, [sys.executable, "-m", "flows.concept_study", *argv[1:]])
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ALIASES:
        argv.insert(0, ALIASES[argv[0]])
    parser = argparse.ArgumentParser(prog="reasonlab", description=__doc__.split("\n\n")[0],
                                     epilog="Every pipeline as a whole: python -m flows.<pipeline> --help")
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="action", required=True)
    models.add_parser("list", help="registry entries and where each comes from")
    setup = models.add_parser("setup", help="make models available offline (default: the default model)")
    setup.add_argument("names", nargs="*")
    setup.add_argument("--source", default="offline", choices=["auto", "hub", "offline", "local"])
    data = sub.add_parser("data", help="the public datasets").add_subparsers(dest="action", required=True)
    fetch = data.add_parser("fetch", help="store datasets under $REASONLAB_HOME/data (from REASONLAB_SHARED_DATA "
                                          "when it holds them, else the Hub)")
    fetch.add_argument("names", nargs="+", metavar="NAME", help="gsm8k, mbpp, hotpotqa, medqa, pubmedqa, hh-rlhf, ...")
    fetch.add_argument("--refresh", action="store_true", help="fetch again even when already stored")
    concept = sub.add_parser("concept-sft", help="the concept-SFT stages alone (filter, attribute, sft, evaluate)")
    stage_cli.add_commands(concept.add_subparsers(dest="stage", required=True))
    sub.add_parser("study", add_help=False, help="the concept-SFT study across many cases (the flow "
                                                 "flows/concept_study.py; `reasonlab study --help` lists its flags)")
    texts_cli.add_command(sub)
    retrieval = sub.add_parser("instruction-retrieval", help="the instruction-retrieval pipeline's library tools")
    retrieval_sub = retrieval.add_subparsers(dest="tool", required=True)
    library = retrieval_sub.add_parser("library", help="the instruction library").add_subparsers(dest="action",
                                                                                                 required=True)
    gen = library.add_parser("generate", help="LLM-written entries for new domains (endpoint: REASONLAB_LLM_* env)")
    gen.add_argument("domains", nargs="+")
    gen.add_argument("--library", default="data/instruction_library.yaml")
    gen.add_argument("--output", required=True, help="the new library file (the old entries + the new ones)")
    gen.add_argument("--hint", action="append", default=[], help="DOMAIN=what it covers (repeatable)")
    gen.add_argument("--attempts", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        if args.command == "concept-sft":
            stage_cli.COMMANDS[args.stage](args)
        elif args.command == "texts":
            texts_cli.run_texts(args)
        elif args.command == "data":
            data_fetch(args.names, args.refresh)
        elif args.command == "instruction-retrieval":
            library_generate(args.domains, args.library, args.output, args.hint, args.attempts)
        elif args.action == "list":
            models_list()
        else:
            models_setup(args.names, args.source)
    except ReasonlabError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
