"""Activation baseline: MBPP split, residual capture, batched greedy generation, resume, kill -9, shards, Ray,
the run directory's file layout, every range in metadata.json, exact checkpoints with memory, time vs token
limit, both pass rates, instruct vs base comparison, typed parameter groups and the CLI's help."""

from __future__ import annotations

import hashlib
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
from reasonlab.activations import codegen, dataset, mbpp
from reasonlab.activations import run_files as rf
from reasonlab.activations.layers import extraction_layers
from reasonlab.activations.params import BaselineConfig
from reasonlab.activations.capture import ResidualCapture, hook_name
from reasonlab.errors import ReasonlabError
from reasonlab.models import forward_passes, load_model, resolve_model
from report_tables import first_table_row

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

def test_mbpp_split_has_the_studys_sizes_deterministic_and_stratified():
    rows = mbpp.load_problems()  # the full MBPP, through reasonlab.datasets (the fixtures, in the tests)
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
    # ... and tightly: dealt in runs of ten down the complexity order, every split holds its share of the
    # problems up to each complexity within 3 (a hash-only split or a random subset is off by ~15 somewhere)
    assert_dealt_by_complexity(rows, a)


def assert_dealt_by_complexity(rows, which):
    shares = {"sae": 0.5, "hyperparams": 0.1, "validation": 0.4}
    for c in sorted({r["cyclomatic_complexity"] for r in rows}):
        upto = [which[r["task_id"]] for r in rows if r["cyclomatic_complexity"] <= c]
        for split, share in shares.items():
            assert abs(upto.count(split) - share * len(upto)) <= 3, (c, split, upto.count(split), len(upto))


def test_split_deals_runs_of_ten_in_complexity_order_with_hash_ties():
    rows = [{"task_id": i, "cyclomatic_complexity": 1 + i % 7} for i in range(200)]
    which = mbpp.assign_splits(rows, seed=3)
    assert_dealt_by_complexity(rows, which)
    ordered = sorted(rows, key=lambda r: (r["cyclomatic_complexity"],
                                          hashlib.sha256(f"3:{r['task_id']}".encode()).hexdigest()))
    dealt = ["sae"] * 5 + ["hyperparams"] + ["validation"] * 4
    assert [which[r["task_id"]] for r in ordered] == dealt * 20
    assert mbpp.assign_splits(rows, seed=4) != which  # the seed orders the ties
    assert mbpp.cyclomatic_complexity("def f(x):\n    return [y for y in x if y if y > 1]\n") == 4
    assert mbpp.cyclomatic_complexity("def f(:") == 1
    assert mbpp.cyclomatic_complexity("while a or b or c:\n    pass\n") == 4
    assert mbpp.cyclomatic_complexity("def f(x):\n    if x and x > 1:\n        return 1\n    return 2\n") == 3


def test_bad_inputs_give_one_clear_error(tmp_path, problems_parquet, llama):
    model, _ = llama
    bad = tmp_path / "bad.parquet"
    pd.DataFrame([{"task_id": 1, "text": "x"}]).to_parquet(bad)
    with pytest.raises(ReasonlabError, match=r"missing column\(s\) \['test_list'\]"):
        mbpp.load_split("validation", bad)
    with pytest.raises(ReasonlabError, match="unknown MBPP split"):
        mbpp.load_split("train", problems_parquet)
    from reasonlab.activations.run_plan import select_range

    rows = mbpp.load_split("validation", problems_parquet)
    assert [r["task_id"] for r in select_range(rows, 1, 2)] == [102, 103]  # both ends inclusive
    for start, end in [(-1, 2), (3, 1), (6, None)]:
        with pytest.raises(ReasonlabError, match="bad range"):
            select_range(rows, start, end)
    with pytest.raises(ReasonlabError, match=r"unknown layer\(s\) \[2\].*2 decoder layers, 0..1"):
        ResidualCapture(model, [0, 2])
    with pytest.raises(ReasonlabError, match="no such top_20_features.json"):
        extraction_layers(None, tmp_path / "nope.json")
    (tmp_path / "tf.json").write_text(json.dumps({"correct": [{"layer": 1, "feature_idx": 7}],
                                                  "incorrect": [{"feature_idx": 3}]}))
    with pytest.raises(ReasonlabError, match="'incorrect' list"):
        extraction_layers(None, tmp_path / "tf.json")
    (tmp_path / "tf.json").write_text(json.dumps({"correct": [{"layer": 1, "feature_idx": 7}, {"layer": 0}],
                                                  "incorrect": [{"layer": 1, "feature_idx": 3}]}))
    info = extraction_layers(None, tmp_path / "tf.json")
    assert info["layers"] == [1] and info["best_layers"] == {"correct": 1, "incorrect": 1}


# ---------------------------------------------------------------- capture and generation

@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_captured_residual_equals_output_hidden_states(tiny_models, arch):
    import torch

    model, tok = load_model(resolve_model(str(tiny_models[arch])), "cpu", "fp32")
    prompts = [codegen.mbpp_prompt(tok, p) for p in PROBLEMS[:3]]
    outs = codegen.generate_batch(model, tok, prompts, codegen.GenerationConfig(max_new_tokens=6,
                                                                              capture_generated=True), [0, 1])
    for prompt, out in zip(prompts, outs, strict=True):
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
    for b, s in zip(batched, single, strict=True):
        assert b["completion"] == s["completion"] and b["completion_tokens"] == s["completion_tokens"]
        assert np.allclose(b["activations"][1]["last_prompt"], s["activations"][1]["last_prompt"], atol=1e-4)


# ---------------------------------------------------------------- resume, exclusions

def test_resume_skips_finished_tasks_and_never_duplicates(tmp_path, llama):
    model, tok = llama
    cfg = BaselineConfig(max_new_tokens=6, batch_size=2, checkpoint_every=2, sandbox_workers=2)
    first = ab.run_range(model, tok, PROBLEMS[:3], [0, 1], cfg, tmp_path, "tasks_101_106")
    assert first["rows"] == 3 and first["resumed"] == 0
    before = forward_passes()
    again = ab.run_range(model, tok, PROBLEMS, [0, 1], cfg, tmp_path, "tasks_101_106")
    assert again["resumed"] == 3 and again["rows"] == 6
    # 3 new tasks in 2 batches of at most 2: 2 generate calls of 6 forwards each, nothing for the finished 3
    assert forward_passes() - before == 2 * 6
    rows = rf.read_rows(tmp_path / "shards" / "tasks_101_106" / rf.CHECKPOINT)
    assert sorted(r["task_id"] for r in rows) == [p["task_id"] for p in PROBLEMS]
    for r in rows:
        assert r["test_status"] in ("failed", "error") and r["tests_total"] == 2 and not r["pass"]
        for layer in (0, 1):
            with np.load(rf.activation_file(tmp_path / "activations" / "task_activations", r["task_id"], layer)) as z:
                assert z["last_prompt"].shape == (64,) and int(z["layer"]) == layer
    # a problem that is bad input is excluded (not retried), the others still get rows
    limit = len(tok(codegen.mbpp_prompt(tok, PROBLEMS[1]), add_special_tokens=False)["input_ids"]) + 5
    cfg2 = BaselineConfig(max_new_tokens=4, batch_size=2, max_prompt_tokens=limit, sandbox_workers=2)
    long = {**PROBLEMS[0], "task_id": 900, "text": "Write a function " + "that is long " * 40}
    out = ab.run_range(model, tok, [long, {**PROBLEMS[1], "task_id": 901}], [1], cfg2, tmp_path, "extra")
    assert out["rows"] == 1 and [e["task_id"] for e in out["excluded"]] == [900]
    assert f"max_prompt_tokens={limit}" in out["excluded"][0]["error"]
    merged = dataset.merge_dataset(tmp_path, "instruct", {"model": "tiny"})
    assert merged["generated"] == 7 and merged["excluded"] == 1 and merged["problems"] == 8
    ds = pd.read_parquet(merged["dataset"])
    assert Path(merged["dataset"]).name == "dataset_instruct_temp_0_0.parquet"
    assert ds["task_id"].is_unique and len(ds) == 7


def test_a_non_input_failure_retries_problem_by_problem(tmp_path, llama):
    """A failure that is not bad input (here a ValueError while building one problem's row) fails the batch;
    each problem is then retried alone: the healthy one gets its row, the failing one is excluded after
    max_attempts tries, with its error."""
    model, tok = llama
    logs: list[str] = []
    broken = {**PROBLEMS[2], "task_id": 950, "cyclomatic_complexity": "not a number"}  # int() raises ValueError
    for attempts in (2, 3):
        cfg = BaselineConfig(max_new_tokens=3, batch_size=2, max_attempts=attempts, sandbox_workers=1)
        rows, excluded = ab.process_batch(model, tok, [PROBLEMS[0], broken], [1], cfg, tmp_path / str(attempts),
                                          log=logs.append, batch_id="s/b0007")
        assert [r["task_id"] for r in rows] == [PROBLEMS[0]["task_id"]]
        assert rows[0]["attempts"] == 2 and rows[0]["batch_id"] == f"s/b0007.r{PROBLEMS[0]['task_id']}"
        [gone] = excluded
        assert gone["task_id"] == 950 and gone["attempts"] == attempts
        assert gone["error"].startswith("ValueError: invalid literal for int()")
    assert any("retrying problem by problem" in line for line in logs)
    assert any("task 950 excluded after 3 attempt(s)" in line for line in logs)
    # bad input (ReasonlabError) alone in its batch is not retried
    cfg = BaselineConfig(max_new_tokens=3, batch_size=1, max_prompt_tokens=5, max_attempts=3, sandbox_workers=1)
    rows, [gone] = ab.process_batch(model, tok, [PROBLEMS[0]], [1], cfg, tmp_path / "bad", log=logs.append)
    assert rows == [] and gone["attempts"] == 1 and "max_prompt_tokens=5" in gone["error"]


# ---------------------------------------------------------------- the flow: shards, kill -9, Ray

def test_flow_two_shards_merge_with_top_features(tmp_path, tiny_models, problems_parquet):
    from flows.activation_baseline import activation_baseline

    tf = tmp_path / "top_20_features.json"
    tf.write_text(json.dumps({"correct": [{"layer": 1, "feature_idx": 5}], "incorrect": [{"layer": 0, "feature_idx": 9}]}))
    out = activation_baseline(model=str(tiny_models["qwen2"]),
                              problems={"mbpp_source": str(problems_parquet), "start": 0, "end": 4},
                              capture={"top_features": str(tf)}, generation={"max_new_tokens": 6, "batch_size": 2},
                              placement={"shards": 2, "device": "cpu"})
    ds = pd.read_parquet(out["dataset"])
    assert sorted(ds["task_id"]) == [101, 102, 103, 104, 105]
    meta = json.loads(Path(out["metadata"]).read_text())
    assert meta["layers"] == [0, 1] and meta["best_layers"] == {"correct": 1, "incorrect": 0}
    assert meta["counts"]["generated"] == 5 and len(meta["ranges"]) == 2 and meta["dtype"] == ["float32"]
    assert meta["split"]["problems_in_split"] == 6 and meta["versions"]["transformers"]
    assert [(r["range"]["start"], r["range"]["end"], r["tasks"]) for r in meta["ranges"]] == [(0, 2, 3), (3, 4, 2)]
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
    before = pd.read_parquet(ckpts[0])
    at_kill = len(before)
    assert 1 <= at_kill < len(PROBLEMS)
    assert not list(home.glob("runs/activation_baseline/*/dataset_*.parquet"))  # killed before the merge

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    ds = pd.read_parquet(summary["dataset"])
    assert sorted(ds["task_id"]) == [p["task_id"] for p in PROBLEMS]  # every task exactly once
    assert "resuming" in done.stderr + done.stdout
    # before the merge (which drops repeated task_ids): the shards' checkpoints hold each task once, and the
    # rows finished before the kill were kept, not generated again
    shard_rows = pd.concat([pd.read_parquet(c) for c in home.glob("runs/activation_baseline/*/shards/*/checkpoint.parquet")])
    assert sorted(shard_rows["task_id"]) == [p["task_id"] for p in PROBLEMS]
    kept = shard_rows.set_index("task_id").loc[list(before["task_id"]), "batch_id"]
    assert list(kept) == list(before["batch_id"])


def test_ray_task_runner_fans_out_shards_and_merges(tiny_models, problems_parquet):
    import ray

    from flows.activation_baseline import with_task_runner

    run = with_task_runner("ray", ray_init={"num_cpus": 2, "include_dashboard": False})
    try:
        out = run(model=str(tiny_models["llama"]), problems={"mbpp_source": str(problems_parquet), "end": 3},
                  capture={"layers": [0]}, generation={"max_new_tokens": 4, "batch_size": 2},
                  placement={"shards": 2, "device": "cpu"})
    finally:
        ray.shutdown()
    ds = pd.read_parquet(out["dataset"])
    assert sorted(ds["task_id"]) == [101, 102, 103, 104]
    meta = json.loads(Path(out["metadata"]).read_text())
    assert len(meta["ranges"]) == 2 and all(r["rows"] == 2 for r in meta["ranges"])


# ---------------------------------------------------------------- the run directory's layout, ranges, instruct vs base

def _flow_run(flow_fn, **params):
    """(return value, flow run id) of an in-process flow call."""
    state = flow_fn(**params, return_state=True)
    return state.result(), state.state_details.flow_run_id


def test_output_dir_layout_every_range_in_metadata_and_instruct_vs_base(tmp_path, tiny_models, stories_path,
                                                                              problems_parquet):
    import asyncio

    from flows.activation_baseline import activation_baseline
    from flows.sweep_spec import (comparison_markdown, comparison_rows, load_sweep, metrics_from_artifacts,
                                  plot_comparison)
    from tasks.run_info import read_flow_run

    out_dir = tmp_path / "phase7_3"
    common = dict(capture={"layers": [0, 1]}, generation={"max_new_tokens": 6, "batch_size": 2},
                  placement={"device": "cpu"}, output_dir=str(out_dir))
    # two calls, two ranges, one run directory (the tiny qwen2 has a chat template: instruct)
    first, _ = _flow_run(activation_baseline, model=str(tiny_models["qwen2"]),
                         problems={"mbpp_source": str(problems_parquet), "start": 0, "end": 1}, **common)
    second, inst_id = _flow_run(activation_baseline, model=str(tiny_models["qwen2"]),
                                problems={"mbpp_source": str(problems_parquet), "start": 2, "end": 4}, **common)
    assert first["generated"] == 2 and second["generated"] == 5 and second["variant"] == "instruct"
    # the dataset's names, loadable
    ds_path = out_dir / "dataset_instruct_temp_0_0.parquet"
    assert Path(second["dataset"]) == ds_path and (out_dir / "metadata.json").is_file()
    ds = pd.read_parquet(ds_path)
    assert sorted(ds["task_id"]) == [101, 102, 103, 104, 105]
    for tid in ds["task_id"]:
        for layer in (0, 1):
            with np.load(out_dir / "activations" / "task_activations" / f"task_{tid:03d}_layer_{layer}.npz") as z:
                assert z["last_prompt"].shape == (64,) and int(z["task_id"]) == tid
    # the split as a parquet that --mbpp reads back
    split = mbpp.load_split("validation", out_dir / "validation_mbpp.parquet")
    assert [r["task_id"] for r in split] == [p["task_id"] for p in PROBLEMS]
    # every range merged, counts that match the dataset
    meta = json.loads((out_dir / "metadata.json").read_text())
    assert [(r["range"]["start"], r["range"]["end"]) for r in meta["ranges"]] == [(0, 1), (2, 4)]
    assert [r["rows_in_dataset"] for r in meta["ranges"]] == [2, 3]
    assert sum(r["rows_in_dataset"] for r in meta["ranges"]) == meta["counts"]["generated"] == len(ds)
    assert meta["counts"]["passed"] == int(ds["pass"].sum()) and meta["dataset"] == ds_path.name
    assert meta["variant"] == "instruct" and meta["prompt_format"] == "chat template"
    assert all(r["peak_rss_bytes"] > 10 * 2**20 for r in meta["ranges"])
    # the written split is the same split: a call reading it resumes in the same directory (nothing redone)
    again = activation_baseline(model=str(tiny_models["qwen2"]), problems={
        "mbpp_source": str(out_dir / "validation_mbpp.parquet"), "start": 0, "end": 4}, **common)
    assert again["generated"] == 5 and len(json.loads((out_dir / "metadata.json").read_text())["ranges"]) == 3
    # another model into the same directory is refused before any model work
    with pytest.raises(ReasonlabError, match="already holds another activation baseline run"):
        activation_baseline(model=str(stories_path), problems={"mbpp_source": str(problems_parquet), "end": 1},
                            **common)
    # the base model (stories260K: no chat template) on the same range: completion prompts, dataset_base_*
    base, base_id = _flow_run(activation_baseline, model=str(stories_path),
                              problems={"mbpp_source": str(problems_parquet), "end": 4},
                              **{**common, "output_dir": str(tmp_path / "base")})
    assert Path(base["dataset"]).name == "dataset_base_temp_0_0.parquet"
    base_ds = pd.read_parquet(base["dataset"])
    assert base_ds["prompt"].str.endswith("```python\n").all() and not ds["prompt"].str.endswith("```python\n").any()
    # the comparison the sweep publishes, for the deployment its YAML names, read from the two runs' own artifacts
    deployment = load_sweep(REPO / "deployments" / "sweeps" / "activation_instruct_vs_base.yaml").deployment
    children = []
    for label, run_id, variant in (("qwen2 | default", inst_id, "instruct"), ("stories | default", base_id, "base")):
        states, artifacts = asyncio.run(read_flow_run(run_id))
        headline = first_table_row(artifacts["activation-baseline-report"])  # the answer, first thing on the page
        summary = artifacts["activation-baseline-summary"][0]
        assert summary["variant"] == variant and headline["Passed"] == f"{summary['passed']} / 5"
        assert headline["Pass rate % [95 % CI]"] == (f"{100 * summary['pass_rate']:.1f} "
                                                     f"[{100 * summary['pass_rate_ci95_low']:.1f}, "
                                                     f"{100 * summary['pass_rate_ci95_high']:.1f}]")
        assert "outcomes.png" in artifacts["activation-baseline-report"]  # the picture, shown or named
        children.append({"label": label, "model": label, "set": "default", "state": "Completed",
                         "task_states": states,
                         "metrics": metrics_from_artifacts(artifacts, deployment)})
    rows = comparison_rows(children)
    assert [r["variant"] for r in rows] == ["instruct", "base"]
    assert rows[0]["problems"] == 5 and rows[0]["tasks"] == 2  # problems vs task runs: two different counts
    for row in rows:  # every figure is there: both rates with their intervals
        for column in ("problems", "generated", "passed", "pass_rate", "pass_rate_ci95_low", "pass_rate_ci95_high",
                       "pass_rate_generated", "pass_rate_generated_ci95_low", "pass_rate_generated_ci95_high",
                       "mean_completion_tokens", "hit_token_limit", "hit_time_limit", "error_types"):
            assert row[column] is not None and row[column] == row[column], (row["child"], column)
        assert row["pass_rate_ci95_low"] <= row["pass_rate"] <= row["pass_rate_ci95_high"]
        assert row["pass_rate_generated_ci95_low"] <= row["pass_rate_generated"] <= row["pass_rate_generated_ci95_high"]
    assert rows[1]["mean_completion_tokens"] == pytest.approx(base_ds["completion_tokens"].mean(), abs=0.01)
    n_err = (~base_ds["pass"]).sum()
    assert sum(int(x.rsplit(" ", 1)[1]) for x in rows[1]["error_types"].split(", ")) == n_err
    md = comparison_markdown("iv", deployment, rows, str(plot_comparison("iv", deployment, rows, tmp_path / "iv.png")))
    assert "pass_rate_ci95_low" in md and "pass_rate_generated_ci95_high" in md
    assert "| qwen2 \\| default | Completed |" in md
    assert (tmp_path / "iv.png").read_bytes()[:4] == b"\x89PNG"


def test_variants_and_a_summary_without_problems_has_no_rate():
    from reasonlab.activations.run_plan import resolve_variant
    from reasonlab.models import REGISTRY, ResolvedModel

    empty = dataset.summarize([])
    assert empty["pass_rate"] is None and empty["pass_rate_generated"] is None  # no estimate, not 0 %
    assert empty["pass_rate_ci95"] == [None, None] and empty["mean_completion_tokens"] is None
    only_excluded = dataset.summarize([], excluded=3)
    assert only_excluded["pass_rate"] == 0.0 and only_excluded["pass_rate_ci95"][1] > 0.5
    assert only_excluded["pass_rate_generated"] is None
    assert REGISTRY["gemma-2-2b"].hub_id == "google/gemma-2-2b" and not REGISTRY["gemma-2-2b"].chat
    named = lambda n: ResolvedModel(name=n, source="/x", revision=None, fingerprint="f")  # noqa: E731
    assert resolve_variant("auto", named("gemma-2-2b"), has_template=True) == ("base", False)  # registry's word
    assert resolve_variant("auto", named("gemma-2-2b-it"), has_template=True) == ("instruct", True)
    assert resolve_variant("auto", named("some-folder"), has_template=False) == ("base", False)
    assert resolve_variant("base", named("gemma-2-2b-it"), has_template=True) == ("base", False)
    with pytest.raises(ReasonlabError, match="has no chat template"):
        resolve_variant("instruct", named("some-folder"), has_template=False)
    with pytest.raises(ReasonlabError, match="unknown model variant 'chat'"):
        rf.dataset_name("chat")


# ---------------------------------------------------------------- honest per-row figures, checkpoints, memory

def test_checkpoints_exactly_every_n_with_memory_and_measured_batch_times(tmp_path, llama):
    model, tok = llama
    cfg = BaselineConfig(max_new_tokens=4, batch_size=3, checkpoint_every=2, sandbox_workers=2,
                            memory_warn_fraction=0.0001)  # any machine is over 0.01 %: the warning must fire
    ckpt = tmp_path / "shards" / "s" / rf.CHECKPOINT
    seen, warnings = [], []

    def progress(done, total):
        seen.append((done, len(pd.read_parquet(ckpt)) if ckpt.is_file() else 0))

    out = ab.run_range(model, tok, PROBLEMS[:5], [1], cfg, tmp_path, "s", progress=progress, warn=warnings.append,
                       range_info={"split": "validation", "start": 0, "end": 4})
    # batches of 3 are cut at the boundary: 2, 2, 1; the checkpoint holds exactly 2 and 4 rows when written
    # (progress is reported after each batch; the last one's rows land in the final checkpoint)
    assert seen == [(2, 2), (4, 4), (5, 4)] and len(pd.read_parquet(ckpt)) == 5
    checkpoints = out["checkpoints"]
    assert [(c["tasks_done"], c["rows"], c["final"]) for c in checkpoints] == [(2, 2, False), (4, 4, False),
                                                                                (5, 5, True)]
    for c in checkpoints:
        assert c["memory"]["rss_bytes"] > 10 * 2**20 and 0 < c["memory"]["ram_used_fraction"] < 1
        assert c["memory_warning"] and "cuda_allocated_bytes" not in c["memory"]  # CPU run: no GPU figures
    assert len(warnings) == 3 and "over memory_warn_fraction=0%" in warnings[0] and out["memory_warning"]
    record = json.loads((tmp_path / "shards" / "s" / rf.SHARD_RECORD).read_text())
    assert record["range"] == {"split": "validation", "start": 0, "end": 4} and record["calls"][0]["checkpoints"]
    assert record["calls"][0]["config"]["checkpoint_every"] == 2
    rows = pd.read_parquet(ckpt)
    # one measured time per generate call, shared by its rows and named by its batch id (no even split)
    assert list(rows["batch_size"]) == [2, 2, 2, 2, 1] and rows["batch_id"].nunique() == 3
    assert list(rows["batch_id"].unique()) == ["s/b0000", "s/b0001", "s/b0002"]
    assert (rows.groupby("batch_id")["batch_generation_s"].nunique() == 1).all()
    assert (rows["batch_generation_s"] > 0).all() and (rows["sandbox_s"] > 0).all()
    assert "generation_s" not in rows.columns
    # a resumed range continues the batch ids
    more = ab.run_range(model, tok, PROBLEMS, [1], cfg, tmp_path, "s")
    assert list(pd.read_parquet(ckpt)["batch_id"])[-1] == "s/b0003" and more["resumed"] == 5


def test_time_limit_has_its_own_column_apart_from_the_token_limit(stories_path):
    model, tok = load_model(resolve_model(str(stories_path)), "cpu", "fp32")
    prompts = [codegen.mbpp_prompt(tok, p) for p in PROBLEMS[:2]]
    by_tokens = codegen.generate_batch(model, tok, prompts, codegen.GenerationConfig(max_new_tokens=5))
    assert all(o["hit_token_limit"] and not o["hit_time_limit"] and o["completion_tokens"] == 5 for o in by_tokens)
    by_time = codegen.generate_batch(model, tok, prompts, codegen.GenerationConfig(max_new_tokens=400,
                                                                                  max_time_s=0.0001))
    assert all(o["hit_time_limit"] and not o["hit_token_limit"] and o["completion_tokens"] < 400 for o in by_time)
    # a real stop: stories260K never ends a story within 400 tokens, so make "." a stop token for one call
    period = tok(".", add_special_tokens=False)["input_ids"][-1]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [saved, period]
    try:
        story = codegen.generate_batch(model, tok, ["Once upon a time"],
                                       codegen.GenerationConfig(max_new_tokens=400))[0]
    finally:
        model.generation_config.eos_token_id = saved
    assert story["completion"].endswith(".") and story["completion_tokens"] < 400
    assert not story["hit_token_limit"] and not story["hit_time_limit"]


# ---------------------------------------------------------------- typed parameters and the CLI

def test_parameter_groups_schema_and_cli_help():
    from prefect.utilities.callables import parameter_schema

    from flows.activation_baseline import activation_baseline, build_parser
    from reasonlab.activations.params import GROUPS

    schema = parameter_schema(activation_baseline).model_dump_for_openapi()
    props, defs = schema["properties"], schema["definitions"]
    assert list(props) == ["model", "variant", *GROUPS, "output_dir"]
    for name, model in GROUPS.items():
        assert props[name]["default"] == model().model_dump()  # the form is prefilled with the group's defaults
        assert all(f.get("description") for f in defs[model.__name__]["properties"].values()), name
    assert props["model"]["default"] == "gemma-2-2b-it"
    assert defs["Robustness"]["properties"]["memory_warn_fraction"]["default"] == 0.85
    assert defs["Problems"]["properties"]["split"]["enum"] == ["validation", "hyperparams", "sae", "all"]
    parser = build_parser()
    helptext = " ".join(parser.format_help().split())
    assert "residual capture" in helptext and "seed" not in helptext
    # every default is printed once, from the group's field (no second copy in argparse)
    assert "token limit per completion (default: 2000)" in helptext and helptext.count("(default: 2000)") == 1
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 15 and "default" in action.help, action.dest
    fields = {f"{g}.{f}" for g, m in GROUPS.items() for f in m.model_fields}
    assert fields | {"model", "variant", "output_dir"} <= {a.dest for a in parser._actions}
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--model", "--mbpp", "--split", "--start", "--end", "--top-features", "--layers", "--max-new-tokens",
            "--batch-size", "--capture-generated", "--checkpoint-every", "--max-attempts", "--sandbox-timeout",
            "--generation-timeout", "--shards", "--device", "--devices", "--dtype", "--task-runner",
            "--ray-address", "--ray-num-cpus", "--output-dir", "--variant", "--memory-warn-fraction",
            "--unsafe-allow-host-reads", "--system-prompt"} <= flags


def test_the_loop_settings_take_their_defaults_and_bounds_from_the_groups():
    from reasonlab.activations.params import Capture, Generation, Robustness

    config = BaselineConfig()
    for group in (Generation(), Robustness()):
        assert all(getattr(config, k) == v for k, v in group.model_dump().items()), group
    assert config.capture_generated == Capture().capture_generated
    built = BaselineConfig.from_groups(Generation(max_new_tokens=7), Robustness(max_attempts=3), Capture(), True)
    assert (built.max_new_tokens, built.max_attempts, built.use_chat_template) == (7, 3, True)
    with pytest.raises(ReasonlabError, match=r"field 'checkpoint_every': Input should be greater than or equal to 1"):
        BaselineConfig(checkpoint_every=0)


def test_old_command_lines_give_the_same_parameters():
    from flows.activation_baseline import build_parser
    from flows.cli_params import flow_parameters

    argv = ["--model", "m", "--mbpp", "v.parquet", "--split", "hyperparams", "--start", "2", "--end", "9",
            "--layers", "12", "18", "--capture-generated", "--max-new-tokens", "384", "--generation-timeout", "30",
            "--checkpoint-every", "8", "--unsafe-allow-host-reads", "--devices", "cuda:0", "cuda:1", "--dtype", "bf16"]
    args = build_parser().parse_args(argv)
    assert (args.task_runner, args.ray_address) == ("thread", None)
    del args.task_runner, args.ray_address, args.ray_num_cpus
    assert flow_parameters(args) == {
        "model": "m", "problems": {"mbpp_source": "v.parquet", "split": "hyperparams", "start": 2, "end": 9},
        "capture": {"layers": [12, 18], "capture_generated": True},
        "generation": {"max_new_tokens": 384, "generation_timeout_s": 30.0},
        "robustness": {"checkpoint_every": 8, "allow_unconfined_reads": True},
        "placement": {"devices": ["cuda:0", "cuda:1"], "dtype": "bf16"}}


@pytest.mark.parametrize("params, message", [
    ({"generation": {"max_new_tokens": 0}}, r"^activation-baseline parameters: field 'generation.max_new_tokens': "
                                            r"Input should be greater than or equal to 1 \(got 0\)$"),
    ({"problems": {"split": "train"}}, r"^activation-baseline parameters: problems.split: unknown MBPP split "
                                       r"'train': use one of \('validation', 'hyperparams', 'sae', 'all'\)$"),
    ({"placement": {"device": "gpu0"}}, r"field 'placement.device': String should match pattern"),
    ({"robustness": {"memory_warn_fraction": 1.5}}, r"field 'robustness.memory_warn_fraction'"),
    ({"capture": {"layer": [3]}}, r"^activation-baseline parameters: unknown field 'capture.layer'$"),
    ({"variant": "chat"}, r"^unknown variant 'chat': use auto, instruct or base$"),
])
def test_a_bad_group_value_is_one_error_naming_the_field_before_model_work(params, message, tmp_path):
    from flows.activation_baseline import activation_baseline

    forwards = forward_passes()
    with pytest.raises(ReasonlabError, match=message):
        activation_baseline(model="no-such-model-anywhere", output_dir=str(tmp_path / "run"), **params)
    assert forward_passes() == forwards and not (tmp_path / "run").exists()


def test_cli_bad_value_is_one_line_naming_the_field():
    from flows.activation_baseline import main

    with pytest.raises(SystemExit, match=r"^error: activation-baseline parameters: field 'robustness.max_attempts': "
                                         r"Input should be greater than or equal to 1 \(got 0\)$"):
        main(["--max-attempts", "0"])


def test_prefect_yaml_and_sweep_file_fit_the_flow():
    import yaml

    from flows.activation_baseline import activation_baseline
    from flows.sweep_spec import SWEEP_METRICS_MODULES, load_sweep
    from reasonlab.activations.params import GROUPS, parse_group

    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    dep = deployments["activation-baseline"]
    assert dep["parameters"]["model"] == "gemma-2-2b-it" and dep["work_pool"]["name"] == "gpu"
    spec = load_sweep(REPO / deployments["activation-instruct-vs-base"]["parameters"]["sweep"])
    assert spec.models == ["gemma-2-2b-it", "gemma-2-2b"]
    assert spec.deployment == "activation-baseline/activation-baseline"
    assert SWEEP_METRICS_MODULES[spec.deployment.split("/")[0]] == "reasonlab.activations.sweep_metrics"
    for parameters in [dep["parameters"], *(child["parameters"] for child in spec.children())]:
        assert set(parameters) <= set(activation_baseline.parameters.properties), parameters
        for name in GROUPS.keys() & parameters.keys():
            parse_group(name, parameters[name])


# ---------------------------------------------------------------- the pass rate's denominator

def _checkpoint_rows(passes: list[bool]) -> list[dict]:
    return [{"task_id": 101 + i, "pass": ok, "test_status": "passed" if ok else "failed",
             "error_type": None if ok else "AssertionError", "completion": "def f(x):\n    return x\n",
             "completion_tokens": 7, "hit_token_limit": False, "hit_time_limit": False,
             "activation_files": [f"task_{101 + i:03d}_layer_0.npz"]} for i, ok in enumerate(passes)]


def test_pass_rate_counts_problems_whose_generation_failed(tmp_path):
    """2 of 4 generated programs pass and a 5th problem was excluded (its generation kept failing): the pass
    rate over the split's problems is 2/5, beside 2/4 over the generated ones, each with its Wilson CI."""
    from reasonlab.io import write_json, write_parquet
    from reasonlab.stats import wilson

    shard = tmp_path / "shards" / "tasks_101_105"
    write_parquet(shard / rf.CHECKPOINT, _checkpoint_rows([True, False, True, False]))
    write_json(shard / rf.EXCLUSIONS, [{"task_id": 105, "attempts": 2, "error": "RuntimeError: CUDA OOM"}])
    merged = dataset.merge_dataset(tmp_path, "instruct", {"model": "m"})
    assert merged["pass_rate"] == pytest.approx(2 / 5)
    assert merged["pass_rate_ci95"] == pytest.approx(wilson(2, 5), abs=1e-4)
    assert merged["pass_rate_generated"] == pytest.approx(2 / 4)
    assert merged["pass_rate_generated_ci95"] == pytest.approx(wilson(2, 4), abs=1e-4)
    assert (merged["problems"], merged["generated"], merged["passed"], merged["excluded"]) == (5, 4, 2, 1)
    counts = json.loads(Path(merged["metadata"]).read_text())["counts"]
    assert counts["pass_rate"] == pytest.approx(0.4) and counts["pass_rate_generated"] == pytest.approx(0.5)
