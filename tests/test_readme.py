"""The README's deployments table is prefect.yaml's deployments, so it cannot go stale; its links resolve."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def readme_deployments(text: str) -> set[tuple[str, str, str]]:
    """(name, entrypoint, pool) of each row of the README's table under '## Deployments'."""
    section = text.split("## Deployments", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \| (\w+) \|", section, re.M)
    return set(rows)


def test_the_table_parser_reads_rows():
    text = "## Deployments\n\n| deployment | entrypoint | pool | what |\n|---|---|---|---|\n| `a` | `f.py:g` | gpu | x |\n"
    assert readme_deployments(text) == {("a", "f.py:g", "gpu")}


def test_readme_deployments_table_is_prefect_yaml():
    declared = {(d["name"], d["entrypoint"], d["work_pool"]["name"])
                for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    listed = readme_deployments((REPO / "README.md").read_text())
    assert listed == declared, f"missing from the README: {declared - listed}; not in prefect.yaml: {listed - declared}"


def test_readme_links_point_at_files():
    text = (REPO / "README.md").read_text()
    links = [m for m in re.findall(r"\]\(([^)#]+)\)", text) if not m.startswith("http")]
    missing = [m for m in links if not (REPO / m).exists()]
    assert links and not missing, f"README links to missing files: {missing}"
