"""The sandbox: real child processes, real hostile programs, no mocks."""

from __future__ import annotations

import json
import os
import resource
import secrets
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from reasonlab import sandbox
from reasonlab.errors import ReasonlabError
from reasonlab.sandbox import MAX_TASKS, SandboxResult, isolation, run_many, run_program

IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")  # CI runs as root on Linux with bubblewrap installed (make test)

# The programs print their sandbox's environment token first, so the test can look for survivors.
TOKEN = "import os\nprint(os.environ['REASONLAB_SANDBOX'], flush=True)\n"


def live_processes_with(token: str) -> list[int]:
    """Pids of live (not zombie) processes whose environment holds `token` (an independent /proc scan)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if state not in (b"Z", b"X") and token.encode() in env:
            found.append(int(name))
    return found


def token_of(res: SandboxResult) -> str:
    first = res.stdout.split("\n", 1)[0].strip()
    assert first.startswith("rlsb-"), f"program did not print its token: {res}"
    return first


def assert_no_survivors(token: str) -> None:
    assert live_processes_with(token) == [], "sandbox processes survived the run"


LAYERS = ("read_confined", "pidns", "private_tmp", "no_network", "uid", "no_new_privs")  # + capabilities == 0


def missing_layer(name: str, why: str) -> None:
    """A check that needs layer `name` cannot run here: skipped with the layer's name in the summary (-rs);
    a failure in CI, where every layer must be active (root on Linux, bubblewrap installed by `make test`)."""
    message = f"sandbox layer {name!r} is not active here, so {why} was not checked: {isolation_or_error()}"
    if IN_CI:
        pytest.fail(message + " - CI must have it (root, bubblewrap installed by `make test`)")
    pytest.skip(message)


def isolation_or_error(confinement: str | None = None) -> dict:
    try:
        return isolation(confinement)
    except ReasonlabError as e:
        return {"error": str(e)}


def test_every_sandbox_layer_is_active_or_reported():
    """One place that names each missing layer (the summary shows it); in CI a missing layer fails."""
    iso = isolation_or_error()
    missing = [name for name in LAYERS if not iso.get(name)]
    if iso.get("capabilities") != 0:
        missing.append("capabilities")
    if iso.get("confinement") != "bwrap":
        missing.append("bwrap")
    if missing:
        missing_layer(", ".join(missing), "the whole confinement")
    assert iso["unavailable"] == {}, iso


def needs_layer(name: str, confinement: str | None = None) -> dict:
    """isolation() when it has ``name``; otherwise skip - but fail in CI, where every layer must be there."""
    try:
        iso = isolation(confinement)
    except ReasonlabError as e:
        iso = {"error": str(e)}
    if not iso.get(name):
        message = f"sandbox layer {name!r} ({confinement or 'best'} confinement) is not active here: {iso}"
        if IN_CI:
            pytest.fail(message + " - CI must have it (root, bubblewrap installed by `make test`)")
        pytest.skip(message)
    return iso


# ---------------------------------------------------------------------------------------------- basics

def test_passing_program():
    res = run_program("def add(a, b):\n    return a + b\n", ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"])
    assert res.status == "passed", res
    assert res.passed and res.returncode == 0 and res.tests_passed == 2
    assert res.failed_test is None and res.error_type is None
    assert 0 < res.duration_s < 5


def test_failing_assert_is_named():
    tests = ["assert sq(2) == 4", "assert sq(3) == 10", "assert sq(4) == 16"]
    res = run_program("def sq(x):\n    return x * x\n", tests)
    assert res.status == "failed", res
    assert res.failed_test == "assert sq(3) == 10"
    assert res.error_type == "AssertionError"
    assert res.tests_passed == 1
    assert "<test 1>" in res.traceback


def test_exception_type_and_message():
    res = run_program("def f():\n    raise ValueError('bad value 42')\nf()\n", ["assert True"])
    assert (res.status, res.error_type, res.error_message) == ("error", "ValueError", "bad value 42"), res
    assert "raise ValueError" in res.traceback  # the user's source line, not the runner's frames
    assert "child.py" not in res.traceback and "run_all" not in res.traceback  # no runner frames

    in_test = run_program("def g(x):\n    return x\n", ["assert g(1) == 1", "assert h(2) == 2"])
    assert (in_test.status, in_test.error_type) == ("error", "NameError"), in_test
    assert in_test.failed_test == "assert h(2) == 2" and "'h'" in in_test.error_message

    syntax = run_program("def broken(:\n    pass\n", ["assert True"])
    assert (syntax.status, syntax.error_type) == ("error", "SyntaxError"), syntax


def test_setup_code_runs_after_the_program_and_before_the_tests():
    code = "class Node:\n    def __init__(self, v):\n        self.v = v\n"
    res = run_program(code, ["assert root.v == 7"], setup_code="root = Node(7)")
    assert res.status == "passed", res


def test_output_captured_and_work_dir_removed():
    code = "import os, sys\nprint(os.getcwd())\nprint(os.environ['HOME'], os.environ['TMPDIR'])\n" \
           "print('to stderr', file=sys.stderr)\nopen('scratch.txt', 'w').write('mine')\n" \
           "assert open('scratch.txt').read() == 'mine'\n"
    res = run_program(code, ["assert True"])
    assert res.status == "passed", res
    cwd, envs = res.stdout.splitlines()[:2]
    assert envs == f"{cwd} {cwd}"
    assert res.stderr == "to stderr\n"
    assert not Path(cwd).exists() and not Path(cwd).parent.exists()


# ------------------------------------------------------------------------------------ hostile programs

def test_infinite_loop_times_out():
    start = time.monotonic()
    res = run_program(TOKEN + "while True:\n    pass\n", ["assert True"], timeout_s=1.5)
    assert res.status == "timeout" and res.error_type == "Timeout", res
    assert time.monotonic() - start < 6
    assert_no_survivors(token_of(res))


def test_fork_bomb_is_contained_and_leaves_nothing_behind():
    # os.fork is refused in-process; a fork bomb through libc (bypassing Python) meets RLIMIT_NPROC
    # and is killed - every process of it - at the timeout.
    refused = run_program("import os\nwhile True:\n    os.fork()\n", [])
    assert refused.status == "error" and refused.error_type == "PermissionError", refused
    assert any("fork" in v for v in refused.violations)

    bomb = TOKEN + "import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.fork()\n"
    res = run_program(bomb, ["assert True"], timeout_s=2)
    assert res.status in ("timeout", "error") and res.status != "passed", res
    assert_no_survivors(token_of(res))
    assert subprocess.run(["true"]).returncode == 0  # this process can still fork


def test_process_count_is_capped_and_orphans_are_killed():
    # Children that outlive the program (paused, and escaped into their own sessions) are killed.
    code = TOKEN + (
        "import ctypes\nlibc = ctypes.CDLL(None)\nn = 0\n"
        "for _ in range(1000):\n"
        "    pid = libc.fork()\n"
        "    if pid == 0:\n"
        "        libc.setsid()\n"
        "        libc.pause()\n"
        "        libc._exit(0)\n"
        "    if pid < 0:\n"
        "        break\n"
        "    n += 1\n"
        "print(n, flush=True)\n")
    res = run_program(code, ["assert True"], timeout_s=10)
    token = token_of(res)
    assert res.status == "passed", res
    forked = int(res.stdout.splitlines()[1])
    assert 0 < forked < 1000
    assert_no_survivors(token)
    if not isolation().get("uid"):
        missing_layer("uid", f"the process cap (MAX_TASKS={MAX_TASKS}; {forked} forks succeeded)")
    assert forked < MAX_TASKS


def test_memory_bomb_is_an_error_and_the_parent_is_fine():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    at_once = run_program("x = bytearray(8 * 1024 ** 3)\n", ["assert True"], memory_mb=256)
    growing = run_program("chunks = []\nwhile True:\n    chunks.append(b'x' * 10 ** 7)\n", ["assert True"],
                          memory_mb=256, timeout_s=20)
    for res in (at_once, growing):
        assert res.status == "error" and res.error_type == "MemoryError", res
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB
    assert run_program("x = bytearray(10 ** 6)", ["assert len(x) == 10 ** 6"]).status == "passed"


def test_writes_and_deletes_outside_its_dir_are_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    attempts = {
        "remove": f"import os\nos.remove({str(victim)!r})\n",
        "overwrite": f"open({str(victim)!r}, 'w').write('gone')\n",
        "rmtree": f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
        "rename": f"import os\nos.rename({str(victim)!r}, 'stolen.txt')\n",
        "new file": f"open({str(tmp_path / 'new.txt')!r}, 'x').write('x')\n",
        "pathlib": f"import pathlib\npathlib.Path({str(victim)!r}).unlink()\n",
        "via symlink": f"import os\nos.symlink({str(tmp_path)!r}, 'door')\nopen('door/victim.txt', 'w').write('x')\n",
        # a directory that exists inside the confinement too
        "via dir_fd": "import os\nfd = os.open('/', os.O_RDONLY)\nos.unlink('victim.txt', dir_fd=fd)\n",
        # caught by the program: still recorded, still not a pass
        "caught": f"import os\ntry:\n    os.remove({str(victim)!r})\nexcept OSError:\n    pass\n",
    }
    results = run_many([{"code": code, "tests": ["assert True"]} for code in attempts.values()])
    for name, res in zip(attempts, results, strict=True):
        assert res.status == "error", (name, res)
        assert res.violations and "outside the sandbox directory" in res.violations[0], (name, res)
    assert results[-1].error_type == "SandboxViolation"
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]


def test_file_work_inside_its_dir_is_allowed():
    code = ("import os, shutil, tempfile\nos.makedirs('a/b')\nopen('a/b/c', 'w').write('1')\n"
            "os.rename('a/b/c', 'a/b/d')\nos.chmod('a/b/d', 0o600)\nshutil.copyfile('a/b/d', 'e')\n"
            "shutil.rmtree('a')\nwith tempfile.TemporaryDirectory() as t:\n    open(t + '/x', 'w').write('y')\n"
            "open(os.path.expanduser('~/f'), 'w').write('z')\nos.remove('e')\n")
    res = run_program(code, ["assert sorted(os.listdir('.')) == ['f']"])
    assert res.status == "passed" and res.violations == [], res


def test_libc_level_delete_is_stopped_by_file_permissions(tmp_path):
    needs_layer("uid")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    code = (f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"assert libc.unlink({str(victim).encode()!r}) == 0, ctypes.get_errno()\n")
    res = run_program(code, [])
    assert res.status == "error" and res.error_type == "AssertionError", res
    # confined: the host's file is not there at all (ENOENT); otherwise file permissions (EACCES)
    assert res.error_message == ("2" if isolation().get("read_confined") else "13"), res
    assert victim.read_text() == "precious"


def _no_connection_arrived(server: socket.socket) -> bool:
    readable, _, _ = select.select([server], [], [], 0.3)
    return not readable


def test_socket_connect_never_reaches_a_local_listener():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        py = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n", [])
        assert py.status == "error" and py.error_type == "PermissionError", py
        assert any("network" in v for v in py.violations)
        assert _no_connection_arrived(server)

        if needs_layer("no_network"):
            # Bypass Python entirely: raw libc socket()/connect(); the network namespace stops it.
            raw = (f"import ctypes, struct\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                   f"fd = libc.socket(2, 1, 0)\nassert fd >= 0, ctypes.get_errno()\n"
                   f"addr = struct.pack('=H', 2) + struct.pack('!H4s8x', {port}, bytes([127, 0, 0, 1]))\n"
                   f"assert libc.connect(fd, addr, len(addr)) == 0, ctypes.get_errno()\n")
            res = run_program(raw, [])
            assert res.status == "error" and res.error_type == "AssertionError", res
            assert _no_connection_arrived(server)


def test_exit_before_the_tests_is_not_a_pass():
    quiet = run_program("import os\nos._exit(0)\n", ["assert False"])
    assert quiet.status == "error" and quiet.error_type == "NoResult" and quiet.returncode == 0, quiet
    polite = run_program("import sys\nsys.exit(0)\n", ["assert False"])
    assert polite.status == "error" and polite.error_type == "SystemExit", polite
    forged = run_program("import os\nprint('{\"status\": \"passed\"}', flush=True)\n"
                         "os.write(3, b\"{'event': 'done', 'status': 'passed'}\\n\")\nos._exit(0)\n", ["assert False"])
    assert forged.status == "error", forged


def test_segfault_through_ctypes_is_an_error_with_the_signal():
    res = run_program("import ctypes\nctypes.string_at(0)\n", ["assert True"])
    assert res.status == "error" and res.error_type == "SIGSEGV" and res.returncode == -11, res
    assert "SIGSEGV" in res.error_message


def test_printing_gigabytes_is_capped_and_quick():
    start = time.monotonic()
    res = run_program("import sys\nwhile True:\n    sys.stdout.write('x' * 10 ** 6)\n", ["assert True"],
                      max_output_bytes=1000, timeout_s=20)
    assert time.monotonic() - start < 10
    assert res.status == "error", res  # the write fails once the file-size limit is reached
    assert res.stdout == "x" * 1000 and res.output_truncated


def test_deep_recursion_is_an_error_not_a_crash():
    python_level = "import sys\nsys.setrecursionlimit(10 ** 6)\ndef f(n):\n    return f(n + 1) + 1\nf(0)\n"
    c_level = ("import sys, functools\nsys.setrecursionlimit(10 ** 6)\n"
               "@functools.lru_cache(None)\ndef g(n):\n    return 0 if n == 0 else g(n - 1) + 1\ng(10 ** 6)\n")
    results = run_many([{"code": c, "tests": ["assert True"], "timeout_s": 20} for c in (python_level, c_level)])
    for res in results:
        assert res.status == "error", res
        assert res.error_type in ("RecursionError", "MemoryError", "SIGSEGV"), res
    assert run_program("x = 1", ["assert x == 1"]).status == "passed"


# ------------------------------------------------------------------- confinement: the host's files

CONFINED = ["bwrap", "mountns"]  # bubblewrap; the project's own mount namespace (root, no bwrap)


@pytest.fixture
def host_secrets(monkeypatch):
    """A root-only secret where a home directory's secrets are (0600 file in a 0700 dir under $HOME),
    and a secret in this process's environment. Yields (dir, file, secret); removes the dir after."""
    home = Path(os.path.expanduser("~"))
    where = home if os.access(home, os.W_OK) else None
    secret_dir = Path(tempfile.mkdtemp(prefix="reasonlab-secret-", dir=where))
    try:
        os.chmod(secret_dir, 0o700)
        secret = f"sk-reasonlab-{secrets.token_hex(16)}"
        secret_file = secret_dir / "api_key.txt"
        secret_file.write_text(secret)
        os.chmod(secret_file, 0o600)
        monkeypatch.setenv("REASONLAB_TEST_SECRET", secret)
        yield secret_dir, secret_file, secret
    finally:
        shutil.rmtree(secret_dir, ignore_errors=True)


def leaked(res: SandboxResult, secret: str) -> bool:
    return any(secret in (text or "") for text in (res.stdout, res.stderr, res.error_message, res.traceback,
                                                   " ".join(res.violations)))


@pytest.mark.parametrize("confinement", CONFINED)
def test_hostile_reads_and_writes_are_contained(confinement, host_secrets):
    iso = needs_layer("read_confined", confinement)
    assert iso["confinement"] == confinement and iso["pidns"] and iso["private_tmp"], iso
    assert iso["capabilities"] == 0 and iso.get("no_network"), iso
    secret_dir, secret_file, secret = host_secrets
    escape = f"reasonlab-escape-{secrets.token_hex(6)}"
    libc_write = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                  "fd = libc.open({path!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
                  "assert fd >= 0, ctypes.get_errno()\n"
                  "assert libc.write(fd, b'escaped', 7) == 7, ctypes.get_errno()\nprint('wrote')\n")
    attempts = {
        "read a 0600 file": f"print(open({str(secret_file)!r}).read())\n",
        "read it through libc": (f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                                 f"fd = libc.open({str(secret_file).encode()!r}, 0)\n"
                                 f"assert fd >= 0, ctypes.get_errno()\nbuf = ctypes.create_string_buffer(200)\n"
                                 f"libc.read(fd, buf, 200)\nprint(buf.value)\n"),
        "list the home directory": f"import os\nprint(os.listdir({str(secret_dir.parent)!r}))\n",
        "list /root": "import os\nprint(os.listdir('/root'))\n",
        "list /home": "import os\nprint(os.listdir('/home'))\n",
        "read /proc/<parent>/environ": f"print(open('/proc/{os.getpid()}/environ', 'rb').read())\n",
        "read every /proc/*/environ": (
            "import os\nfound = b''\nfor p in os.listdir('/proc'):\n"
            "    if p.isdigit():\n"
            "        try:\n            found += open('/proc/%s/environ' % p, 'rb').read()\n"
            "        except OSError:\n            pass\n"
            "print(found)\nassert b'REASONLAB_TEST_SECRET' in found, 'no secret found'\n"),
        "the parent's environment": ("import os\nprint(open('/proc/self/environ', 'rb').read())\n"
                                     "print(os.environ['REASONLAB_TEST_SECRET'])\n"),
        "/etc/shadow": "print(open('/etc/shadow').read())\n",
        "libc write to /tmp": libc_write.format(path=f"/tmp/{escape}".encode()),
        "libc write to /dev/shm": libc_write.format(path=f"/dev/shm/{escape}".encode()),
        "python write to /tmp": f"open('/tmp/{escape}', 'w').write('escaped')\n",
    }
    results = run_many([{"code": code, "tests": ["assert True"]} for code in attempts.values()],
                       confinement=confinement)
    for (name, code), res in zip(attempts.items(), results, strict=True):
        assert res.status == "error", (name, res)
        assert not leaked(res, secret), (name, res)
        assert secret_dir.name not in res.stdout, (name, res)
    by_name = dict(zip(attempts, results))
    assert by_name["read a 0600 file"].error_type == "FileNotFoundError"  # not even there
    assert by_name["python write to /tmp"].violations, by_name["python write to /tmp"]  # recorded
    for name in ("libc write to /tmp", "libc write to /dev/shm"):  # refused by the kernel: EROFS
        assert by_name[name].error_type == "AssertionError" and by_name[name].error_message == "30", by_name[name]
    assert not os.path.exists(f"/tmp/{escape}") and not os.path.exists(f"/dev/shm/{escape}")
    assert secret_file.read_text() == secret


@pytest.mark.parametrize("confinement", CONFINED)
def test_confined_programs_still_work(confinement):
    needs_layer("read_confined", confinement)
    code = ("import os, json, decimal, tempfile, heapq, re\n"
            "print(sorted(os.environ))\n"
            "with tempfile.NamedTemporaryFile('w', delete=False) as f:\n    f.write('ok')\n"
            "assert open(f.name).read() == 'ok' and f.name.startswith(os.getcwd())\n")
    res = run_program(code, ["assert True"], confinement=confinement)
    assert res.status == "passed", res
    # the environment is built from nothing: exactly the sandbox's own variables (bwrap adds PWD)
    assert res.stdout.splitlines()[0].replace("'PWD', ", "") == str(sorted(
        ["HOME", "LANG", "LC_ALL", "LOGNAME", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
         "PATH", "PYTHONHASHSEED", "REASONLAB_SANDBOX", "TMPDIR", "USER"]))
    segv = run_program("import ctypes\nctypes.string_at(0)\n", ["assert True"], confinement=confinement)
    assert segv.error_type == "SIGSEGV" and segv.returncode == -11, segv


def test_unconfined_reads_are_refused_unless_asked_for_loudly(monkeypatch):
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    iso = isolation("none")
    assert iso["confinement"] == "none" and iso["read_confined"] is False, iso
    with pytest.raises(ReasonlabError, match="bubblewrap") as err:
        run_program("x = 1", ["assert x == 1"], confinement="none")
    assert "allow_unconfined_reads=True" in str(err.value)
    with pytest.raises(ReasonlabError, match="bubblewrap"):
        run_many([{"code": "x = 1", "tests": []}], confinement="none")
    with pytest.warns(RuntimeWarning, match="UNSAFE"):
        monkeypatch.setattr(sandbox.probe, "_WARNED_UNCONFINED", False)
        res = run_program("x = 1", ["assert x == 1"], confinement="none", allow_unconfined_reads=True)
    assert res.status == "passed", res


def test_the_child_is_a_real_module_run_by_path():
    package = Path(sandbox.__file__).parent
    assert sandbox.CHILD == (package / "child.py").resolve() and sandbox.CHILD.is_file()
    parent_src = "".join(p.read_text() for p in package.glob("*.py") if not p.name.startswith("child"))
    child_src = "".join(p.read_text() for p in package.glob("child*.py"))
    # the mechanics live in the child only; the parent only decides and judges
    for mechanic in ("addaudithook(hook)", "PATH_EVENTS", "SYS_PIVOT_ROOT", "setresuid(", "PyCF_ONLY_AST"):
        assert mechanic not in parent_src and mechanic in child_src, mechanic
    for name in ("child", "child_layers", "child_audit"):  # importing them does nothing
        out = subprocess.run([sys.executable, "-c", f"import reasonlab.sandbox.{name}"], capture_output=True,
                             text=True, cwd=package.parents[1], timeout=60)
        assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out


# ------------------------------------------------------------------------------------------ run_many

def test_run_many_preserves_order_and_survives_hostile_neighbours():
    n = 6
    jobs = [{"code": f"import time\ntime.sleep({(n - i) * 0.08})\nprint({i})\nidx = {i}\n",
             "tests": [f"assert idx == {i}"]} for i in range(n)]
    jobs[2] = {"code": "while True:\n    pass\n", "tests": ["assert True"], "timeout_s": 1}
    jobs[4] = {"code": "import ctypes\nctypes.string_at(0)\n", "tests": ["assert True"]}
    results = run_many(jobs, workers=3)
    assert [r.status for r in results] == ["passed", "passed", "timeout", "passed", "error", "passed"]
    assert [r.stdout.strip() for r in results if r.status == "passed"] == ["0", "1", "3", "5"]

    assert run_many([]) == []
    with pytest.raises(ReasonlabError, match="unknown keys"):
        run_many([{"code": "", "tests": [], "timeout": 1}])


# -------------------------------------------------------------------------------------- extract_code

def test_extract_code():
    from reasonlab.activations.codegen import extract_code

    assert extract_code("Sure!\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1\n"
    # the python block wins over an earlier block of another language
    text = "Run:\n```bash\npip install x\n```\nthen\n```Python3\nprint(2)\n```\n```python\nprint(3)\n```"
    assert extract_code(text) == "print(2)\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```py\nx = 2\n") == "x = 2\n"  # cut off before the closing fence
    assert extract_code("def f():\n    return 3\n") == "def f():\n    return 3\n"
    code = extract_code("Here you go:\n```python\ndef add(a, b):\n    return a + b\n```")
    assert run_program(code, ["assert add(2, 3) == 5"]).status == "passed"


def test_activation_baseline_metadata_records_the_isolation(tmp_path):
    from reasonlab.activations import dataset

    out = dataset.merge_dataset(tmp_path, "instruct", {"note": 1})
    meta = json.loads(Path(out["metadata"]).read_text())
    assert meta["note"] == 1 and meta["sandbox_isolation"] == isolation()
    assert {"confinement", "read_confined", "pidns", "private_tmp"} <= set(meta["sandbox_isolation"])


# ------------------------------------------------------------------------- a checkout under /tmp

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("confinement", CONFINED)
def test_a_checkout_and_venv_under_tmp_run_generated_code(confinement):
    """The private /tmp is mounted first: binds of an interpreter (or the child) under /tmp stay visible."""
    needs_layer("read_confined", confinement)
    root = Path(tempfile.mkdtemp(prefix="reasonlab-checkout-", dir="/tmp"))
    try:
        shutil.copytree(REPO / "reasonlab", root / "reasonlab", ignore=shutil.ignore_patterns("__pycache__"))
        venv = root / ".venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                       check=True, timeout=120)
        code = ("from reasonlab.sandbox import run_program\n"
                "res = run_program('def add(a, b):\\n    return a + b\\n', ['assert add(1, 2) == 3'], "
                f"confinement={confinement!r})\n"
                "print(res.status, res.error_type, res.error_message, res.stderr)\n")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=root, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.split()[0] == "passed", out.stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ a result that equals everything

ANY = "class Any:\n    __eq__ = lambda self, other: True\n    __ne__ = lambda self, other: False\n\n"


def test_a_result_that_equals_everything_is_suspicious_not_a_pass():
    res = run_program(ANY + "def add(a, b):\n    return Any()\n", ["assert add(1, 2) == 3"])
    assert res.status == "suspicious" and res.error_type == "SuspiciousResult", res
    assert not res.passed and res.failed_test == "assert add(1, 2) == 3" and res.tests_passed == 0
    assert res.suspicious == "Any" and "Any" in res.error_message, res

    cheats = {
        "on the right": (ANY + "def f():\n    return Any()\n", "assert 3 == f()"),
        "inside a list": (ANY + "def f():\n    return [1, Any()]\n", "assert f() == [1, 2]"),
        "a dict key": (ANY + "Any.__hash__ = lambda self: 0\ndef f():\n    return {Any(): 1}\n", "assert f() != {}"),
        "an int subclass": ("class I(int):\n    __eq__ = lambda s, o: True\n    __hash__ = int.__hash__\n"
                            "def f():\n    return I(0)\n", "assert f() == 5"),
        "a later test": (ANY + "def f(x):\n    return x if x < 2 else Any()\n", "assert f(1) == 1\nassert f(5) == 6"),
        "builtins.type patched": (ANY + "import builtins\nbuiltins.type = lambda *a: int\n"
                                  "def f():\n    return Any()\n", "assert f() == 1"),
        "in a generator": (ANY + "def f(x):\n    return Any()\n", "assert all(f(x) == x + 1 for x in range(3))"),
    }
    results = run_many([{"code": code, "tests": test.split("\n")} for code, test in cheats.values()])
    for name, res in zip(cheats, results, strict=True):
        assert res.status == "suspicious" and res.error_type == "SuspiciousResult", (name, res)
    assert results[list(cheats).index("a later test")].tests_passed == 1


def test_plain_results_are_judged_as_before():
    value = "[1, 2.5, 'a', b'b', True, None, 3j, (1, {2}), {'k': frozenset({3})}]"
    cyclic = "x = []\nx.append(x)\n"
    honest = run_program(f"def f():\n    return {value}\n" + cyclic,
                         [f"assert f() == {value}", "assert f() != []", "assert f() is not None",
                          "assert x == x", "assert len(f()) == 9 and f()[0] < 2"])
    assert honest.status == "passed" and honest.suspicious is None, honest
    # a dict subclass (MBPP's references return Counter and defaultdict) is compared as its items
    counts = run_program("import collections\ndef f(s):\n    return collections.Counter(s)\n"
                         "class Liar(dict):\n    __eq__ = lambda s, o: True\n",
                         ["assert f('aab') == {'a': 2, 'b': 1}", "assert Liar(a=1) != {'a': 1}"])
    assert counts.status == "failed" and counts.tests_passed == 1, counts
    wrong = run_program("def f():\n    return [1, 2]\n", ["assert f() == [1, 3]"])
    assert wrong.status == "failed" and wrong.suspicious is None, wrong
    # a test that never compares is not judged: identity cannot be faked
    assert run_program(ANY + "a = Any()\n", ["assert a is a"]).status == "passed"


def test_replacing_builtins_does_not_skip_the_tests():
    """The child binds exec, compile, type, isinstance before the program runs."""
    code = "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.isinstance = lambda *a: True\n" \
           "def add(a, b):\n    return 0\n"
    res = run_program(code, ["assert add(1, 2) == 3"])
    assert res.status == "failed" and res.failed_test == "assert add(1, 2) == 3", res


def test_the_activation_summary_counts_suspicious_results():
    from reasonlab.activations import dataset

    row = {"pass": False, "completion_tokens": 3, "completion": "x", "hit_token_limit": False,
           "activation_files": [], "error_type": "SuspiciousResult"}
    rows = [{**row, "test_status": "suspicious"}, {**row, "test_status": "failed", "error_type": "AssertionError"},
            {**row, "test_status": "passed", "pass": True, "error_type": None}]
    summary = dataset.summarize(rows)
    assert summary["suspicious"] == 1 and summary["passed"] == 1, summary
