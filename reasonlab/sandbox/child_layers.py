"""The sandbox child's operating-system layers (run inside the sandbox, imported by `child.py`).

The mount-namespace confinement (root, no bubblewrap): new mount/pid/network/ipc/uts namespaces, a
fresh root (tmpfs) holding the parent's root plan - read-only binds of the interpreter and its
libraries, private read-only /tmp and /dev/shm, a size-capped tmpfs work directory, a /proc of the
new pid namespace - then ``pivot_root``. The older, weaker layers of the unconfined mode (a network
namespace, a tmpfs work directory). Resource limits; the drop to the private uid with every
capability gone; and what the program really sees, checked from inside for the isolation record.

Standard library only; nothing from `reasonlab`; importing it does nothing.
"""

import os
import resource

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


def apply_entry(libc, check, new, entry):
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
        apply_entry(libc, check, new, entry)
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


# ------------------------------------------------------------------------ the unconfined mode's layers

def unshare_network(libc, check, with_user_namespace=False):
    """A network namespace (only a down loopback); without root, inside a new user namespace."""
    if with_user_namespace:
        check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare(CLONE_NEWUSER|CLONE_NEWNET)")
    else:
        check(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")


def mount_work_tmpfs(libc, check, work, size_mb, uid):
    """A size-capped tmpfs on the work directory, in a private mount namespace (owned by ``uid``)."""
    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount(/, private)")
    opts = "size=%dm,mode=0700" % size_mb
    if uid is not None:
        opts += ",uid=%d,gid=%d" % (uid, uid)
    check(libc.mount(b"tmpfs", work.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts.encode()), "mount(tmpfs)")
