"""The one place generated (untrusted) Python code is run: a fresh, limited, throw-away process.

`run_program(code, tests, setup_code)` executes ``code``, then ``setup_code`` (the tests' fixtures:
MBPP's only two non-empty ``test_setup_code`` build trees of the ``Node`` class the program defines,
so it must run after the program), then each test statement (an ``assert`` line, as MBPP's
``test_list``) one by one, in one ``__main__`` namespace inside a fresh ``python -I -B -S``
interpreter (the site-packages path is handed over explicitly), in a fresh temporary directory that
is removed afterwards, and returns a `SandboxResult` (passed / failed / error / timeout).

Containment, in layers (the OS layers hold even against code that bypasses Python, e.g. ctypes):

* Process: own session/process group (``start_new_session``); wall-clock timeout; RLIMIT_CPU,
  RLIMIT_AS (memory), RLIMIT_FSIZE (every file it writes, its stdout/stderr included), RLIMIT_CORE=0,
  RLIMIT_NOFILE, RLIMIT_NPROC. After the run (or on timeout) every process it left behind is
  SIGKILLed: its process group, and then - found through /proc - every process of its private uid
  (running as root) or carrying its private environment token (otherwise), so a child that escaped
  the group with setsid() is still found.
* Identity (when the parent is root): the child drops to a fresh random uid/gid of its own, with no
  supplementary groups and ``no_new_privs``. RLIMIT_NPROC then counts only this sandbox's tasks (root
  itself is exempt from RLIMIT_NPROC, so without the drop a fork bomb would not be capped), and file
  permissions keep it from writing anything it does not own. Where the interpreter lives in a
  directory closed to other users (e.g. a pyenv under /root) it keeps one capability,
  CAP_DAC_READ_SEARCH, so it can still read (import) everything - reads are not confined.
* Network: a fresh network namespace (only a down loopback: nothing is reachable, not even the
  host's 127.0.0.1) when the kernel allows it - as root, or unprivileged through a user namespace.
* Disk (root): a private tmpfs of `DISK_MB` is mounted on its work directory in a private mount
  namespace, so it cannot fill the disk through many files.
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

Which layers are active here: `isolation()`. This module does not import Prefect.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from reasonlab.errors import ReasonlabError

MAX_TASKS = 64  # RLIMIT_NPROC budget of one sandbox (threads count as tasks)
DISK_MB = 256  # size of the private tmpfs work directory (root only)
MAX_OPEN_FILES = 256
MAX_MESSAGE_CHARS = 2000
MAX_RECORD_BYTES = 1 << 20
_MIN_FILE_BYTES = 16 << 20  # RLIMIT_FSIZE floor: stdout beyond max_output_bytes is cut here
_STATUSES = ("passed", "failed", "error", "timeout")


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
# The runner: trusted code executed by the child interpreter before (and around) the user's code.
# --------------------------------------------------------------------------------------------------

_RUNNER = r'''
import sys, os, marshal, resource, _signal

def _runner():
    job_path = sys.argv[1]
    runner_file = __file__
    with open(job_path, "rb") as f:
        job = marshal.loads(f.read())
    os.unlink(job_path)
    nonce, rfd, work = job["nonce"], job["result_fd"], job["workdir"]
    write, getpid, to_repr = os.write, os.getpid, repr
    maxmsg = job["max_message"]
    sys.path[:] = job["sys_path"]

    def emit(rec):  # one line per record: the repr of a dict of plain values (parent: literal_eval)
        rec["n"] = nonce
        data = to_repr(rec).encode("utf-8", "backslashreplace") + b"\n"
        while data:
            data = data[write(rfd, data):]

    def short(text):
        text = str(text)
        return text if len(text) <= maxmsg else text[:maxmsg] + "...[truncated]"

    # ---- OS layers, as the parent asked; in strict mode a requested layer that fails aborts ----
    iso = {}
    want = job["layers"]

    def layer(name, fn):
        try:
            fn()
            iso[name] = True
        except Exception as e:
            iso[name] = False
            if job["strict"]:
                emit({"event": "done", "status": "error", "error_type": "SandboxSetupError",
                      "error_message": "%s: %s: %s" % (name, type(e).__name__, e), "isolation": iso})
                os._exit(3)

    libc = None
    if want:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)

        def check(rc, what):
            if rc != 0:
                err = ctypes.get_errno()
                raise OSError(err, "%s: %s" % (what, os.strerror(err)))

    CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWUSER = 0x00020000, 0x40000000, 0x10000000
    if want.get("netns"):
        layer("netns", lambda: check(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)"))
    if want.get("userns_netns"):
        layer("userns_netns", lambda: check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET),
                                            "unshare(CLONE_NEWUSER|CLONE_NEWNET)"))
    if want.get("tmpfs"):
        def tmpfs():
            MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 16384, 1 << 18
            check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount(/, private)")
            opts = "size=%dm,mode=0700" % want["tmpfs"]
            if want.get("uid") is not None:
                opts += ",uid=%d,gid=%d" % (want["uid"], want["uid"])
            check(libc.mount(b"tmpfs", work.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts.encode()),
                  "mount(tmpfs)")
        layer("tmpfs", tmpfs)

    lim = job["limits"]
    for name, value in (("RLIMIT_CORE", 0), ("RLIMIT_CPU", lim["cpu"]), ("RLIMIT_AS", lim["as"]),
                        ("RLIMIT_FSIZE", lim["fsize"]), ("RLIMIT_NOFILE", lim["nofile"]),
                        ("RLIMIT_NPROC", lim["nproc"])):
        what = getattr(resource, name)
        soft, hard = resource.getrlimit(what)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        # CPU: SIGXCPU at the soft limit, SIGKILL one second later.
        resource.setrlimit(what, (value, value + 1 if name == "RLIMIT_CPU" else value))

    if want.get("uid") is not None:
        def drop():
            uid, keep = want["uid"], want.get("read_cap")
            if keep:  # the interpreter lives where the new uid may not look (e.g. under /root)
                check(libc.prctl(8, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            if os.getuid() != uid or os.geteuid() != uid:
                raise OSError("uid drop did not stick")
            if keep:  # keep only CAP_DAC_READ_SEARCH: read anywhere, write only what the uid may
                class Header(ctypes.Structure):
                    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
                class Data(ctypes.Structure):
                    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                                ("inheritable", ctypes.c_uint32)]
                data = (Data * 2)()
                data[0].effective = data[0].permitted = 1 << 2
                check(libc.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")
                check(libc.prctl(8, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS, 0)")
                iso["read_cap"] = True
        layer("uid", drop)
    if libc is not None:
        iso["no_new_privs"] = libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS

    os.chdir(work)
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)  # an over-long write fails (EFBIG), no kill
    sys.dont_write_bytecode = True
    import builtins, _sitebuiltins  # what `site` would add (the interpreter runs with -S)
    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")

    # ---- the audit hook ----
    realpath, fspath, fsdecode, readlink, isabs, join = (
        os.path.realpath, os.fspath, os.fsdecode, os.readlink, os.path.isabs, os.path.join)
    root = realpath(work)
    root_prefix = root + os.sep
    allowed = {"/dev/null"}
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    violations = []
    busy = [False]
    my_pid = getpid()

    def inside(path, dir_fd=None):
        if path is None or isinstance(path, int):
            return True  # an already-open descriptor
        try:
            p = fspath(path)
            if isinstance(p, bytes):
                p = fsdecode(p)
            if isinstance(dir_fd, int) and dir_fd >= 0 and not isabs(p):  # -1: no dir_fd
                p = join(readlink("/proc/self/fd/%d" % dir_fd), p)
            p = realpath(p)
        except Exception:
            return False
        return p == root or p.startswith(root_prefix) or p in allowed

    # event -> ((path arg index, dir_fd arg index or None), ...) that must stay inside the work dir
    PATH_EVENTS = {
        "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
        "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),),
        "os.truncate": ((0, None),), "os.chmod": ((0, 2),), "os.chown": ((0, 3),),
        "os.utime": ((0, 3),), "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
        "os.chflags": ((0, None),), "os.lchflags": ((0, None),),
        "shutil.rmtree": ((0, 1),), "shutil.move": ((0, None), (1, None)),
        "shutil.copyfile": ((1, None),), "shutil.copytree": ((1, None),),
        "shutil.copymode": ((1, None),), "shutil.copystat": ((1, None),),
        "shutil.chown": ((0, None),), "shutil.make_archive": ((0, None),),
        "shutil.unpack_archive": ((1, None),),
    }
    DENY = {
        "os.fork": "fork", "os.forkpty": "fork", "os.exec": "exec", "os.posix_spawn": "spawn",
        "os.system": "os.system", "subprocess.Popen": "subprocess", "pty.spawn": "pty.spawn",
        "os.killpg": "signalling a process group",
        "resource.setrlimit": "changing resource limits", "resource.prlimit": "changing resource limits",
        "socket.__new__": "network", "socket.bind": "network", "socket.connect": "network",
        "socket.sendto": "network", "socket.sendmsg": "network", "socket.getaddrinfo": "network",
        "socket.gethostbyname": "network", "socket.gethostbyaddr": "network",
        "socket.getnameinfo": "network", "socket.sethostname": "network",
        "urllib.Request": "network", "http.client.connect": "network", "ftplib.connect": "network",
        "smtplib.connect": "network", "poplib.connect": "network", "imaplib.open": "network",
        "nntplib.connect": "network", "telnetlib.Telnet.open": "network", "webbrowser.open": "network",
    }
    WATCHED = frozenset(PATH_EVENTS) | frozenset(DENY) | {"open", "os.kill"}

    def refuse(what):
        violations.append(what)
        if len(violations) <= 20:
            try:
                emit({"event": "violation", "what": what})
            except Exception:
                pass
        raise PermissionError("sandbox: %s is not allowed" % what)

    def hook(event, args):
        if event not in WATCHED or busy[0]:
            return
        busy[0] = True
        try:
            if event == "open":
                path, mode, flags = args
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & WRITE_FLAGS)
                if writing and not inside(path):
                    refuse("writing %r outside the sandbox directory" % (path,))
            elif event in PATH_EVENTS:
                for i, d in PATH_EVENTS[event]:
                    if i < len(args) and not inside(args[i], args[d] if d is not None and d < len(args) else None):
                        refuse("%s(%r) outside the sandbox directory" % (event, args[i]))
            elif event == "os.kill":
                if args[0] not in (0, my_pid, getpid()):
                    refuse("os.kill(%r)" % (args[0],))
            else:
                refuse("%s (%s)" % (DENY[event], event))
        finally:
            busy[0] = False

    # ---- the program, then the test setup, then each test, in one fresh __main__ ----
    main = type(sys)("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    ns = main.__dict__
    tests = job["tests"]
    done = {"event": "done", "status": "passed", "tests_passed": 0, "isolation": iso}
    emit({"event": "start", "isolation": iso})
    sys.addaudithook(hook)

    phase, current = "code", None
    try:
        exec(compile(job["code"], "<program>", "exec"), ns)
        phase = "setup"
        if job["setup_code"]:
            exec(compile(job["setup_code"], "<setup>", "exec"), ns)
        phase = "test"
        for i, test in enumerate(tests):
            current = i
            emit({"event": "test", "index": i})
            exec(compile(test, "<test %d>" % i, "exec"), ns)
            done["tests_passed"] = i + 1
        current = None
    except BaseException as e:
        try:
            failed = phase == "test" and isinstance(e, AssertionError)
            done["status"] = "failed" if failed else "error"
            done["phase"] = phase
            done["failed_test_index"] = current
            done["error_type"] = type(e).__name__
            try:
                done["error_message"] = short(e)
            except BaseException:
                done["error_message"] = "<unprintable %s>" % type(e).__name__
            try:  # the user's frames only (the last 30: recursion can be 10**6 deep), with source
                import traceback, linecache, collections
                sources = [("<setup>", job["setup_code"]), ("<program>", job["code"])]
                sources += [("<test %d>" % i, t) for i, t in enumerate(tests)]
                for name, text in sources:
                    linecache.cache[name] = (len(text), None, text.splitlines(True), name)
                last = collections.deque(traceback.walk_tb(e.__traceback__), maxlen=30)
                frames = [f for f in traceback.StackSummary.extract(last) if f.filename != runner_file]
                text = "".join(["Traceback (most recent call last):\n"] + traceback.format_list(frames)
                               + traceback.format_exception_only(type(e), e))
                done["traceback"] = text if len(text) <= maxmsg else "..." + text[-maxmsg:]
            except BaseException:
                pass
        except BaseException:
            done = {"event": "done", "status": "error", "error_type": "MemoryError",
                    "error_message": "could not format the exception", "isolation": iso}
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass
    done["violations"] = violations[:100]
    emit(done)
    os._exit(0)

_runner()
'''


# --------------------------------------------------------------------------------------------------
# The parent side.
# --------------------------------------------------------------------------------------------------

_ISOLATION: dict[str, Any] | None = None
_ISOLATION_LOCK = threading.Lock()


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


_READ_CAP: bool | None = None
_SYS_PATH: list[str] | None = None


def _child_sys_path() -> list[str]:
    """The import path a plain `python -I` has here (site-packages included); the sandbox
    interpreter runs with -S (no site: 3x faster start) and is given this path instead."""
    global _SYS_PATH
    if _SYS_PATH is None:
        out = subprocess.run([sys.executable, "-I", "-c", "import sys; print(repr(sys.path))"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        _SYS_PATH = [p for p in ast.literal_eval(out.strip()) if isinstance(p, str) and p]
    return _SYS_PATH


def _needs_read_cap() -> bool:
    """True if some directory the interpreter imports from is closed to other users (e.g. /root)."""
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


def _requested_layers(probe: bool) -> dict[str, Any]:
    iso = isolation() if not probe else None
    root = os.geteuid() == 0
    want: dict[str, Any] = {}
    if root:
        if probe or iso.get("uid"):
            want["uid"] = _pick_uid()
            want["read_cap"] = _needs_read_cap()
        if probe or iso.get("netns"):
            want["netns"] = True
        if probe or iso.get("tmpfs"):
            want["tmpfs"] = DISK_MB
    elif probe or iso.get("userns_netns"):
        want["userns_netns"] = True
    if want.get("uid") is None:
        want.pop("uid", None)
    return want


def isolation() -> dict[str, Any]:
    """Which OS layers this machine gives the sandbox (probed once per process by a real run).

    Keys: ``uid`` (private uid: NPROC caps forks, file permissions), ``read_cap`` (that uid keeps
    CAP_DAC_READ_SEARCH because the interpreter is in a closed directory), ``netns`` /
    ``userns_netns`` (no network at all), ``tmpfs`` (private size-capped work dir), ``no_new_privs``.
    Not root and no user namespaces: only the rlimits, the process-group/token cleanup and the
    in-process audit hook remain.
    """
    global _ISOLATION
    with _ISOLATION_LOCK:
        if _ISOLATION is None:
            res, iso = _run(code="", tests=[], setup_code="", timeout_s=30, memory_mb=512,
                            max_output_bytes=4096, probe=True)
            if res.status != "passed" or iso is None:
                raise ReasonlabError(f"sandbox self-test failed: {res.error_type}: {res.error_message} "
                                     f"(stderr: {res.stderr.strip()[-500:]})")
            _ISOLATION = dict(iso)
        return dict(_ISOLATION)


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


def _kill_leftovers(pgid: int, uid: int | None, token: bytes, deadline_s: float = 10.0) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
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
         max_output_bytes: int, probe: bool = False) -> tuple[SandboxResult, dict | None]:
    if not isinstance(code, str) or not isinstance(setup_code, str):
        raise ReasonlabError("sandbox: code and setup_code must be strings")
    if isinstance(tests, str) or not all(isinstance(t, str) for t in tests):
        raise ReasonlabError("sandbox: tests must be a list of statement strings")
    if not timeout_s > 0 or memory_mb < 32 or max_output_bytes < 0:
        raise ReasonlabError(f"sandbox: bad limits timeout_s={timeout_s} memory_mb={memory_mb} "
                             f"max_output_bytes={max_output_bytes}")
    want = _requested_layers(probe)
    uid = want.get("uid")
    nonce = secrets.token_hex(16)
    token = f"rlsb-{secrets.token_hex(12)}"
    base = Path(tempfile.mkdtemp(prefix="reasonlab-sandbox-"))
    try:
        work = base / "work"
        work.mkdir(mode=0o700)
        if uid is not None:
            os.chmod(base, 0o711)
            os.chown(work, uid, uid)
        if os.geteuid() == 0:  # with the private uid, NPROC counts only this sandbox's tasks
            nproc = MAX_TASKS
        else:  # RLIMIT_NPROC is per real uid: leave room for what this user already runs
            nproc = _count_user_tasks(os.getuid()) + MAX_TASKS
        limits = {"cpu": max(1, math.ceil(timeout_s)) + 1, "as": int(memory_mb) << 20,
                  "fsize": max(_MIN_FILE_BYTES, 2 * max_output_bytes + 4096),
                  "nofile": MAX_OPEN_FILES, "nproc": nproc}
        job = {"nonce": nonce, "workdir": str(work), "layers": want, "strict": not probe,
               "limits": limits, "code": code, "setup_code": setup_code, "tests": list(tests),
               "max_message": MAX_MESSAGE_CHARS, "sys_path": _child_sys_path()}
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work),
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "USER": "sandbox", "LOGNAME": "sandbox",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONHASHSEED": "0", "REASONLAB_SANDBOX": token}
        out_path, err_path, res_path = base / "stdout", base / "stderr", base / "result"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        rfd = os.open(res_path, flags | os.O_APPEND, 0o600)
        try:
            job["result_fd"] = rfd
            job_path, runner_path = base / "job.marshal", base / "sandbox_runner.py"
            runner_path.write_text(_RUNNER, encoding="utf-8")
            fd = os.open(job_path, flags, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(marshal.dumps(job))
            with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
                start = time.monotonic()
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-B", "-S", str(runner_path), str(job_path)],
                    stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f, cwd=work, env=env,
                    start_new_session=True, close_fds=True, pass_fds=(rfd,))
        finally:
            os.close(rfd)
        try:
            exited = _wait_exit(proc, timeout_s)
        finally:
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

    res = SandboxResult(status="error", stdout=out.decode("utf-8", "replace"),
                        stderr=err.decode("utf-8", "replace"), duration_s=round(duration, 4),
                        returncode=proc.returncode, output_truncated=out_cut or err_cut,
                        violations=violations)
    rc = proc.returncode
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
                memory_mb: int = 512, max_output_bytes: int = 65536) -> SandboxResult:
    """Run ``code``, then ``setup_code``, then each test statement, in a fresh limited process.

    "passed": every test ran; "failed": a test's assert failed (`failed_test` names it);
    "error": an exception, a crash (`error_type` is the signal name), no final report, or a refused
    sandbox violation; "timeout": the wall-clock or CPU limit was reached.
    """
    return _run(code=code, tests=list(tests), setup_code=setup_code, timeout_s=timeout_s,
                memory_mb=memory_mb, max_output_bytes=max_output_bytes)[0]


_JOB_KEYS = {"code", "tests", "setup_code", "timeout_s", "memory_mb", "max_output_bytes"}


def run_many(jobs: list[dict], workers: int | None = None) -> list[SandboxResult]:
    """`run_program(**job)` for each job, `workers` at a time (default: all cores); order preserved."""
    for i, job in enumerate(jobs):
        unknown = set(job) - _JOB_KEYS
        if unknown or "code" not in job or "tests" not in job:
            raise ReasonlabError(f"sandbox job {i}: needs code and tests; unknown keys {sorted(unknown)} "
                                 f"(allowed: {sorted(_JOB_KEYS)})")
    workers = max(1, workers or os.cpu_count() or 1)
    isolation()  # probe once, before the threads race for it
    if workers == 1 or len(jobs) <= 1:
        return [run_program(**job) for job in jobs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda job: run_program(**job), jobs))


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
