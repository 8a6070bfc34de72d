"""The offline data mirror the benchmarks read (imported as a sibling, like timing.py).

Benchmarks measure fixed data, so they read the mirror of /shared/data/README.md: `REASONLAB_SHARED_DATA`, else
../shared/data beside the checkout (here only: the product never looks beside the checkout). A dataset already
stored under $REASONLAB_HOME/data (`reasonlab data fetch NAME`) serves too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def mirror_root() -> Path:
    return Path(os.environ.get("REASONLAB_SHARED_DATA") or REPO.parent / "shared" / "data").expanduser()


def need(*names: str) -> Path:
    """Point the dataset resolver at the mirror; exit with one clear message when a dataset is in neither the
    mirror nor the store (no silent Hub download in the middle of a measurement)."""
    from reasonlab import datasets

    root = mirror_root()
    os.environ["REASONLAB_SHARED_DATA"] = str(root)
    missing = [n for n in names
               if not datasets.holds(datasets.store_dir(n), n) and not datasets.holds(datasets.mirror_dir(n), n)]
    if missing:
        sys.exit(f"error: this benchmark reads the offline data mirror, and {root} has no "
                 f"{', '.join(datasets.spec(n).mirror + '/' for n in missing)}: set REASONLAB_SHARED_DATA to a "
                 f"mirror holding it, or store it with `reasonlab data fetch {' '.join(missing)}`")
    return root
