"""Which experiments the study runs: one per target case x arm that has texts, each on that case alone; the
others are skipped with the reason the texts stage recorded. Pure functions of plain data."""

from __future__ import annotations

from reasonlab.errors import ReasonlabError
from reasonlab.io import sha256_json


def study_key(base_fingerprint: str, rows: list[dict], config: dict, groups: dict, study, text_sets: dict) -> str:
    """The study folder's name: what changes what it measures; how it is run (workers) does not (16 hex digits)."""
    how = ("workers", "ray_address", "attribution_after")
    experiment = {k: v for k, v in groups["experiment"].model_dump().items() if k not in how}
    return sha256_json([base_fingerprint, rows, config, groups["filter"].model_dump(), groups["formats"].model_dump(),
                        groups["attribution"].model_dump(), experiment, study.model_dump(), groups["llm"].model_dump(),
                        {k: v.model_dump() for k, v in text_sets.items()}])[:16]


def limit_cases(target_cases: list[dict], max_cases: int | None, prompts_file: str) -> list[dict]:
    """The cases the study runs on, in the filter's order; none is one clear error."""
    if not target_cases:
        raise ReasonlabError(f"{prompts_file} yields no target case for this model (no prompt is clearly wrong "
                             "with the answer in its top ranks; see the filter's reasons in filtered_prompts.json): "
                             "a study needs at least one")
    return target_cases[:max_cases] if max_cases else target_cases


def plan_study(cases: list[dict], texts: list[dict], arms: list[str]) -> tuple[list[dict], list[dict]]:
    """(experiments, skipped). `texts[i]` is case i's record: {"arms": {arm: {texts, concept, neuron, skipped}}}.

    An experiment: {name, cases: [case], text_set: arm, concept, neuron, texts}, the shape the SFT stage takes."""
    experiments, skipped = [], []
    for i, (case, record) in enumerate(zip(cases, texts, strict=True)):
        for arm in arms:
            written = record["arms"].get(arm)
            if written is None or written.get("skipped"):
                reason = written["skipped"] if written else "no texts were written for this arm"
                skipped.append({"case": case["prompt"], "arm": arm, "reason": reason})
                continue
            experiments.append({"name": f"case{i}-{arm}", "cases": [case], "text_set": arm,
                                "concept": written.get("concept"), "neuron": written.get("neuron"),
                                "texts": list(written["texts"])})
    return experiments, skipped
