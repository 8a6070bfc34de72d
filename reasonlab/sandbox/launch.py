"""One child process: its job, its start (inside bubblewrap when that is the confinement), its
wait, the reaping of what it left behind, and its report read back as a `SandboxResult`."""

from __future__ import annotations

import marshal
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from reasonlab.errors import ReasonlabError
from reasonlab.sandbox.plan import CHILD, bwrap_argv, child_sys_path, root_plan, under
from reasonlab.sandbox.reap import count_user_tasks, force_rmtree, kill_group, kill_leftovers, wait_exit
from reasonlab.sandbox.result import SandboxResult, judge, read_records

MAX_TASKS = 64  # RLIMIT_NPROC budget of one sandbox (threads count as tasks)
MAX_OPEN_FILES = 256
MAX_MESSAGE_CHARS = 2000
MAX_RECORD_BYTES = 1 << 20
_MIN_FILE_BYTES = 16 << 20  # RLIMIT_FSIZE floor: stdout beyond max_output_bytes is cut here


def _check_args(code: str, tests: list[str], setup_code: str, timeout_s: float, memory_mb: int,
                max_output_bytes: int) -> None:
    if not isinstance(code, str) or not isinstance(setup_code, str):
        raise ReasonlabError("sandbox: code and setup_code must be strings")
    if isinstance(tests, str) or not all(isinstance(t, str) for t in tests):
        raise ReasonlabError("sandbox: tests must be a list of statement strings")
    if not timeout_s > 0 or memory_mb < 32 or max_output_bytes < 0:
        raise ReasonlabError(f"sandbox: bad limits timeout_s={timeout_s} memory_mb={memory_mb} "
                             f"max_output_bytes={max_output_bytes}")


def _limits(timeout_s: float, memory_mb: int, max_output_bytes: int) -> dict[str, int]:
    if os.geteuid() == 0:  # with the private uid, NPROC counts only this sandbox's tasks
        nproc = MAX_TASKS
    else:  # RLIMIT_NPROC is per real uid: leave room for what this user already runs
        nproc = count_user_tasks(os.getuid()) + MAX_TASKS
    return {"cpu": max(1, math.ceil(timeout_s)) + 1, "as": int(memory_mb) << 20,
            "fsize": max(_MIN_FILE_BYTES, 2 * max_output_bytes + 4096), "nofile": MAX_OPEN_FILES, "nproc": nproc}


def _child_env(work: Path, token: str) -> dict[str, str]:
    """Built from nothing: no variable of this process reaches the program."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work),
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "USER": "sandbox", "LOGNAME": "sandbox",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONHASHSEED": "0", "REASONLAB_SANDBOX": token}


def _job(base: Path, work: Path, *, mode: str | None, want: dict, probe: bool, nonce: str, limits: dict,
         code: str, tests: list[str], setup_code: str) -> tuple[dict[str, Any], list[tuple] | None]:
    """The child's job (a dict of plain values) and the root plan it runs in (None: unconfined)."""
    canary = base / "canary"  # visible from the child only if the host's files are
    canary.touch()
    host_tmp = os.stat("/tmp")
    sys_path = child_sys_path()
    plan = root_plan(str(work)) if mode in ("bwrap", "mountns") else None
    if plan is not None:  # only what the child can import from
        binds = [e[1] for e in plan if e[0] == "ro-bind"]
        sys_path = [p for p in sys_path if under(p, binds)]
    job = {"nonce": nonce, "workdir": str(work), "layers": want, "strict": not probe,
           "confinement": mode, "limits": limits, "code": code, "setup_code": setup_code,
           "tests": list(tests), "max_message": MAX_MESSAGE_CHARS, "sys_path": sys_path,
           "observe": {"canary": str(canary), "parent_pid": os.getpid(),
                       "host_tmp": [host_tmp.st_dev, host_tmp.st_ino]}}
    if mode == "mountns":
        newroot = base / "root"
        newroot.mkdir(mode=0o700)
        job["mountns"] = {"newroot": str(newroot), "entries": plan}
    return job, plan


def _start(base: Path, work: Path, job: dict, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start the child with the marshal-ed job on stdin (its file already unlinked) and the result
    file on an inherited descriptor; stdout and stderr go to files in ``base``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    rfd = os.open(base / "result", flags | os.O_APPEND, 0o600)
    try:
        job["result_fd"] = rfd
        job_path = base / "job"
        with os.fdopen(os.open(job_path, flags, 0o600), "wb") as f:
            f.write(marshal.dumps(job))
        with open(job_path, "rb") as job_f, open(base / "stdout", "wb") as out_f, open(base / "stderr", "wb") as err_f:
            os.unlink(job_path)
            return subprocess.Popen(argv, stdin=job_f, stdout=out_f, stderr=err_f, cwd=work, env=env,
                                    start_new_session=True, close_fds=True, pass_fds=(rfd,))
    finally:
        os.close(rfd)


def _read_capped(path: Path, cap: int) -> tuple[bytes, bool]:
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError:
        return b"", False
    return data[:cap], len(data) > cap


def execute(*, code: str, tests: list[str], setup_code: str, timeout_s: float, memory_mb: int,
            max_output_bytes: int, mode: str | None, want: dict, probe: bool = False,
            layers_ok: dict | None = None) -> tuple[SandboxResult, dict | None]:
    """One run in confinement ``mode``, asking the child for the layers ``want``: (its result, the
    isolation the child reported, None if it reported none). ``probe``: a self-test (a layer that
    fails is reported, not fatal); ``layers_ok``: what the probe saw working."""
    _check_args(code, tests, setup_code, timeout_s, memory_mb, max_output_bytes)
    uid = want.get("uid")
    nonce, token = secrets.token_hex(16), f"rlsb-{secrets.token_hex(12)}"
    base = Path(tempfile.mkdtemp(prefix="reasonlab-sandbox-"))
    try:
        work = base / "work"
        work.mkdir(mode=0o700)
        if uid is not None and mode == "none":
            os.chmod(base, 0o711)
            os.chown(work, uid, uid)
        job, plan = _job(base, work, mode=mode, want=want, probe=probe, nonce=nonce, code=code, tests=tests,
                         setup_code=setup_code, limits=_limits(timeout_s, memory_mb, max_output_bytes))
        env = _child_env(work, token)
        argv = [sys.executable, "-I", "-B", "-S", str(CHILD)]
        if mode == "bwrap":
            argv = bwrap_argv(shutil.which("bwrap") or "bwrap", plan, env, str(work), os.geteuid() == 0,
                              drop_uid=uid is not None) + argv
            env = {"REASONLAB_SANDBOX": token}  # bwrap's own (it clears it for the child)
        start = time.monotonic()
        proc = _start(base, work, job, argv, env)
        exited = False
        try:
            exited = wait_exit(proc, timeout_s)
        finally:
            if exited and not probe and (layers_ok or {}).get("pidns"):
                # The first process of a pid namespace kills every other one as it exits, before
                # its parent hears of it: nothing is left to look for (a /proc scan costs ~10 ms).
                kill_group(proc.pid)
            else:
                kill_leftovers(proc.pid, uid, token.encode())
            proc.wait()
        duration = time.monotonic() - start
        out, out_cut = _read_capped(base / "stdout", max_output_bytes)
        err, err_cut = _read_capped(base / "stderr", max_output_bytes)
        raw, _ = _read_capped(base / "result", MAX_RECORD_BYTES)
    finally:
        force_rmtree(base)
    records = read_records(raw, nonce)
    res = judge(records, tests=list(tests), exited=exited, returncode=proc.returncode, bwrap=mode == "bwrap",
                duration_s=duration, timeout_s=timeout_s, stdout=out.decode("utf-8", "replace"),
                stderr=err.decode("utf-8", "replace"), truncated=out_cut or err_cut)
    done = next((r for r in reversed(records) if r.get("event") == "done"), None)
    started = next((r for r in records if r.get("event") == "start"), None)
    return res, (done or started or {}).get("isolation")
