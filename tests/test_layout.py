"""The design card's rules: `reasonlab/` is a plain library that never loads Prefect, one subpackage per pipeline."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

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
    assert top <= {"errors", "paths", "io", "tokens", "prompt_format", "llm_client", "local_server", "stats",
                   "sweeps", "plots", "params", "llm_output", "console", "training", "generation", "markdown",
                   "datasets", "cli"}, f"pipeline modules at the top of reasonlab/: {sorted(top)}"
    for name in [*PIPELINES, "reasonlab.models"]:
        package = __import__(name, fromlist=["_"])
        assert package.__doc__ and package.__doc__.strip(), f"{name}/__init__.py has no docstring"


REPO = Path(reasonlab.__file__).resolve().parents[1]
FORBIDDEN_FOR_LIBRARY = ("prefect", "blocks", "tasks", "flows", "deployments")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement names, at any depth (inside functions too), with its line."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, node.module)]
    return out


def test_the_scan_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from blocks.llm_endpoint import X\n    import prefect.artifacts\n")
    assert imported_modules(source) == [(2, "blocks.llm_endpoint"), (3, "prefect.artifacts")]


def test_library_never_reaches_prefect_or_the_orchestration_even_inside_functions():
    bad = [f"{p.relative_to(REPO)}:{line} imports {name}"
           for p in sorted((REPO / "reasonlab").rglob("*.py"))
           for line, name in imported_modules(p) if name.split(".")[0] in FORBIDDEN_FOR_LIBRARY]
    assert not bad, "reasonlab/ must take plain data, never Prefect or blocks/tasks/flows:\n" + "\n".join(bad)


def test_no_pipeline_imports_another():
    names = [p.split(".")[1] for p in PIPELINES]
    bad = []
    for own in names:
        for p in sorted((REPO / "reasonlab" / own).rglob("*.py")):
            bad += [f"{p.relative_to(REPO)}:{line} imports {name}" for line, name in imported_modules(p)
                    if name.startswith("reasonlab.") and name.split(".")[1] in names and name.split(".")[1] != own]
    assert not bad, "a pipeline imports another (move what they share to the core):\n" + "\n".join(bad)


def test_modules_under_400_lines_and_functions_under_80():
    long_modules, long_functions = [], []
    for scope in ("reasonlab", "flows", "tasks"):
        for p in sorted((REPO / scope).rglob("*.py")):
            text = p.read_text()
            if len(text.splitlines()) > 400:
                long_modules.append(f"{p.relative_to(REPO)} ({len(text.splitlines())})")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                    long_functions.append(f"{p.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long_modules and not long_functions, f"over 400 lines: {long_modules}; over 80: {long_functions}"
