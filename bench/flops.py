"""Forward-FLOP accounting shared by the benchmarks (bench/topk_batching.py, bench/gpu_check.py): a log of the
forward passes a model really ran, the FLOPs they need without padding, and the machine's sustained matmul FLOP/s
over the model's own weight shapes. The formula is in bench/topk_batching.py's docstring.
"""

from __future__ import annotations

import time

import torch


class ForwardLog:
    """Records every forward pass of `model`: each row's real length and the LM-head positions."""

    def __init__(self, model):
        self.lengths: list[int] = []
        self.padded = 0
        self.head_positions = 0
        self.handle = model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows, width = ids.shape
        self.lengths += mask.sum(-1).tolist() if mask is not None else [width] * rows
        self.padded += rows * width
        keep = kwargs.get("logits_to_keep")
        self.head_positions += (keep.numel() if hasattr(keep, "numel") else rows * (keep or width))

    def close(self) -> None:
        self.handle.remove()


def padded_tokens(lengths: list[int], batch_size: int) -> int:
    """Tokens in the padded batches: each batch of `batch_size` consecutive lengths padded to its longest."""
    return sum(len(b) * max(b) for b in (lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size)))


def model_dims(model) -> dict:
    """Parameter counts and widths for the FLOP formula (see the module docstring)."""
    cfg = model.config
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    total = sum(p.numel() for p in model.parameters())  # tied weights counted once
    untied_head = head is not None and head.weight.data_ptr() != emb.data_ptr()
    d_model = cfg.hidden_size
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or d_model // n_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    return {
        "non_embedding": total - emb.numel() - (head.weight.numel() if untied_head else 0),
        "n_layers": cfg.num_hidden_layers, "d_model": d_model, "d_attn": n_heads * head_dim,
        "d_kv": n_kv * head_dim, "d_ff": getattr(cfg, "intermediate_size", 4 * d_model),
        "vocab": emb.shape[0],
    }


def forward_flops(dims: dict, lengths: list[int], scored: int) -> float:
    body = 2 * dims["non_embedding"] * sum(lengths)
    attention = 2 * dims["n_layers"] * dims["d_attn"] * sum(n * (n + 1) for n in lengths)
    head = 2 * dims["d_model"] * dims["vocab"] * scored
    return body + attention + head


def matmul_flops_per_s(dims: dict, rows: int, dtype, device, seconds: float = 0.5) -> float:
    """Sustained torch.matmul FLOP/s over the model's weight shapes, `rows` activations at a time."""
    shapes = [(dims["d_model"], dims["d_attn"]), (dims["d_model"], dims["d_kv"]), (dims["d_attn"], dims["d_model"]),
              (dims["d_model"], dims["d_ff"]), (dims["d_ff"], dims["d_model"]), (dims["d_model"], dims["vocab"])]
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    flops, elapsed = 0.0, 0.0
    with torch.no_grad():
        for k, n in shapes:
            x = torch.randn(rows, k, dtype=dtype, device=device)
            w = torch.randn(k, n, dtype=dtype, device=device)
            torch.matmul(x, w)  # warm-up
            sync()
            iters, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / len(shapes) or iters < 3:
                torch.matmul(x, w)
                iters += 1
            sync()
            elapsed += time.perf_counter() - start
            flops += 2.0 * rows * k * n * iters
    return flops / elapsed
