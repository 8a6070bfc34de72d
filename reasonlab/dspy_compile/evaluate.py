"""Evaluate a program on examples: one record per example, failures recorded with their reason.

    rows = evaluate_program(program, examples, task, lm, num_threads=4)
    summarize(rows, task, spec)   # score, parse failures, errors, tokens, compute seconds, cost, latency

Each example runs with its own copy of the LM (shared engine and cache, its own history), so tokens and
compute seconds are per example even under `num_threads`; a DSPy cache hit reports the usage of the call
that made the answer (the cost of the prediction, not of this rerun). An adapter parse failure (small
models often break DSPy's output format) and any other exception become a row with `status` and
`reason`, never a crash.
"""

from __future__ import annotations

import time
from typing import Any

import dspy

from reasonlab import stats
from reasonlab.dspy_compile import metrics, programs

VERSION = "1"


def adapter_for(name: str):
    if name == "chat":
        return dspy.ChatAdapter(use_json_adapter_fallback=False)
    if name == "json":
        return dspy.JSONAdapter()
    from reasonlab.errors import ReasonlabError

    raise ReasonlabError(f"unknown adapter {name!r}: use chat or json")


def _usage(history: list[dict]) -> dict[str, float]:
    prompt = completion = 0
    compute = 0.0
    hits = 0
    for entry in history:
        response = entry.get("response")
        usage = getattr(response, "usage", None)
        if usage is not None and getattr(usage, "input_tokens", None) is not None:
            prompt += usage.input_tokens or 0
            completion += usage.output_tokens or 0
        else:
            u = entry.get("usage") or {}
            prompt += int(u.get("prompt_tokens") or 0)
            completion += int(u.get("completion_tokens") or 0)
        data = getattr(response, "provider_data", None) or {}
        compute += float(data.get("compute_s", 0.0)) if isinstance(data, dict) else 0.0
        hits += not (entry.get("usage") or {})
    return {"prompt_tokens": prompt, "completion_tokens": completion, "compute_s": round(compute, 4),
            "lm_calls": len(history), "cache_hits": hits}


def run_example(program: dspy.Module, row: dict[str, Any], task: str, lm) -> dict[str, Any]:
    from dspy.utils.exceptions import AdapterParseError

    example_lm = lm.copy()
    started = time.perf_counter()
    record: dict[str, Any] = {"id": row.get("id"), "question": row.get("question", ""), "gold": row.get("answer")}
    try:
        inputs = {k: row[k] for k in programs.input_keys(task)}
        with dspy.context(lm=example_lm):
            pred = program(**inputs)
        answer = getattr(pred, "answer", None)
        record.update(status="ok", reason="", answer=str(answer), reasoning=str(getattr(pred, "reasoning", "") or ""),
                      **metrics.score(task, row["answer"], answer))
    except AdapterParseError as e:
        raw = ""
        if example_lm.history:
            outs = example_lm.history[-1].get("outputs") or [""]
            raw = outs[0] if isinstance(outs[0], str) else str(outs[0])
        record.update(status="parse_error", reason=f"AdapterParseError: {str(e).splitlines()[0][:200]}", answer="",
                      reasoning=raw[:2000], **metrics.score(task, row["answer"], None))
    except Exception as e:  # an example that fails is a row with its reason, not a crash
        record.update(status="error", reason=f"{type(e).__name__}: {str(e)[:300]}", answer="", reasoning="",
                      **metrics.score(task, row["answer"], None))
    record["latency_s"] = round(time.perf_counter() - started, 3)
    record.update(_usage(example_lm.history))
    return record


def evaluate_program(program: dspy.Module, rows: list[dict], task: str, lm, adapter: str = "chat",
                     num_threads: int = 1) -> list[dict[str, Any]]:
    """Records in the order of `rows` (same inputs -> same records at temperature 0)."""
    from dspy.utils.parallelizer import ParallelExecutor

    with dspy.context(lm=lm, adapter=adapter_for(adapter)):
        executor = ParallelExecutor(num_threads=num_threads, disable_progress_bar=True, timeout=0,
                                    max_errors=len(rows) + 1)
        return executor.execute(lambda row: run_example(program, row, task, lm), rows)


def summarize(rows: list[dict], task: str, cost_of) -> dict[str, Any]:
    """Aggregates; `cost_of(prompt_tokens, completion_tokens, compute_s)` -> USD."""
    n = len(rows) or 1
    pt = sum(r["prompt_tokens"] for r in rows)
    ct = sum(r["completion_tokens"] for r in rows)
    cs = sum(r["compute_s"] for r in rows)
    scores = [r["score"] for r in rows]
    low, high = stats.bootstrap_ci(scores)
    out = {"n": len(rows), "score": stats.mean(scores), "ci_low": low, "ci_high": high,
           "parse_failures": sum(r["status"] == "parse_error" for r in rows),
           "errors": sum(r["status"] == "error" for r in rows),
           "prompt_tokens_per_ex": pt / n, "completion_tokens_per_ex": ct / n, "compute_s_per_ex": cs / n,
           "cost_usd_per_ex": cost_of(pt, ct, cs) / n, "latency_s_per_ex": sum(r["latency_s"] for r in rows) / n,
           "lm_calls": sum(r["lm_calls"] for r in rows)}
    if task == "hotpotqa":
        out["f1"] = stats.mean([r["f1"] for r in rows])
    if task == "gsm8k":
        out.update(extraction_summary(rows))
    return out


def extraction_summary(rows: list[dict]) -> dict[str, float]:
    """GSM8K under lm-eval's strict-match (accuracy with its bootstrap CI), and the share of answers from which
    each rule extracted a number (the headline `score` is flexible-extract)."""
    strict = [r["strict"] for r in rows]
    lo, hi = stats.bootstrap_ci(strict)
    return {"strict_score": stats.mean(strict), "strict_ci_low": lo, "strict_ci_high": hi,
            "strict_extracted": stats.mean([r["strict_extracted"] for r in rows]),
            "flexible_extracted": stats.mean([r["flexible_extracted"] for r in rows])}
