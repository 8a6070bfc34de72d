"""`reasonlab texts`: stage 5 of concept SFT by itself, every target case x arm written by an LLM.

    reasonlab concept-sft filter --input data/factual_prompts.json --output filtered.json
    reasonlab texts --prompts filtered.json --arms concept direct negated_wrong --output texts.yaml \
        --local-llm qwen2.5-coder-0.5b-instruct

Output: a text-set file (the `data/concept_texts.yaml` format: concept texts, and every other arm under
`controls:`) that `--text-sets` of the flow reads, written atomically, and beside it `<output>.provenance.json`:
per case the concept naming and each arm's record (model, requests, token usage, rejected texts with their
rule, skip reasons) and the budget report. No API key is written anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import yaml

from reasonlab.concept_sft import arm_texts
from reasonlab.concept_sft.prompts import normalized
from reasonlab.concept_sft.study import ARMS
from reasonlab.concept_sft.text_budget import match_budget, token_counter, trained_tokens_counter
from reasonlab.concept_sft.text_checks import RULES, TextRules, check_arm
from reasonlab.errors import ReasonlabError


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("texts", help="stage 5 of concept SFT alone: each target case x arm's training texts, "
                                     "written by an LLM and checked",
                       description=__doc__.split("\n\n")[0] + " Endpoint: REASONLAB_LLM_* env vars, or --local-llm.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompts", required=True,
                   help="the filter's output (`reasonlab concept-sft filter`): its target cases get texts; all "
                        "its prompts, paraphrases and neighbours are what no text may copy")
    p.add_argument("--arms", nargs="+", default=list(ARMS), metavar="ARM", help=f"arms to write: {', '.join(ARMS)}")
    p.add_argument("--output", required=True, help="the text-set file to write (.yaml or .json)")
    p.add_argument("--concept", default=None, help="the concept the `concept` arm strengthens, for every case; "
                                                  "unset: the LLM names one from the prompt alone (as for "
                                                  "concept_unguided)")
    p.add_argument("--text-sets", default=None, help="a text-set file whose texts keep the last word (no LLM call "
                                                     "for an arm it has)")
    p.add_argument("--local-llm", default=None, help="a local model (registry name or folder) served offline; "
                                                     "unset: the REASONLAB_LLM_* endpoint")
    p.add_argument("--model", default=None, help="the model to be trained, whose tokenizer counts tokens (unset: "
                                                 "--config's model_name, else the default model)")
    p.add_argument("--config", default=None, help="SFT config YAML: the budget is counted as its trainer sees the "
                                                  "texts (chat template, max_length)")
    p.add_argument("--n-texts", type=int, default=4, help="texts per arm")
    p.add_argument("--min-tokens", type=int, default=100, help="shortest text, in the model's tokens")
    p.add_argument("--max-tokens", type=int, default=150, help="longest text, in the model's tokens")
    p.add_argument("--attempts", type=int, default=3, help="requests per arm before it is skipped")
    p.add_argument("--cases", type=int, default=0, help="only the first N target cases (0: all)")
    p.add_argument("--tolerance", type=float, default=0.10, help="budget: every arm within this share of the target")


def run_texts(args: argparse.Namespace) -> dict:
    from reasonlab.concept_sft.sft_config import SFTConfig, load_sft_config
    from reasonlab.concept_sft.stage_cli import load_target_cases
    from reasonlab.concept_sft.text_sets import load_text_sets
    from reasonlab.io import read_structured
    from reasonlab.llm_client import EndpointConfig, endpoint_from_env
    from reasonlab.models import resolve_model

    arms = [check_arm(a) for a in dict.fromkeys(args.arms)]
    rules = TextRules(n_texts=args.n_texts, min_tokens=args.min_tokens, max_tokens=args.max_tokens,
                      max_attempts=args.attempts).validate()
    cases = load_target_cases(args.prompts)[:args.cases or None]
    data = read_structured(args.prompts)
    rows = list(data.get("target_cases", [])) + list(data.get("rejected", []))
    sets = load_text_sets(args.text_sets) if args.text_sets else {}
    config = load_sft_config(args.config) if args.config else SFTConfig()
    model = resolve_model(args.model or config.model_name)
    count, trained = token_counter(model), trained_tokens_counter(model, config)
    out = Path(args.output)
    cfg = EndpointConfig(local_model=args.local_llm) if args.local_llm else endpoint_from_env()
    with _Calls(cfg) as calls:
        results = [write_case(calls, case, arms, args.concept, sets.get(normalized(case["prompt"])), rules, count,
                              trained, rows, args.tolerance) for case in cases]
        usage = calls.usage_summary()
    write_outputs(out, results, rules, usage, model.name)
    return {"output": str(out), "cases": len(results), "usage": usage}


class _Calls:
    """The command's one LLM client, made on the first request: a run that needs none (every arm from the
    text-set file, or `prompt`) needs no endpoint and starts no server."""

    def __init__(self, cfg):
        self.cfg, self.client, self.stack = cfg, None, contextlib.ExitStack()

    def get(self):
        from reasonlab.llm_client import LLMClient
        from reasonlab.local_server import serving

        if self.client is None:
            self.client = LLMClient(self.stack.enter_context(serving(self.cfg)).config())
        return self.client

    def usage_summary(self) -> dict:
        return self.client.usage_summary() if self.client else {"calls": 0}

    def __enter__(self) -> _Calls:
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()


def write_case(calls: _Calls, case: dict, arms: list[str], concept: str | None, entry, rules: TextRules, count,
               trained, rows: list[dict], tolerance: float) -> dict:
    """One case: the concept named when needed, each arm's record, the arms matched in budget."""
    records, naming = {}, None
    for arm in arms:
        record = arm_texts.texts_from_file(entry, arm)
        if record is None:
            arm_concept = None
            if arm in arm_texts.NEEDS_CONCEPT:
                arm_concept = concept if arm == "concept" and concept else None
                if arm_concept is None:
                    naming = naming or arm_texts.name_concept(calls.get(), case, None)
                    arm_concept = naming["concept"]
            client = calls.get() if arm != "prompt" and (arm not in arm_texts.NEEDS_CONCEPT or arm_concept) else None
            record = arm_texts.write_arm(client, case, arm, arm_concept, rules, count, rows)
        records[arm] = record
        print(f"{case['prompt']!r} {arm}: " + (f"skipped: {record['skipped']}" if record["skipped"] else
                                               f"{len(record['texts'])} texts ({record['source']}, "
                                               f"{len(record['rejected'])} rejected)"))
    usable = {arm: r["texts"] for arm, r in records.items() if not r["skipped"] and r["texts"]}
    matched, budget = match_budget(usable, trained, tolerance)
    for arm in budget["unmatched"]:
        print(f"{case['prompt']!r} {arm}: not used, {budget['arms'][arm]['reason']}")
    return {"case": case, "naming": naming, "records": records, "matched": matched, "budget": budget}


def write_outputs(out: Path, results: list[dict], rules: TextRules, usage: dict, model: str) -> None:
    from reasonlab.io import write_json, write_text

    entries = []
    for r in results:
        matched, records = r["matched"], r["records"]
        if not matched:
            continue
        entry = {"prompt": r["case"]["prompt"]}
        if "concept" in matched:
            entry |= {"concept": records["concept"]["concept"], "neuron": records["concept"].get("neuron"),
                      "texts": matched["concept"]}
        controls = {arm: {"concept": records[arm]["concept"], "texts": texts}
                    for arm, texts in matched.items() if arm != "concept"}
        entries.append(entry | ({"controls": controls} if controls else {}))
    if not entries:
        raise ReasonlabError(f"no case got usable texts for any arm: nothing to write to {out} (see the reasons "
                             "above)")
    doc = {"cases": entries}
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110) if out.suffix in (".yaml", ".yml") \
        else None
    write_text(out, text) if text is not None else write_json(out, doc)
    rejected = [x for r in results for rec in r["records"].values() for x in rec["rejected"]]
    write_json(out.with_name(out.name + ".provenance.json"), {
        "model_counted": model, "rules": rules.to_dict(), "usage": usage,
        "rejected_by_rule": {rule: sum(x["rule"] == rule for x in rejected) for rule in RULES},
        "cases": [{"prompt": r["case"]["prompt"], "concept_naming": r["naming"], "arms": r["records"],
                   "budget": r["budget"]} for r in results]})
    print(f"wrote {out} ({len(entries)} cases) and {out.name}.provenance.json")
