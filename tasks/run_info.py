"""Read back what a flow run did from the Prefect API: its task runs' states and its artifacts.

    python -m tasks.run_info                       # the newest artifacts (what `prefect artifact ls` should show)
    python -m tasks.run_info --key concept-sft-report --data
    python -m tasks.run_info --flow-run <id>

`prefect artifact ls` and `prefect artifact inspect` answer 422 on the pinned Prefect 3.8.8: its client sends
null filters that its own server rejects. This reader sends complete filter bodies instead.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client


async def read_flow_run(flow_run_id: UUID | str) -> tuple[dict[str, str], dict[str, Any]]:
    """({task run name: state name}, {artifact key: data of its newest version}); table data is parsed."""
    # Raw filter bodies: prefect 3.8.8's client fills omitted filters with None (rejected by its
    # server with 422) or with empty filters that join task_runs and so drop flow-level artifacts.
    by_run = {"id": {"any_": [str(flow_run_id)]}}
    async with get_client() as client:
        runs = await client._client.post("/task_runs/filter", json={
            "flow_runs": by_run, "sort": "EXPECTED_START_TIME_ASC", "limit": 200, "offset": 0})
        found = await client._client.post("/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "sort": "CREATED_DESC",
            "limit": 200, "offset": 0})
    states = {r["name"]: r["state"]["name"] for r in runs.json()}
    artifacts: dict[str, Any] = {}
    for a in found.json():
        if not a.get("key") or a["key"] in artifacts:  # newest first
            continue
        data = a.get("data")
        if a.get("type") == "table" and isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError:
                pass
        artifacts[a["key"]] = data
    return states, artifacts


def flow_run_summary(flow_run_id: UUID) -> tuple[dict[str, str], set[str]]:
    """({task run name: state name}, {artifact keys}) of one flow run."""
    states, artifacts = asyncio.run(read_flow_run(flow_run_id))
    return states, set(artifacts)


async def read_artifacts(key: str | None = None, flow_run_id: str | None = None, limit: int = 50) -> list[dict]:
    """The newest artifacts, optionally of one key or one flow run (raw filter bodies, see the module docstring)."""
    artifacts: dict[str, Any] = {}
    if key:
        artifacts["key"] = {"any_": [key]}
    if flow_run_id:
        artifacts["flow_run_id"] = {"any_": [flow_run_id]}
    async with get_client() as client:
        found = await client._client.post("/artifacts/filter", json={
            "artifacts": artifacts, "sort": "CREATED_DESC", "limit": limit, "offset": 0})
    return found.json()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tasks.run_info", description="List artifacts (newest first).")
    parser.add_argument("--key", default=None, help="only this artifact key")
    parser.add_argument("--flow-run", default=None, help="only this flow run's artifacts")
    parser.add_argument("--limit", type=int, default=50, help="how many")
    parser.add_argument("--data", action="store_true", help="print each artifact's data in full")
    args = parser.parse_args(argv)
    for a in asyncio.run(read_artifacts(args.key, args.flow_run, args.limit)):
        data = str(a.get("data"))
        print(f"{a['created'][:19]}  {a.get('key') or '-':40} {a['type']:9} flow run {a.get('flow_run_id')}")
        print(("    " + data.replace("\n", "\n    ")) if args.data else f"    {data[:100]!r}")


if __name__ == "__main__":
    main()
