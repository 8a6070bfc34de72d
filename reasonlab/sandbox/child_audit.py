"""The sandbox child's audit hook (run inside the sandbox, imported by `child.py`).

Installed (``sys.addaudithook``) just before the program runs, it refuses - and records - writes,
deletes, renames and chmods outside the work directory, socket creation and connects, subprocesses,
fork / exec / os.system, signals to other processes and rlimit changes. A refused attempt raises
PermissionError in the program; the parent makes the run an "error" even if the program caught it.

Standard library only; nothing from `reasonlab`; importing it does nothing.
"""

import os

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
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def inside_check(work):
    """inside(path, dir_fd=None): whether ``path`` resolves into the work directory (or /dev/null)."""
    realpath, fspath, fsdecode, readlink, isabs, join = (
        os.path.realpath, os.fspath, os.fsdecode, os.readlink, os.path.isabs, os.path.join)
    root = realpath(work)
    root_prefix = root + os.sep
    allowed = {"/dev/null"}

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

    return inside


def make_hook(work, emit, violations):
    """The audit hook for a program confined to ``work``: each refused attempt is appended to
    ``violations``, reported with ``emit`` (the first 20) and raised as PermissionError."""
    inside = inside_check(work)
    busy = [False]
    my_pid, getpid = os.getpid(), os.getpid

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

    return hook
