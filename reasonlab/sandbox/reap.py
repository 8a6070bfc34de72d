"""Cleaning up after a run: every process the program left behind (found through /proc) and its
files (a work directory the program may have made hard to delete)."""

from __future__ import annotations

import os
import select
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path


def proc_status(pid: str) -> tuple[int, str] | None:
    """(real uid, state letter) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read(4096)
    except OSError:
        return None
    uid, state = -1, "?"
    for line in text.split(b"\n"):
        if line.startswith(b"State:"):
            state = line.split()[1].decode()
        elif line.startswith(b"Uid:"):
            uid = int(line.split()[1])
            break
    return uid, state


def count_user_tasks(uid: int) -> int:
    """Threads of every process of ``uid`` (what RLIMIT_NPROC counts)."""
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.stat(f"/proc/{entry.name}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                pass
    return n


def sandbox_processes(uid: int | None = None, token: bytes | None = None) -> list[int]:
    """Live (non-zombie) pids belonging to a sandbox: its private uid, or its environment token."""
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        st = proc_status(entry.name)
        if st is None or st[1] in ("Z", "X"):
            continue
        if uid is not None and st[0] == uid:
            found.append(int(entry.name))
        elif token is not None and st[0] == os.getuid():
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    if token in f.read():
                        found.append(int(entry.name))
            except OSError:
                pass
    return found


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_leftovers(pgid: int, uid: int | None, token: bytes, deadline_s: float = 10.0) -> None:
    """SIGKILL the child's process group, then every process of its private uid (as root) or
    carrying its environment token (otherwise), until none is left or ``deadline_s`` has passed."""
    kill_group(pgid)
    end = time.monotonic() + deadline_s
    while True:
        pids = sandbox_processes(uid=uid, token=None if uid is not None else token)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() > end:
            return
        time.sleep(0.005)


def wait_exit(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait until the child has exited, without reaping it (its pgid stays reserved). True if it did."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        end = time.monotonic() + timeout_s
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return False
            try:
                if poller.poll(left * 1000):
                    return True
            except InterruptedError:
                continue
    finally:
        os.close(fd)


def force_rmtree(path: Path) -> None:
    def onerror(func, p, exc):  # a directory the program made unreadable: open it up and retry
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)
