"""Memory watch for long generation runs: process RSS, the machine's RAM in use and (on CUDA) the model
device's allocated / reserved / peak memory, recorded at every checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


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
