"""The activation baseline (the seed's Phase 7.3): greedy code generation on MBPP problems with residual
capture at the best layers, every program run against its tests in the sandbox.

One *range* of problems is processed by `run_range`:

    generate a batch -> extract the code -> run test_setup_code + test_list in the sandbox
    -> rows (checkpointed every N tasks) + one .npz per (task, layer)

Resume: a range's rows live in `<shard dir>/checkpoint.parquet` (rewritten atomically every
`checkpoint_every` tasks); a rerun skips every task_id found in any checkpoint of the run, so
nothing finished is regenerated and no row is duplicated. Failures: a batch that raises is retried
problem by problem, `max_attempts` times each; a problem that keeps failing (or is bad input, which is
not retried) goes to `exclusions.json` with its error instead of stopping the range.
`merge_dataset` joins every checkpoint of a run into `dataset_<model>_temp_0_0.parquet`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from reasonlab.activations import codegen
from reasonlab.errors import ReasonlabError
from reasonlab.io import atomic_path, read_structured, write_json, write_parquet
from reasonlab.paths import project_root
from reasonlab.sandbox import extract_code, isolation, run_many

VERSION = "1"
TOP_FEATURES_LOCATIONS = ("data/phase2_10/top_20_features.json", "data/phase2_5/top_20_features.json")
CHECKPOINT = "checkpoint.parquet"
EXCLUSIONS = "exclusions.json"


@dataclass(frozen=True)
class BaselineConfig:
    """Everything that decides a row (and so belongs in the run key), plus how the loop runs.

    max_new_tokens: generation limit (seed: 2000). batch_size: problems per generate call.
    capture_generated: also save [T, D] residuals over the generated tokens.
    checkpoint_every: tasks between checkpoint writes (seed: 50). max_attempts: tries per problem.
    sandbox_timeout_s: wall-clock limit per program. max_prompt_tokens: longer prompts are excluded.
    generation_timeout_s: wall-clock limit of one generate call (None: none); a batch cut short keeps
        its rows (hit_token_limit=True), a batch that raises is retried problem by problem.
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

    def __post_init__(self):
        for name in ("max_new_tokens", "batch_size", "checkpoint_every", "max_attempts"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ReasonlabError(f"{name} must be a positive integer, got {getattr(self, name)!r}")

    def generation(self) -> codegen.GenerationConfig:
        return codegen.GenerationConfig(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                        capture_generated=self.capture_generated, system_prompt=self.system_prompt,
                                        max_time_s=self.generation_timeout_s)

    def to_dict(self) -> dict:
        return asdict(self)


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

    done: set[int] = set()
    for ckpt in sorted(Path(run_dir).glob(f"shards/*/{CHECKPOINT}")):
        done.update(int(t) for t in pd.read_parquet(ckpt, columns=["task_id"])["task_id"])
    return done


# ---------------------------------------------------------------- one batch

def _rows_for(problems: list[dict], prompts: list[str], outs: list[dict], config: BaselineConfig,
              act_dir: Path, attempts: int) -> list[dict]:
    codes = [extract_code(o["completion"]) for o in outs]
    jobs = [{"code": c, "tests": list(p["test_list"]), "setup_code": p.get("test_setup_code") or "",
             "timeout_s": config.sandbox_timeout_s} for c, p in zip(codes, problems)]
    start = time.perf_counter()
    results = run_many(jobs, workers=config.sandbox_workers)
    sandbox_s = (time.perf_counter() - start) / max(len(jobs), 1)
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
            "hit_token_limit": out["hit_limit"], "generation_s": out["generation_s"],
            "batch_size": out["batch_size"], "sandbox_s": sandbox_s, "attempts": attempts,
            "activation_files": files,
        })
    return rows


def process_batch(model, tokenizer, problems: list[dict], layers: Sequence[int], config: BaselineConfig,
                  act_dir: Path, log: Callable[[str], None] = print) -> tuple[list[dict], list[dict]]:
    """(rows, exclusions) for a batch: one batched try, then problem by problem with retries."""
    gen = config.generation()
    prompts = [codegen.mbpp_prompt(tokenizer, p, config.system_prompt) for p in problems]

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
        return _rows_for(problems, prompts, outs, config, act_dir, attempts=1), []
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
                rows += _rows_for([p], [prompt], outs, config, act_dir, attempts=attempt + 1)
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

def run_range(model, tokenizer, problems: list[dict], layers: Sequence[int], config: BaselineConfig,
              run_dir: Path, shard_name: str, progress: Callable[[int, int], None] | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Process `problems` into `<run_dir>/shards/<shard_name>/checkpoint.parquet`, resuming where it stopped."""
    run_dir = Path(run_dir)
    shard_dir = run_dir / "shards" / shard_name
    act_dir = run_dir / "activations" / "task_activations"
    ckpt, excl_file = shard_dir / CHECKPOINT, shard_dir / EXCLUSIONS
    rows = read_rows(ckpt)
    done = finished_task_ids(run_dir)
    todo = [p for p in problems if int(p["task_id"]) not in done]
    excluded: list[dict] = []
    skipped = len(problems) - len(todo)
    if skipped:
        log(f"{shard_name}: resuming, {skipped} of {len(problems)} tasks already finished")
    if problems and todo:
        log(f"{shard_name}: prompt of task {todo[0]['task_id']} "
            f"({'chat template' if codegen.uses_chat_template(tokenizer) else 'completion'}):\n"
            + codegen.mbpp_prompt(tokenizer, todo[0], config.system_prompt))
    since = 0
    for i in range(0, len(todo), config.batch_size):
        batch = todo[i:i + config.batch_size]
        new_rows, new_excl = process_batch(model, tokenizer, batch, layers, config, act_dir, log)
        rows += new_rows
        excluded += new_excl
        since += len(batch)
        if since >= config.checkpoint_every:
            write_parquet(ckpt, rows)
            write_json(excl_file, excluded)
            since = 0
            log(f"{shard_name}: checkpoint, {len(rows)} rows")
        if progress:
            progress(skipped + i + len(batch), len(problems))
    write_parquet(ckpt, rows)
    write_json(excl_file, excluded)
    n_pass = sum(bool(r["pass"]) for r in rows)
    return {"shard": shard_name, "checkpoint": str(ckpt), "tasks": len(problems), "rows": len(rows),
            "resumed": skipped, "generated": len(todo) - len(excluded), "passed": n_pass,
            "excluded": excluded}


# ---------------------------------------------------------------- merge

def model_slug(name: str) -> str:
    return name.replace("/", "_").replace(" ", "_")


def dataset_name(model_name: str) -> str:
    return f"dataset_{model_slug(model_name)}_temp_0_0.parquet"


def merge_dataset(run_dir: Path, model_name: str, metadata: dict) -> dict:
    """Every checkpoint of the run -> one dataset (each task_id once, by task_id) + metadata.json."""
    run_dir = Path(run_dir)
    by_id: dict[int, dict] = {}
    for ckpt in sorted(run_dir.glob(f"shards/*/{CHECKPOINT}")):
        for r in read_rows(ckpt):
            by_id[int(r["task_id"])] = r
    rows = [by_id[t] for t in sorted(by_id)]
    excluded = {}
    for f in sorted(run_dir.glob(f"shards/*/{EXCLUSIONS}")):
        for e in json.loads(f.read_text()):
            if int(e["task_id"]) not in by_id:
                excluded[int(e["task_id"])] = e
    dest = run_dir / dataset_name(model_name)
    write_parquet(dest, rows)
    n_pass = sum(bool(r["pass"]) for r in rows)
    summary = {"tasks": len(rows), "passed": n_pass, "pass_rate": n_pass / len(rows) if rows else 0.0,
               "excluded": len(excluded),
               "status_counts": {s: sum(r["test_status"] == s for r in rows) for s in
                                 sorted({r["test_status"] for r in rows})},
               "completion_tokens": int(sum(r["completion_tokens"] for r in rows)),
               "activation_files": int(sum(len(r["activation_files"]) for r in rows))}
    write_json(run_dir / "exclusion_summary.json", {"excluded": list(excluded.values()), "count": len(excluded)})
    meta = {**metadata, "counts": summary, "pass_rate": summary["pass_rate"], "dataset": dest.name,
            "sandbox_isolation": isolation()}  # which sandbox layers were active (confinement, uid, ...)
    write_json(run_dir / "metadata.json", meta)
    return {"dataset": str(dest), "metadata": str(run_dir / "metadata.json"), **summary}


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
