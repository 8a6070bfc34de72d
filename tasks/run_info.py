"""Read back what a flow run did from the Prefect API: its task runs' states and its artifacts."""

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
