"""Running generated programs: `run_program` (one, in a fresh confined process) and `run_many`
(several at once, order preserved), each refused where the host's files cannot be hidden."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from reasonlab.errors import ReasonlabError
from reasonlab.sandbox.launch import execute
from reasonlab.sandbox.probe import layers_for, require_confinement
from reasonlab.sandbox.result import SandboxResult

_JOB_KEYS = {"code", "tests", "setup_code", "timeout_s", "memory_mb", "max_output_bytes"}


def run_program(code: str, tests: list[str], setup_code: str = "", timeout_s: float = 10,
                memory_mb: int = 512, max_output_bytes: int = 65536, *,
                allow_unconfined_reads: bool = False, confinement: str | None = None) -> SandboxResult:
    """Run ``code``, then ``setup_code``, then each test statement, in a fresh confined process.

    "passed": every test ran; "failed": a test's assert failed (`failed_test` names it);
    "suspicious": an assert compared a value that is not a plain built-in one (`suspicious` names
    its type: its ``==`` could say anything); "error": an exception, a crash (`error_type` is the
    signal name), no final report, or a refused sandbox violation; "timeout": the wall-clock or CPU
    limit was reached. stdout and stderr are kept up to ``max_output_bytes`` each. Raises
    `ReasonlabError` when the host's files cannot be hidden from the program here, unless
    ``allow_unconfined_reads`` (see `require_confinement`).
    """
    iso = require_confinement(allow_unconfined_reads, confinement)
    mode = iso["confinement"]
    return execute(code=code, tests=list(tests), setup_code=setup_code, timeout_s=timeout_s,
                   memory_mb=memory_mb, max_output_bytes=max_output_bytes, mode=mode,
                   want=layers_for(mode, layers_ok=iso), layers_ok=iso)[0]


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
