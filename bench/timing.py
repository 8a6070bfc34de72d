"""Timing shared by the benchmarks (imported as a sibling: `python bench/<name>.py` puts bench/ on sys.path)."""

from __future__ import annotations

import time


def timed(fn, repeats: int):
    """(best wall seconds over `repeats` calls of fn(), the last call's result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out
