"""`prefect deploy` for this project, with a fix for prefect 3.8.8's worker lookup.

    python -m deployments.deploy --all                # = prefect --no-prompt deploy --all, from the repo root
    python -m deployments.deploy --name concept-sft   # one deployment of prefect.yaml

Why not plain `prefect deploy`: after saving each deployment, prefect 3.8.8 asks the server for the
pool's online workers with `{"limit": null, "offset": null}`, which its own server (under fastapi 0.154)
rejects with 422, so `prefect deploy --all` stops after the first deployment. This entry point
fills in limit/offset (the client's only bug here) and then runs prefect's own CLI unchanged.
"""

from __future__ import annotations

import functools
import os
import sys

PAGE = 200  # the server's default page size (PREFECT_SERVER_API_DEFAULT_LIMIT)


def patch_worker_lookup() -> None:
    """Make `read_workers_for_work_pool` send integer limit/offset (sync and async clients)."""
    from prefect.client.orchestration._work_pools.client import WorkPoolAsyncClient, WorkPoolClient

    for cls in (WorkPoolAsyncClient, WorkPoolClient):
        original = cls.read_workers_for_work_pool
        if getattr(original, "_reasonlab_fixed", False):
            continue

        def fixed(self, work_pool_name, worker_filter=None, offset=None, limit=None, _original=original):
            return _original(self, work_pool_name, worker_filter, offset=offset or 0,
                             limit=PAGE if limit is None else limit)

        functools.update_wrapper(fixed, original)
        fixed._reasonlab_fixed = True
        cls.read_workers_for_work_pool = fixed


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("PREFECT_CLI_PROMPT", "false")  # non-interactive: everything comes from prefect.yaml
    patch_worker_lookup()
    from prefect.cli import app

    sys.argv = ["prefect", "--no-prompt", "deploy", *(sys.argv[1:] if argv is None else argv)]
    app()


if __name__ == "__main__":
    main()
