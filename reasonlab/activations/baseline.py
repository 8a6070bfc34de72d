"""The activation baseline's generation loop: greedy code generation on MBPP problems with residual capture
at the chosen layers, every program run against its tests in the sandbox.

One *range* of problems is processed by `run_range` into `<run_dir>/shards/<name>/` (files: `run_files`):

    generate a batch -> extract the code -> run test_setup_code + test_list in the sandbox
    -> rows (checkpointed every N tasks exactly) + one .npz per (task, layer)

Resume: a range's rows live in its `checkpoint.parquet` (rewritten atomically every `checkpoint_every`
tasks: batches are cut at that boundary); a rerun skips every task_id found in any checkpoint of the run,
so nothing finished is regenerated and no row is duplicated. Failures: a batch that raises is retried
problem by problem, `max_attempts` times each; a problem that keeps failing (or is bad input, which is
not retried) goes to `exclusions.json` with its error instead of stopping the range.
Memory: process RSS (and CUDA memory on a GPU) is recorded at every checkpoint, a warning is logged when
the machine's RAM in use passes `memory_warn_fraction`, and `gc` runs after each one.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from reasonlab.activations import codegen
from reasonlab.activations.memory import memory_snapshot
from reasonlab.activations.params import BaselineConfig
from reasonlab.activations.run_files import (ACTIVATIONS, CHECKPOINT, EXCLUSIONS, SHARD_RECORD, finished_task_ids,
                                             now_utc, read_rows, save_activations)
from reasonlab.errors import ReasonlabError
from reasonlab.io import write_json, write_parquet
from reasonlab.sandbox import run_many

VERSION = "2"  # 2: named files, measured batch timing, time-limit column, exact checkpoints, memory


# ---------------------------------------------------------------- one batch

def _rows_for(problems: list[dict], prompts: list[str], outs: list[dict], config: BaselineConfig,
              act_dir: Path, attempts: int, batch_id: str) -> list[dict]:
    codes = [codegen.extract_code(o["completion"]) for o in outs]
    jobs = [{"code": c, "tests": list(p["test_list"]), "setup_code": p.get("test_setup_code") or "",
             "timeout_s": config.sandbox_timeout_s} for c, p in zip(codes, problems)]
    start = time.perf_counter()
    results = run_many(jobs, workers=config.sandbox_workers, allow_unconfined_reads=config.allow_unconfined_reads)
    sandbox_batch_s = time.perf_counter() - start
    rows = []
    for p, prompt, out, code, res in zip(problems, prompts, outs, codes, results):
        files = save_activations(act_dir, p["task_id"], out.get("activations", {}))
        result = res.to_dict() if hasattr(res, "to_dict") else asdict(res)
        rows.append({
            "task_id": int(p["task_id"]), "text": p["text"], "test_list": list(p["test_list"]),
            "cyclomatic_complexity": int(p.get("cyclomatic_complexity") or 0),
            "prompt": prompt, "completion": out["completion"], "extracted_code": code,
            "test_status": res.status, "tests_passed": res.tests_passed, "tests_total": len(p["test_list"]),
            "pass": res.status == "passed", "failed_test": res.failed_test, "error_type": res.error_type,
            "error_message": res.error_message, "test_result": json.dumps(result, default=str),
            "prompt_tokens": out["prompt_tokens"], "completion_tokens": out["completion_tokens"],
            "hit_token_limit": out["hit_token_limit"], "hit_time_limit": out["hit_time_limit"],
            # measured: the generate call's wall time is one number for the whole batch (batch_id says which
            # rows shared it); each program's sandbox time is its own
            "batch_id": batch_id, "batch_size": out["batch_size"], "batch_generation_s": out["batch_generation_s"],
            "sandbox_s": float(res.duration_s), "sandbox_batch_s": sandbox_batch_s, "attempts": attempts,
            "activation_files": files,
        })
    return rows


def process_batch(model, tokenizer, problems: list[dict], layers: Sequence[int], config: BaselineConfig,
                  act_dir: Path, log: Callable[[str], None] = print,
                  batch_id: str = "batch") -> tuple[list[dict], list[dict]]:
    """(rows, exclusions) for a batch: one batched try, then problem by problem with retries.

    Rows of the batched try share `batch_id`; a retried problem is its own batch (`<batch_id>.r<task_id>`).
    """
    gen = config.generation()
    prompts = [codegen.mbpp_prompt(tokenizer, p, config.system_prompt, config.use_chat_template) for p in problems]

    def checked(ps: list[dict], texts: list[str]) -> None:
        if config.max_prompt_tokens:
            for p, t in zip(ps, texts):
                n = len(tokenizer(t, add_special_tokens=False)["input_ids"])
                if n > config.max_prompt_tokens:
                    raise ReasonlabError(f"task {p['task_id']}: prompt has {n} tokens, over max_prompt_tokens="
                                         f"{config.max_prompt_tokens}")

    try:
        checked(problems, prompts)
        outs = codegen.generate_batch(model, tokenizer, prompts, gen, layers)
        return _rows_for(problems, prompts, outs, config, act_dir, attempts=1, batch_id=batch_id), []
    except Exception as e:  # noqa: BLE001 - isolate the failing problem(s) below
        if len(problems) == 1 and isinstance(e, ReasonlabError):
            return [], [{"task_id": problems[0]["task_id"], "attempts": 1, "error": str(e)}]
        log(f"batch of {len(problems)} failed ({type(e).__name__}: {e}); retrying problem by problem")
    rows, excluded = [], []
    for p, prompt in zip(problems, prompts):
        error = None
        for attempt in range(1, config.max_attempts + 1):
            try:
                checked([p], [prompt])
                outs = codegen.generate_batch(model, tokenizer, [prompt], gen, layers)
                rows += _rows_for([p], [prompt], outs, config, act_dir, attempts=attempt + 1,
                                  batch_id=f"{batch_id}.r{p['task_id']}")
                error = None
                break
            except ReasonlabError as e:  # bad input: the same every time
                error = f"ReasonlabError: {e}"
                break
            except Exception as e:  # noqa: BLE001
                error = f"{type(e).__name__}: {e}"
        if error is not None:
            excluded.append({"task_id": p["task_id"], "attempts": attempt, "error": error})
            log(f"task {p['task_id']} excluded after {attempt} attempt(s): {error}")
    return rows, excluded


# ---------------------------------------------------------------- one range

class _Shard:
    """One range's files (checkpoint rows, exclusions, shard.json), loaded to resume and rewritten together."""

    def __init__(self, shard_dir: Path, name: str, problems: list[dict], range_info: dict | None,
                 config: BaselineConfig):
        self.dir, self.name, self.problems, self.range_info, self.config = shard_dir, name, problems, range_info, config
        record, exclusions = shard_dir / SHARD_RECORD, shard_dir / EXCLUSIONS
        self.rows = read_rows(shard_dir / CHECKPOINT)
        self.excluded: list[dict] = json.loads(exclusions.read_text()) if exclusions.is_file() else []
        self.record = json.loads(record.read_text()) if record.is_file() else {"calls": []}
        self.call: dict = {}
        self.memory_warning = False

    def begin_call(self, todo: list[dict], skipped: int) -> None:
        """Record this call (its settings: limits may differ per call); exclusions of tasks retried now go."""
        retried = {int(p["task_id"]) for p in todo}
        prior = {int(e["task_id"]) for e in self.excluded}
        self.excluded = [e for e in self.excluded if int(e["task_id"]) not in retried]
        self.call = {"started": now_utc(), "tasks": len(self.problems), "resumed": skipped, "todo": len(todo),
                     "retried_exclusions": len(prior & retried), "config": self.config.to_dict(), "checkpoints": []}
        self.record["calls"].append(self.call)

    def checkpoint(self, tasks_done: int, final: bool, device, log: Callable[[str], None],
                   warn: Callable[[str], None]) -> None:
        """Rows, exclusions and shard.json written atomically with a memory snapshot; then gc."""
        write_parquet(self.dir / CHECKPOINT, self.rows)
        write_json(self.dir / EXCLUSIONS, self.excluded)
        mem = memory_snapshot(device)
        over = mem.get("ram_used_fraction", 0.0) > self.config.memory_warn_fraction
        if over:
            self.memory_warning = True
            warn(f"{self.name}: RAM {mem['ram_used_fraction']:.0%} in use, over memory_warn_fraction="
                 f"{self.config.memory_warn_fraction:.0%} (process RSS {mem['rss_bytes'] / 2**30:.2f} GiB)")
        self.call["checkpoints"].append({"tasks_done": tasks_done, "rows": len(self.rows),
                                         "excluded": len(self.excluded), "final": final, "time": now_utc(),
                                         "memory": mem, "memory_warning": over})
        self._write_record()
        gc.collect()
        if device is not None and str(device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        if not final:
            log(f"{self.name}: checkpoint after {tasks_done} tasks, {len(self.rows)} rows, "
                f"RSS {mem['rss_bytes'] / 2**20:.0f} MiB")

    def _write_record(self) -> None:
        ids = [int(p["task_id"]) for p in self.problems]
        self.record.update({
            "shard": self.name, "range": self.range_info or self.record.get("range"),
            "first_task_id": min(ids, default=None), "last_task_id": max(ids, default=None), "tasks": len(ids),
            "rows": len(self.rows), "passed": sum(bool(r["pass"]) for r in self.rows),
            "excluded": len(self.excluded),
        })
        write_json(self.dir / SHARD_RECORD, self.record)

    def summary(self, todo: list[dict]) -> dict:
        todo_ids = {int(p["task_id"]) for p in todo}
        failed_now = sum(int(e["task_id"]) in todo_ids for e in self.excluded)
        return {"shard": self.name, "checkpoint": str(self.dir / CHECKPOINT), "tasks": len(self.problems),
                "rows": len(self.rows), "resumed": self.call["resumed"], "generated": len(todo) - failed_now,
                "passed": sum(bool(r["pass"]) for r in self.rows), "excluded": self.excluded,
                "checkpoints": self.call["checkpoints"], "memory_warning": self.memory_warning}


def _next_batch_index(rows: list[dict]) -> int:
    """Batch ids continue after a resume: b0000, b0001, ... (never reused within a shard)."""
    used = [int(str(r["batch_id"]).split("/b")[-1].split(".")[0]) for r in rows if "/b" in str(r.get("batch_id"))]
    return max(used, default=-1) + 1


def run_range(model, tokenizer, problems: list[dict], layers: Sequence[int], config: BaselineConfig,
              run_dir: Path, shard_name: str, progress: Callable[[int, int], None] | None = None,
              log: Callable[[str], None] = print, range_info: dict | None = None,
              warn: Callable[[str], None] | None = None) -> dict:
    """Process `problems` into `<run_dir>/shards/<shard_name>/`, resuming where it stopped.

    Checkpoints (checkpoint.parquet + exclusions.json + shard.json) are written after exactly every
    `checkpoint_every` tasks of this call (a batch is cut short rather than cross that boundary) and at the
    end; each records the tasks done, the rows, the time and a memory snapshot, then `gc` runs.
    `range_info` (the split and its start/end indices) is recorded in shard.json as given.
    """
    run_dir = Path(run_dir)
    shard = _Shard(run_dir / "shards" / shard_name, shard_name, problems, range_info, config)
    done = finished_task_ids(run_dir)
    todo = [p for p in problems if int(p["task_id"]) not in done]
    skipped = len(problems) - len(todo)
    shard.begin_call(todo, skipped)
    if skipped:
        log(f"{shard_name}: resuming, {skipped} of {len(problems)} tasks already finished")
    if todo:
        chat = codegen.chat_prompting(tokenizer, config.use_chat_template)
        log(f"{shard_name}: prompt of task {todo[0]['task_id']} ({'chat template' if chat else 'completion'}):\n"
            + codegen.mbpp_prompt(tokenizer, todo[0], config.system_prompt, config.use_chat_template))
    device = getattr(model, "device", None)
    batch_index, i = _next_batch_index(shard.rows), 0
    while i < len(todo):
        # never cross a checkpoint boundary: checkpoints fall after exactly every `checkpoint_every` tasks
        batch = todo[i:i + min(config.batch_size, config.checkpoint_every - i % config.checkpoint_every)]
        rows, excluded = process_batch(model, tokenizer, batch, layers, config, run_dir / ACTIVATIONS, log,
                                       batch_id=f"{shard_name}/b{batch_index:04d}")
        batch_index, i = batch_index + 1, i + len(batch)
        shard.rows += rows
        shard.excluded += excluded
        if i % config.checkpoint_every == 0 and i < len(todo):
            shard.checkpoint(i, final=False, device=device, log=log, warn=warn or log)
        if progress:
            progress(skipped + i, len(problems))
    shard.call["finished"] = now_utc()
    shard.checkpoint(len(todo), final=True, device=device, log=log, warn=warn or log)
    return shard.summary(todo)
