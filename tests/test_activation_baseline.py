"""Activation baseline: MBPP split, residual capture, batched greedy generation, resume, kill -9, shards, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reasonlab.activations import baseline as ab
from reasonlab.activations import codegen, mbpp
from reasonlab.activations.capture import ResidualCapture, hook_name
from reasonlab.errors import ReasonlabError
from reasonlab.models import forward_passes, load_model, resolve_model

REPO = Path(__file__).resolve().parents[1]

# Short real-shaped problems: tiny models, short prompts, fast tests.
PROBLEMS = [
    {"task_id": 101 + i, "text": f"Write a function to add {i} to x.", "code": f"def f(x):\n    return x + {i}\n",
     "test_list": [f"assert f(1) == {1 + i}", f"assert f(2) == {2 + i}"], "test_setup_code": "",
     "cyclomatic_complexity": 1}
    for i in range(6)
]


@pytest.fixture(scope="module")
def problems_parquet(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mbpp") / "validation_mbpp.parquet"
    pd.DataFrame(PROBLEMS).to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def llama(tiny_models):
    return load_model(resolve_model(str(tiny_models["llama"])), "cpu", "fp32")


# ---------------------------------------------------------------- split and inputs

def test_mbpp_split_is_the_seeds_sizes_deterministic_and_stratified():
    rows = mbpp.load_problems()  # ../shared/data/mbpp/mbpp.jsonl
    assert len(rows) == 974
    a, b = mbpp.assign_splits(rows), mbpp.assign_splits(list(reversed(rows)))
    assert a == b
    counts = {s: sum(v == s for v in a.values()) for s in mbpp.SPLITS}
    assert counts == {"sae": 489, "hyperparams": 97, "validation": 388}
    val = mbpp.load_split("validation")
    assert len(val) == 388 and [r["task_id"] for r in val] == sorted(r["task_id"] for r in val)
    # stratified: the validation split's complexity distribution follows the whole set's
    mean_all = np.mean([r["cyclomatic_complexity"] for r in rows])
    assert abs(np.mean([r["cyclomatic_complexity"] for r in val]) - mean_all) < 0.1
    assert mbpp.cyclomatic_complexity("def f(x):\n    if x and x > 1:\n        return 1\n    return 2\n") == 3


def test_bad_inputs_give_one_clear_error(tmp_path, problems_parquet, llama):
    model, _ = llama
    bad = tmp_path / "bad.parquet"
    pd.DataFrame([{"task_id": 1, "text": "x"}]).to_parquet(bad)
    with pytest.raises(ReasonlabError, match=r"missing column\(s\) \['test_list'\]"):
        mbpp.load_split("validation", bad)
    with pytest.raises(ReasonlabError, match="unknown MBPP split"):
        mbpp.load_split("train", problems_parquet)
    from flows.activation_baseline import select_range

    rows = mbpp.load_split("validation", problems_parquet)
    assert [r["task_id"] for r in select_range(rows, 1, 2)] == [102, 103]  # inclusive, as the seed
    for start, end in [(-1, 2), (3, 1), (6, None)]:
        with pytest.raises(ReasonlabError, match="bad range"):
            select_range(rows, start, end)
    with pytest.raises(ReasonlabError, match=r"unknown layer\(s\) \[2\].*2 decoder layers, 0..1"):
        ResidualCapture(model, [0, 2])
    with pytest.raises(ReasonlabError, match="no such top_20_features.json"):
        ab.extraction_layers(None, tmp_path / "nope.json")
    (tmp_path / "tf.json").write_text(json.dumps({"correct": [{"layer": 1, "feature_idx": 7}],
                                                  "incorrect": [{"feature_idx": 3}]}))
    with pytest.raises(ReasonlabError, match="'incorrect' list"):
        ab.extraction_layers(None, tmp_path / "tf.json")
    (tmp_path / "tf.json").write_text(json.dumps({"correct": [{"layer": 1, "feature_idx": 7}, {"layer": 0}],
                                                  "incorrect": [{"layer": 1, "feature_idx": 3}]}))
    info = ab.extraction_layers(None, tmp_path / "tf.json")
    assert info["layers"] == [1] and info["best_layers"] == {"correct": 1, "incorrect": 1}


# ---------------------------------------------------------------- capture and generation

@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_captured_residual_equals_output_hidden_states(tiny_models, arch):
    import torch

    model, tok = load_model(resolve_model(str(tiny_models[arch])), "cpu", "fp32")
    prompts = [codegen.mbpp_prompt(tok, p) for p in PROBLEMS[:3]]
    outs = codegen.generate_batch(model, tok, prompts, codegen.GenerationConfig(max_new_tokens=6,
                                                                              capture_generated=True), [0, 1])
    for prompt, out in zip(prompts, outs):
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states  # (L+1) x [1, S, D]
        for layer in (0, 1):
            ref = hs[layer + 1][0, -1].numpy()
            got = out["activations"][layer]["last_prompt"]
            if layer == 1:  # the last entry of hidden_states is after the final norm; the hook is before it
                with torch.no_grad():
                    got_normed = model.model.norm(torch.from_numpy(got)).numpy()
                assert np.allclose(got_normed, ref, atol=1e-4) and not np.allclose(got, ref, atol=1e-4), arch
                continue
            assert got.shape == ref.shape and np.allclose(got, ref, atol=1e-4), (arch, layer)
            gen = out["activations"][layer]["generated"]
            assert gen.shape == (out["completion_tokens"], model.config.hidden_size)
            assert np.allclose(gen[0], got, atol=1e-6)  # row 0 predicted the first token: the prompt's last
        assert out["prompt_tokens"] == enc["input_ids"].shape[1]
    # the generated rows equal a full forward over prompt + completion (KV cache off) at the same positions
    enc = tok(prompts[0], return_tensors="pt", add_special_tokens=False)
    one = codegen.generate_batch(model, tok, [prompts[0]], codegen.GenerationConfig(
        max_new_tokens=5, capture_generated=True), [0])[0]
    n = one["completion_tokens"]
    with torch.no_grad():
        full = model.generate(**enc, do_sample=False, max_new_tokens=5, pad_token_id=tok.pad_token_id)
        hs = model(full[:, :-1], output_hidden_states=True).hidden_states[1][0]  # [S + n - 1, D]
    s = enc["input_ids"].shape[1]
    assert np.allclose(one["activations"][0]["generated"], hs[s - 1:s - 1 + n].numpy(), atol=1e-4)
    assert hook_name(1) == "blocks.1.hook_resid_post"


def test_batched_greedy_equals_unbatched(llama):
    model, tok = llama
    prompts = [codegen.mbpp_prompt(tok, p) for p in [*PROBLEMS[:2], *mbpp.load_split("validation")[:2]]]
    cfg = codegen.GenerationConfig(max_new_tokens=10)
    batched = codegen.generate_batch(model, tok, prompts, cfg, [1])
    single = [codegen.generate_batch(model, tok, [p], cfg, [1])[0] for p in prompts]
    assert len({tok(p)["input_ids"].__len__() for p in prompts}) > 1  # padding really happens
    for b, s in zip(batched, single):
        assert b["completion"] == s["completion"] and b["completion_tokens"] == s["completion_tokens"]
        assert np.allclose(b["activations"][1]["last_prompt"], s["activations"][1]["last_prompt"], atol=1e-4)


# ---------------------------------------------------------------- resume, exclusions

def test_resume_skips_finished_tasks_and_never_duplicates(tmp_path, llama):
    model, tok = llama
    cfg = ab.BaselineConfig(max_new_tokens=6, batch_size=2, checkpoint_every=2, sandbox_workers=2)
    first = ab.run_range(model, tok, PROBLEMS[:3], [0, 1], cfg, tmp_path, "tasks_101_106")
    assert first["rows"] == 3 and first["resumed"] == 0
    before = forward_passes()
    again = ab.run_range(model, tok, PROBLEMS, [0, 1], cfg, tmp_path, "tasks_101_106")
    assert again["resumed"] == 3 and again["rows"] == 6
    # 3 new tasks in 2 batches of at most 2: 2 generate calls of 6 forwards each, nothing for the finished 3
    assert forward_passes() - before == 2 * 6
    rows = ab.read_rows(tmp_path / "shards" / "tasks_101_106" / ab.CHECKPOINT)
    assert sorted(r["task_id"] for r in rows) == [p["task_id"] for p in PROBLEMS]
    for r in rows:
        assert r["test_status"] in ("failed", "error") and r["tests_total"] == 2 and not r["pass"]
        for layer in (0, 1):
            with np.load(ab.activation_file(tmp_path / "activations" / "task_activations", r["task_id"], layer)) as z:
                assert z["last_prompt"].shape == (64,) and int(z["layer"]) == layer
    # a problem that is bad input is excluded (not retried), the others still get rows
    limit = len(tok(codegen.mbpp_prompt(tok, PROBLEMS[1]), add_special_tokens=False)["input_ids"]) + 5
    cfg2 = ab.BaselineConfig(max_new_tokens=4, batch_size=2, max_prompt_tokens=limit, sandbox_workers=2)
    long = {**PROBLEMS[0], "task_id": 900, "text": "Write a function " + "that is long " * 40}
    out = ab.run_range(model, tok, [long, {**PROBLEMS[1], "task_id": 901}], [1], cfg2, tmp_path, "extra")
    assert out["rows"] == 1 and [e["task_id"] for e in out["excluded"]] == [900]
    assert f"max_prompt_tokens={limit}" in out["excluded"][0]["error"]
    merged = ab.merge_dataset(tmp_path, "tiny/llama", {"model": "tiny"})
    assert merged["tasks"] == 7 and merged["excluded"] == 1
    ds = pd.read_parquet(merged["dataset"])
    assert Path(merged["dataset"]).name == "dataset_tiny_llama_temp_0_0.parquet"
    assert ds["task_id"].is_unique and len(ds) == 7


# ---------------------------------------------------------------- the flow: shards, kill -9, Ray

def test_flow_two_shards_merge_with_top_features(tmp_path, tiny_models, problems_parquet):
    from flows.activation_baseline import activation_baseline

    tf = tmp_path / "top_20_features.json"
    tf.write_text(json.dumps({"correct": [{"layer": 1, "feature_idx": 5}], "incorrect": [{"layer": 0, "feature_idx": 9}]}))
    out = activation_baseline(model=str(tiny_models["qwen2"]), mbpp_source=str(problems_parquet), start=0, end=4,
                              top_features=str(tf), max_new_tokens=6, batch_size=2, shards=2, device="cpu")
    ds = pd.read_parquet(out["dataset"])
    assert sorted(ds["task_id"]) == [101, 102, 103, 104, 105]
    meta = json.loads(Path(out["metadata"]).read_text())
    assert meta["layers"] == [0, 1] and meta["best_layers"] == {"correct": 1, "incorrect": 0}
    assert meta["counts"]["tasks"] == 5 and len(meta["shards"]) == 2 and meta["dtype"] == ["float32"]
    assert meta["split"]["selected"] == 5 and meta["versions"]["transformers"]
    assert {s["tasks"] for s in meta["shards"]} == {2, 3}
    files = sorted(p.name for p in (Path(out["run_dir"]) / "activations" / "task_activations").iterdir())
    assert len(files) == 10 and files[0] == "task_101_layer_0.npz"


def _api_env() -> dict:
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONUNBUFFERED="1")
    return env


def test_kill_9_mid_run_then_rerun_resumes_every_task_once(tmp_path, tiny_models, problems_parquet):
    home = tmp_path / "home"
    env = dict(_api_env(), REASONLAB_HOME=str(home))
    cmd = [sys.executable, "-m", "flows.activation_baseline", "--model", str(tiny_models["llama"]),
           "--mbpp", str(problems_parquet), "--layers", "1", "--max-new-tokens", "48", "--batch-size", "1",
           "--checkpoint-every", "1", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 180
    ckpts: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        ckpts = list(home.glob("runs/activation_baseline/*/shards/*/checkpoint.parquet"))
        if ckpts:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpts, "no checkpoint appeared before the run ended"
    at_kill = len(pd.read_parquet(ckpts[0]))
    assert 1 <= at_kill < len(PROBLEMS)
    assert not list(home.glob("runs/activation_baseline/*/dataset_*.parquet"))  # killed before the merge

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    ds = pd.read_parquet(summary["dataset"])
    assert sorted(ds["task_id"]) == [p["task_id"] for p in PROBLEMS]  # every task exactly once
    assert "resuming" in done.stderr + done.stdout


def test_ray_task_runner_fans_out_shards_and_merges(tiny_models, problems_parquet):
    import ray

    from flows.activation_baseline import with_task_runner

    run = with_task_runner("ray", ray_init={"num_cpus": 2, "include_dashboard": False})
    try:
        out = run(model=str(tiny_models["llama"]), mbpp_source=str(problems_parquet), start=0, end=3, layers=[0],
                  max_new_tokens=4, batch_size=2, shards=2, device="cpu")
    finally:
        ray.shutdown()
    ds = pd.read_parquet(out["dataset"])
    assert sorted(ds["task_id"]) == [101, 102, 103, 104]
    meta = json.loads(Path(out["metadata"]).read_text())
    assert len(meta["shards"]) == 2 and all(s["rows"] == 2 for s in meta["shards"])
