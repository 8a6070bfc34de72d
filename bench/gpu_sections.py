"""The sections of bench/gpu_check.py (its docstring says what each runs). Each takes the `Check` and prints
`section.key=value` lines; an exception fails the section. Every model call goes through the library's own entry
points with the device and dtype the user asked for (`auto` by default), so the CUDA branches are the ones run."""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasonlab.errors import ReasonlabError

REPO = Path(__file__).resolve().parents[1]
FACTUAL = REPO / "data" / "factual_prompts.json"
PHARMA_CORPUS = "data/three_stage/pharma_pretrain.jsonl"


@dataclass
class Check:
    """What every section needs: the arguments, the model as loaded, where outputs go."""

    args: argparse.Namespace
    name: str  # registry name or folder of the model every section uses
    device: str  # as resolved by pick_device (cuda, cuda:N, cpu)
    dtype: Any  # torch dtype as resolved by pick_dtype
    workdir: Path
    model: Any = None
    tokenizer: Any = None

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def sync(self) -> None:
        if self.on_cuda:
            import torch

            torch.cuda.synchronize()


def emit(key: str, value: Any) -> None:
    if isinstance(value, bool):
        value = int(value)
    elif isinstance(value, float):
        value = f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"
    print(f"{key}={value}", flush=True)


def loaded(c: Check):
    """(model, tokenizer) as the loader gives them for the asked device and dtype (process-cached)."""
    if c.model is None:
        from reasonlab.models import load_model, resolve_model

        c.model, c.tokenizer = load_model(resolve_model(c.name), c.args.device, c.args.dtype)
    return c.model, c.tokenizer


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def factual_items(n: int) -> list:
    """The first `n` factual prompts, cycled when `n` is larger than the file."""
    from reasonlab.concept_sft.prompts import load_prompts

    items = load_prompts(FACTUAL)
    return [items[i % len(items)] for i in range(n)]


def loader(c: Check) -> None:
    started = time.perf_counter()
    model, _ = loaded(c)
    emit("loader.load_s", time.perf_counter() - started)
    param = next(model.parameters())
    if param.device.type != c.device.split(":")[0] or param.dtype != c.dtype:
        raise ReasonlabError(f"the loader put the model on {param.device} in {param.dtype}; "
                             f"pick_device/pick_dtype said {c.device} / {c.dtype}")
    emit("loader.params_m", sum(p.numel() for p in model.parameters()) / 1e6)
    emit("loader.layers", model.config.num_hidden_layers)


def generation(c: Check) -> None:
    from reasonlab.generation import generate
    from reasonlab.prompt_format import build_prompt

    model, tok = loaded(c)
    chat = has_template(tok)
    texts = [build_prompt(tok, it.prompt, "chat" if chat else "completion", answer_prefix="")
             for it in factual_items(c.args.prompts)]
    ids = tok(texts, add_special_tokens=not chat)["input_ids"]  # a rendered template holds its BOS
    generate(model, tok, ids[:2], 4)  # warm-up
    bs = c.args.batch_size
    c.sync()
    started = time.perf_counter()
    outs = [o for i in range(0, len(ids), bs) for o in generate(model, tok, ids[i:i + bs], c.args.new_tokens)]
    elapsed = time.perf_counter() - started
    tokens = sum(o.completion_tokens for o in outs)
    emit("generation.prompts", len(outs))
    emit("generation.batch_size", bs)
    emit("generation.generated_tokens", tokens)
    emit("generation.s", elapsed)
    emit("generation.tokens_per_s", tokens / elapsed)


def capture(c: Check) -> None:
    from capture_overhead import run_arm

    from reasonlab.activations import codegen, mbpp
    from reasonlab.models import num_layers

    model, tok = loaded(c)
    prompts = [codegen.mbpp_prompt(tok, p) for p in mbpp.load_split("validation")[:c.args.capture_problems]]
    n = num_layers(model)
    layers = sorted({n // 2, (2 * n) // 3})
    run_arm(model, tok, prompts[:1], 1, 4, [], False)  # warm-up
    arms = {"off": ([], False), "last": (layers, False), "all": (layers, True)}
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    completions: dict[str, list[str]] = {}
    tokens = 0
    for _ in range(c.args.repeats):  # the arms alternate, so load drift hits them alike
        for arm, (lay, over_generated) in arms.items():
            seconds, comps, tokens = run_arm(model, tok, prompts, c.args.batch_size, c.args.new_tokens, lay,
                                             over_generated)
            times[arm].append(seconds)
            if completions.setdefault(arm, comps) != comps:
                raise ReasonlabError(f"capture arm {arm!r} gave different completions on a repeat (greedy)")
    if not completions["off"] == completions["last"] == completions["all"]:
        raise ReasonlabError("the capture hooks changed the completions (arms off / last / all differ)")
    med = {arm: statistics.median(ts) for arm, ts in times.items()}
    emit("capture.problems", len(prompts))
    emit("capture.layers", ",".join(map(str, layers)))
    emit("capture.generated_tokens", tokens)
    emit("capture.off_tokens_per_s", tokens / med["off"])
    emit("capture.last_s", med["last"])
    emit("capture.all_s", med["all"])
    emit("capture.last_overhead_share", med["last"] / med["off"] - 1)
    emit("capture.overhead_share", med["all"] / med["off"] - 1)


def topk_filter(c: Check) -> None:
    from flops import ForwardLog, forward_flops, matmul_flops_per_s, model_dims
    from timing import timed

    from reasonlab.concept_sft.topk_filter import filter_prompts

    model, tok = loaded(c)
    items = factual_items(c.args.prompts)
    bs = c.args.batch_size
    filter_prompts(model, tok, items[:2], batch_size=2)  # warm-up
    log = ForwardLog(model)
    filter_prompts(model, tok, items, batch_size=bs)  # one recorded run: the forward passes the filter needs
    log.close()
    best_s, result = timed(lambda: filter_prompts(model, tok, items, batch_size=bs), c.args.repeats)
    dims = model_dims(model)
    flops = forward_flops(dims, log.lengths, log.head_positions)
    rows = max(1, round(bs * sum(log.lengths) / len(log.lengths)))
    flop_s = matmul_flops_per_s(dims, rows, next(model.parameters()).dtype, model.device)
    bound = flop_s / (flops / len(items))
    emit("filter.prompts", len(items))
    emit("filter.target_cases", len(result["target_cases"]))
    emit("filter.forward_gflop", flops / 1e9)
    emit("filter.matmul_tflop_per_s", flop_s / 1e12)
    emit("filter.s", best_s)
    emit("filter.prompts_per_s", len(items) / best_s)
    emit("filter.flop_bound_prompts_per_s", bound)
    emit("filter.share_of_bound", len(items) / best_s / bound)


def changed_share(resolved, checkpoint: Path) -> tuple[float, str]:
    """(share of the weight elements in `checkpoint` that differ from the base weights, the checkpoint's dtype).
    The base is read in fp32 on the CPU and compared in the checkpoint's dtype: a weight training left alone
    counts as unchanged."""
    from safetensors.torch import load_file

    from reasonlab.models import load_fresh

    base = load_fresh(resolved, "cpu", "float32")[0].state_dict()
    changed = total = 0
    dtypes = set()
    for path in sorted(Path(checkpoint).glob("*.safetensors")):
        for key, tensor in load_file(path).items():
            if key in base:
                changed += int((tensor != base[key].to(tensor.dtype)).sum())
                total += tensor.numel()
                dtypes.add(str(tensor.dtype).removeprefix("torch."))
    if not total:
        raise ReasonlabError(f"no weight of {checkpoint} matches the base model's names")
    return changed / total, ",".join(sorted(dtypes))


def sft(c: Check) -> None:
    from reasonlab.concept_sft.sft_config import SFTConfig
    from reasonlab.concept_sft.sft_trainer import run_sft
    from reasonlab.models import resolve_model

    _, tok = loaded(c)
    texts = [f"{it.prompt} {it.answer}." for it in factual_items(c.args.sft_steps)]
    config = SFTConfig(model_name=c.name, device=c.args.device, dtype=c.args.dtype, epochs=1, texts=texts,
                       use_chat_template=has_template(tok))
    resolved = resolve_model(c.name)
    out = run_sft(resolved, config, c.workdir / "sft")
    emit("sft.steps", out["steps"])
    emit("sft.train_s", out["train_runtime_s"])
    emit("sft.steps_per_s", out["steps"] / out["train_runtime_s"])
    emit("sft.last_loss", out["losses"][-1])
    emit("sft.learning_rate", config.learning_rate)
    share, dtype = changed_share(resolved, Path(out["checkpoint"]))
    emit("sft.checkpoint_dtype", dtype)
    emit("sft.changed_share", share)
    shutil.rmtree(out["checkpoint"])


def three_stage(c: Check) -> None:
    from reasonlab.models import resolve_model
    from reasonlab.three_stage.params import PretrainParams, RewardParams, SFTParams
    from reasonlab.three_stage.pretrain import run_pretrain
    from reasonlab.three_stage.reward_model import run_reward_model
    from reasonlab.three_stage.sft_pairs import run_sft_pairs

    _, tok = loaded(c)
    chat, resolved, where = has_template(tok), resolve_model(c.name), dict(device=c.args.device, dtype=c.args.dtype)
    pre = run_pretrain(resolved, PretrainParams(corpus=PHARMA_CORPUS, heldout_fraction=0.2, block_size=64,
                                                max_train_blocks=4, max_eval_blocks=2, batch_size=4),
                       c.workdir / "pretrain", **where)
    pairs = run_sft_pairs(resolved, SFTParams(sets=["pharma"], max_train_pairs=4, max_eval_pairs=2, batch_size=4,
                                              max_length=128, use_chat_template=chat), c.workdir / "sft-pairs", **where)
    reward = run_reward_model(resolved, RewardParams(train="pharma", heldout_fraction=0.25, max_train_pairs=4,
                                                     max_eval_pairs=4, batch_size=4, max_length=128,
                                                     eval_before=False, use_chat_template=chat),
                              c.workdir / "reward", **where)
    for stage, out in (("pretrain", pre), ("sft", pairs), ("reward", reward)):
        emit(f"three_stage.{stage}_steps", out["steps"])
        emit(f"three_stage.{stage}_steps_per_s", out["steps"] / out["train_runtime_s"])
        shutil.rmtree(out["checkpoint"])
    emit("three_stage.pretrain_perplexity_after", pre["perplexity_after"])
    emit("three_stage.sft_heldout_loss_after", pairs["heldout_loss_after"])
    emit("three_stage.reward_heldout_pairs", reward["heldout"]["n"])


def dspy_engine(c: Check) -> None:
    import logging

    from reasonlab.dspy_compile import data, evaluate, programs
    from reasonlab.dspy_compile import lm as lms
    from reasonlab.models import load_model, resolve_model

    logging.getLogger("dspy").setLevel(logging.ERROR)  # after dspy's import: "response was truncated" is expected

    spec = lms.local_spec(c.name, max_tokens=c.args.new_tokens, device=c.device)  # the pipeline's devices: cpu, cuda
    lm = lms.build_lm(spec).copy(cache=False)
    rows = data.load_splits("gsm8k", 0, 0, c.args.dspy_examples, seed=0)["test"]
    program = programs.build_program({"task": "gsm8k", "cot": True})
    engine = lms._engine_for(spec)
    before, batches = lms.generations(), len(engine.batch_sizes)
    started = time.perf_counter()
    records = evaluate.evaluate_program(program, rows, "gsm8k", lm, num_threads=4)
    elapsed = time.perf_counter() - started
    errors = [r["reason"] for r in records if r["status"] == "error"]
    if errors:  # the evaluation keeps an example's exception as its row: an engine failure would hide there
        raise ReasonlabError(f"{len(errors)} of {len(records)} DSPy examples failed: {errors[0]}")
    engine_model, _ = load_model(resolve_model(c.name), c.device, engine.dtype)  # the engine's (cached) model
    if engine_model.device.type != c.device.split(":")[0]:
        raise ReasonlabError(f"the DSPy engine's model is on {engine_model.device}, not {c.device}")
    tokens = sum(r["completion_tokens"] for r in records)
    emit("dspy.examples", len(records))
    emit("dspy.generations", lms.generations() - before)
    emit("dspy.max_batch", max(engine.batch_sizes[batches:]))
    emit("dspy.parse_errors", sum(r["status"] == "parse_error" for r in records))
    emit("dspy.s", elapsed)
    emit("dspy.completion_tokens_per_s", tokens / elapsed)


def retrieval(c: Check) -> None:
    import math

    from reasonlab.retrieval.option_scoring import score_items
    from reasonlab.retrieval.questions import load_questions

    model, tok = loaded(c)
    questions = load_questions("medqa", 0, c.args.questions)
    items = [{"id": q["id"], "domains": [], "instruction": ""} for q in questions]
    chat = has_template(tok)
    score_items(model, tok, questions, items[:1], chat)  # warm-up
    c.sync()
    started = time.perf_counter()
    rows = score_items(model, tok, questions, items, chat, debias=True, option_text_norm=True)
    elapsed = time.perf_counter() - started
    if not all(math.isfinite(v) for r in rows for v in r["letter_logprobs"] + r["option_loglik"]):
        raise ReasonlabError("option scoring gave a non-finite log-likelihood")
    emit("retrieval.questions", len(rows))
    emit("retrieval.s", elapsed)
    emit("retrieval.questions_per_s", len(rows) / elapsed)
    emit("retrieval.letter_mass_mean", statistics.mean(r["letter_mass"] for r in rows))


def shards(c: Check) -> None:
    import torch

    from reasonlab.activations import mbpp
    from reasonlab.activations.run_plan import default_devices, plan_shards
    from reasonlab.models import pick_device

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    plan = plan_shards(mbpp.load_split("validation")[:4], 2, default_devices(2, c.args.device))
    resolved = [pick_device(s["device"]) for s in plan]
    emit("shards.gpus", gpus)
    emit("shards.planned", len(plan))
    emit("shards.devices", ",".join(s["device"] for s in plan))
    emit("shards.resolved", ",".join(resolved))
    kind = c.device.split(":")[0]
    if any(not r.startswith(kind) for r in resolved):
        raise ReasonlabError(f"the shard plan's devices {resolved} are not all on {kind}")
    if kind == "cuda" and any(not s["device"].startswith("cuda") for s in plan):  # Ray reserves GPUs only for these
        raise ReasonlabError(f"the shard plan says {[s['device'] for s in plan]}, not a named GPU")
    if kind == "cuda" and c.args.device == "auto" and gpus > 1 and len(set(resolved)) < min(2, gpus):
        raise ReasonlabError(f"{gpus} GPUs, but the 2 shards were planned on {resolved}")
    emit("shards.on_device", 1)


def memory(c: Check) -> None:
    import resource

    import torch

    from reasonlab.activations.memory import memory_snapshot

    snap = memory_snapshot(c.device)
    emit("memory.rss_mib", snap["rss_bytes"] / 2**20)
    if c.on_cuda:
        peak, of = torch.cuda.max_memory_allocated(c.device), "cuda_max_memory_allocated"
        emit("memory.cuda_reserved_mib", snap["cuda_reserved_bytes"] / 2**20)
    else:
        peak, of = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_peak_rss"
    emit("peak_memory_mib", peak / 2**20)
    emit("peak_memory_of", of)


SECTIONS = {"loader": loader, "generation": generation, "capture": capture, "filter": topk_filter, "sft": sft,
            "three_stage": three_stage, "dspy": dspy_engine, "retrieval": retrieval, "shards": shards,
            "memory": memory}
