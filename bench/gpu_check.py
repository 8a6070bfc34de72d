"""One command for a GPU: every pipeline's CUDA path, in bf16, on a small model, with key=value figures.

    python bench/gpu_check.py                          # CUDA required: SmolLM2-135M-Instruct, bf16, < 10 min on one GPU
    python bench/gpu_check.py --device cpu             # the same code paths on the CPU (fp32 unless --dtype bf16)
    python bench/gpu_check.py --device cpu --tiny      # CI: a tiny Llama, well under a minute
    python bench/gpu_check.py --model gemma-2-2b-it    # a bigger model, when asked

Without CUDA (and without --device cpu) it says so in one line and exits 2. The model is loaded through the
project's loader with device and dtype `auto` (unless given), so its auto branches are what runs: CUDA and bf16
on a GPU. Each section prints `section.key=value` lines; a section that fails prints `section.error=` and its
traceback, the others still run, and the script ends with `ok=0` and exit 1. `ok=1` only if every section ran.

Sections, in order (sizes from the flags):
  loader      resolve_model / load_model with the device and dtype asked; checks the model landed there
  generation  reasonlab.generation.generate, greedy, --prompts factual prompts (chat template when the model has
              one) in batches of --batch-size, --new-tokens each: generated tokens/s
  capture     the activation pipeline's codegen.generate_batch on --capture-problems MBPP prompts, three arms
              alternating --repeats times (no hooks, last-prompt-token capture, capture over every generated
              token at two middle layers); the arms must give identical completions. overhead_share = all/off - 1
  filter      concept SFT's top-k filter (filter_prompts, batch --batch-size) on --prompts factual prompts, best
              of --repeats: prompts/s, and the forward-FLOP bound from bench/flops.py (measured matmul FLOP/s over
              the model's weight shapes / the FLOPs of the forward passes it really ran)
  sft         concept SFT's run_sft (TRL SFTTrainer, the SFTConfig defaults: full fine-tune, lr 5e-6) for
              --sft-steps steps of one short text each: steps/s, and the share of weights the training changed
  three_stage one tiny run of each trainer: continued pretraining (4 blocks of 64 tokens), SFT on 4 pharma
              pairs, a reward model on pharma preference pairs (TRL RewardTrainer), one optimizer step each
  dspy        DSPy's in-process LocalEngine: the gsm8k chain-of-thought program on --dspy-examples test rows
              with 4 threads (the engine batches them), --new-tokens max tokens each, no cache
  retrieval   option scoring (score_items: letters, option texts, the four cyclic orders) on --questions MedQA
              questions: questions/s
  shards      the activation baseline's shard plan for 2 shards with this device: which devices it picks, and
              that they resolve to the GPU (on one GPU: every shard on it)
  memory      peak memory: torch.cuda.max_memory_allocated on CUDA, the process's peak RSS on the CPU
              (`peak_memory_of=` says which), and the activation pipeline's memory_snapshot

Data come from $REASONLAB_SHARED_DATA, else the repository's own slices in tests/fixtures/data (offline).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("REASONLAB_SHARED_DATA", str(REPO / "tests" / "fixtures" / "data"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from gpu_sections import SECTIONS, Check, emit  # noqa: E402  (after the path setup above)

NO_CUDA = ("gpu_check: CUDA is not available on this machine (torch {torch}, CUDA build {cuda}); "
           "`--device cpu` runs the same code paths on the CPU")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (CUDA required), cuda, cuda:N or cpu (default: auto)")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="registry name, folder or Hub id")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama (stories260K's tokenizer, a chat "
                                                        "template, 2 layers): checks the script, not the speed")
    ap.add_argument("--prompts", type=int, default=64, help="generation and filter prompts (default 64)")
    ap.add_argument("--capture-problems", type=int, default=16, help="MBPP problems per capture arm (default 16)")
    ap.add_argument("--new-tokens", type=int, default=64, help="max new tokens per generation (default 64)")
    ap.add_argument("--batch-size", type=int, default=16, help="generation / filter batch (default 16)")
    ap.add_argument("--sft-steps", type=int, default=20, help="concept SFT steps (default 20)")
    ap.add_argument("--dspy-examples", type=int, default=8, help="gsm8k rows through DSPy (default 8)")
    ap.add_argument("--questions", type=int, default=8, help="MedQA questions scored (default 8)")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats of capture and filter (default 2)")
    ap.add_argument("--only", nargs="+", choices=list(SECTIONS), metavar="SECTION",
                    help=f"run only these sections ({', '.join(SECTIONS)}); ok=1 then means they ran")
    args = ap.parse_args(argv)
    for flag in ("prompts", "capture_problems", "new_tokens", "batch_size", "sft_steps", "dspy_examples",
                 "questions", "repeats"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be >= 1")
    return args


def tiny_model(folder: Path) -> str:
    """A randomly initialised 2-layer Llama with stories260K's tokenizer and a chat template (4096 positions,
    so MBPP and MedQA prompts fit)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    stories = REPO / "tests" / "fixtures" / "models" / "stories260K"
    tokenizer = AutoTokenizer.from_pretrained(stories)
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def run_section(name: str, fn, check: Check, failed: list[str]) -> None:
    """Run one section; a failure prints its traceback and `name.error=`, and `name` joins `failed`."""
    print(f"# {name}", flush=True)
    started = time.perf_counter()
    try:
        fn(check)
    except Exception as e:  # a failing section is reported and the rest still run; the exit code says it failed
        traceback.print_exc()
        emit(f"{name}.error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        failed.append(name)
    emit(f"{name}.wall_s", time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if (args.device == "auto" or args.device.startswith("cuda")) and not torch.cuda.is_available():
        print(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        return 2
    from reasonlab import console
    from reasonlab.errors import ReasonlabError
    from reasonlab.models import pick_device, pick_dtype, resolve_model

    console.configure()
    try:  # bad input is one line before any model work
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)
        if not args.tiny:
            resolve_model(args.model)
    except ReasonlabError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="reasonlab-gpu-check-") as work:
        workdir = Path(work)
        name = tiny_model(workdir / "tiny-llama") if args.tiny else args.model
        check = Check(args, name, device, dtype, workdir)
        emit("device", device)
        emit("dtype", str(check.dtype).removeprefix("torch."))
        emit("model", "tiny-llama" if args.tiny else args.model)
        emit("torch", torch.__version__)
        emit("threads", torch.get_num_threads())
        if check.on_cuda:
            emit("gpu", torch.cuda.get_device_name(device).replace(" ", "_"))
            torch.cuda.reset_peak_memory_stats(device)
        for section, run in SECTIONS.items():
            if not args.only or section in args.only:
                run_section(section, run, check, failed)
    emit("wall_s", time.perf_counter() - started)
    if failed:
        emit("failed", ",".join(failed))
    emit("ok", not failed)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
