"""Concept-SFT stage 1 as a Prefect task: LLM prompt generation (cached: a rerun makes no LLM calls).

The task's inputs are plain data without any key: the EndpointConfig (which names an env var at
most) and, for a key stored in a Block, the block's *name*; the key is read inside the task.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

from prefect import get_run_logger, task

from reasonlab import paths
from reasonlab.concept_sft import prompt_generation
from reasonlab.llm_client import EndpointConfig, LLMClient, endpoint_from_env
from reasonlab.local_server import serve_local
from tasks.conventions import task_options

DEFAULT_LOCAL_MODEL = "smollm2-135m-instruct"
LOCAL_TIMEOUT_S = 900.0  # per request to a model this project serves itself on loopback


def resolve_endpoint(endpoint: str | None = None, local_model: str | None = None) -> EndpointConfig:
    """Block name -> its config; else REASONLAB_LLM_* env vars; else `local_model` served offline.

    Nothing configured -> one ReasonlabError that says what to set.
    """
    if endpoint:
        from blocks.llm_endpoint import load_endpoint

        return load_endpoint(endpoint).to_config()
    cfg = endpoint_from_env()
    if not cfg.base_url and not cfg.local_model and local_model:
        cfg = replace(cfg, local_model=local_model)
    return cfg.validate()


@contextlib.contextmanager
def open_client(cfg: EndpointConfig, key_block: str | None = None):
    """An LLMClient for `cfg`; a local model is served on loopback for the duration and then stopped."""
    api_key = None
    if key_block:
        from blocks.llm_endpoint import load_endpoint

        api_key = load_endpoint(key_block).api_key_value()
    if cfg.is_local:
        with serve_local(cfg.local_model, log_dir=paths.runs_dir() / "llm-server") as server:
            # A CPU-served model needs minutes for a batch; a timed-out request keeps the server busy, so
            # retrying it only queues the same work again: wait long, retry little.
            local = replace(cfg.with_server(server.base_url, server.model),
                            json_mode="none" if cfg.json_mode == "auto" else cfg.json_mode,
                            timeout_s=max(cfg.timeout_s, LOCAL_TIMEOUT_S), max_retries=min(cfg.max_retries, 1))
            yield LLMClient(local), {**cfg.to_dict(), "served_at": server.base_url}
    else:
        yield LLMClient(cfg, api_key=api_key), cfg.to_dict()


@task(name="generate-prompts", **task_options(prompt_generation.VERSION, retries=1))
def generate_prompts(endpoint: EndpointConfig, params: dict, out_file: str, key_block: str | None = None) -> dict:
    """Stage 1: `params["n"]` x `params["batches"]` LLM-generated prompts, checked and deduplicated -> out_file."""
    gen = prompt_generation.GenerationParams(**params).validate()
    with open_client(endpoint, key_block) as (client, info):
        summary = prompt_generation.generate_prompts(client, gen, Path(out_file), endpoint_info=info)
    get_run_logger().info(f"{summary['accepted']} prompts ({summary['new_accepted']} new), {summary['rejected']} rejected -> "
          f"{out_file}; usage {summary['usage']}")
    return summary


__all__ = ["DEFAULT_LOCAL_MODEL", "generate_prompts", "open_client", "resolve_endpoint"]
