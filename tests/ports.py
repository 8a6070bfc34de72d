"""Ports for test servers that take a port number (Prefect's server, `deployments.server`), with no race
against the kernel's own port allocation.

`bind(("127.0.0.1", 0))`-then-close hands out a port from the kernel's ephemeral range, the same range every
outgoing connection and every other bind(0) draws from: between the probe and the server's own bind another
process can take it. Here a port is drawn from below that range (which the kernel never hands out on its
own) and checked free, with `span` consecutive ports for servers that also use port+1, ...
Where nothing must listen (a refused connection), hold a bound socket instead: `refused_url()`.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

LOWEST = 20000


def ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(span: int = 1) -> int:
    """A port p with p .. p+span-1 free now, below the ephemeral range."""
    lo, _ = ephemeral_range()
    top = lo - span if lo - span > LOWEST + 1000 else 65535 - span  # odd ranges: anything above 1024
    bottom = LOWEST if top < 65535 - span else 1024
    rnd = random.Random(os.getpid() * 7919 + int.from_bytes(os.urandom(4), "little"))
    for _ in range(500):
        port = rnd.randrange(bottom, top)
        if all(_free(port + i) for i in range(span)):
            return port
    raise RuntimeError(f"no {span} free consecutive ports in {bottom}..{top}")


@contextlib.contextmanager
def refused_url(path: str = "/v1") -> Iterator[str]:
    """http://127.0.0.1:P{path} where P is bound by this process and never listens: connections are refused,
    and no one else can take P while the block runs."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}{path}"
