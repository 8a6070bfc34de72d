"""Concept-SFT stage 5 as Prefect tasks: the concept named, each case x arm's texts written, each case's arms
matched in budget. Cached like every stage: a rerun makes no LLM call.

    with serving(endpoint) as live:                   # a local model is served once for the whole stage
        named = name_concept(endpoint, case, candidates, f"{out}/concept.json", live=live)
        record = write_arm_texts(endpoint, case, "concept", named["concept"], rules, model, rows,
                                 f"{out}/concept.json", live=live)

`endpoint` is the configured EndpointConfig (a local model's name, no URL): it is keyed. `live` is the running
endpoint (a random port): it is left out of the key, so a rerun with a new server is Cached. A local model is
started on the first request, never when every task is Cached (or for the `prompt` arm, which needs no LLM).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from prefect import get_run_logger, task

from reasonlab.concept_sft import arm_texts
from reasonlab.concept_sft.sft_config import SFTConfig
from reasonlab.concept_sft.text_checks import TextRules, check_arm
from reasonlab.concept_sft.text_sets import CaseTexts
from reasonlab.concept_sft.text_budget import token_counter, trained_tokens_counter
from reasonlab.io import sha256_json, write_json
from reasonlab.llm_client import EndpointConfig, LLMClient
from reasonlab.local_server import LiveEndpoint, serving
from reasonlab.models import ResolvedModel
from tasks.conventions import task_options

LIVE = ("live",)


@contextlib.contextmanager
def client_for(endpoint: EndpointConfig, live: LiveEndpoint | EndpointConfig | None,
               key_block: str | None) -> Iterator[LLMClient]:
    api_key = None
    if key_block:
        from blocks.llm_endpoint import load_endpoint

        api_key = load_endpoint(key_block).api_key_value()
    if live is None:  # a task called alone: serve for this call only
        with serving(endpoint) as own:
            yield LLMClient(own.config(), api_key=api_key)
    else:
        yield LLMClient(live.config() if isinstance(live, LiveEndpoint) else live, api_key=api_key)


def case_folder(case: dict) -> str:
    """A short stable folder name for a case (its prompt's hash)."""
    return "case-" + sha256_json(case["prompt"])[:12]


@task(name="name-concept", **task_options(arm_texts.VERSION, retries=1, exclude=LIVE))
def name_concept(endpoint: EndpointConfig, case: dict, candidates: list[dict] | None, out_file: str,
                 live: LiveEndpoint | EndpointConfig | None = None, key_block: str | None = None) -> dict:
    """The case's intermediate concept named by the LLM (from `candidates` when given) -> out_file."""
    with client_for(endpoint, live, key_block) as client:
        record = arm_texts.name_concept(client, case, candidates)
    write_json(out_file, {**record, "case": case["prompt"], "endpoint": endpoint.to_dict()})
    get_run_logger().info(f"concept for {case['prompt']!r}: {record['concept']!r} (neuron {record['neuron']}, "
                          f"{record['attempts']} request(s)){' skipped: ' + record['skipped'] if record['skipped'] else ''}")
    return record


@task(name="write-arm-texts", **task_options(arm_texts.VERSION, retries=1, exclude=LIVE))
def write_arm_texts(endpoint: EndpointConfig, case: dict, arm: str, concept: str | None, rules: TextRules | dict,
                    model: ResolvedModel, file_rows: list[dict], out_file: str,
                    live: LiveEndpoint | EndpointConfig | None = None, key_block: str | None = None,
                    file_entry: dict | None = None) -> dict:
    """One case x arm's texts -> out_file: the text-set file's (`file_entry`) when it has the arm, else written
    by the LLM and checked (`arm_texts.write_arm`); the `prompt` arm is built without an LLM."""
    check_arm(arm)
    rules = (rules if isinstance(rules, TextRules) else TextRules(**rules)).validate()
    record = arm_texts.texts_from_file(CaseTexts.model_validate(file_entry) if file_entry else None, arm)
    if record is None and (arm == "prompt" or (arm in arm_texts.NEEDS_CONCEPT and not concept)):
        record = arm_texts.write_arm(None, case, arm, concept, rules, token_counter(model), file_rows)
    elif record is None:
        with client_for(endpoint, live, key_block) as client:
            record = arm_texts.write_arm(client, case, arm, concept, rules, token_counter(model), file_rows)
    write_json(out_file, {**record, "case": case["prompt"], "rules": rules.to_dict(), "endpoint": endpoint.to_dict()})
    get_run_logger().info(f"{arm} texts for {case['prompt']!r}: {len(record['texts'])} ({record['source']}, "
                          f"{record['attempts']} request(s), {len(record['rejected'])} rejected)"
                          f"{' skipped: ' + record['skipped'] if record['skipped'] else ''}")
    return record


@task(name="match-budget", **task_options(arm_texts.VERSION))
def match_budget(arm_texts_by_arm: dict[str, list[str]], model: ResolvedModel, config: SFTConfig, out_file: str,
                 tolerance: float = 0.10) -> dict:
    """One case's arms trimmed to within +-tolerance training tokens of each other -> out_file."""
    matched, report = arm_texts.match_budget(arm_texts_by_arm, trained_tokens_counter(model, config), tolerance)
    write_json(out_file, {"texts": matched, "report": report})
    if report["unmatched"]:
        get_run_logger().warning(f"arms not matched in budget: {', '.join(report['unmatched'])}")
    return {"texts": matched, "report": report}


__all__ = ["LiveEndpoint", "case_folder", "match_budget", "name_concept", "serving", "write_arm_texts"]
