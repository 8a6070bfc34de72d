"""The design card's rules: `reasonlab/` is a plain library that never loads Prefect, one subpackage per pipeline."""

import pkgutil
import subprocess
import sys

import reasonlab

PIPELINES = ["reasonlab.concept_sft", "reasonlab.activations", "reasonlab.dspy_compile", "reasonlab.retrieval",
             "reasonlab.three_stage"]


def library_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(reasonlab.__path__, prefix="reasonlab."))


def test_library_never_imports_prefect():
    modules = library_modules()
    assert {"reasonlab.concept_sft.attribution", "reasonlab.sandbox", "reasonlab.models.loader"} <= set(modules)
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"reasonlab pulled in Prefect modules: {out.stdout.strip()[:500]}"


def test_one_subpackage_per_pipeline_each_saying_what_it_is():
    top = {m.name for m in pkgutil.iter_modules(reasonlab.__path__) if not m.ispkg}
    assert top <= {"errors", "paths", "io", "tokens", "prompt_format", "llm_client", "local_server", "sandbox",
                   "stats", "sweeps", "plots", "params", "datasets",
                   "sandbox_child", "cli"}, f"pipeline modules at the top of reasonlab/: {sorted(top)}"
    for name in [*PIPELINES, "reasonlab.models"]:
        package = __import__(name, fromlist=["_"])
        assert package.__doc__ and package.__doc__.strip(), f"{name}/__init__.py has no docstring"
