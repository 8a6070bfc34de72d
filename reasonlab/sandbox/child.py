"""The sandbox's child: the trusted program that runs one untrusted program and its tests.

`reasonlab.sandbox` (the parent) decides the policy - which layers, which limits, which files the
program may see - and executes this file by path (``python -I -B -S child.py``, inside bubblewrap
when that is the confinement) with the job, a ``marshal``-ed dict of plain values, on stdin. This
file carries out the mechanics, in order:

1. read the job, put /dev/null on stdin;
2. the OS layers the parent asked for (`child_layers`): the mount-namespace confinement or the
   unconfined mode's weaker layers, resource limits, the drop to the private uid; then what the
   program really sees, reported as the run's ``isolation`` record;
3. compile the tests, each comparison in an ``assert`` checked: a compared value that is not of a
   plain built-in type (e.g. an object whose ``__eq__`` always says True) is a suspicious result;
4. the audit hook (`child_audit`), then the program, the test setup and each test, in one fresh
   ``__main__``; the result is written as ``repr``-ed dicts (one per line, tagged with the job's
   nonce) on the result descriptor.

It uses the standard library only and imports nothing from `reasonlab`; importing it does nothing.
"""

import marshal
import os
import sys

import _ast
import _signal

if __package__:  # imported as reasonlab.sandbox.child (to read or test it); it runs only by path
    from reasonlab.sandbox import child_audit, child_layers
else:  # run by path in the sandbox: its two helpers sit beside it
    sys.path.insert(0, os.path.dirname(__file__))
    import child_audit
    import child_layers

    del sys.path[0]

# Bound before the program runs: it may replace builtins (exec, type, ...) to fake a pass.
_exec, _compile, _type, _isinstance, _len = exec, compile, type, isinstance, len
HERE = os.path.dirname(os.path.abspath(__file__))
PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes)
PLAIN_CONTAINERS = (list, tuple, set, frozenset, dict)


class SuspiciousResult(Exception):
    """An assert compared a value that is not of a plain built-in type: its == may say anything."""


def read_job():
    job = marshal.loads(sys.stdin.buffer.read())
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return job


def reporter(job):
    """(emit(record), short(text)): records go to the result descriptor, one per line, as the repr of
    a dict of plain values tagged with the nonce (the parent reads them with literal_eval)."""
    nonce, rfd, maxmsg = job["nonce"], job["result_fd"], job["max_message"]
    write, to_repr, to_str = os.write, repr, str

    def emit(rec):
        rec["n"] = nonce
        data = to_repr(rec).encode("utf-8", "backslashreplace") + b"\n"
        while data:
            data = data[write(rfd, data):]

    def short(text):
        text = to_str(text)
        return text if len(text) <= maxmsg else text[:maxmsg] + "...[truncated]"

    return emit, short


def put_layers_in_place(job, emit):
    """The OS layers the parent asked for, in order; returns the isolation record. In strict mode
    (not a probe) a requested layer that fails ends the run with a SandboxSetupError."""
    layers = child_layers
    iso = {"confinement": job["confinement"]}
    want, work = job["layers"], job["workdir"]

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
        ctypes, libc, check = layers.load_libc()
    if job.get("mountns"):
        layer("mountns", lambda: layers.confine_mount_namespace(job, ctypes, libc, check))
    if want.get("netns"):
        layer("netns", lambda: layers.unshare_network(libc, check))
    if want.get("userns_netns"):
        layer("userns_netns", lambda: layers.unshare_network(libc, check, with_user_namespace=True))
    if want.get("tmpfs"):
        layer("tmpfs", lambda: layers.mount_work_tmpfs(libc, check, work, want["tmpfs"], want.get("uid")))
    if want.get("chown_work") and want.get("uid") is not None:  # bwrap's tmpfs is root's: make it the uid's
        layer("chown_work", lambda: os.chown(work, want["uid"], want["uid"]))
    layers.set_limits(job["limits"])
    if want.get("uid") is not None:
        layer("uid", lambda: layers.drop_uid(ctypes, libc, check, want["uid"], want.get("read_cap")))
        if want.get("read_cap"):
            iso["read_cap"] = iso["uid"]
    if libc is not None:
        iso["no_new_privs"] = libc.prctl(layers.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    os.chdir(work)
    iso.update(layers.observed(job))
    return iso


def prepare_interpreter(job):
    """The import path, no bytecode, over-long writes failing (EFBIG) instead of killing, and what
    `site` would add (the interpreter runs with -S). Returns the builtins module."""
    sys.path[:] = job["sys_path"]
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)
    sys.dont_write_bytecode = True
    import builtins
    import _sitebuiltins

    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    return builtins


# ------------------------------------------------------------------------------ checked comparisons

def plain_value_check():
    """check(value) -> the value to compare; raises SuspiciousResult(type name) unless it and
    everything inside it are of the exact built-in types PLAIN_SCALARS / PLAIN_CONTAINERS (a
    subclass may redefine ==). A dict subclass as the value itself (Counter, defaultdict,
    OrderedDict) is compared as a plain dict of its items. Types are matched by identity and
    everything used is bound now, before the program runs."""
    scalars, containers = frozenset(map(id, PLAIN_SCALARS)), frozenset(map(id, PLAIN_CONTAINERS))
    type_, id_, isinstance_, dict_, keys, values = type, id, isinstance, dict, dict.keys, dict.values
    qualname = type.__dict__["__qualname__"].__get__  # not the class's own (a metaclass could lie)

    def check(value):
        if id_(type_(value)) not in containers and isinstance_(value, dict_):
            value = dict_(value)
        stack, seen = [value], set()
        while stack:
            v = stack.pop()
            t = type_(v)
            if id_(t) in scalars:
                continue
            if id_(t) not in containers:
                raise SuspiciousResult(qualname(t))
            if id_(v) not in seen:  # a container holding itself is walked once
                seen.add(id_(v))
                stack.extend(keys(v) if t is dict_ else v)
                if t is dict_:
                    stack.extend(values(v))
        return value

    return check


def _nodes(tree):
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, list):
                stack.extend(v for v in value if isinstance(v, _ast.AST))
            elif isinstance(value, _ast.AST):
                stack.append(value)


def _checked(expr, check_name):
    """``check_name(expr)``, at expr's place in the source."""
    where = {k: getattr(expr, k) for k in ("lineno", "col_offset", "end_lineno", "end_col_offset")}
    return _ast.Call(func=_ast.Name(id=check_name, ctx=_ast.Load(), **where), args=[expr], keywords=[], **where)


def compile_test(source, filename, check_name):
    """(code, None) or (None, the compile error): ``source`` with each operand of every comparison
    inside an ``assert`` (but ``is`` / ``is not``, which cannot be faked) passed through check_name."""
    try:
        tree = _compile(source, filename, "exec", _ast.PyCF_ONLY_AST)
        for node in [n for a in _nodes(tree) if isinstance(a, _ast.Assert) for n in _nodes(a.test)]:
            if isinstance(node, _ast.Compare) and not all(isinstance(op, (_ast.Is, _ast.IsNot)) for op in node.ops):
                node.left = _checked(node.left, check_name)
                node.comparators = [_checked(c, check_name) for c in node.comparators]
        return _compile(tree, filename, "exec"), None
    except Exception as e:  # SyntaxError, ValueError (NUL byte), RecursionError: raised at that test's turn
        return None, e


# ------------------------------------------------------------------------------------------- the run

def run_all(job, ns, emit, done, tests, check_name):
    """The program, then the test setup, then each compiled test (`compile_test`); (phase, test index,
    exception) of the first failure, None when every test ran. No builtin is looked up once the
    program has started."""
    check, n = plain_value_check(), _len(tests)
    phase, current = "code", None
    try:
        _exec(_compile(job["code"], "<program>", "exec"), ns)
        phase = "setup"
        if job["setup_code"]:
            _exec(_compile(job["setup_code"], "<setup>", "exec"), ns)
        phase = "test"
        i = 0
        while i < n:
            current = i
            emit({"event": "test", "index": i})
            code, error = tests[i]
            if error is not None:
                raise error
            ns[check_name] = check  # again before each test: the program may have replaced it
            _exec(code, ns)
            i += 1
            done["tests_passed"] = i
        return None
    except BaseException as e:
        return phase, current, e


def describe_failure(done, job, failure, short):
    """Fill the final record for a run that stopped at ``failure`` (phase, test index, exception)."""
    phase, current, e = failure
    done["phase"], done["failed_test_index"] = phase, current
    done["error_type"] = _type(e).__name__
    if _type(e) is SuspiciousResult:
        done["status"], done["suspicious"] = "suspicious", e.args[0]
        done["error_message"] = ("the assert compared a value of type %s, not a plain built-in one (None, bool, "
                                 "int, float, complex, str, bytes, or lists, tuples, sets, dicts of them): "
                                 "its == can say anything" % (e.args[0],))
    else:
        done["status"] = "failed" if phase == "test" and _isinstance(e, AssertionError) else "error"
        try:
            done["error_message"] = short(e)
        except BaseException:
            done["error_message"] = "<unprintable %s>" % _type(e).__name__
    try:  # the user's frames only (the last 30: recursion can be 10**6 deep), with source
        import collections
        import linecache
        import traceback

        sources = [("<setup>", job["setup_code"]), ("<program>", job["code"])]
        sources += [("<test %d>" % i, t) for i, t in enumerate(job["tests"])]
        for name, text in sources:
            linecache.cache[name] = (len(text), None, text.splitlines(True), name)
        last = collections.deque(traceback.walk_tb(e.__traceback__), maxlen=30)
        frames = [f for f in traceback.StackSummary.extract(last) if os.path.dirname(f.filename) != HERE]
        text = "".join(["Traceback (most recent call last):\n"] + traceback.format_list(frames)
                       + traceback.format_exception_only(_type(e), e))
        maxmsg = job["max_message"]
        done["traceback"] = text if len(text) <= maxmsg else "..." + text[-maxmsg:]
    except BaseException:
        pass


def main():
    job = read_job()
    emit, short = reporter(job)
    iso = put_layers_in_place(job, emit)
    builtins = prepare_interpreter(job)
    main_module = type(sys)("__main__")
    main_module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main_module
    check_name = "_sandbox_checked_" + os.urandom(8).hex()  # unknown to the program
    tests = [compile_test(t, "<test %d>" % i, check_name) for i, t in enumerate(job["tests"])]
    violations = []
    hook = child_audit.make_hook(job["workdir"], emit, violations)
    done = {"event": "done", "status": "passed", "tests_passed": 0, "isolation": iso}
    emit({"event": "start", "isolation": iso})
    sys.addaudithook(hook)
    failure = run_all(job, main_module.__dict__, emit, done, tests, check_name)
    if failure is not None:
        try:
            describe_failure(done, job, failure, short)
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
