"""Sweep definitions and their comparison: plain data in, plain data (and a PNG) out. No Prefect here.

A sweep runs one deployment once per (model x parameter set) and compares the runs:

    name: concept-sft-models
    deployment: concept-sft/concept-sft      # "flow name/deployment name"
    model_parameter: model                    # the flow parameter that takes the model
    base_parameters: {formats: {evaluation: [completion]}}
    models: [smollm2-135m-instruct, block:qwen]
    parameter_sets:                           # optional; default: one set named "default"
      - {name: default}
      - {name: top5, filter: {top_k: 5}}      # a parameter group merges field by field with the base's

`flows/sweep.py` fans the children out and waits. Each pipeline declares what its sweep compares in
`reasonlab/<pipeline>/sweep_metrics.py` (columns, figures from a child's artifacts, its picture);
`comparison_rows`, `comparison_markdown` and `plot_comparison` look that up by the deployment's flow name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reasonlab.errors import ReasonlabError
from reasonlab.io import read_structured
from reasonlab.markdown import table
from reasonlab.sweeps import SweepMetrics

SWEEP_FIELDS = {"name", "deployment", "model_parameter", "base_parameters", "models", "parameter_sets"}


@dataclass(frozen=True)
class SweepSpec:
    """One sweep: `deployment` run for every model x parameter set."""

    name: str
    deployment: str
    models: list[str]
    parameter_sets: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "default"}])
    base_parameters: dict[str, Any] = field(default_factory=dict)
    model_parameter: str = "model"

    def children(self) -> list[dict[str, Any]]:
        """[{label, model, set, parameters}] in model-major order; labels are unique."""
        out = []
        for model in self.models:
            for pset in self.parameter_sets:
                overrides = {k: v for k, v in pset.items() if k != "name"}
                out.append({"label": f"{short_model(model)} | {pset['name']}", "model": model, "set": pset["name"],
                            "parameters": {**merge_parameters(self.base_parameters, overrides),
                                           self.model_parameter: model}})
        return out


def merge_parameters(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` over `base`; a parameter group (a mapping in both) merges field by field."""
    out = dict(base)
    for key, value in overrides.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = {**base[key], **value} if both else value
    return out


def short_model(model: str) -> str:
    """A readable name for a model reference (a folder's name, a Hub id's repo, a block's name)."""
    return Path(model.rstrip("/")).name if model.startswith(("/", ".", "~")) else model


def parse_sweep(data: dict[str, Any], where: str = "sweep") -> SweepSpec:
    """Validate a sweep definition; one ReasonlabError naming the field otherwise."""
    if not isinstance(data, dict):
        raise ReasonlabError(f"{where}: a sweep definition is a mapping, got {type(data).__name__}")
    unknown = set(data) - SWEEP_FIELDS
    if unknown:
        raise ReasonlabError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(SWEEP_FIELDS)}")
    deployment = data.get("deployment", "concept-sft/concept-sft")
    if not isinstance(deployment, str) or deployment.count("/") != 1:
        raise ReasonlabError(f"{where}: deployment must be 'flow name/deployment name', got {deployment!r}")
    models = data.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        raise ReasonlabError(f"{where}: models must be a non-empty list of model names, got {models!r}")
    if len(set(models)) != len(models):
        raise ReasonlabError(f"{where}: models has duplicates: {models}")
    sets = data.get("parameter_sets") or [{"name": "default"}]
    if not isinstance(sets, list) or not all(isinstance(s, dict) for s in sets):
        raise ReasonlabError(f"{where}: parameter_sets must be a list of mappings, got {sets!r}")
    for i, s in enumerate(sets):
        if not isinstance(s.get("name"), str) or not s["name"]:
            raise ReasonlabError(f"{where}: parameter_sets[{i}] needs a name")
    if len({s["name"] for s in sets}) != len(sets):
        raise ReasonlabError(f"{where}: parameter set names repeat: {[s['name'] for s in sets]}")
    base = data.get("base_parameters") or {}
    if not isinstance(base, dict):
        raise ReasonlabError(f"{where}: base_parameters must be a mapping, got {base!r}")
    model_parameter = data.get("model_parameter", "model")
    for i, s in enumerate(sets):
        if model_parameter in s:
            raise ReasonlabError(f"{where}: parameter_sets[{i}] sets {model_parameter!r}: models come from `models`")
    return SweepSpec(name=str(data.get("name") or "sweep"), deployment=deployment, models=list(models),
                     parameter_sets=[dict(s) for s in sets], base_parameters=dict(base),
                     model_parameter=model_parameter)


def load_sweep(path: Path | str) -> SweepSpec:
    return parse_sweep(read_structured(path), where=str(path))


# The pipeline each deployment's flow runs, and the module where that pipeline declares its sweep figures.
SWEEP_METRICS_MODULES = {
    "concept-sft": "reasonlab.concept_sft.sweep_metrics",
    "activation-baseline": "reasonlab.activations.sweep_metrics",
    "dspy-compile": "reasonlab.dspy_compile.sweep_metrics",
    "instruction-retrieval": "reasonlab.retrieval.sweep_metrics",
    "three-stage": "reasonlab.three_stage.sweep_metrics",
}


def sweep_metrics(deployment: str) -> SweepMetrics:
    """The sweep figures of the pipeline that `deployment` ("flow name/deployment name") runs."""
    flow_name = deployment.split("/")[0]
    if flow_name not in SWEEP_METRICS_MODULES:
        raise ReasonlabError(f"no sweep figures for flow {flow_name!r} (deployment {deployment!r}): "
                             f"known flows are {sorted(SWEEP_METRICS_MODULES)}")
    return importlib.import_module(SWEEP_METRICS_MODULES[flow_name]).SWEEP_METRICS


def metrics_from_artifacts(artifacts: dict[str, Any], deployment: str) -> dict[str, Any]:
    """A child's figures from its artifacts, by the pipeline its deployment runs (None where not published)."""
    return sweep_metrics(deployment).from_artifacts(artifacts)


def comparison_rows(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per child: label, state, duration, task reuse, metrics (None where not measured)."""
    out = []
    for c in children:
        tasks = c.get("task_states", {})
        out.append({"child": c["label"], "model": c["model"], "set": c["set"], "state": c["state"],
                    "flow_run": c.get("flow_run_name"), "flow_run_id": c.get("flow_run_id"),
                    "duration_s": c.get("duration_s"), "tasks": len(tasks),
                    "tasks_cached": sum(s == "Cached" for s in tasks.values()), **c.get("metrics", {})})
    return out


def _number(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def comparison_markdown(name: str, deployment: str, rows: list[dict[str, Any]], image: str | None) -> str:
    """The sweep report: one row per child with its pipeline's columns, the pipeline's notes, the picture
    (`image`: markdown that shows it, or None)."""
    spec = sweep_metrics(deployment)
    cols = ["child", "state", "duration_s", "tasks_cached", "tasks", *spec.columns]
    lines = [f"# Sweep `{name}`", "", table(rows, cols, fmt=_number).rstrip("\n")]
    extra = spec.notes(rows)
    if extra:
        lines += ["", *extra]
    if image:
        lines += ["", image]
    return "\n".join(lines) + "\n"


def plot_comparison(name: str, deployment: str, rows: list[dict[str, Any]], dest: Path | str) -> Path:
    """The pipeline's own sweep picture, written atomically at `dest`."""
    return sweep_metrics(deployment).plot(name, rows, Path(dest))
