"""The code's shape, measured: the largest modules and functions of reasonlab/, flows/ and tasks/, and each flow
body's length (the lines after its docstring). No model, no Prefect run: pure AST.

    python bench/structure.py            # ends with key=value lines
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCOPES = ("reasonlab", "flows", "tasks")
MODULE_LIMIT, FUNCTION_LIMIT = 400, 80


def modules() -> list[Path]:
    return sorted(p for scope in SCOPES for p in (REPO / scope).rglob("*.py"))


def functions(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function in `path`, decorators excluded."""
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((f"{prefix}{child.name}", child.end_lineno - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(path.read_text(), str(path)), "")
    return out


def flow_bodies() -> dict[str, int]:
    """Lines of each @flow function's body after its docstring, per flows/ module."""
    out = {}
    for path in sorted((REPO / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                    "flow" in ast.unparse(d).split("(")[0] for d in node.decorator_list):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                out[f"{path.stem}.{node.name}"] = body[-1].end_lineno - body[0].lineno + 1 if body else 0
    return out


def main() -> None:
    sizes = sorted(((len(p.read_text().splitlines()), p.relative_to(REPO).as_posix()) for p in modules()),
                   reverse=True)
    funcs = sorted(((n, f"{p.relative_to(REPO).as_posix()}:{name}") for p in modules() for name, n in functions(p)),
                   reverse=True)
    print("largest modules:")
    for n, name in sizes[:8]:
        print(f"  {n:5d}  {name}")
    print("largest functions:")
    for n, name in funcs[:8]:
        print(f"  {n:5d}  {name}")
    bodies = flow_bodies()
    print("flow bodies (lines after the docstring):")
    for name, n in bodies.items():
        print(f"  {n:5d}  {name}")
    over_modules = [s for s in sizes if s[0] > MODULE_LIMIT]
    over_functions = [f for f in funcs if f[0] > FUNCTION_LIMIT]
    print(f"modules={len(sizes)}")
    print(f"largest_module_lines={sizes[0][0]}")
    print(f"largest_function_lines={funcs[0][0]}")
    print(f"modules_over_{MODULE_LIMIT}={len(over_modules)}")
    print(f"functions_over_{FUNCTION_LIMIT}={len(over_functions)}")
    print(f"longest_flow_body_lines={max(bodies.values())}")
    if not bodies:
        sys.exit("no @flow function found under flows/: the measurement's premise failed")


if __name__ == "__main__":
    main()
