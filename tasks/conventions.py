"""The project's Prefect conventions, in one place.

Cache keys (`PlainInputs`): the task's name, an explicit code version, and its inputs as plain
data. `Path` inputs are keyed by content (file sha256 / folder fingerprint) and by their place: relative to
$REASONLAB_HOME or to the checkout when inside one (so two clones sharing a home share every key), else
absolute. Models enter as `ResolvedModel` (source, revision, weights fingerprint). A model, tokenizer or
tensor is refused: torch pickles are not deterministic and hashing weights by pickling is slow. No run id
enters the key, so a rerun with the same inputs skips the task (Prefect's DEFAULT policy would not).

Results: persisted as JSON under $REASONLAB_HOME/results, or in the Prefect filesystem block named
by $REASONLAB_RESULT_STORAGE (e.g. `local-file-system/reasonlab-results`, set on every flow run by the
work pools that `deployments.setup` creates from the `StorageLocation` block), so every worker reads
the same cache records; large outputs are files under $REASONLAB_HOME/runs whose paths are the
results. Retries: transient failures only.

Console: importing this module quiets the libraries' progress bars and deprecation warnings in the process that
runs tasks (`reasonlab.console`; `REASONLAB_VERBOSE=1` keeps them).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from pydantic import BaseModel

from reasonlab import console, paths
from reasonlab.errors import ReasonlabError
from reasonlab.io import sha256_file, sha256_json, tree_fingerprint

GPU = "gpu"  # tag of model-heavy tasks; a concurrency limit on it keeps one per GPU
console.configure()


def place(path: Path) -> str:
    """`home:<relative>` under $REASONLAB_HOME, `checkout:<relative>` in this checkout, else the absolute path.
    Home first: a home inside the checkout is still the one every clone shares."""
    absolute = path.expanduser().resolve()
    for tag, root in (("home", paths.home()), ("checkout", paths.project_root())):
        if absolute.is_relative_to(root.resolve()):
            return f"{tag}:{absolute.relative_to(root.resolve()).as_posix()}"
    return str(path)


def plain(value: Any, where: str = "input") -> Any:
    """`value` as JSON-able plain data for a cache key; TypeError for anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        if value.is_dir():
            return {"path": place(value), "tree_sha256": tree_fingerprint(value)}
        if value.is_file():
            return {"path": place(value), "sha256": sha256_file(value)}
        return {"path": place(value), "missing": True}
    if isinstance(value, dict):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value), where)
    if isinstance(value, BaseModel):
        return plain(value.model_dump(), where)
    raise TypeError(
        f"cache key {where} is a {type(value).__module__}.{type(value).__qualname__}, not plain data: "
        "pass a name, path or fingerprint (e.g. a ResolvedModel) instead of a model/tokenizer/tensor"
    )


@dataclass
class PlainInputs(CachePolicy):
    """Key = task name + code version + inputs as plain data (see module docstring).

    `exclude`: input names left out of the key, for what changes from run to run without changing the result
    (a live server's URL on a random port)."""

    version: str = "1"
    exclude: tuple[str, ...] = ()

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        payload = {"task": task_ctx.task.name, "version": self.version,
                   "inputs": {k: plain(v, k) for k, v in (inputs or {}).items() if k not in self.exclude}}
        return sha256_json(payload)


NOT_TRANSIENT = (ReasonlabError, TypeError, KeyError, AssertionError, NotImplementedError)


def transient_only(task, task_run, state) -> bool:
    """Retry unless the failure is bad input or a bug (those fail the same way every time)."""
    try:
        state.result()
    except NOT_TRANSIENT:
        return False
    except Exception:
        return True
    return False


def result_storage() -> Path | str:
    """Where task results (and so cache records) live: a storage block slug from the env, else a local dir."""
    return os.environ.get("REASONLAB_RESULT_STORAGE") or paths.results_dir()


def task_options(version: str, *, gpu: bool = False, retries: int = 0, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keyword arguments every reasonlab task gets from `@task(**task_options(...))`; `exclude` names inputs
    kept out of the cache key."""
    return dict(
        cache_policy=PlainInputs(version=version, exclude=tuple(exclude)),
        persist_result=True,
        result_serializer="json",
        result_storage=result_storage(),  # read when tasks/ is imported
        tags=[GPU] if gpu else [],
        retries=retries,
        retry_delay_seconds=10,
        retry_condition_fn=transient_only if retries else None,
        log_prints=False,  # libraries print freely (TRL once printed bytecode); tasks log explicitly
    )
