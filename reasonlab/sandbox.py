"""The one place generated (untrusted) Python code is run: a fresh, confined, throw-away process.

`run_program(code, tests, setup_code)` executes ``code``, then ``setup_code`` (the tests' fixtures:
MBPP's only two non-empty ``test_setup_code`` build trees of the ``Node`` class the program defines,
so it must run after the program), then each test statement (an ``assert`` line, as MBPP's
``test_list``) one by one, in one ``__main__`` namespace inside a fresh ``python -I -B -S``
interpreter (the site-packages path is handed over explicitly), in a fresh work directory that is
gone afterwards, and returns a `SandboxResult` (passed / failed / error / timeout).

This module is the policy (which layers, which limits, which files the program may see, how a
result is judged); `reasonlab/sandbox_child.py` is the mechanics, executed by path in the child.

Containment, in layers (the OS layers hold even against code that bypasses Python, e.g. ctypes):

* Files (the confinement): the program sees the interpreter and its libraries read-only, its own
  work directory (a size-capped tmpfs, `DISK_MB`), private read-only ``/tmp`` and ``/dev/shm``, a
  minimal ``/dev``, the ``/proc`` of its own pid namespace, and nothing else of the host: no home
  directories, no other process, no ``/etc`` beyond ``ld.so.cache``. Nothing outside the work
  directory is writable, whatever route the program takes. Done by bubblewrap (``bwrap``) where it
  is installed and works, else - as root - by this project's own mount-namespace code (the child
  builds the same root and ``pivot_root``s into it). Where neither works, running generated code is
  a `ReasonlabError` saying what to install, unless the caller passes the loudly named opt-out
  ``allow_unconfined_reads=True`` (or sets ``REASONLAB_UNSAFE_ALLOW_HOST_READS=1``).
* Namespaces: new pid (leftovers die with it), network (only a down loopback: nothing reachable,
  not even the host's 127.0.0.1), ipc and uts namespaces.
* Process: own session/process group; wall-clock timeout; RLIMIT_CPU, RLIMIT_AS (memory),
  RLIMIT_FSIZE (every file it writes, its stdout/stderr included), RLIMIT_CORE=0, RLIMIT_NOFILE,
  RLIMIT_NPROC. After the run (or on timeout) every process it left behind is SIGKILLed: its process
  group, then - found through /proc - every process of its private uid (as root) or carrying its
  private environment token (otherwise).
* Identity (when the parent is root): the child drops to a fresh random uid/gid with no groups, no
  capabilities (bounding set emptied) and ``no_new_privs``; RLIMIT_NPROC then counts only this
  sandbox's tasks (root itself is exempt from RLIMIT_NPROC, so without the drop a fork bomb would not
  be capped). As root, bubblewrap runs without a user namespace (it would map only root, and the
  drop to the private uid would be impossible).
* Environment: built from nothing (no inherited variable; PATH, HOME=TMPDIR=work dir, C.UTF-8, one
  thread for BLAS, the run's token). The stdout and stderr kept in a result are capped at
  ``max_output_bytes`` each (default 64 KiB).
* In-process: an audit hook (``sys.addaudithook``) installed before the user code refuses - and
  records - writes / deletes / renames / chmods outside the work directory, socket creation and
  connects, subprocess / fork / exec / os.system, signals to other processes, and rlimit changes.
  Any refused attempt makes the run an "error" even if the program catches the exception.

The result is reported on a dedicated file descriptor as one line per event (the ``repr`` of a dict
of plain values, read back with ``ast.literal_eval``) tagged with a per-run nonce,
never through stdout (which the program controls); a run without a final record - ``os._exit(0)``
before the tests, a crash, a kill - is an "error", never "passed". Code running in the same
interpreter could in principle find the nonce by introspection; the record is robust against
accident and naive forgery, not against a program written to attack this runner.

Which layers are active here - as seen from inside the child, not assumed: `isolation()`.
This module does not import Prefect.
"""

from __future__ import annotations

import ast
import dataclasses
import marshal
import math
import os
import re
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from reasonlab.errors import ReasonlabError

MAX_TASKS = 64  # RLIMIT_NPROC budget of one sandbox (threads count as tasks)
DISK_MB = 256  # size of the private tmpfs work directory
PRIVATE_TMP_BYTES = 1 << 20  # the private, read-only /tmp and /dev/shm (mount points only)
MAX_OPEN_FILES = 256
MAX_MESSAGE_CHARS = 2000
MAX_RECORD_BYTES = 1 << 20
_MIN_FILE_BYTES = 16 << 20  # RLIMIT_FSIZE floor: stdout beyond max_output_bytes is cut here
_STATUSES = ("passed", "failed", "error", "timeout")
CHILD = Path(__file__).resolve().with_name("sandbox_child.py")
CONFINEMENTS = ("bwrap", "mountns", "none")  # best first; "none": files not confined (opt-out only)
UNSAFE_ENV = "REASONLAB_UNSAFE_ALLOW_HOST_READS"  # =1: run generated code even where reads are not confined
CONFINEMENT_ENV = "REASONLAB_SANDBOX_CONFINEMENT"  # force one of CONFINEMENTS (default: the best that works)
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `apt-get install -y bubblewrap`, Fedora: "
                "`dnf install bubblewrap`; `make test` does it when run as root on Debian)")
# System library directories the interpreter may load from (those present are bound read-only).
_SYSTEM_LIB_DIRS = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32",
                    "/usr/libx32", "/usr/local/lib", "/usr/share/zoneinfo", "/etc/ld.so.cache")


@dataclasses.dataclass
class SandboxResult:
    status: str  # "passed" | "failed" | "error" | "timeout"
    failed_test: str | None = None  # the test statement that failed / raised / was running
    error_type: str | None = None  # exception class name, "SIGSEGV", "Timeout", "NoResult", ...
    error_message: str | None = None
    stdout: str = ""  # at most max_output_bytes of it
    stderr: str = ""
    duration_s: float = 0.0
    returncode: int | None = None  # negative: killed by that signal
    tests_passed: int = 0
    violations: list[str] = dataclasses.field(default_factory=list)  # refused attempts, in order
    traceback: str = ""
    output_truncated: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# What the child may see: one root plan, carried out by bubblewrap or by the child's own code.
# --------------------------------------------------------------------------------------------------

_SYS_PATH: list[str] | None = None
_READ_CAP: bool | None = None
_BASE_PLAN: list[tuple] | None = None


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


def _child_sys_path() -> list[str]:
    """The import path a plain `python -I` has here (site-packages included); the sandbox
    interpreter runs with -S (no site: 3x faster start) and is given this path instead."""
    global _SYS_PATH
    if _SYS_PATH is None:
        out = subprocess.run([sys.executable, "-I", "-c", "import sys; print(repr(sys.path))"],
                             capture_output=True, text=True, check=True, timeout=60, env={}).stdout
        _SYS_PATH = [p for p in ast.literal_eval(out.strip()) if isinstance(p, str) and p]
    return _SYS_PATH


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


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _base_plan() -> list[tuple]:
    """The read-only part of the child's root: the interpreter's prefixes (venv and base install),
    the system library directories, ld.so.cache and the child program - nothing else of the host.

    Entries: ("dir", path, mode) | ("ro-bind", path, source) | ("symlink", path, target), in order.
    """
    global _BASE_PLAN
    if _BASE_PLAN is not None:
        return _BASE_PLAN
    wanted: dict[str, str] = {}  # destination -> source
    links: dict[str, str] = {}
    for p in {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}:
        p = os.path.abspath(p)
        for dest in {p, os.path.realpath(p)}:
            wanted[dest] = os.path.realpath(p)
    if "/" in wanted:
        raise ReasonlabError("sandbox: the interpreter's prefix is / - nothing could be hidden from the program")
    for p in _SYSTEM_LIB_DIRS:
        if os.path.islink(p) and os.path.dirname(p) == "/":  # merged /usr: /lib -> usr/lib
            links[p] = os.readlink(p)
        elif os.path.exists(p):
            wanted[p] = os.path.realpath(p)
    if not _under(str(CHILD), list(wanted)):
        wanted[str(CHILD)] = str(CHILD)
    dests = sorted(wanted, key=lambda d: (d.count("/"), d))
    kept: list[str] = []
    for d in dests:  # a destination inside another one is already there
        if not _under(d, kept):
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


def _root_plan(work: str) -> list[tuple]:
    """The whole root of one run: `_base_plan` + /proc, /dev, private read-only /tmp and /dev/shm,
    and the writable, size-capped work directory."""
    base = _base_plan()
    made = {e[1] for e in base} | {"/tmp"}
    parts = work.strip("/").split("/")[:-1]
    ancestors = ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return base + [
        ("proc", "/proc"), ("dev", "/dev"),
        ("tmpfs", "/dev/shm", PRIVATE_TMP_BYTES, 0o755), ("remount-ro", "/dev/shm"), ("remount-ro", "/dev"),
        ("tmpfs", "/tmp", PRIVATE_TMP_BYTES, 0o755),
        *[("dir", a, 0o711) for a in ancestors if a not in made],
        ("tmpfs", work, DISK_MB << 20, 0o700), ("remount-ro", "/tmp"),
    ]


def _bwrap_argv(bwrap: str, plan: list[tuple], env: dict[str, str], work: str, as_root: bool,
                drop_uid: bool) -> list[str]:
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


# --------------------------------------------------------------------------------------------------
# Which confinement this machine gives, probed once per process by real runs.
# --------------------------------------------------------------------------------------------------

_ISOLATION: dict[str, dict[str, Any]] = {}
_ISOLATION_LOCK = threading.Lock()
_WARNED_UNCONFINED = False


def _candidates(confinement: str | None) -> list[str]:
    forced = confinement or os.environ.get(CONFINEMENT_ENV) or None
    if forced is not None:
        if forced not in CONFINEMENTS:
            raise ReasonlabError(f"sandbox: confinement {forced!r} is not one of {CONFINEMENTS}")
        return [forced]
    return list(CONFINEMENTS)


def _why_unavailable(mode: str) -> str | None:
    if mode == "bwrap" and not shutil.which("bwrap"):
        return "bwrap is not installed"
    if mode == "mountns" and os.geteuid() != 0:
        return "the project's own mount-namespace confinement needs root"
    return None


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
                why = _why_unavailable(mode)
                if why is None:
                    res, iso = _run(code="", tests=[], setup_code="", timeout_s=30, memory_mb=512,
                                    max_output_bytes=4096, probe=True, mode=mode, layers_ok=None)
                    if res.status != "passed" or iso is None:
                        why = (f"self-test failed: {res.error_type}: {res.error_message} "
                               f"(stderr: {res.stderr.strip()[-300:]})")
                    elif mode != "none" and not iso.get("read_confined"):
                        why = f"self-test ran but the host's files were still visible ({iso})"
                if why is None:
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


def _layers(mode: str, probe: bool, layers_ok: dict | None) -> dict[str, Any]:
    """What the child is asked to do. Outside a probe, the unconfined mode asks only for the layers
    its probe saw working."""
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


# --------------------------------------------------------------------------------------------------
# Cleaning up after a run.
# --------------------------------------------------------------------------------------------------

def _proc_status(pid: str) -> tuple[int, str] | None:
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


def _count_user_tasks(uid: int) -> int:
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
        st = _proc_status(entry.name)
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


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_leftovers(pgid: int, uid: int | None, token: bytes, deadline_s: float = 10.0) -> None:
    _kill_group(pgid)
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


def _wait_exit(proc: subprocess.Popen, timeout_s: float) -> bool:
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


def _read_capped(path: Path, cap: int) -> tuple[bytes, bool]:
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError:
        return b"", False
    return data[:cap], len(data) > cap


def _force_rmtree(path: Path) -> None:
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


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"



def _run(*, code: str, tests: list[str], setup_code: str, timeout_s: float, memory_mb: int,
         max_output_bytes: int, probe: bool = False, mode: str | None = None,
         layers_ok: dict | None = None) -> tuple[SandboxResult, dict | None]:
    if not isinstance(code, str) or not isinstance(setup_code, str):
        raise ReasonlabError("sandbox: code and setup_code must be strings")
    if isinstance(tests, str) or not all(isinstance(t, str) for t in tests):
        raise ReasonlabError("sandbox: tests must be a list of statement strings")
    if not timeout_s > 0 or memory_mb < 32 or max_output_bytes < 0:
        raise ReasonlabError(f"sandbox: bad limits timeout_s={timeout_s} memory_mb={memory_mb} "
                             f"max_output_bytes={max_output_bytes}")
    as_root = os.geteuid() == 0
    want = _layers(mode, probe, layers_ok)
    uid = want.get("uid")
    nonce = secrets.token_hex(16)
    token = f"rlsb-{secrets.token_hex(12)}"
    base = Path(tempfile.mkdtemp(prefix="reasonlab-sandbox-"))
    try:
        work = base / "work"
        work.mkdir(mode=0o700)
        canary = base / "canary"  # visible from the child only if the host's files are
        canary.touch()
        if uid is not None and mode == "none":
            os.chmod(base, 0o711)
            os.chown(work, uid, uid)
        if as_root:  # with the private uid, NPROC counts only this sandbox's tasks
            nproc = MAX_TASKS
        else:  # RLIMIT_NPROC is per real uid: leave room for what this user already runs
            nproc = _count_user_tasks(os.getuid()) + MAX_TASKS
        limits = {"cpu": max(1, math.ceil(timeout_s)) + 1, "as": int(memory_mb) << 20,
                  "fsize": max(_MIN_FILE_BYTES, 2 * max_output_bytes + 4096),
                  "nofile": MAX_OPEN_FILES, "nproc": nproc}
        host_tmp = os.stat("/tmp")
        sys_path = _child_sys_path()
        plan = _root_plan(str(work)) if mode in ("bwrap", "mountns") else None
        if plan is not None:  # only what the child can import from
            binds = [e[1] for e in plan if e[0] == "ro-bind"]
            sys_path = [p for p in sys_path if _under(p, binds)]
        job = {"nonce": nonce, "workdir": str(work), "layers": want, "strict": not probe,
               "confinement": mode, "limits": limits, "code": code, "setup_code": setup_code,
               "tests": list(tests), "max_message": MAX_MESSAGE_CHARS, "sys_path": sys_path,
               "observe": {"canary": str(canary), "parent_pid": os.getpid(),
                           "host_tmp": [host_tmp.st_dev, host_tmp.st_ino]}}
        if mode == "mountns":
            newroot = base / "root"
            newroot.mkdir(mode=0o700)
            job["mountns"] = {"newroot": str(newroot), "entries": plan}
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work),
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "USER": "sandbox", "LOGNAME": "sandbox",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONHASHSEED": "0", "REASONLAB_SANDBOX": token}
        argv = [sys.executable, "-I", "-B", "-S", str(CHILD)]
        if mode == "bwrap":
            argv = _bwrap_argv(shutil.which("bwrap") or "bwrap", plan, env, str(work), as_root,
                               drop_uid=uid is not None) + argv
            popen_env = {"REASONLAB_SANDBOX": token}  # bwrap's own (it clears it for the child)
        else:
            popen_env = env
        out_path, err_path, res_path, job_path = base / "stdout", base / "stderr", base / "result", base / "job"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        rfd = os.open(res_path, flags | os.O_APPEND, 0o600)
        try:
            job["result_fd"] = rfd
            fd = os.open(job_path, flags, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(marshal.dumps(job))
            with open(job_path, "rb") as job_f, open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
                os.unlink(job_path)
                start = time.monotonic()
                proc = subprocess.Popen(argv, stdin=job_f, stdout=out_f, stderr=err_f, cwd=work, env=popen_env,
                                        start_new_session=True, close_fds=True, pass_fds=(rfd,))
        finally:
            os.close(rfd)
        exited = False
        try:
            exited = _wait_exit(proc, timeout_s)
        finally:
            if exited and not probe and (layers_ok or {}).get("pidns"):
                # The first process of a pid namespace kills every other one as it exits, before
                # its parent hears of it: nothing is left to look for (a /proc scan costs ~10 ms).
                _kill_group(proc.pid)
            else:
                _kill_leftovers(proc.pid, uid, token.encode())
            proc.wait()
        duration = time.monotonic() - start
        out, out_cut = _read_capped(out_path, max_output_bytes)
        err, err_cut = _read_capped(err_path, max_output_bytes)
        raw, _ = _read_capped(res_path, MAX_RECORD_BYTES)
    finally:
        _force_rmtree(base)

    records = []
    for line in raw.splitlines():
        try:
            rec = ast.literal_eval(line.decode("utf-8", "replace"))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(rec, dict) and rec.get("n") == nonce:
            records.append(rec)
    done = next((r for r in reversed(records) if r.get("event") == "done"), None)
    started = next((r for r in records if r.get("event") == "start"), None)
    violations = [str(r.get("what")) for r in records if r.get("event") == "violation"]
    last_test = next((r.get("index") for r in reversed(records) if r.get("event") == "test"), None)

    rc = proc.returncode
    if mode == "bwrap" and done is None and rc is not None and 128 < rc < 128 + 65 and started is not None:
        rc = -(rc - 128)  # bwrap reports a child killed by signal N as exit code 128 + N
    res = SandboxResult(status="error", stdout=out.decode("utf-8", "replace"),
                        stderr=err.decode("utf-8", "replace"), duration_s=round(duration, 4),
                        returncode=rc, output_truncated=out_cut or err_cut, violations=violations)
    if not exited:
        res.status, res.error_type = "timeout", "Timeout"
        res.error_message = f"no result within the {timeout_s:g} s wall-clock limit"
    elif rc is not None and rc in (-signal.SIGXCPU, -signal.SIGKILL) and done is None and duration >= timeout_s * 0.5:
        res.status, res.error_type = "timeout", "Timeout"
        res.error_message = f"CPU time limit reached ({_signal_name(-rc)})"
    elif done is not None:
        res.status = done.get("status", "error")
        res.error_type = done.get("error_type")
        res.error_message = done.get("error_message")
        res.traceback = done.get("traceback", "")
        res.tests_passed = int(done.get("tests_passed", 0))
        res.violations = [str(v) for v in done.get("violations", violations)]
        idx = done.get("failed_test_index")
        if idx is not None and 0 <= idx < len(tests):
            res.failed_test = tests[idx]
        if res.status not in _STATUSES:
            res.status = "error"
        if res.status == "passed" and (rc != 0 or res.tests_passed != len(tests)):
            res.status, res.error_type = "error", "NoResult"
            res.error_message = (f"inconsistent report: passed with {res.tests_passed}/{len(tests)} tests "
                                 f"run and exit code {rc}")
    elif rc is not None and rc < 0:
        res.error_type = _signal_name(-rc)
        res.error_message = f"killed by signal {_signal_name(-rc)} ({-rc})"
    else:
        res.error_type = "NoResult"
        res.error_message = (f"the process exited with code {rc} before reporting a result "
                             "(os._exit / sys.exit / a crash before the tests finished)")
    if done is None and last_test is not None and 0 <= last_test < len(tests):
        res.failed_test = tests[last_test]
    if res.violations and res.status in ("passed", "failed"):
        res.status, res.error_type = "error", "SandboxViolation"
        res.error_message = f"sandbox: {res.violations[0]} is not allowed"
    if started is None and done is None and res.status == "error" and res.stderr:
        res.error_message = f"{res.error_message}; stderr: {res.stderr.strip()[-500:]}"
    iso = (done or started or {}).get("isolation")
    return res, iso


def run_program(code: str, tests: list[str], setup_code: str = "", timeout_s: float = 10,
                memory_mb: int = 512, max_output_bytes: int = 65536, *,
                allow_unconfined_reads: bool = False, confinement: str | None = None) -> SandboxResult:
    """Run ``code``, then ``setup_code``, then each test statement, in a fresh confined process.

    "passed": every test ran; "failed": a test's assert failed (`failed_test` names it);
    "error": an exception, a crash (`error_type` is the signal name), no final report, or a refused
    sandbox violation; "timeout": the wall-clock or CPU limit was reached. stdout and stderr are
    kept up to ``max_output_bytes`` each. Raises `ReasonlabError` when the host's files cannot be
    hidden from the program here, unless ``allow_unconfined_reads`` (see `require_confinement`).
    """
    iso = require_confinement(allow_unconfined_reads, confinement)
    return _run(code=code, tests=list(tests), setup_code=setup_code, timeout_s=timeout_s,
                memory_mb=memory_mb, max_output_bytes=max_output_bytes, mode=iso["confinement"],
                layers_ok=iso)[0]


_JOB_KEYS = {"code", "tests", "setup_code", "timeout_s", "memory_mb", "max_output_bytes"}


def run_many(jobs: list[dict], workers: int | None = None, *, allow_unconfined_reads: bool = False,
             confinement: str | None = None) -> list[SandboxResult]:
    """`run_program(**job)` for each job, `workers` at a time (default: all cores); order preserved."""
    for i, job in enumerate(jobs):
        unknown = set(job) - _JOB_KEYS
        if unknown or "code" not in job or "tests" not in job:
            raise ReasonlabError(f"sandbox job {i}: needs code and tests; unknown keys {sorted(unknown)} "
                                 f"(allowed: {sorted(_JOB_KEYS)})")
    workers = max(1, workers or os.cpu_count() or 1)
    require_confinement(allow_unconfined_reads, confinement)  # probe once, before the threads race for it

    def one(job: dict) -> SandboxResult:
        return run_program(**job, allow_unconfined_reads=allow_unconfined_reads, confinement=confinement)

    if workers == 1 or len(jobs) <= 1:
        return [one(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(one, jobs))


_PY_FENCE = re.compile(r"```[ \t]*(?:python3?|py)\b[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_ANY_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The Python code in an LLM completion: the first ```python block, else the first fenced
    block of any language, else the raw text. An unclosed fence (a cut-off completion) runs to the end."""
    for pattern in (_PY_FENCE, _ANY_FENCE):
        m = pattern.search(completion)
        if m:
            return m.group(1).rstrip() + "\n"
    return completion
