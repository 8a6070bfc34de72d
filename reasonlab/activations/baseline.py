"""The activation baseline (the seed's Phase 7.3): greedy code generation on MBPP problems with residual
capture at the best layers, every program run against its tests in the sandbox.

One *range* of problems is processed by `run_range`:

    generate a batch -> extract the code -> run test_setup_code + test_list in the sandbox
    -> rows (checkpointed every N tasks exactly) + one .npz per (task, layer)

A run directory holds the seed's layout (what its Phase 7.6 reads) plus the working files:

    dataset_<instruct|base>_temp_0_0.parquet    one row per task (merge_dataset)
    metadata.json                               model, layers, every range merged, counts, memory (run_metadata)
    <split>_mbpp.parquet                        the split the ranges index into (write_split)
    activations/task_activations/task_<id>_layer_<L>.npz
    shards/<name>/checkpoint.parquet, exclusions.json, shard.json (the range, its calls and checkpoints)

Resume: a range's rows live in its `checkpoint.parquet` (rewritten atomically every `checkpoint_every`
tasks: batches are cut at that boundary); a rerun skips every task_id found in any checkpoint of the run,
so nothing finished is regenerated and no row is duplicated. Failures: a batch that raises is retried
problem by problem, `max_attempts` times each; a problem that keeps failing (or is bad input, which is
not retried) goes to `exclusions.json` with its error instead of stopping the range.
Memory: process RSS (and CUDA memory on a GPU) is recorded at every checkpoint, a warning is logged when
the machine's RAM in use passes `memory_warn_fraction` (the seed's 85 %), and `gc` runs after each one.
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from reasonlab.activations import codegen
from reasonlab.errors import ReasonlabError
from reasonlab.io import atomic_path, read_structured, write_json, write_parquet
from reasonlab.paths import project_root
from reasonlab.sandbox import isolation, run_many

VERSION = "2"  # 2: the seed's file names, measured batch timing, time-limit column, exact checkpoints, memory
TOP_FEATURES_LOCATIONS = ("data/phase2_10/top_20_features.json", "data/phase2_5/top_20_features.json")
CHECKPOINT = "checkpoint.parquet"
EXCLUSIONS = "exclusions.json"
SHARD_RECORD = "shard.json"
RUN_RECORD = "run.json"
VARIANTS = ("instruct", "base")


@dataclass(frozen=True)
class BaselineConfig:
    """Everything that decides a row (and so belongs in the run key), plus how the loop runs.

    max_new_tokens: generation limit (seed: 2000). batch_size: problems per generate call.
    capture_generated: also save [T, D] residuals over the generated tokens.
    checkpoint_every: tasks between checkpoint writes (seed: 50); batches never cross a checkpoint.
    max_attempts: tries per problem. sandbox_timeout_s: wall-clock limit per program.
    max_prompt_tokens: longer prompts are excluded.
    generation_timeout_s: wall-clock limit of one generate call (None: none); a batch cut short keeps
        its rows (hit_time_limit=True), a batch that raises is retried problem by problem.
    use_chat_template: prompt under the chat template (None: when the tokenizer has one).
    memory_warn_fraction: warn when the machine's RAM in use passes this share (seed: 0.85).
    allow_unconfined_reads: run generated code even where reads cannot be confined (UNSAFE, loudly warned).
    """

    max_new_tokens: int = 2000
    batch_size: int = 8
    capture_generated: bool = False
    system_prompt: str = ""
    checkpoint_every: int = 50
    max_attempts: int = 2
    sandbox_timeout_s: float = 10.0
    sandbox_workers: int | None = None
    max_prompt_tokens: int | None = None
    generation_timeout_s: float | None = None
    use_chat_template: bool | None = None
    memory_warn_fraction: float = 0.85
    allow_unconfined_reads: bool = False  # UNSAFE opt-out where the sandbox cannot confine reads

    def __post_init__(self):
        for name in ("max_new_tokens", "batch_size", "checkpoint_every", "max_attempts"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ReasonlabError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 < self.memory_warn_fraction <= 1:
            raise ReasonlabError(f"memory_warn_fraction must be in (0, 1], got {self.memory_warn_fraction!r}")

    def generation(self) -> codegen.GenerationConfig:
        return codegen.GenerationConfig(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                        capture_generated=self.capture_generated, system_prompt=self.system_prompt,
                                        max_time_s=self.generation_timeout_s,
                                        use_chat_template=self.use_chat_template)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- memory

def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def _rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # not Linux: the peak instead of the current value

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if os.uname().sysname == "Darwin" else 1024)


def memory_snapshot(device: Any = None) -> dict[str, Any]:
    """Process RSS, the machine's RAM in use, and (on CUDA) the model device's allocated/reserved/peak memory."""
    info = _meminfo()
    snap: dict[str, Any] = {"rss_bytes": _rss_bytes()}
    if "MemTotal" in info and "MemAvailable" in info:
        snap["ram_total_bytes"] = info["MemTotal"]
        snap["ram_used_fraction"] = round(1 - info["MemAvailable"] / info["MemTotal"], 4)
    if device is not None and str(device).startswith("cuda"):
        import torch

        snap.update(cuda_allocated_bytes=int(torch.cuda.memory_allocated(device)),
                    cuda_reserved_bytes=int(torch.cuda.memory_reserved(device)),
                    cuda_max_allocated_bytes=int(torch.cuda.max_memory_allocated(device)))
    return snap


# ---------------------------------------------------------------- best layers

def find_top_features(path: str | Path | None = None) -> Path | None:
    """`path` if given (it must exist), else the first of the seed's two locations (cwd, then the checkout)."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ReasonlabError(f"{p}: no such top_20_features.json")
        return p
    for base in (Path.cwd(), project_root()):
        for rel in TOP_FEATURES_LOCATIONS:
            if (base / rel).is_file():
                return base / rel
    return None


def best_layers(top_features: dict, source: str = "top_20_features.json") -> dict[str, int]:
    """{"correct": L, "incorrect": L}: the layer of the first (best) feature of each list, as the seed reads it."""
    out = {}
    for kind in ("correct", "incorrect"):
        items = top_features.get(kind) if isinstance(top_features, dict) else None
        if not items or not isinstance(items[0], dict) or not isinstance(items[0].get("layer"), int):
            raise ReasonlabError(f"{source}: needs a non-empty {kind!r} list of {{'layer': int, 'feature_idx': int}}")
        out[kind] = items[0]["layer"]
    return out


def extraction_layers(layers: Sequence[int] | None = None, top_features: str | Path | None = None) -> dict:
    """The layers to capture: `layers` if given, else the de-duplicated best correct/incorrect layers."""
    if layers:
        return {"layers": sorted(set(int(x) for x in layers)), "source": "parameter", "best_layers": None}
    path = find_top_features(top_features)
    if path is None:
        raise ReasonlabError("no top_20_features.json found (looked for " + " and ".join(TOP_FEATURES_LOCATIONS) +
                             " in the working directory and the checkout): pass top_features=PATH or layers=[...]")
    best = best_layers(read_structured(path), str(path))
    return {"layers": sorted(set(best.values())), "source": str(path), "best_layers": best}


# ---------------------------------------------------------------- files

def activation_file(act_dir: Path, task_id: int, layer: int) -> Path:
    return Path(act_dir) / f"task_{task_id:03d}_layer_{layer}.npz"


def save_activations(act_dir: Path, task_id: int, acts: dict[int, dict[str, Any]]) -> list[str]:
    """One .npz per layer: `last_prompt` [D], optionally `generated` [T, D], plus task_id and layer."""
    import numpy as np

    names = []
    for layer, arrays in acts.items():
        dest = activation_file(act_dir, task_id, layer)
        with atomic_path(dest) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, task_id=np.int64(task_id), layer=np.int64(layer), **arrays)
        names.append(dest.name)
    return names


def read_rows(path: Path) -> list[dict]:
    import pandas as pd

    return pd.read_parquet(path).to_dict("records") if Path(path).is_file() else []


def finished_task_ids(run_dir: Path) -> set[int]:
    """task_ids with a row in any checkpoint of the run."""
    import pandas as pd

    import pyarrow.parquet as pq

    done: set[int] = set()
    for ckpt in sorted(Path(run_dir).glob(f"shards/*/{CHECKPOINT}")):
        if "task_id" in pq.read_schema(ckpt).names:  # a range whose tasks were all done before has no rows
            done.update(int(t) for t in pd.read_parquet(ckpt, columns=["task_id"])["task_id"])
    return done


def split_file(run_dir: Path, split: str) -> Path:
    """The seed's Phase 0.1 name for a split: validation_mbpp.parquet, hyperparams_mbpp.parquet, ..."""
    return Path(run_dir) / f"{split}_mbpp.parquet"


def write_split(run_dir: Path, split: str, problems: list[dict]) -> Path:
    """The whole split the run's ranges index into, as a parquet `--mbpp` (and the seed's phases) read back."""
    cols = ("task_id", "text", "code", "test_list", "test_setup_code", "cyclomatic_complexity")
    return write_parquet(split_file(run_dir, split), [{c: p.get(c) for c in cols} for p in problems])


def claim_run_dir(run_dir: Path, identity: dict) -> None:
    """Record what the run directory holds (run.json); a directory holding another run is an error.

    `identity` is what decides the rows (model weights, variant, split, layers, generation settings): rows
    of another identity would be silently skipped as "finished" by a resume, so they must not share a folder.
    """
    run_dir = Path(run_dir)
    record = run_dir / RUN_RECORD
    if record.is_file():
        held = json.loads(record.read_text())
        if held.get("identity") != identity:
            diff = sorted(k for k in set(held.get("identity", {})) | set(identity)
                          if held.get("identity", {}).get(k) != identity.get(k))
            raise ReasonlabError(f"{run_dir} already holds another activation baseline run (differs in {diff}): "
                                 "choose another output directory, or remove that one")
        return
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise ReasonlabError(f"{run_dir} is not empty and holds no activation baseline run ({RUN_RECORD}): "
                             "choose an empty or new output directory")
    write_json(record, {"identity": identity, "created": _now()})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    shard_dir = run_dir / "shards" / shard_name
    act_dir = run_dir / "activations" / "task_activations"
    ckpt, excl_file, record_file = shard_dir / CHECKPOINT, shard_dir / EXCLUSIONS, shard_dir / SHARD_RECORD
    rows = read_rows(ckpt)
    excluded: list[dict] = json.loads(excl_file.read_text()) if excl_file.is_file() else []
    record = json.loads(record_file.read_text()) if record_file.is_file() else {"calls": []}
    done = finished_task_ids(run_dir)
    todo = [p for p in problems if int(p["task_id"]) not in done]
    prior_excluded = {int(e["task_id"]) for e in excluded}
    excluded = [e for e in excluded if int(e["task_id"]) not in {int(p["task_id"]) for p in todo}]  # retried now
    skipped = len(problems) - len(todo)
    if skipped:
        log(f"{shard_name}: resuming, {skipped} of {len(problems)} tasks already finished")
    if problems and todo:
        chat = codegen.chat_prompting(tokenizer, config.use_chat_template)
        log(f"{shard_name}: prompt of task {todo[0]['task_id']} ({'chat template' if chat else 'completion'}):\n"
            + codegen.mbpp_prompt(tokenizer, todo[0], config.system_prompt, config.use_chat_template))
    device = getattr(model, "device", None)
    call = {"started": _now(), "tasks": len(problems), "resumed": skipped, "todo": len(todo),
            "retried_exclusions": len(prior_excluded & {int(p["task_id"]) for p in todo}),
            "config": config.to_dict(), "checkpoints": []}  # this call's settings (limits may differ per call)
    record["calls"].append(call)
    warned = False

    def checkpoint(tasks_done: int, final: bool) -> None:
        nonlocal warned
        write_parquet(ckpt, rows)
        write_json(excl_file, excluded)
        mem = memory_snapshot(device)
        over = mem.get("ram_used_fraction", 0.0) > config.memory_warn_fraction
        if over:
            warned = True
            (warn or log)(f"{shard_name}: RAM {mem['ram_used_fraction']:.0%} in use, over memory_warn_fraction="
                f"{config.memory_warn_fraction:.0%} (process RSS {mem['rss_bytes'] / 2**30:.2f} GiB)")
        call["checkpoints"].append({"tasks_done": tasks_done, "rows": len(rows), "excluded": len(excluded),
                                    "final": final, "time": _now(), "memory": mem, "memory_warning": over})
        _write_record(record_file, record, shard_name, problems, rows, excluded, range_info)
        gc.collect()
        if device is not None and str(device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        if not final:
            log(f"{shard_name}: checkpoint after {tasks_done} tasks, {len(rows)} rows, "
                f"RSS {mem['rss_bytes'] / 2**20:.0f} MiB")

    batch_index = _next_batch_index(rows)
    i = 0
    while i < len(todo):
        # never cross a checkpoint boundary: checkpoints fall after exactly every `checkpoint_every` tasks
        size = min(config.batch_size, config.checkpoint_every - i % config.checkpoint_every)
        batch = todo[i:i + size]
        new_rows, new_excl = process_batch(model, tokenizer, batch, layers, config, act_dir, log,
                                           batch_id=f"{shard_name}/b{batch_index:04d}")
        batch_index += 1
        rows += new_rows
        excluded += new_excl
        i += len(batch)
        if i % config.checkpoint_every == 0 and i < len(todo):
            checkpoint(i, final=False)
        if progress:
            progress(skipped + i, len(problems))
    call["finished"] = _now()
    checkpoint(len(todo), final=True)
    n_pass = sum(bool(r["pass"]) for r in rows)
    return {"shard": shard_name, "checkpoint": str(ckpt), "tasks": len(problems), "rows": len(rows),
            "resumed": skipped, "generated": len(todo) - len(new_exclusions(excluded, todo)), "passed": n_pass,
            "excluded": excluded, "checkpoints": call["checkpoints"], "memory_warning": warned}


def new_exclusions(excluded: list[dict], todo: list[dict]) -> list[dict]:
    ids = {int(p["task_id"]) for p in todo}
    return [e for e in excluded if int(e["task_id"]) in ids]


def _write_record(dest: Path, record: dict, shard_name: str, problems: list[dict], rows: list[dict],
                  excluded: list[dict], range_info: dict | None) -> None:
    ids = [int(p["task_id"]) for p in problems]
    record.update({
        "shard": shard_name, "range": range_info or record.get("range"),
        "first_task_id": min(ids, default=None), "last_task_id": max(ids, default=None), "tasks": len(ids),
        "rows": len(rows), "passed": sum(bool(r["pass"]) for r in rows), "excluded": len(excluded),
    })
    write_json(dest, record)


# ---------------------------------------------------------------- merge and metadata

def dataset_name(variant: str) -> str:
    """The seed's name: dataset_instruct_temp_0_0.parquet (instruction-tuned) or dataset_base_temp_0_0.parquet."""
    if variant not in VARIANTS:
        raise ReasonlabError(f"unknown model variant {variant!r}: use one of {VARIANTS}")
    return f"dataset_{variant}_temp_0_0.parquet"


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n ((0, 1) when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(rows: list[dict]) -> dict[str, Any]:
    """Pass rate with its 95 % CI, status and error-type counts, completion lengths, limits hit."""
    n = len(rows)
    n_pass = sum(bool(r["pass"]) for r in rows)
    low, high = wilson_interval(n_pass, n)
    errors: dict[str, int] = {}
    for r in rows:
        if not r["pass"]:
            key = r.get("error_type") or r["test_status"]
            errors[key] = errors.get(key, 0) + 1
    return {
        "tasks": n, "passed": n_pass, "pass_rate": n_pass / n if n else 0.0,
        "pass_rate_ci95": [round(low, 4), round(high, 4)],
        "status_counts": {s: sum(r["test_status"] == s for r in rows)
                          for s in sorted({r["test_status"] for r in rows})},
        "error_types": dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        "suspicious": sum(r["test_status"] == "suspicious" for r in rows),  # a compared value not plain: not a pass
        "completion_tokens": int(sum(r["completion_tokens"] for r in rows)),
        "mean_completion_tokens": round(sum(r["completion_tokens"] for r in rows) / n, 2) if n else None,
        "mean_completion_chars": round(sum(len(r["completion"]) for r in rows) / n, 1) if n else None,
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


def run_metadata(base: dict, ranges: list[dict], summary: dict, dataset: str, excluded: int) -> dict:
    """Every key of metadata.json is set here: `base` (the model, layers, split, generation settings, versions,
    given by the caller), every range merged into the run directory, and counts read from the dataset itself."""
    return {**base, "dataset": dataset, "ranges": ranges, "counts": {**summary, "excluded": excluded},
            "pass_rate": summary["pass_rate"], "merged": _now(),
            "sandbox_isolation": isolation()}  # which sandbox layers were active (confinement, uid, ...)


def merge_dataset(run_dir: Path, variant: str, metadata: dict) -> dict:
    """Every checkpoint of the run -> one dataset (each task_id once, by task_id) + metadata.json."""
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
    summary = summarize(rows)
    write_json(run_dir / "exclusion_summary.json", {"excluded": list(excluded.values()), "count": len(excluded)})
    meta = run_metadata(metadata, read_ranges(run_dir, source), summary, dest.name, len(excluded))
    write_json(run_dir / "metadata.json", meta)
    return {"dataset": str(dest), "metadata": str(run_dir / "metadata.json"), **summary, "excluded": len(excluded)}


def versions() -> dict[str, str]:
    import platform

    import numpy
    import torch
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "numpy": numpy.__version__,
           "activation_baseline": VERSION, "codegen": codegen.VERSION}
    from importlib.metadata import PackageNotFoundError, version

    try:
        out["prefect"] = version("prefect")  # read from the metadata: this library never imports Prefect
    except PackageNotFoundError:
        pass
    return out
