"""The pictures' shared plumbing: a headless pyplot, an atomic PNG save, and bars with confidence intervals."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from reasonlab.io import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, dest: Path | str, dpi: int = 110) -> Path:
    """Write `fig` as a PNG at `dest` (temp file, then rename) and close it."""
    plt = pyplot()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(dest)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def bars_with_ci(ax: Any, labels: Sequence[str], values: Sequence[float | None], lows: Sequence[float | None],
                 highs: Sequence[float | None], color: str = "#66c2a5", missing_note: str = "no figure") -> None:
    """One bar per label with its interval as an error bar; a missing value is an empty slot with a note."""
    xs = list(range(len(labels)))
    heights = [0.0 if _missing(v) else float(v) for v in values]
    below = [0.0 if _missing(v) or _missing(lo) else max(0.0, v - lo) for v, lo in zip(values, lows)]
    above = [0.0 if _missing(v) or _missing(hi) else max(0.0, hi - v) for v, hi in zip(values, highs)]
    ax.bar(xs, heights, yerr=[below, above], capsize=4, color=color)
    for x, v in zip(xs, values):
        if _missing(v):
            ax.text(x, 0.0, missing_note, ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(xs, list(labels), rotation=20, ha="right", fontsize=7)
