"""The layers whose residuals are captured: given, or the best correct and incorrect layers of a
top_20_features.json (first of its `correct` / `incorrect` lists), de-duplicated."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from reasonlab.errors import ReasonlabError
from reasonlab.io import read_structured
from reasonlab.paths import project_root

TOP_FEATURES_LOCATIONS = ("data/phase2_10/top_20_features.json", "data/phase2_5/top_20_features.json")


def find_top_features(path: str | Path | None = None) -> Path | None:
    """`path` if given (it must exist), else the first of the two usual locations
    (TOP_FEATURES_LOCATIONS, in the working directory, then in the checkout)."""
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
    """{"correct": L, "incorrect": L}: the layer of the first (best) feature of each list."""
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
