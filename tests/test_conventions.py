"""The cache policy and the retry rule of tasks/conventions.py, on real Prefect tasks (the session harness)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from prefect import flow, task
from prefect.states import Completed, Failed

from reasonlab.errors import ReasonlabError
from tasks.conventions import PlainInputs, plain, task_options, transient_only


def ctx(name: str):
    return SimpleNamespace(task=SimpleNamespace(name=name))  # compute_key reads task_ctx.task.name only


def test_the_key_holds_task_version_and_every_input(tmp_path):
    key = PlainInputs(version="1").compute_key(ctx("unit"), {"x": 1, "p": "a"}, {})
    assert key == PlainInputs(version="1").compute_key(ctx("unit"), {"p": "a", "x": 1}, {})  # stable, order-free
    assert key != PlainInputs(version="2").compute_key(ctx("unit"), {"x": 1, "p": "a"}, {})  # the code version
    assert key != PlainInputs(version="1").compute_key(ctx("other"), {"x": 1, "p": "a"}, {})  # the task
    assert key != PlainInputs(version="1").compute_key(ctx("unit"), {"x": 2, "p": "a"}, {})  # an input
    assert key != PlainInputs(version="1").compute_key(ctx("unit"), {"x": 1}, {})
    assert PlainInputs(version="1").compute_key(ctx("unit"), None, {}) == PlainInputs(version="1").compute_key(ctx("unit"), {}, {})
    f = tmp_path / "data.txt"
    f.write_text("one")
    before = PlainInputs(version="1").compute_key(ctx("unit"), {"f": f}, {})
    f.write_text("two")  # a path input is keyed by its content
    assert PlainInputs(version="1").compute_key(ctx("unit"), {"f": f}, {}) != before
    assert plain({"p": (1, [Path(tmp_path / "none")])})["p"][1][0] == {"path": str(tmp_path / "none"), "missing": True}
    with pytest.raises(TypeError, match="cache key m is a builtins.object, not plain data"):
        plain(object(), "m")


def test_bumping_a_units_version_reruns_it_and_the_same_version_is_cached_in_prefect():
    calls: list[str] = []
    token = uuid.uuid4().hex  # this test's own cache records

    def unit_at(version: str):
        @task(name="versioned-unit", **task_options(version))
        def unit(x: int, token: str) -> int:
            calls.append(version)
            return x * 2
        return unit

    @flow
    def run(version: str):
        return unit_at(version)(21, token, return_state=True)

    states = [run(v) for v in ("1", "1", "2", "2", "1")]
    assert [s.name for s in states] == ["Completed", "Cached", "Completed", "Cached", "Cached"]
    assert calls == ["1", "2"] and all(s.result() == 42 for s in states)


@pytest.mark.parametrize("error, transient", [
    (ReasonlabError("bad input"), False), (TypeError("bug"), False), (KeyError("bug"), False),
    (AssertionError("bug"), False), (NotImplementedError("todo"), False),
    (ConnectionError("reset"), True), (TimeoutError("slow"), True), (RuntimeError("CUDA busy"), True),
    (OSError("disk"), True),
])
def test_transient_only_tells_bad_input_and_bugs_from_transient_failures(error, transient):
    assert transient_only(None, None, Failed(data=error)) is transient


@pytest.mark.parametrize("error, transient", [(ReasonlabError("bad input"), False), (KeyError("bug"), False),
                                              (ConnectionError("reset"), True), (RuntimeError("CUDA busy"), True)])
def test_only_transient_failures_are_retried_in_prefect(error, transient):
    attempts = []

    @task(**{**task_options("1", retries=2), "retry_delay_seconds": 0})
    def failing(token: str) -> None:
        attempts.append(1)
        raise error

    @flow
    def run() -> None:
        failing(uuid.uuid4().hex, return_state=True)

    run()
    assert len(attempts) == (3 if transient else 1)


def test_a_completed_state_is_never_retried_and_retries_are_off_by_default():
    assert transient_only(None, None, Completed(data=1)) is False
    assert task_options("1")["retry_condition_fn"] is None and task_options("1")["retries"] == 0
    opts = task_options("7", gpu=True, retries=3)
    assert opts["retry_condition_fn"] is transient_only and opts["retries"] == 3 and opts["tags"] == ["gpu"]
    assert opts["cache_policy"].version == "7"


def test_the_key_format_is_pinned(tmp_path):
    """A change of the key's payload invalidates every cache record of every user: it must be deliberate."""
    from dataclasses import dataclass

    from pydantic import BaseModel

    from reasonlab.io import sha256_file, sha256_json, tree_fingerprint

    key = PlainInputs(version="3").compute_key(ctx("unit"), {"x": 1, "p": [1, "a"]}, {})
    assert key == sha256_json({"task": "unit", "version": "3", "inputs": {"x": 1, "p": [1, "a"]}})
    f, d = tmp_path / "a.txt", tmp_path / "d"
    f.write_text("one")
    d.mkdir()
    (d / "x").write_text("1")
    assert plain(f) == {"path": str(f), "sha256": sha256_file(f)}
    assert plain(d) == {"path": str(d), "tree_sha256": tree_fingerprint(d)}
    assert plain(tmp_path / "gone") == {"path": str(tmp_path / "gone"), "missing": True}
    key = PlainInputs(version="1").compute_key(ctx("unit"), {"f": f, "n": None}, {})
    assert key == sha256_json({"task": "unit", "version": "1",
                               "inputs": {"f": {"path": str(f), "sha256": sha256_file(f)}, "n": None}})

    @dataclass
    class Point:
        x: int
        where: Path

    class Params(BaseModel):
        k: int = 2
        names: tuple[str, ...] = ("a",)

    assert plain({1: Point(3, f), "m": Params()}) == {"1": {"x": 3, "where": plain(f)}, "m": {"k": 2, "names": ["a"]}}
    assert plain((True, 1.5, "s")) == [True, 1.5, "s"]

    @dataclass
    class Holder:
        x: object

    class Loose(BaseModel):
        model_config = {"arbitrary_types_allowed": True}
        y: object = None

    from decimal import Decimal

    with pytest.raises(TypeError, match=r"cache key input\.h\.x is a decimal\.Decimal, not plain data: pass a name, "
                                        r"path or fingerprint \(e\.g\. a ResolvedModel\) instead of a "
                                        r"model/tokenizer/tensor"):
        plain({"h": Holder(Decimal(1))})
    with pytest.raises(TypeError, match=r"cache key input\.l\.y is a decimal\.Decimal"):
        plain({"l": Loose(y=Decimal(2))})
    with pytest.raises(TypeError, match=r"cache key input\.m\[1\] is a builtins\.object, not plain data"):
        plain({"m": [1, object()]})
    with pytest.raises(TypeError, match=r"cache key batch is a builtins\.type"):
        PlainInputs(version="1").compute_key(ctx("unit"), {"batch": Point}, {})


def test_task_options_are_the_conventions():
    from tasks.conventions import result_storage

    opts = task_options("5")
    assert opts == {"cache_policy": PlainInputs(version="5"), "persist_result": True, "result_serializer": "json",
                    "result_storage": result_storage(), "tags": [], "retries": 0, "retry_delay_seconds": 10,
                    "retry_condition_fn": None, "log_prints": False}


KEY_IN_A_CLONE = """
import json
from pathlib import Path
from types import SimpleNamespace
from reasonlab import paths
from tasks.conventions import PlainInputs
assert paths.project_root() == Path.cwd().resolve(), (paths.project_root(), Path.cwd())  # this clone's code
inputs = {"prompts": paths.find_input("data/target_prompts.json"), "heldout": paths.find_input("data/heldout_text.txt"),
          "folder": paths.find_input("data/three_stage"), "out": paths.runs_dir() / "eval.json", "cases": [1, "a"]}
task = SimpleNamespace(task=SimpleNamespace(name="load-prompts"))
print(json.dumps({"key": PlainInputs(version="1").compute_key(task, inputs, {}), "root": str(paths.project_root())}))
"""


def test_two_clones_sharing_one_home_share_the_cache_keys_of_their_files(tmp_path):
    """The same task on the same checkout files, from two clones at different absolute paths with one
    REASONLAB_HOME, has one key: a file in the checkout is keyed by its content and its path in the checkout."""
    root = Path(__file__).resolve().parents[1]
    skip = shutil.ignore_patterns("__pycache__", ".*")
    clones = [tmp_path / "alice" / "reasonlab", tmp_path / "bob" / "checkout"]
    for clone in clones:
        for part in ("reasonlab", "tasks", "data"):
            shutil.copytree(root / part, clone / part, ignore=skip)
    env = {**os.environ, "REASONLAB_HOME": str(tmp_path / "home")}
    runs = []
    for clone in clones:
        proc = subprocess.run([sys.executable, "-c", KEY_IN_A_CLONE], cwd=clone, capture_output=True, text=True,
                              env={**env, "PYTHONPATH": str(clone)}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert [r["root"] for r in runs] == [str(c) for c in clones]
    assert runs[0]["key"] == runs[1]["key"]
    # ... while the content still counts: an edited copy of the prompts in the second clone is another key
    (clones[1] / "data" / "target_prompts.json").write_text("[]")
    proc = subprocess.run([sys.executable, "-c", KEY_IN_A_CLONE], cwd=clones[1], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(clones[1])}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["key"] != runs[0]["key"]


def test_a_file_in_the_checkout_or_home_is_keyed_by_its_place_there_not_its_absolute_path():
    from reasonlab import paths
    from reasonlab.io import sha256_file

    prompts = paths.find_input("data/target_prompts.json")
    assert plain(prompts) == {"path": "checkout:data/target_prompts.json", "sha256": sha256_file(prompts)}
    assert plain(paths.runs_dir() / "none.json") == {"path": "home:runs/none.json", "missing": True}
