"""The sandbox's child: the trusted program that runs one untrusted program and its tests.

`reasonlab.sandbox` (the parent) decides the policy - which layers, which limits, which files the
program may see - and executes this file by path (``python -I -B -S sandbox_child.py``, inside
bubblewrap when that is the confinement) with the job, a ``marshal``-ed dict of plain values, on
stdin. This file carries out the mechanics, in order:

1. read the job, put /dev/null on stdin;
2. the mount-namespace confinement, when the parent chose it (no bubblewrap here, running as root):
   a new mount/pid/network/ipc/uts namespace, a fresh root (tmpfs) holding read-only binds of the
   interpreter and its libraries, private read-only /tmp and /dev/shm, a size-capped tmpfs work
   directory, a /proc of the new pid namespace, then ``pivot_root``;
   or the older, weaker layers of the unconfined mode (network namespace, tmpfs work directory);
3. resource limits, then the drop to the private uid (root only) with every capability gone;
4. what the program really sees (host /tmp? other processes? a network?), reported as the run's
   ``isolation`` record, so the parent never claims a layer that is not there;
5. an audit hook that refuses - and records - writes outside the work directory, sockets,
   subprocesses, signals to others and rlimit changes;
6. the program, then the test setup, then each test, in one fresh ``__main__``; the result is
   written as ``repr``-ed dicts (one per line, tagged with the job's nonce) on the result descriptor.

It uses the standard library only and imports nothing from `reasonlab`; importing it does nothing.
"""

import marshal
import os
import resource
import sys

import _signal

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_CAPBSET_DROP, PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG = 24, 8, 38, 1
CAP_DAC_READ_SEARCH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
DEVICES = ("null", "zero", "full", "random", "urandom")


class SetupError(Exception):
    """A layer the parent asked for could not be put in place."""


def load_libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def check(rc, what):
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, "%s: %s" % (what, os.strerror(err)))

    return ctypes, libc, check


# ------------------------------------------------------------------------ mount-namespace confinement

def _mkdirs(path, mode):
    parts, cur = [p for p in path.split("/") if p], ""
    for p in parts:
        cur += "/" + p
        if not os.path.isdir(cur):
            os.mkdir(cur)
            os.chmod(cur, mode)


def _apply_entry(libc, check, new, entry):
    """One entry of the parent's root plan, under the staging root ``new`` (bwrap reads the same list)."""
    op, path = entry[0], entry[1]
    target = new + path
    if op == "dir":
        _mkdirs(target, entry[2])
    elif op == "ro-bind":
        src = entry[2]
        _mkdirs(os.path.dirname(target), 0o711)
        if os.path.isdir(src):
            os.mkdir(target)
        else:
            open(target, "wb").close()
        check(libc.mount(src.encode(), target.encode(), None, MS_BIND | MS_REC, None), "bind %s" % src)
        check(libc.mount(None, target.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV,
                         None), "remount %s read-only" % path)
    elif op == "symlink":
        _mkdirs(os.path.dirname(target), 0o711)
        os.symlink(entry[2], target)
    elif op == "tmpfs":
        size, mode = entry[2], entry[3]
        _mkdirs(target, 0o755)
        check(libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                         ("size=%d,mode=%o" % (size, mode)).encode()), "tmpfs %s" % path)
    elif op == "dev":
        _mkdirs(target, 0o755)
        check(libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=64k,mode=0755"),
              "tmpfs /dev")
        for name in DEVICES:
            open(target + "/" + name, "wb").close()
            check(libc.mount(("/dev/" + name).encode(), (target + "/" + name).encode(), None, MS_BIND, None),
                  "bind /dev/" + name)
        for name, dest in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                           ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(dest, target + "/" + name)
    elif op == "remount-ro":
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
        check(libc.mount(None, target.encode(), None, flags, None), "remount %s read-only" % path)
    elif op == "proc":
        pass  # mounted by the first process of the new pid namespace (see confine_mount_namespace)
    else:
        raise SetupError("unknown root-plan entry %r" % (op,))


def confine_mount_namespace(job, ctypes, libc, check):
    """Root only: a fresh root of read-only binds + private tmpfs, in new namespaces, then pivot_root.

    Returns in a new process: the first (pid 1) of a new pid namespace, whose end kills every
    process the program left behind. The process that called it only waits for that one and leaves
    with its exit status (or dies by the same signal).
    """
    spec = job["mountns"]
    new = spec["newroot"]
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS),
          "unshare(mount, pid, net, ipc, uts)")
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount(/, private)")
    check(libc.mount(b"tmpfs", new.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=0755"),
          "tmpfs root")
    for entry in spec["entries"]:
        _apply_entry(libc, check, new, entry)
    for entry in spec["entries"]:
        if entry[0] == "proc":
            _mkdirs(new + entry[1], 0o555)

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    pid = os.fork()
    if pid:  # the waiter, outside the new pid namespace
        os.close(0)
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            _signal.signal(sig, _signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        os._exit(os.waitstatus_to_exitcode(status) if not os.WIFSIGNALED(status) else 1)

    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # the waiter gone (killed by the parent): this one too
    for entry in spec["entries"]:
        if entry[0] == "proc":
            check(libc.mount(b"proc", (new + entry[1]).encode(), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                             None), "mount proc")
    os.chdir(new)
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is not None:
        check(libc.syscall(number, b".", b"."), "pivot_root")
        check(libc.umount2(b".", MNT_DETACH), "detach the old root")
    else:  # no pivot_root number known for this machine: chroot (no capability is left to leave it)
        check(libc.chroot(b"."), "chroot")
    os.chdir("/")
    check(libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None),
          "remount / read-only")


# ------------------------------------------------------------------------------ identity and limits

def set_limits(lim):
    for name, value in (("RLIMIT_CORE", 0), ("RLIMIT_CPU", lim["cpu"]), ("RLIMIT_AS", lim["as"]),
                        ("RLIMIT_FSIZE", lim["fsize"]), ("RLIMIT_NOFILE", lim["nofile"]),
                        ("RLIMIT_NPROC", lim["nproc"])):
        what = getattr(resource, name)
        soft, hard = resource.getrlimit(what)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        # CPU: SIGXCPU at the soft limit, SIGKILL one second later.
        resource.setrlimit(what, (value, value + 1 if name == "RLIMIT_CPU" else value))


def drop_uid(ctypes, libc, check, uid, keep_read_cap):
    """setuid to the private uid; every capability (bounding set included) is gone afterwards,
    except CAP_DAC_READ_SEARCH when ``keep_read_cap`` (unconfined mode, interpreter in a closed dir)."""
    if keep_read_cap:
        check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    elif libc is not None:  # under bwrap (no libc loaded: ctypes costs ~5 ms a run) no_new_privs is set,
        for cap in range(64):  # so the bounding set cannot give anything back; here, empty it anyway
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the last capability: fine
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SetupError("uid drop did not stick")
    if keep_read_cap:  # keep only CAP_DAC_READ_SEARCH: read anywhere, write only what the uid may
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]

        data = (Data * 2)()
        data[0].effective = data[0].permitted = 1 << CAP_DAC_READ_SEARCH
        check(libc.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")
        check(libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS, 0)")


def process_status():
    """(effective capability mask, no_new_privs) from /proc/self/status ((0, None) without /proc)."""
    caps, nnp = 0, None
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    caps = int(line.split()[1], 16)
                elif line.startswith(b"NoNewPrivs:"):
                    nnp = line.split()[1] == b"1"
    except OSError:
        pass
    return caps, nnp


def observed(job):
    """What the program can see, checked from inside (cheap: a few stats), for the isolation record."""
    seen = job["observe"]
    facts = {}
    # The host's files: the parent left a canary beside the job; confined, it is not there.
    facts["read_confined"] = not os.path.exists(seen["canary"])
    # Other processes: the parent's pid is not in a new pid namespace's /proc.
    facts["pidns"] = not os.path.exists("/proc/%d" % seen["parent_pid"])
    try:  # the host's /tmp is a different filesystem object, and nothing can be written to it
        st = os.stat("/tmp")
        facts["private_tmp"] = (st.st_dev, st.st_ino) != tuple(seen["host_tmp"]) and not os.access("/tmp", os.W_OK)
    except OSError:
        facts["private_tmp"] = True
    try:
        with open("/proc/self/net/dev", "rb") as f:
            names = [line.split(b":")[0].strip() for line in f.read().splitlines()[2:]]
        facts["no_network"] = names == [b"lo"]
    except OSError:
        pass
    facts["capabilities"], nnp = process_status()
    if nnp is not None:
        facts["no_new_privs"] = nnp
    return facts


# ------------------------------------------------------------------------------------------- the run

def main():
    job = marshal.loads(sys.stdin.buffer.read())
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    runner_file = __file__
    nonce, rfd, work = job["nonce"], job["result_fd"], job["workdir"]
    write, getpid, to_repr = os.write, os.getpid, repr
    maxmsg = job["max_message"]

    def emit(rec):  # one line per record: the repr of a dict of plain values (parent: literal_eval)
        rec["n"] = nonce
        data = to_repr(rec).encode("utf-8", "backslashreplace") + b"\n"
        while data:
            data = data[write(rfd, data):]

    def short(text):
        text = str(text)
        return text if len(text) <= maxmsg else text[:maxmsg] + "...[truncated]"

    # ---- OS layers, as the parent asked; in strict mode a requested layer that fails aborts ----
    iso = {"confinement": job["confinement"]}
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

    ctypes = libc = check = None
    if job.get("mountns") or any(want.get(k) for k in ("netns", "userns_netns", "tmpfs", "read_cap")):
        ctypes, libc, check = load_libc()
    if job.get("mountns"):
        layer("mountns", lambda: confine_mount_namespace(job, ctypes, libc, check))
    if want.get("netns"):
        layer("netns", lambda: check(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)"))
    if want.get("userns_netns"):
        layer("userns_netns", lambda: check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET),
                                            "unshare(CLONE_NEWUSER|CLONE_NEWNET)"))
    if want.get("tmpfs"):
        def tmpfs():
            check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount(/, private)")
            opts = "size=%dm,mode=0700" % want["tmpfs"]
            if want.get("uid") is not None:
                opts += ",uid=%d,gid=%d" % (want["uid"], want["uid"])
            check(libc.mount(b"tmpfs", work.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts.encode()),
                  "mount(tmpfs)")
        layer("tmpfs", tmpfs)
    if want.get("chown_work") and want.get("uid") is not None:  # bwrap's tmpfs is root's: make it the uid's
        layer("chown_work", lambda: os.chown(work, want["uid"], want["uid"]))

    set_limits(job["limits"])
    if want.get("uid") is not None:
        layer("uid", lambda: drop_uid(ctypes, libc, check, want["uid"], want.get("read_cap")))
        if want.get("read_cap"):
            iso["read_cap"] = iso["uid"]
    if libc is not None:
        iso["no_new_privs"] = libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0

    os.chdir(work)
    iso.update(observed(job))
    sys.path[:] = job["sys_path"]
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)  # an over-long write fails (EFBIG), no kill
    sys.dont_write_bytecode = True
    import builtins
    import _sitebuiltins  # what `site` would add (the interpreter runs with -S)

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
    main_module = type(sys)("__main__")
    main_module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main_module
    ns = main_module.__dict__
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
                import collections
                import linecache
                import traceback

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


if __name__ == "__main__":
    main()
