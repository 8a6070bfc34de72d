"""bench/gpu_check.py, the one command for a GPU, run for real here on the CPU (the same code paths), and what it
found: bf16 training must keep fp32 master weights."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"

# every key the issue asks for, and the figures each section stands on: present, finite and positive
POSITIVE_KEYS = [
    "generation.tokens_per_s", "generation.generated_tokens", "capture.off_tokens_per_s", "capture.all_s",
    "filter.prompts_per_s", "filter.flop_bound_prompts_per_s", "filter.share_of_bound",
    "filter.matmul_tflop_per_s", "sft.steps_per_s", "sft.steps", "sft.changed_share",
    "three_stage.pretrain_steps_per_s", "three_stage.sft_steps_per_s", "three_stage.reward_steps_per_s",
    "dspy.examples", "dspy.generations", "dspy.completion_tokens_per_s", "retrieval.questions_per_s",
    "shards.planned", "shards.on_device", "peak_memory_mib", "wall_s", "ok",
]
SIGNED_KEYS = ["capture.overhead_share", "capture.last_overhead_share"]  # timing noise can make these negative


def run_script(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, **(env or {})})


def key_values(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line and not line.startswith("#"))


def test_cpu_run_of_every_section_prints_every_figure():
    proc = run_script("--device", "cpu", "--tiny", "--prompts", "16", "--sft-steps", "4", "--dspy-examples", "4",
                      "--questions", "4", "--capture-problems", "4", "--new-tokens", "16", "--repeats", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    values = key_values(proc.stdout)
    assert values["device"] == "cpu" and values["dtype"] == "float32"
    assert values["peak_memory_of"] == "cpu_peak_rss" and values["shards.resolved"] == "cpu,cpu"
    missing = [k for k in POSITIVE_KEYS + SIGNED_KEYS if k not in values]
    assert not missing, missing
    bad = [k for k in POSITIVE_KEYS if not (math.isfinite(float(values[k])) and float(values[k]) > 0)]
    assert not bad, {k: values[k] for k in bad}
    assert all(math.isfinite(float(values[k])) for k in SIGNED_KEYS)
    assert not [k for k in values if k.endswith(".error")] and values["ok"] == "1"


def test_a_failing_section_fails_the_run_loudly():
    proc = run_script("--device", "cpu", "--tiny", "--only", "loader", "shards", "--dtype", "float32",
                      env={"REASONLAB_SHARED_DATA": str(REPO / "no-such-data")})
    values = key_values(proc.stdout)
    assert proc.returncode == 1
    assert values["loader.load_s"] and "shards.error" in values and values["ok"] == "0"
    assert values["failed"] == "shards"


def test_an_unknown_model_is_one_line_before_any_model_work():
    proc = run_script("--device", "cpu", "--model", "no-such-model", timeout=120)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "unknown model 'no-such-model'" in lines[0], lines


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_in_one_line_and_fails():
    proc = run_script(timeout=120)
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "CUDA is not available" in lines[0] and "--device cpu" in lines[0], lines


def test_bf16_training_keeps_fp32_master_weights(tmp_path, stories_path):
    """On CUDA the loader picks bf16; training bf16 weights in place rounds away every update smaller than half a
    bf16 step, so at concept SFT's learning rate (5e-6) almost no weight moved. Training loads fp32 master weights
    and the trainer runs bf16 through autocast; inference still loads bf16."""
    import torch
    from safetensors.torch import load_file

    from reasonlab.concept_sft.sft_config import SFTConfig
    from reasonlab.concept_sft.sft_trainer import run_sft
    from reasonlab.models import load_fresh, resolve_model

    resolved = resolve_model(str(stories_path))
    trained, _ = load_fresh(resolved, "cpu", "bfloat16", train=True)
    served, _ = load_fresh(resolved, "cpu", "bfloat16", train=False)
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    assert {p.dtype for p in served.parameters()} == {torch.bfloat16}
    texts = [f"Tom saw a big dog number {i}." for i in range(6)]
    out = run_sft(resolved, SFTConfig(device="cpu", dtype="bfloat16", epochs=1, texts=texts, use_chat_template=False),
                  tmp_path / "sft")
    before = load_file(stories_path / "model.safetensors")
    after = load_file(Path(out["checkpoint"]) / "model.safetensors")
    moved = sum(int((after[k] != before[k].to(after[k].dtype)).sum()) for k in after)  # unmoved: equal as saved
    share = moved / sum(t.numel() for t in after.values())
    assert share > 0.5, f"only {share:.1%} of the weights moved in 6 steps at lr 5e-6"


def test_shard_plan_names_the_gpu_on_a_one_gpu_machine(monkeypatch):
    """device=auto on one GPU: the plan must say cuda, not "auto" (a Ray runner reserves a GPU only for a shard whose
    device names cuda; an "auto" shard ran in a worker that sees no GPU). torch's CUDA probe stands in for a GPU."""
    import torch

    from reasonlab.activations.run_plan import default_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert default_devices(2, "auto") == ["cuda:0"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert default_devices(2, "auto") == ["cuda:0", "cuda:1"]
    assert default_devices(2, "cpu") == ["cpu"]
