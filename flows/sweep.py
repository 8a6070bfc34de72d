"""The model sweep: one child run of a deployment per (model x parameter set), then one comparison.

    python -m flows.sweep deployments/sweeps/concept_sft_models.yaml        # needs a server + gpu-pool worker
    python -m flows.sweep deployments/sweeps/activation_instruct_vs_base.yaml   # instruct vs base on MBPP
    prefect deployment run model-sweep/concept-sft-models --watch             # the same, from the deployment

Children are real deployment runs (`run_deployment`, linked as subflows) on the deployment's work pool,
launched together and awaited; their tasks are cached (`tasks/conventions.py`), so a rerun's children
reuse every finished stage (all tasks Cached). The comparison (`model-sweep-comparison` table,
`model-sweep-report` markdown, a PNG under $REASONLAB_HOME/runs/sweeps/<name>/) is read back from
the children's own artifacts and task states through the API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_image_artifact, acreate_markdown_artifact, acreate_table_artifact
from prefect.deployments import run_deployment

from reasonlab import paths
from reasonlab.errors import ReasonlabError
from reasonlab.io import write_json
from flows.sweep_spec import (comparison_markdown, comparison_rows, load_sweep, metrics_from_artifacts,
                             parse_sweep, plot_comparison)
from tasks.run_info import read_flow_run
from tasks.artifacts import image_markdown, url_for


async def run_child(deployment: str, child: dict[str, Any], sweep_name: str, poll_s: float) -> dict[str, Any]:
    flow_run = await run_deployment(name=deployment, parameters=child["parameters"], timeout=None,
                                    poll_interval=poll_s, tags=[f"sweep:{sweep_name}"],
                                    flow_run_name=f"{sweep_name}: {child['label']}")
    states, artifacts = await read_flow_run(flow_run.id)
    duration = None
    if flow_run.start_time and flow_run.end_time:
        duration = round((flow_run.end_time - flow_run.start_time).total_seconds(), 2)
    return {**child, "flow_run_id": str(flow_run.id), "flow_run_name": flow_run.name,
            "state": flow_run.state.name if flow_run.state else "Unknown", "duration_s": duration,
            "task_states": states, "artifact_keys": sorted(artifacts),
            "metrics": metrics_from_artifacts(artifacts, deployment)}


@flow(name="model-sweep")
async def model_sweep(
    sweep: str | None = None,
    models: list[str] | None = None,
    parameter_sets: list[dict] | None = None,
    deployment: str | None = None,
    base_parameters: dict | None = None,
    name: str | None = None,
    poll_s: float = 2.0,
) -> dict:
    """Run `deployment` once per model x parameter set (children on its work pool), then compare them.

    Args:
        sweep: a sweep YAML (deployments/sweeps/*.yaml); the other arguments override its fields.
        models: model references for the children (registry name, folder, Hub id, or block:NAME).
        parameter_sets: [{name, **flow parameters}], e.g. {name: k5, filter: {top_k: 5}}; default: one set
            named "default".
        deployment: "flow name/deployment name" of the children (default concept-sft/concept-sft).
        base_parameters: parameters every child gets (a set's entries override them; a parameter group such
            as concept-sft's `filter` merges field by field).
        name: the sweep's name (artifact titles, output folder, child run names).
        poll_s: how often to poll each child's state.
    """
    logger = get_run_logger()
    data: dict[str, Any] = {}
    if sweep:
        data = dict(load_sweep(paths.find_input(sweep)).__dict__)
    overrides = {"models": models, "parameter_sets": parameter_sets, "deployment": deployment,
                 "base_parameters": base_parameters, "name": name}
    data.update({k: v for k, v in overrides.items() if v is not None})
    spec = parse_sweep(data, where=sweep or "model-sweep parameters")
    children = spec.children()
    logger.info(f"sweep {spec.name}: {len(children)} children of {spec.deployment}")

    results = await asyncio.gather(*(run_child(spec.deployment, c, spec.name, poll_s) for c in children))

    rows = comparison_rows(list(results))
    out_dir = paths.runs_dir() / "sweeps" / spec.name
    png = plot_comparison(spec.name, spec.deployment, rows, out_dir / "comparison.png")
    write_json(out_dir / "comparison.json", {"sweep": spec.__dict__, "children": list(results), "rows": rows})
    await acreate_table_artifact(rows, key="model-sweep-comparison",
                                description=f"Sweep {spec.name}: one row per child run")
    await acreate_markdown_artifact(comparison_markdown(spec.name, spec.deployment, rows,
                                                         image_markdown(png, "sweep comparison")), key="model-sweep-report")
    if url_for(png):
        await acreate_image_artifact(image_url=url_for(png), key="model-sweep-plot", description=f"Sweep {spec.name}")
    failed = [r["child"] for r in rows if r["state"] != "Completed"]
    if failed:
        raise ReasonlabError(f"sweep {spec.name}: children not Completed: {failed} (see model-sweep-comparison)")
    return {"name": spec.name, "rows": rows, "png": str(png)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep YAML, e.g. deployments/sweeps/concept_sft_models.yaml")
    parser.add_argument("--models", nargs="+", default=None,
                        help="model references for the children, replacing the sweep file's (default: the file's)")
    parser.add_argument("--name", default=None, help="the sweep's name (default: the file's)")
    parser.add_argument("--poll-s", type=float, default=2.0, help="seconds between polls of each child's state "
                                                                   "(default: 2.0)")
    args = parser.parse_args(argv)
    try:
        out = asyncio.run(model_sweep(sweep=args.sweep, models=args.models, name=args.name, poll_s=args.poll_s))
    except ReasonlabError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(out["rows"], indent=1))


if __name__ == "__main__":
    main()
