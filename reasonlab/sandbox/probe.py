"""Which confinement this machine gives the sandbox, probed once per process by real runs (as seen
from inside the child, never assumed), and what each run asks the child to put in place."""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from reasonlab.errors import ReasonlabError
from reasonlab.sandbox.launch import execute
from reasonlab.sandbox.plan import DISK_MB

CONFINEMENTS = ("bwrap", "mountns", "none")  # best first; "none": files not confined (opt-out only)
UNSAFE_ENV = "REASONLAB_UNSAFE_ALLOW_HOST_READS"  # =1: run generated code even where reads are not confined
CONFINEMENT_ENV = "REASONLAB_SANDBOX_CONFINEMENT"  # force one of CONFINEMENTS (default: the best that works)
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `apt-get install -y bubblewrap`, Fedora: "
                "`dnf install bubblewrap`; `make test` does it when run as root on Debian)")

_ISOLATION: dict[str, dict[str, Any]] = {}
_ISOLATION_LOCK = threading.Lock()
_READ_CAP: bool | None = None
_WARNED_UNCONFINED = False


def _pick_uid() -> int | None:
    """A random uid (also used as gid) mapped in this user namespace, far above real accounts."""
    try:
        lines = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return None
    ranges = [(int(lines[i]), int(lines[i + 2])) for i in range(0, len(lines) - 2, 3)]
    lo_floor, hi_cap = 1_000_000, 2**31 - 2
    for start, count in ranges:
        lo, hi = max(start, lo_floor), min(start + count - 1, hi_cap)
        if hi - lo > 10_000:
            return lo + secrets.randbelow(hi - lo)
    return None


def _needs_read_cap() -> bool:
    """True if some directory the interpreter imports from is closed to other users (e.g. /root).
    Only the unconfined mode needs it: a confined child sees the interpreter through open binds."""
    global _READ_CAP
    if _READ_CAP is None:
        paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable)}
        paths |= {p for p in sys.path if p and os.path.isdir(p)}
        closed = False
        for p in list(paths) + [os.path.realpath(p) for p in paths]:
            p = os.path.abspath(p)
            while True:
                try:
                    mode = os.stat(p).st_mode
                except OSError:
                    break
                if not mode & stat.S_IXOTH:
                    closed = True
                parent = os.path.dirname(p)
                if parent == p:
                    break
                p = parent
        _READ_CAP = closed
    return _READ_CAP


def layers_for(mode: str, probe: bool = False, layers_ok: dict | None = None) -> dict[str, Any]:
    """What the child is asked to do in confinement ``mode``. Outside a probe, the unconfined mode
    asks only for the layers its probe saw working (``layers_ok``)."""
    root = os.geteuid() == 0
    ok = (lambda name: True) if probe or layers_ok is None else (lambda name: bool(layers_ok.get(name)))
    want: dict[str, Any] = {}
    uid = _pick_uid() if root else None
    if mode in ("bwrap", "mountns"):
        if uid is not None and ok("uid"):
            want.update(uid=uid, chown_work=True)
    elif root:
        if uid is not None and ok("uid"):
            want.update(uid=uid, read_cap=_needs_read_cap())
        if ok("netns"):
            want["netns"] = True
        if ok("tmpfs"):
            want["tmpfs"] = DISK_MB
    elif ok("userns_netns"):
        want["userns_netns"] = True
    return want


def _candidates(confinement: str | None) -> list[str]:
    forced = confinement or os.environ.get(CONFINEMENT_ENV) or None
    if forced is not None:
        if forced not in CONFINEMENTS:
            raise ReasonlabError(f"sandbox: confinement {forced!r} is not one of {CONFINEMENTS}")
        return [forced]
    return list(CONFINEMENTS)


def _self_test(mode: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the isolation the child reported, None) when ``mode`` works here, else (None, why not)."""
    if mode == "bwrap" and not shutil.which("bwrap"):
        return None, "bwrap is not installed"
    if mode == "mountns" and os.geteuid() != 0:
        return None, "the project's own mount-namespace confinement needs root"
    res, iso = execute(code="", tests=[], setup_code="", timeout_s=30, memory_mb=512, max_output_bytes=4096,
                       probe=True, mode=mode, want=layers_for(mode, probe=True))
    if res.status != "passed" or iso is None:
        return None, f"self-test failed: {res.error_type}: {res.error_message} (stderr: {res.stderr.strip()[-300:]})"
    if mode != "none" and not iso.get("read_confined"):
        return None, f"self-test ran but the host's files were still visible ({iso})"
    return iso, None


def isolation(confinement: str | None = None) -> dict[str, Any]:
    """Which layers this machine gives the sandbox: probed once per process by a real run of each
    confinement in turn (best first), as reported from inside the child.

    Keys: ``confinement`` ("bwrap" | "mountns" | "none"), ``read_confined`` (the host's files are out
    of sight: checked with a canary file), ``pidns`` (the parent's pid is not visible),
    ``private_tmp`` (its /tmp is not the host's, and read-only), ``no_network`` (only a loopback),
    ``uid`` (private uid: NPROC caps forks), ``capabilities`` (effective mask: 0),
    ``no_new_privs``, ``unavailable`` (why a better confinement was not used); in the unconfined
    mode also the older layers: ``netns`` / ``userns_netns``, ``tmpfs``, ``read_cap`` (the uid keeps
    CAP_DAC_READ_SEARCH because the interpreter is in a closed directory).
    ``confinement`` forces one mode (default: ``$REASONLAB_SANDBOX_CONFINEMENT`` or the best).
    """
    key = confinement or os.environ.get(CONFINEMENT_ENV) or "best"
    with _ISOLATION_LOCK:
        if key not in _ISOLATION:
            unavailable: dict[str, str] = {}
            for mode in _candidates(confinement):
                iso, why = _self_test(mode)
                if iso is not None:
                    _ISOLATION[key] = {**iso, "unavailable": unavailable}
                    break
                unavailable[mode] = why
            else:
                raise ReasonlabError(f"sandbox: no confinement works here: {unavailable}")
        return dict(_ISOLATION[key])


def require_confinement(allow_unconfined_reads: bool = False, confinement: str | None = None) -> dict[str, Any]:
    """`isolation()`, or a `ReasonlabError` saying what to install when nothing here keeps generated
    code from reading the host's files - unless ``allow_unconfined_reads`` (or
    ``$REASONLAB_UNSAFE_ALLOW_HOST_READS=1``) says to go on regardless, which warns loudly."""
    global _WARNED_UNCONFINED
    iso = isolation(confinement)
    if iso.get("read_confined"):
        return iso
    if allow_unconfined_reads or os.environ.get(UNSAFE_ENV) == "1":
        if not _WARNED_UNCONFINED:
            _WARNED_UNCONFINED = True
            warnings.warn("sandbox: UNSAFE: generated code runs with READ ACCESS TO THE HOST'S FILES "
                          "(home directories, tokens, keys) because reads cannot be confined here "
                          f"({iso.get('unavailable')}); {INSTALL_HINT}", RuntimeWarning, stacklevel=3)
        return iso
    why = "; ".join(f"{k}: {v}" for k, v in iso.get("unavailable", {}).items()) or \
        f"confinement {iso.get('confinement')!r} was asked for"
    raise ReasonlabError(
        f"sandbox: nothing here keeps generated code from reading the host's files ({why}). Fix: {INSTALL_HINT}, "
        "or run as root. To run it anyway, knowingly, pass allow_unconfined_reads=True "
        f"(or set {UNSAFE_ENV}=1).")
