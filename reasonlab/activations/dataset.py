"""Merge a run directory into its dataset and metadata.json, and the run's figures.

The pass rate has two denominators, both reported with their 95 % Wilson intervals: `pass_rate` counts every
problem of the split the run covered (a problem whose generation kept failing, so that it was excluded,
counts as not passed), `pass_rate_generated` only the problems that got a program. With no problems a rate
has no estimate: it is None (null in JSON), never 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from reasonlab.activations import codegen
from reasonlab.activations import baseline
from reasonlab.activations.run_files import (CHECKPOINT, EXCLUSIONS, SHARD_RECORD, dataset_name, now_utc,
                                             read_rows)
from reasonlab.io import write_json, write_parquet
from reasonlab.sandbox import isolation
from reasonlab.stats import mean, rate

VERSION = "3"  # of the merge's output (its figures): part of the merge task's cache key
METADATA = "metadata.json"
EXCLUSION_SUMMARY = "exclusion_summary.json"


def _figure(value: float, digits: int) -> float | None:
    """A figure for JSON and tables: NaN (no estimate) becomes None."""
    return None if math.isnan(value) else round(value, digits)


def rate_fields(name: str, passed: int, n: int) -> dict[str, Any]:
    """{name: passed / n, name_ci95: [low, high]} (95 % Wilson); None where n = 0."""
    r = rate(passed, n)
    return {name: None if n == 0 else r["rate"], f"{name}_ci95": [_figure(r["low"], 4), _figure(r["high"], 4)]}


def summarize(rows: list[dict], excluded: int = 0) -> dict[str, Any]:
    """The run's figures from its dataset rows and the number of excluded problems: both pass rates with their
    CIs, status and error-type counts, completion lengths, limits hit."""
    generated = len(rows)
    passed = sum(bool(r["pass"]) for r in rows)
    errors: dict[str, int] = {}
    for r in rows:
        if not r["pass"]:
            key = r.get("error_type") or r["test_status"]
            errors[key] = errors.get(key, 0) + 1
    return {
        "problems": generated + excluded, "generated": generated, "excluded": excluded, "passed": passed,
        "suspicious": sum(r["test_status"] == "suspicious" for r in rows),  # a result that compared as anything
        **rate_fields("pass_rate", passed, generated + excluded),
        **rate_fields("pass_rate_generated", passed, generated),
        "status_counts": {s: sum(r["test_status"] == s for r in rows)
                          for s in sorted({r["test_status"] for r in rows})},
        "error_types": dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        "completion_tokens": int(sum(r["completion_tokens"] for r in rows)),
        "mean_completion_tokens": _figure(mean([r["completion_tokens"] for r in rows]), 2),
        "mean_completion_chars": _figure(mean([len(r["completion"]) for r in rows]), 1),
        "hit_token_limit": int(sum(bool(r["hit_token_limit"]) for r in rows)),
        "hit_time_limit": int(sum(bool(r.get("hit_time_limit")) for r in rows)),
        "activation_files": int(sum(len(r["activation_files"]) for r in rows)),
    }


def read_ranges(run_dir: Path, kept: dict[int, str]) -> list[dict]:
    """Every range (shard) ever processed into the run directory, from its shard.json, in task order;
    `rows_in_dataset` counts its rows that the dataset holds (`kept`: task_id -> shard that supplied it)."""
    out = []
    for f in sorted(Path(run_dir).glob(f"shards/*/{SHARD_RECORD}")):
        rec = json.loads(f.read_text())
        calls = rec.get("calls", [])
        out.append({
            "shard": rec["shard"], "range": rec.get("range"), "first_task_id": rec.get("first_task_id"),
            "last_task_id": rec.get("last_task_id"), "tasks": rec.get("tasks"), "rows": rec.get("rows"),
            "rows_in_dataset": sum(s == rec["shard"] for s in kept.values()), "passed": rec.get("passed"),
            "excluded": rec.get("excluded"), "calls": calls,
            "peak_rss_bytes": max((c["memory"]["rss_bytes"] for call in calls for c in call.get("checkpoints", [])),
                                  default=None),
        })
    return sorted(out, key=lambda r: (r["first_task_id"] is None, r["first_task_id"] or 0, r["shard"]))


def run_metadata(base: dict, ranges: list[dict], summary: dict, dataset: str) -> dict:
    """Every key of metadata.json is set here: `base` (the model, layers, split, generation settings, versions,
    given by the caller), every range merged into the run directory, and counts read from the dataset itself."""
    return {**base, "dataset": dataset, "ranges": ranges, "counts": summary, "pass_rate": summary["pass_rate"],
            "pass_rate_generated": summary["pass_rate_generated"], "merged": now_utc(),
            "sandbox_isolation": isolation()}  # which sandbox layers were active (confinement, uid, ...)


def merge_dataset(run_dir: Path, variant: str, metadata: dict) -> dict:
    """Every checkpoint of the run -> one dataset (each task_id once, by task_id) + metadata.json.

    A problem excluded by one call and generated by a later one counts as generated."""
    run_dir = Path(run_dir)
    by_id: dict[int, dict] = {}
    source: dict[int, str] = {}
    for ckpt in sorted(run_dir.glob(f"shards/*/{CHECKPOINT}")):
        for r in read_rows(ckpt):
            by_id[int(r["task_id"])] = r
            source[int(r["task_id"])] = ckpt.parent.name
    rows = [by_id[t] for t in sorted(by_id)]
    excluded = {}
    for f in sorted(run_dir.glob(f"shards/*/{EXCLUSIONS}")):
        for e in json.loads(f.read_text()):
            if int(e["task_id"]) not in by_id:
                excluded[int(e["task_id"])] = e
    dest = run_dir / dataset_name(variant)
    write_parquet(dest, rows)
    summary = summarize(rows, excluded=len(excluded))
    write_json(run_dir / EXCLUSION_SUMMARY, {"excluded": list(excluded.values()), "count": len(excluded)})
    write_json(run_dir / METADATA, run_metadata(metadata, read_ranges(run_dir, source), summary, dest.name))
    return {"dataset": str(dest), "metadata": str(run_dir / METADATA), **summary}


def versions() -> dict[str, str]:
    """The versions that made the dataset: Python, torch, transformers, numpy, Prefect and this code's."""
    import platform

    import numpy
    import torch
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "numpy": numpy.__version__,
           "activation_baseline": baseline.VERSION, "merge": VERSION, "codegen": codegen.VERSION}
    from importlib.metadata import PackageNotFoundError, version

    try:
        out["prefect"] = version("prefect")  # read from the metadata: this library never imports Prefect
    except PackageNotFoundError:
        pass
    return out
