"""Read back what a flow run did from the Prefect API: its task runs' states and its artifacts."""

from __future__ import annotations

import asyncio
from uuid import UUID

from prefect.client.orchestration import get_client


async def _read(flow_run_id: UUID) -> tuple[dict[str, str], set[str]]:
    # Raw filter bodies: prefect 3.8.8's client fills omitted filters with None (rejected by its
    # server with 422) or with empty filters that join task_runs and so drop flow-level artifacts.
    by_run = {"id": {"any_": [str(flow_run_id)]}}
    async with get_client() as client:
        runs = await client._client.post("/task_runs/filter", json={
            "flow_runs": by_run, "sort": "EXPECTED_START_TIME_ASC", "limit": 200, "offset": 0})
        artifacts = await client._client.post("/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "sort": "CREATED_DESC",
            "limit": 200, "offset": 0})
    states = {r["name"]: r["state"]["name"] for r in runs.json()}
    return states, {a["key"] for a in artifacts.json() if a.get("key")}


def flow_run_summary(flow_run_id: UUID) -> tuple[dict[str, str], set[str]]:
    """({task run name: state name}, {artifact keys}) of one flow run."""
    return asyncio.run(_read(flow_run_id))
