"""Orchestration end to end against a real Prefect server and real workers (subprocesses on loopback).

One module-scoped server (own PREFECT_HOME, own SQLite), `python -m deployments.setup` (twice: idempotent),
process workers on the `gpu` and `cpu` pools, `prefect deploy --all`, then:
  - `prefect deployment run concept-sft/concept-sft --watch` of the main job on stories260K: Completed + artifacts;
  - the model sweep over two offline models through deployments, its comparison artifact + PNG, and a
    rerun whose children reuse every task (all Cached).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO_DIR = os.environ.get("REASONLAB_DEMO_DIR")  # set it to keep the sweep's plot and rows after the test


class Cluster:
    """A Prefect server + workers as process groups, with the env every subprocess gets."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.home = tmp / "reasonlab-home"
        self.logs = tmp / "logs"
        self.logs.mkdir()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REASONLAB_"))}
        self.env = {
            **base,
            "PREFECT_API_URL": self.api,
            "PREFECT_HOME": str(tmp / "prefect-home"),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS": "2",  # a queued gpu task retries soon
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_CLI_PROMPT": "false",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "REASONLAB_HOME": str(self.home),
            "REASONLAB_MODEL_CACHE": os.environ["REASONLAB_MODEL_CACHE"],
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        }
        self.procs: list[subprocess.Popen] = []

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen(list(args), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        out = subprocess.run(list(args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, f"{args} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out

    def post(self, path: str, body: dict) -> list | dict:
        r = httpx.post(self.api + path, json=body, timeout=30)
        r.raise_for_status()
        return r.json()

    def get(self, path: str) -> dict:
        r = httpx.get(self.api + path, timeout=30)
        r.raise_for_status()
        return r.json()

    def wait_healthy(self, proc: subprocess.Popen, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, (self.logs / "server.log").read_text()[-3000:]
            try:
                if httpx.get(self.api + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"prefect server on {self.api} not healthy after {timeout}s")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    # ---------------------------------------------------------------- read back
    def flow_run(self, run_id: str) -> dict:
        return self.get(f"/flow_runs/{run_id}")

    def task_states(self, run_id: str) -> dict[str, str]:
        runs = self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200, "offset": 0,
                                               "sort": "EXPECTED_START_TIME_ASC"})
        return {r["name"].rsplit("-", 1)[0]: r["state"]["name"] for r in runs}

    def artifacts(self, run_id: str) -> dict[str, dict]:
        arts = self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}, "limit": 200,
                                               "offset": 0, "sort": "CREATED_DESC"})
        return {a["key"]: a for a in reversed(arts) if a.get("key")}

    def deployment_run(self, name: str, params: dict, timeout: float = 300) -> str:
        out = self.run(str(BIN / "prefect"), "deployment", "run", name, "--params", json.dumps(params), "--watch",
                       timeout=timeout)
        [run_id] = set(re.findall(r"UUID: ([0-9a-f-]{36})", out.stdout))
        assert "finished successfully in 'Completed'" in out.stdout, out.stdout[-3000:]
        return run_id


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_models):
    c = Cluster(tmp_path_factory.mktemp("orchestration"))
    try:
        server = c.spawn("server", str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                         "--port", str(c.port))
        c.wait_healthy(server)
        for _ in range(2):  # idempotent: a second run changes nothing and fails on nothing
            c.setup_out = c.run(sys.executable, "-m", "deployments.setup", "--home", str(c.home),
                                "--model", f"tiny-qwen={tiny_models['qwen2']}").stdout
        for pool in ("gpu", "cpu"):
            c.spawn(f"worker-{pool}", str(BIN / "prefect"), "worker", "start", "--pool", pool,
                    "--name", f"test-{pool}-worker", "--type", "process")
        c.deploy_out = c.run(sys.executable, "-m", "deployments.deploy", "--all").stdout
        yield c
    finally:
        c.stop()
        for log in sorted(c.logs.glob("*.log")):  # kept for a failing run's post-mortem
            print(f"--- {log.name}\n{log.read_text()[-2000:]}")


def test_setup_is_idempotent_and_pools_carry_device_and_storage(cluster):
    pools = {p["name"]: p for p in cluster.post("/work_pools/filter", {"limit": 50, "offset": 0})}
    assert {"cpu", "gpu"} <= set(pools) and {pools[n]["type"] for n in ("cpu", "gpu")} == {"process"}
    gpu_env = pools["gpu"]["base_job_template"]["variables"]["properties"]["env"]["default"]
    assert gpu_env["CUDA_VISIBLE_DEVICES"] == "0" and gpu_env["REASONLAB_HOME"] == str(cluster.home)
    assert gpu_env["REASONLAB_RESULT_STORAGE"] == "local-file-system/reasonlab-results"
    assert "CUDA_VISIBLE_DEVICES" not in pools["cpu"]["base_job_template"]["variables"]["properties"]["env"]["default"]
    limits = cluster.post("/v2/concurrency_limits/filter", {"limit": 50, "offset": 0})
    assert [(lim["name"], lim["limit"]) for lim in limits] == [("tag:gpu", 1)]  # one, not two, after two setups
    types = {t["slug"] for t in cluster.post("/block_types/filter", {"limit": 200, "offset": 0})}
    assert {"llm-endpoint", "reasonlab-model", "reasonlab-storage"} <= types  # registered even with no document
    docs = cluster.post("/block_documents/filter", {"limit": 100, "offset": 0, "include_secrets": False})
    names = sorted(f"{d['block_type']['slug']}/{d['name']}" for d in docs if not d.get("is_anonymous"))
    assert names == ["local-file-system/reasonlab-results", "reasonlab-model/default-model",
                     "reasonlab-model/tiny-qwen", "reasonlab-storage/default"]
    deps = {d["name"]: d for d in cluster.post("/deployments/filter", {"limit": 50, "offset": 0})}
    assert {"concept-sft", "nightly-eval", "activation-baseline", "concept-sft-models"} <= set(deps)
    assert deps["concept-sft"]["work_pool_name"] == "gpu" and deps["concept-sft-models"]["work_pool_name"] == "cpu"
    [nightly] = deps["nightly-eval"]["schedules"]
    assert nightly["schedule"]["cron"] == "0 2 * * *" and nightly["active"] is False
    schema = deps["concept-sft"]["parameter_openapi_schema"]  # what the UI's run form is drawn from
    assert {"model", "filter", "formats", "attribution", "concept", "experiment", "generation", "llm"} \
        <= set(schema["properties"])
    assert schema["definitions"]["AttributionParams"]["properties"]["tau"]["exclusiveMaximum"] == 1


@pytest.fixture(scope="module")
def stories_inputs(tmp_path_factory, stories_path, stories_case):
    """A prompt set where stories260K has one target case (as tests/test_concept_sft_flow.py), two SFT configs."""
    tmp = tmp_path_factory.mktemp("orchestration-inputs")
    (tmp / "prompts.json").write_text(json.dumps([
        {"prompt": "The little girl saw a", "answer": stories_case["answer"], "topic": ["girl"]},
        {"prompt": "The dog ran to the", "answer": "moon"}]))
    texts = ["Lily had a little cat. The little cat liked to sleep in the sun with Lily.",
             "Tom found a little bird in the garden. He gave the little bird some water."]
    for name, extra in {"main": {"output_dir": str(tmp / "ckpt")}, "sweep": {"learning_rate": 2e-3}}.items():
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(
            {"model_name": str(stories_path), "epochs": 1, "learning_rate": 1e-3, "use_chat_template": False,
             "texts": texts, **extra}))
    return {"prompts": str(tmp / "prompts.json"), "main": str(tmp / "main.yaml"), "sweep": str(tmp / "sweep.yaml"),
            "tmp": tmp}


def test_main_job_through_deployment_and_worker(cluster, stories_inputs):
    t0 = time.monotonic()
    run_id = cluster.deployment_run("concept-sft/concept-sft", {
        "prompts": stories_inputs["prompts"], "sft_config": stories_inputs["main"],
        "formats": {"evaluation": ["completion"]}, "concept": {"name": "little things"}})
    wall = time.monotonic() - t0
    run = cluster.flow_run(run_id)
    assert run["state"]["type"] == "COMPLETED" and run["work_pool_name"] == "gpu"
    states = cluster.task_states(run_id)
    assert set(states.values()) == {"Completed"}, states
    assert {"load-prompts", "topk-filter", "check-training-texts", "sft-experiment", "evaluate"} <= set(states), states
    arts = cluster.artifacts(run_id)
    assert {"concept-sft-filter", "concept-sft-results", "concept-sft-report"} <= set(arts)
    assert sum(k.startswith("sft-progress-case0-concept-") for k in arts) == 3  # one per seed
    [row] = json.loads(arts["concept-sft-results"]["data"])
    assert row["format"] == "completion" and 0 < row["base_p_correct"] < row["base_p_wrong"]
    # the worker wrote under the shared REASONLAB_HOME, and the task results went through the storage block
    assert list((stories_inputs["tmp"] / "ckpt").glob("case0-concept-*/seed0/model.safetensors"))
    assert list((cluster.home / "runs" / "concept_sft").glob("*/results.json"))
    assert len(list((cluster.home / "results").iterdir())) >= 5
    print(f"main job via deployment: state={run['state']['name']} run_time_s={run['total_run_time']:.1f} "
          f"cli_wall_s={wall:.1f} tasks={states}")


def test_sweep_over_two_models_then_rerun_reuses_children(cluster, stories_inputs, stories_path, tiny_models):
    params = {"models": [str(stories_path), "block:tiny-qwen"], "name": "test-sweep",
              "base_parameters": {"prompts": stories_inputs["prompts"], "sft_config": stories_inputs["sweep"],
                                  "formats": {"evaluation": ["completion"]}},
              "parameter_sets": [{"name": "k10", "filter": {"top_k": 10}}], "poll_s": 1}
    first_id = cluster.deployment_run("model-sweep/concept-sft-models", params)
    rows1 = json.loads(cluster.artifacts(first_id)["model-sweep-comparison"]["data"])
    second_id = cluster.deployment_run("model-sweep/concept-sft-models", params)
    arts2 = cluster.artifacts(second_id)
    rows2 = json.loads(arts2["model-sweep-comparison"]["data"])
    out = cluster.home / "runs" / "sweeps" / "test-sweep"
    if DEMO_DIR:
        demo = Path(DEMO_DIR)
        demo.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "comparison.png", demo / "comparison.png")
        (demo / "comparison.json").write_text(json.dumps({"first": rows1, "rerun": rows2,
                                                          "children": _children(cluster)}, indent=1))
        (demo / "report.md").write_text(arts2["model-sweep-report"]["data"])

    assert [r["child"] for r in rows1] == ["stories260K | k10", "block:tiny-qwen | k10"]
    assert {r["state"] for r in rows1 + rows2} == {"Completed"}
    stories1, qwen1 = rows1
    assert stories1["target_cases"] == 1 and stories1["tasks"] >= 6 and stories1["tasks_cached"] < stories1["tasks"]
    assert stories1["sft_p_correct"] is not None and stories1["base_p_correct"] > 0
    assert qwen1["tasks"] >= 2  # load-prompts + topk-filter at least (a random tiny model has no target case)
    for r1, r2 in zip(rows1, rows2, strict=True):  # rerun: new child runs, every task Cached, same numbers
        assert r2["flow_run_id"] != r1["flow_run_id"] and r2["tasks"] == r1["tasks"] and r2["tasks_cached"] == r2["tasks"]
        assert (r2["target_cases"], r2["base_p_correct"], r2["sft_p_correct"]) == \
               (r1["target_cases"], r1["base_p_correct"], r1["sft_p_correct"])
    # the children are real deployment runs on the gpu pool, linked to the sweep as subflows
    children = [cluster.flow_run(c["flow_run_id"]) for c in _children(cluster)]
    assert len(children) == 2 and {c["work_pool_name"] for c in children} == {"gpu"}
    assert all(c["parent_task_run_id"] for c in children)  # run_deployment as_subflow: linked to the sweep
    assert "model-sweep-report" in arts2 and "test-sweep" in arts2["model-sweep-report"]["data"]
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print("sweep first:", json.dumps(rows1), "\nsweep rerun:", json.dumps(rows2))


def _children(cluster) -> list[dict]:
    """The latest sweep's children as the sweep recorded them (flow run ids)."""
    data = json.loads((cluster.home / "runs" / "sweeps" / "test-sweep" / "comparison.json").read_text())
    return data["children"]
