"""The run directory's files: names, activation .npz files, checkpoint rows, the split, and the run's claim.

    dataset_<instruct|base>_temp_0_0.parquet    one row per task (dataset.merge_dataset)
    metadata.json                               model, layers, every range merged, counts, memory
    <split>_mbpp.parquet                        the split the ranges index into (write_split)
    activations/task_activations/task_<id>_layer_<L>.npz
    shards/<name>/checkpoint.parquet, exclusions.json, shard.json (the range, its calls and checkpoints)
    run.json                                    what the directory holds (claim_run_dir)
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reasonlab.activations.params import VARIANTS
from reasonlab.errors import ReasonlabError
from reasonlab.io import atomic_path, write_json, write_parquet

CHECKPOINT = "checkpoint.parquet"
EXCLUSIONS = "exclusions.json"
SHARD_RECORD = "shard.json"
RUN_RECORD = "run.json"
ACTIVATIONS = Path("activations") / "task_activations"


def dataset_name(variant: str) -> str:
    """dataset_instruct_temp_0_0.parquet (instruction-tuned) or dataset_base_temp_0_0.parquet."""
    if variant not in VARIANTS:
        raise ReasonlabError(f"unknown model variant {variant!r}: use one of {VARIANTS}")
    return f"dataset_{variant}_temp_0_0.parquet"


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
    """The split's file: validation_mbpp.parquet, hyperparams_mbpp.parquet, ..."""
    return Path(run_dir) / f"{split}_mbpp.parquet"


def write_split(run_dir: Path, split: str, problems: list[dict]) -> Path:
    """The whole split the run's ranges index into, as a parquet that `--mbpp` reads back."""
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
    write_json(record, {"identity": identity, "created": now_utc()})


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
