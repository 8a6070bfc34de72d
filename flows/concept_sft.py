"""The concept-SFT pipeline (the main job): filter -> leak check -> SFT -> evaluate.

    python -m flows.concept_sft                                  # defaults: SmolLM2, the seed's 3 prompts
    python -m flows.concept_sft --prompts data/target_prompts.json --sft-config configs/concept_sft_default.yaml

Every stage is a cached task: a rerun with the same inputs and weights skips all of them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from reasonlab import paths
from reasonlab.errors import ReasonlabError
from reasonlab.evaluate import compare, results_markdown
from reasonlab.io import sha256_json, write_json, write_text
from reasonlab.model_loader import resolve_model
from reasonlab.prompt_format import FORMATS
from reasonlab.sft_config import load_sft_config
from tasks import concept_sft as stages

DEFAULT_PROMPTS = "data/target_prompts.json"
DEFAULT_SFT_CONFIG = "configs/concept_sft_default.yaml"


def find_input(path: str) -> Path:
    """A path as given, else relative to the project checkout (so defaults work from any cwd)."""
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute():
        return given.resolve()
    return (paths.project_root() / given).resolve()


@flow(name="concept-sft", log_prints=True)
def concept_sft(
    prompts: str = DEFAULT_PROMPTS,
    sft_config: str = DEFAULT_SFT_CONFIG,
    model: str | None = None,
    top_k: int = 10,
    max_rank: int = 5,
    filter_format: str = "completion",
    eval_formats: list[str] = ["chat", "completion"],
    answer_prefix: str = " Answer:",
    concept: str | None = None,
) -> dict:
    """Find prompts the model gets clearly wrong, train the intermediate concept, measure the shift.

    Args:
        prompts: JSON/YAML file of {prompt, answer, topic} rows.
        sft_config: YAML SFT config (the seed's fields: texts, epochs, learning_rate, ...; `lora:` optional).
        model: registry name, local folder or Hub id; overrides the config's model_name.
        top_k: how many next tokens the filter and evaluation look at.
        max_rank: the answer must sit at rank 2..max_rank for a prompt to be a target case.
        filter_format: "completion" (the raw prompt) or "chat" (chat template + answer prefix).
        eval_formats: formats to evaluate; "chat" is the seed's (template + " Answer:").
        answer_prefix: text after the assistant header in the chat format.
        concept: the intermediate concept the texts strengthen (recorded with the results).
    """
    for fmt in [filter_format, *eval_formats]:
        if fmt not in FORMATS:
            raise ReasonlabError(f"unknown prompt format {fmt!r}: use one of {FORMATS}")
    config = load_sft_config(find_input(sft_config))
    prompts_path = find_input(prompts)

    # Stage 1 - prompts (generation with an LLM comes in its own stage; here: a file)
    rows = stages.load_prompts(prompts_path)
    base = resolve_model(model or config.model_name)
    run_dir = paths.runs_dir() / "concept_sft" / sha256_json(
        [base.fingerprint, rows, config.model_dump(), top_k, max_rank, filter_format, eval_formats, answer_prefix]
    )[:16]

    # Stage 2 - top-k filter
    filtered = stages.filter_prompts(base, rows, str(run_dir / "filtered_prompts.json"), k=top_k, max_rank=max_rank,
                                     fmt=filter_format, system_prompt=config.system_prompt,
                                     answer_prefix=answer_prefix, device=config.device, dtype=config.dtype)
    cases = filtered["target_cases"]
    publish_filter(filtered)
    if not cases:
        print("no target cases: nothing to train (see the filter artifact for each prompt's reason)")
        return {"run_dir": str(run_dir), "target_cases": 0}

    # Stages 3-4 - attribution and concept choice come in their own stages; here the concept is a parameter
    # Stage 5 - training texts, leak-checked against every target's wrong answer and topic
    texts = stages.check_training_texts(config.texts, cases, config.forbidden_terms)

    # Stage 6 - SFT
    train_config = config.model_copy(update={"texts": texts}).model_dump()
    sft = stages.run_sft(base, train_config, config.output_dir or str(run_dir / "sft"))
    tuned = resolve_model(sft["checkpoint"])

    # Stage 7 - evaluate base vs SFT
    eval_args = dict(system_prompt=config.system_prompt, answer_prefix=answer_prefix, device=config.device,
                     dtype=config.dtype, k=top_k)
    before = stages.evaluate_model(base, cases, eval_formats, str(run_dir / "eval_base.json"), **eval_args)
    after = stages.evaluate_model(tuned, cases, eval_formats, str(run_dir / "eval_sft.json"), **eval_args)
    table = compare(before, after)
    results = {"model": base.to_dict(), "sft_checkpoint": sft["checkpoint"], "concept": concept,
               "train_losses": sft["losses"], "table": table}
    write_json(run_dir / "results.json", results)
    write_text(run_dir / "results.md", results_markdown(table))
    publish_results(table, sft, concept)
    print("\n" + results_markdown(table))
    return {"run_dir": str(run_dir), "target_cases": len(cases), "table": table}


def publish_filter(filtered: dict) -> None:
    rows = [{"prompt": c["prompt"], "wrong (top-1)": f"{c['wrong_token']!r} {c['wrong_prob']:.1%}",
             "correct": f"{c['correct_token']!r} {c['correct_prob']:.1%}", "rank": c["correct_rank"], "kept": "yes"}
            for c in filtered["target_cases"]]
    rows += [{"prompt": r["prompt"], "wrong (top-1)": f"{r['top_k'][0]['token']!r} {r['top_k'][0]['prob']:.1%}",
              "correct": r["answer"], "rank": r["correct_rank"], "kept": f"no: {r['reason']}"}
             for r in filtered["rejected"]]
    create_table_artifact(rows, key="concept-sft-filter", description="Top-k filter: target cases and rejections")


def publish_results(table: list[dict], sft: dict, concept: str | None) -> None:
    create_table_artifact(table, key="concept-sft-results", description="Base vs SFT: p(wrong) and p(correct)")
    losses = ", ".join(f"{x:.3f}" for x in sft["losses"])
    create_markdown_artifact(
        f"# Concept SFT\n\nConcept: {concept or '(not named)'}\n\n{results_markdown(table)}\n"
        f"Checkpoint: `{sft['checkpoint']}` ({sft['steps']} steps; loss per step: {losses})\n",
        key="concept-sft-report",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default=DEFAULT_PROMPTS)
    parser.add_argument("--sft-config", default=DEFAULT_SFT_CONFIG)
    parser.add_argument("--model", default=None)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--max-rank", type=int, default=5)
    parser.add_argument("--filter-format", default="completion", choices=FORMATS)
    parser.add_argument("--eval-formats", nargs="+", default=["chat", "completion"], choices=FORMATS)
    parser.add_argument("--concept", default=None)
    args = parser.parse_args(argv)
    try:
        out = concept_sft(prompts=args.prompts, sft_config=args.sft_config, model=args.model, top_k=args.top_k,
                          max_rank=args.max_rank, filter_format=args.filter_format, eval_formats=args.eval_formats,
                          concept=args.concept)
    except ReasonlabError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"run_dir": out["run_dir"], "target_cases": out["target_cases"]}))


if __name__ == "__main__":
    main()
