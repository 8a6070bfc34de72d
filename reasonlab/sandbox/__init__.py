"""The one place generated (untrusted) Python code is run: a fresh, confined, throw-away process.

`run_program(code, tests, setup_code)` executes ``code``, then ``setup_code`` (MBPP's fixtures,
which use the program's classes), then each test statement in one ``__main__`` namespace inside a
fresh ``python -I -B -S`` interpreter, in a work directory that is gone afterwards, and returns a
`SandboxResult` (passed / failed / suspicious / error / timeout). `run_many` runs several at once;
`isolation()` says which confinement layers work here, as seen from inside the child.

The parent decides the policy: `plan` (what the program may see), `probe` (which layers work),
`launch` (one child process), `result` (what its report means), `reap` (what it left behind),
`run` (the public entry points). The child carries it out: `child.py` (with `child_layers.py` and
`child_audit.py`) is run by path, uses the standard library only and imports nothing from reasonlab.
docs/sandbox.md describes the layers, limits and judging. This package does not import Prefect.
"""

from reasonlab.sandbox.launch import MAX_MESSAGE_CHARS, MAX_OPEN_FILES, MAX_TASKS
from reasonlab.sandbox.plan import CHILD, DISK_MB, PRIVATE_TMP_BYTES
from reasonlab.sandbox.probe import (CONFINEMENT_ENV, CONFINEMENTS, INSTALL_HINT, UNSAFE_ENV, isolation,
                                     require_confinement)
from reasonlab.sandbox.reap import sandbox_processes
from reasonlab.sandbox.result import STATUSES, SandboxResult
from reasonlab.sandbox.run import run_many, run_program

__all__ = ["CHILD", "CONFINEMENTS", "CONFINEMENT_ENV", "DISK_MB", "INSTALL_HINT", "MAX_MESSAGE_CHARS",
           "MAX_OPEN_FILES", "MAX_TASKS", "PRIVATE_TMP_BYTES", "STATUSES", "UNSAFE_ENV", "SandboxResult",
           "isolation", "require_confinement", "run_many", "run_program", "sandbox_processes"]
