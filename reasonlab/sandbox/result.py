"""What a run's report means: the child's records (and how its process ended) turned into a
`SandboxResult`. A run without the child's final record is never "passed"."""

from __future__ import annotations

import ast
import dataclasses
import signal
from typing import Any

STATUSES = ("passed", "failed", "error", "timeout", "suspicious")


@dataclasses.dataclass
class SandboxResult:
    status: str  # "passed" | "failed" | "error" | "timeout" | "suspicious"
    failed_test: str | None = None  # the test statement that failed / raised / was running
    error_type: str | None = None  # exception class name, "SIGSEGV", "Timeout", "NoResult", "SuspiciousResult", ...
    error_message: str | None = None
    stdout: str = ""  # at most max_output_bytes of it
    stderr: str = ""
    duration_s: float = 0.0
    returncode: int | None = None  # negative: killed by that signal
    tests_passed: int = 0
    violations: list[str] = dataclasses.field(default_factory=list)  # refused attempts, in order
    traceback: str = ""
    output_truncated: bool = False
    # status "suspicious": the type of the value an assert compared that is not a plain built-in one
    # (its == may say anything, e.g. a class whose __eq__ always returns True)
    suspicious: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_records(raw: bytes, nonce: str) -> list[dict]:
    """The child's records: one ``repr``-ed dict per line, kept only when tagged with this run's nonce."""
    records = []
    for line in raw.splitlines():
        try:
            rec = ast.literal_eval(line.decode("utf-8", "replace"))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(rec, dict) and rec.get("n") == nonce:
            records.append(rec)
    return records


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _from_done(res: SandboxResult, done: dict, tests: list[str], violations: list[str]) -> None:
    """Fill ``res`` from the child's final record, distrusting a "passed" that does not add up."""
    res.status = done.get("status", "error")
    res.error_type = done.get("error_type")
    res.error_message = done.get("error_message")
    res.traceback = done.get("traceback", "")
    res.tests_passed = int(done.get("tests_passed", 0))
    res.violations = [str(v) for v in done.get("violations", violations)]
    if res.status == "suspicious":
        res.suspicious = str(done.get("suspicious"))
    idx = done.get("failed_test_index")
    if idx is not None and 0 <= idx < len(tests):
        res.failed_test = tests[idx]
    if res.status not in STATUSES:
        res.status = "error"
    if res.status == "passed" and (res.returncode != 0 or res.tests_passed != len(tests)):
        res.status, res.error_type = "error", "NoResult"
        res.error_message = (f"inconsistent report: passed with {res.tests_passed}/{len(tests)} tests "
                             f"run and exit code {res.returncode}")


def judge(records: list[dict], *, tests: list[str], exited: bool, returncode: int | None, bwrap: bool,
          duration_s: float, timeout_s: float, stdout: str, stderr: str, truncated: bool) -> SandboxResult:
    """The result of one run from its records and its end: the wall-clock or CPU limit reached is a
    "timeout", a final record decides otherwise, and without one the signal or exit code is the error."""
    done = next((r for r in reversed(records) if r.get("event") == "done"), None)
    started = next((r for r in records if r.get("event") == "start"), None)
    violations = [str(r.get("what")) for r in records if r.get("event") == "violation"]
    last_test = next((r.get("index") for r in reversed(records) if r.get("event") == "test"), None)
    rc = returncode
    if bwrap and done is None and rc is not None and 128 < rc < 128 + 65 and started is not None:
        rc = -(rc - 128)  # bwrap reports a child killed by signal N as exit code 128 + N
    res = SandboxResult(status="error", stdout=stdout, stderr=stderr, duration_s=round(duration_s, 4),
                        returncode=rc, output_truncated=truncated, violations=violations)
    if not exited:
        res.status, res.error_type = "timeout", "Timeout"
        res.error_message = f"no result within the {timeout_s:g} s wall-clock limit"
    elif rc in (-signal.SIGXCPU, -signal.SIGKILL) and done is None and duration_s >= timeout_s * 0.5:
        res.status, res.error_type = "timeout", "Timeout"
        res.error_message = f"CPU time limit reached ({signal_name(-rc)})"
    elif done is not None:
        _from_done(res, done, tests, violations)
    elif rc is not None and rc < 0:
        res.error_type = signal_name(-rc)
        res.error_message = f"killed by signal {signal_name(-rc)} ({-rc})"
    else:
        res.error_type = "NoResult"
        res.error_message = (f"the process exited with code {rc} before reporting a result "
                             "(os._exit / sys.exit / a crash before the tests finished)")
    if done is None and last_test is not None and 0 <= last_test < len(tests):
        res.failed_test = tests[last_test]
    if res.violations and res.status in ("passed", "failed", "suspicious"):
        res.status, res.error_type, res.suspicious = "error", "SandboxViolation", None
        res.error_message = f"sandbox: {res.violations[0]} is not allowed"
    if started is None and done is None and res.status == "error" and res.stderr:
        res.error_message = f"{res.error_message}; stderr: {res.stderr.strip()[-500:]}"
    return res
