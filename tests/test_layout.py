"""The design card's rule: `reasonlab/` is a plain library; importing all of it never loads Prefect."""

import pkgutil
import subprocess
import sys

import reasonlab


def test_library_never_imports_prefect():
    modules = sorted(f"reasonlab.{m.name}" for m in pkgutil.iter_modules(reasonlab.__path__))
    assert "reasonlab.attribution" in modules and "reasonlab.sandbox" in modules
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"reasonlab pulled in Prefect modules: {out.stdout.strip()[:500]}"
