"""What the sandboxed program may see: one root plan, carried out by bubblewrap (`bwrap_argv`) or
by the child's own mount-namespace code (`child_layers.apply_entry`), and the import path it gets.

Plan entries, in order: ("dir", path, mode) | ("ro-bind", path, source) | ("symlink", path, target) |
("tmpfs", path, size_bytes, mode) | ("proc", path) | ("dev", path) | ("remount-ro", path).
The private /tmp is mounted first, so that binds under /tmp (a checkout or a venv there) land on it
instead of being hidden by it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from reasonlab.errors import ReasonlabError

CHILD_DIR = Path(__file__).resolve().parent  # the child and its two helpers, bound read-only
CHILD = CHILD_DIR / "child.py"
DISK_MB = 256  # size of the private tmpfs work directory
PRIVATE_TMP_BYTES = 1 << 20  # the private, read-only /tmp and /dev/shm (mount points only)
# System library directories the interpreter may load from (those present are bound read-only).
SYSTEM_LIB_DIRS = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32",
                   "/usr/libx32", "/usr/local/lib", "/usr/share/zoneinfo", "/etc/ld.so.cache")

_SYS_PATH: list[str] | None = None
_BASE_PLAN: list[tuple] | None = None


def under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def child_sys_path() -> list[str]:
    """The import path a plain `python -I` has here (site-packages included); the sandbox
    interpreter runs with -S (no site: 3x faster start) and is given this path instead."""
    global _SYS_PATH
    if _SYS_PATH is None:
        out = subprocess.run([sys.executable, "-I", "-c", "import sys; print(repr(sys.path))"],
                             capture_output=True, text=True, check=True, timeout=60, env={}).stdout
        _SYS_PATH = [p for p in ast.literal_eval(out.strip()) if isinstance(p, str) and p]
    return _SYS_PATH


def _wanted_binds() -> tuple[dict[str, str], dict[str, str]]:
    """(destination -> source of each read-only bind, top-level symlink -> target): the interpreter's
    prefixes (venv and base install), the system library directories and the child's directory."""
    wanted: dict[str, str] = {}
    links: dict[str, str] = {}
    for p in {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}:
        p = os.path.abspath(p)
        for dest in {p, os.path.realpath(p)}:
            wanted[dest] = os.path.realpath(p)
    if "/" in wanted:
        raise ReasonlabError("sandbox: the interpreter's prefix is / - nothing could be hidden from the program")
    for p in SYSTEM_LIB_DIRS:
        if os.path.islink(p) and os.path.dirname(p) == "/":  # merged /usr: /lib -> usr/lib
            links[p] = os.readlink(p)
        elif os.path.exists(p):
            wanted[p] = os.path.realpath(p)
    if not under(str(CHILD_DIR), list(wanted)):
        wanted[str(CHILD_DIR)] = str(CHILD_DIR)
    return wanted, links


def _base_plan() -> list[tuple]:
    """The read-only part of the child's root (computed once): `_wanted_binds`, each under
    traversable, unlistable directories - nothing else of the host."""
    global _BASE_PLAN
    if _BASE_PLAN is not None:
        return _BASE_PLAN
    wanted, links = _wanted_binds()
    kept: list[str] = []
    for d in sorted(wanted, key=lambda d: (d.count("/"), d)):  # a destination inside another one is already there
        if not under(d, kept):
            kept.append(d)
    plan: list[tuple] = []
    made: set[str] = set()
    for d in sorted(kept):
        parts = d.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            anc = "/" + "/".join(parts[:i])
            if anc not in made and anc not in links:
                made.add(anc)
                plan.append(("dir", anc, 0o711))  # traversable, not listable
        plan.append(("ro-bind", d, wanted[d]))
    plan += [("symlink", p, t) for p, t in sorted(links.items())]
    _BASE_PLAN = plan
    return plan


def root_plan(work: str) -> list[tuple]:
    """The whole root of one run: the private /tmp first, then `_base_plan`, /proc, /dev, a private
    read-only /dev/shm, and the writable, size-capped work directory; /tmp is made read-only last."""
    base = [e for e in _base_plan() if e[:2] != ("dir", "/tmp")]  # the private /tmp is that directory
    made = {e[1] for e in base} | {"/tmp"}
    parts = work.strip("/").split("/")[:-1]
    ancestors = ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [
        ("tmpfs", "/tmp", PRIVATE_TMP_BYTES, 0o755), *base,
        ("proc", "/proc"), ("dev", "/dev"),
        ("tmpfs", "/dev/shm", PRIVATE_TMP_BYTES, 0o755), ("remount-ro", "/dev/shm"), ("remount-ro", "/dev"),
        *[("dir", a, 0o711) for a in ancestors if a not in made],
        ("tmpfs", work, DISK_MB << 20, 0o700), ("remount-ro", "/tmp"),
    ]


def bwrap_argv(bwrap: str, plan: list[tuple], env: dict[str, str], work: str, as_root: bool,
               drop_uid: bool) -> list[str]:
    """bubblewrap's command line for `plan`, ending in ``--`` (the child's own argv follows)."""
    argv = [bwrap]
    if as_root:  # no user namespace: it would map only root, and the drop to the private uid would fail
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                 "--cap-drop", "ALL"]
        if drop_uid:  # what the child needs to chown its work dir and drop to its uid; gone after that
            for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_SETPCAP"):
                argv += ["--cap-add", cap]
    else:
        argv += ["--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
    # --as-pid-1: the child is the new pid namespace's first process (no extra reaper to start and
    # wake: each hop costs on a busy machine); when it exits, the kernel kills all it left behind.
    argv += ["--as-pid-1", "--die-with-parent", "--new-session"]
    for entry in plan:
        op, path = entry[0], entry[1]
        if op == "dir":
            argv += ["--perms", f"{entry[2]:04o}", "--dir", path]
        elif op == "ro-bind":
            argv += ["--ro-bind", entry[2], path]
        elif op == "symlink":
            argv += ["--symlink", entry[2], path]
        elif op == "tmpfs":
            argv += ["--perms", f"{entry[3]:04o}", "--size", str(entry[2]), "--tmpfs", path]
        elif op in ("proc", "dev", "remount-ro"):
            argv += [f"--{op}", path]
        else:
            raise ReasonlabError(f"sandbox: unknown root-plan entry {op!r}")
    argv += ["--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += ["--chdir", work, "--"]
    return argv
