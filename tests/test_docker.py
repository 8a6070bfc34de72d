"""The worker images, checked without a docker engine: hadolint, the same install steps as the
Makefile (what the README and CI run), the CUDA torch pin equal to pyproject's, and the entrypoint."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile.cpu", ROOT / "docker" / "Dockerfile.cuda"]
ENTRYPOINT = ROOT / "docker" / "worker-entrypoint.sh"


def run_lines(dockerfile: Path) -> list[str]:
    """The RUN instructions with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    return [line[4:].strip() for line in text.splitlines() if line.startswith("RUN ")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    out = subprocess.run([str(Path(sys.executable).parent / "hadolint"), str(dockerfile)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_the_project_with_the_makefile(dockerfile):
    makefile = (ROOT / "Makefile").read_text()
    # the Makefile's install recipe is the README's `pip install -e ".[test]"` in .venv
    assert re.search(r'^\t\$\(PYTHON\) -m venv \$\(VENV\)$', makefile, re.M)
    assert re.search(r'^\t\$\(PY\) -m pip install .*-e "\.\[test\]"$', makefile, re.M)
    runs = run_lines(dockerfile)
    assert any(re.search(r"\bmake install PYTHON=python3(\.11)?\b", r) for r in runs), runs
    text = dockerfile.read_text()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    needed_dirs = [f"{pattern.rstrip('*')}/" for pattern in packages]  # every installed package, before install
    assert "deployments/" in needed_dirs
    for needed in ("pyproject.toml", "Makefile", *needed_dirs):
        assert re.search(rf"^COPY .*{re.escape(needed)}", text, re.M), f"{dockerfile.name} does not copy {needed}"
    assert 'ENTRYPOINT ["/opt/reasonlab/docker/worker-entrypoint.sh"]' in text
    assert (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().startswith("#")


def test_cuda_image_gets_pyprojects_torch_from_the_cuda_index():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [torch_pin] = [d for d in deps if d.startswith("torch==")]
    [cuda_run] = [r for r in run_lines(DOCKERFILES[1]) if "--index-url" in r]
    assert f" {torch_pin} " in f" {cuda_run} " and '"$TORCH_INDEX"' in cuda_run
    assert cuda_run.index(torch_pin) < cuda_run.index("make install")  # CUDA torch first, then the project
    assert "FROM nvidia/cuda:" in DOCKERFILES[1].read_text()


def test_worker_entrypoint_needs_a_server_and_starts_a_pool_worker():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["REASONLAB_DIR"] = str(ROOT)
    missing = subprocess.run([str(ENTRYPOINT)], env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "set PREFECT_API_URL" in missing.stderr
    env.update(PREFECT_API_URL="http://127.0.0.1:9/api", POOL="cpu", WORKER_NAME="w1")
    helped = subprocess.run([str(ENTRYPOINT), "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stdout + helped.stderr
    assert "--pool" in helped.stdout and "--limit" in helped.stdout


def test_worker_entrypoint_runs_a_flow_run_command_as_is():
    """Docker/kubernetes pools start each flow run as a command in the image: the entrypoint execs it."""
    env = {**os.environ, "REASONLAB_DIR": str(ROOT), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    out = subprocess.run([str(ENTRYPOINT), "sh", "-c", "echo ran in $PWD"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"ran in {ROOT}"
