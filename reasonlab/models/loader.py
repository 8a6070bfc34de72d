"""The one model loader: resolve a name to weights, pick device/dtype, load once per process.

    from reasonlab.models.loader import resolve_model, load_model
    resolved = resolve_model("smollm2-135m-instruct")   # plain data: source, revision, fingerprint
    model, tokenizer = load_model(resolved)              # cached for the life of the process

A name is a registry entry (`reasonlab.models.spec.REGISTRY`), a local HF folder, or a Hub id.
Registry entries come from (in order): `local_path`, an already materialized offline copy, the
Hub, then the offline source (materialized now). `source="hub"` or `"offline"` forces one.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from reasonlab.errors import ReasonlabError
from reasonlab.io import tree_fingerprint, write_json
from reasonlab.models.sources import MANIFEST, is_materialized, materialize, materialized_path
from reasonlab.models.spec import REGISTRY, ModelSpec
from reasonlab.paths import home

Source = Literal["auto", "hub", "offline", "local"]
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True)
class ResolvedModel:
    """Plain data that identifies exact weights: safe to put in a cache key."""

    name: str
    source: str  # a local folder, or a Hub id
    revision: str | None  # Hub commit for Hub sources
    fingerprint: str  # changes whenever the weights (or tokenizer) change

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def folder_fingerprint(folder: Path) -> str:
    """The manifest's fingerprint if reasonlab wrote the folder, else a content hash (memoized by stat)."""
    manifest = folder / MANIFEST
    if manifest.is_file():
        return json.loads(manifest.read_text())["fingerprint"]
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    stat_key = json.dumps([[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    memo_file = home() / "fingerprints.json"
    memo = json.loads(memo_file.read_text()) if memo_file.is_file() else {}
    if memo.get(str(folder.resolve()), {}).get("stat") != stat_key:
        memo[str(folder.resolve())] = {"stat": stat_key, "fingerprint": "sha256:" + tree_fingerprint(folder)}
        write_json(memo_file, memo)
    return memo[str(folder.resolve())]["fingerprint"]


def _from_folder(name: str, folder: Path) -> ResolvedModel:
    folder = folder.resolve()
    return ResolvedModel(name=name, source=str(folder), revision=None, fingerprint=folder_fingerprint(folder))


def _from_hub(name: str, hub_id: str, revision: str | None) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(hub_id, revision=revision, allow_patterns=HUB_FILES))
    commit = snapshot.name  # snapshots/<commit sha>
    return ResolvedModel(name=name, source=hub_id, revision=commit, fingerprint=f"hub:{hub_id}@{commit}")


def resolve_model(name: str, source: Source = "auto", revision: str | None = None) -> ResolvedModel:
    """Find exact weights for `name` (registry name, local folder or Hub id); `revision` pins Hub weights."""
    if not name or not isinstance(name, str):
        raise ReasonlabError(f"model name must be a non-empty string, got {name!r}")
    path = Path(name).expanduser()
    if _is_hf_folder(path):
        if revision:
            raise ReasonlabError(f"model {name!r} is a local folder: a revision ({revision!r}) needs a Hub id")
        return _from_folder(path.name, path)
    spec = REGISTRY.get(name)
    if spec is None:
        if path.exists() or name.startswith((".", "/", "~")):
            raise ReasonlabError(f"model {name!r}: the folder has no config.json (not a Hugging Face model folder)")
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
            raise ReasonlabError(
                f"unknown model {name!r}: not a registry name ({', '.join(sorted(REGISTRY))}), "
                "not a local model folder, and not a Hub id of the form owner/name"
            )
        spec = ModelSpec(name=name, hub_id=name)
    if revision:  # only the Hub has a given commit: no local copy or offline conversion stands in for it
        if not spec.hub_id:
            raise ReasonlabError(f"model {name!r} has no Hub id, so revision {revision!r} cannot be fetched")
        spec, source = replace(spec, revision=revision), "hub"

    if spec.local_path and source in ("auto", "local") and _is_hf_folder(Path(spec.local_path)):
        return _from_folder(spec.name, Path(spec.local_path))
    if source in ("auto", "offline") and spec.offline and is_materialized(spec):
        return _from_folder(spec.name, materialized_path(spec))
    hub_error = None
    if source in ("auto", "hub") and spec.hub_id:
        try:
            return _from_hub(spec.name, spec.hub_id, spec.revision)
        except Exception as e:  # no network, gated repo, bad revision...
            hub_error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    if source in ("auto", "offline") and spec.offline:
        return _from_folder(spec.name, materialize(spec))
    tried = []
    if spec.hub_id:
        tried.append(f"the Hub ({spec.hub_id}): {hub_error or 'not tried with source=' + source}")
    tried.append("an offline source: " + ("not tried with source=" + source if spec.offline else "none registered"))
    raise ReasonlabError(
        f"model {name!r} could not be obtained. Tried {'; '.join(tried)}. "
        "Pass a local model folder, set HF_TOKEN / network access for the Hub, "
        f"or use a model with an offline source ({', '.join(n for n, s in REGISTRY.items() if s.offline)})."
    )


# ---------------------------------------------------------------- device, dtype, loading

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ReasonlabError(f"device {device!r} requested but CUDA is not available on this machine")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise ReasonlabError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    return device


def pick_dtype(dtype: str = "auto", device: str = "cpu"):
    """auto: bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise ReasonlabError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[dtype])


FORWARD_PASSES = 0  # every forward call of every model this process loaded
_count_lock = threading.Lock()


def _count_forward(module, args, kwargs):
    global FORWARD_PASSES
    with _count_lock:
        FORWARD_PASSES += 1


def forward_passes() -> int:
    return FORWARD_PASSES


def load_tokenizer(resolved: ResolvedModel):
    """The model's tokenizer alone (cheap: for checks before any model work), pad token set."""
    from transformers import AutoTokenizer

    kwargs = {"revision": resolved.revision} if resolved.revision else {}
    tokenizer = AutoTokenizer.from_pretrained(resolved.source, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_fresh(resolved: ResolvedModel, device: str = "auto", dtype: str = "auto", train: bool = False,
               num_labels: int | None = None):
    """Load a new (uncached) model + tokenizer: for training, which mutates the weights.

    `num_labels`: a sequence-classification head with that many outputs on the same weights (a reward
    model) instead of the causal-LM head. With `train`, a bf16/fp16 dtype keeps fp32 weights: the trainers run
    bf16 through autocast (`training.trainer_kwargs`), since bf16 weights updated in place drop every update
    below half a bf16 step (at lr 5e-6 almost all of them)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    if train:
        torch_dtype = torch.float32
    kwargs = {"revision": resolved.revision} if resolved.revision else {}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    auto = AutoModelForCausalLM if num_labels is None else AutoModelForSequenceClassification
    tokenizer = load_tokenizer(resolved)
    model = auto.from_pretrained(resolved.source, dtype=torch_dtype, **kwargs).to(dev)
    model.train(train)
    model.register_forward_pre_hook(_count_forward, with_kwargs=True)
    return model, tokenizer


_LOADED: dict[tuple, tuple[Any, Any]] = {}
_load_lock = threading.Lock()


def load_model(resolved: ResolvedModel, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer) in eval mode, loaded once per process per (weights, device, dtype)."""
    key = (resolved.source, resolved.revision, resolved.fingerprint, pick_device(device), dtype)
    with _load_lock:
        if key not in _LOADED:
            _LOADED[key] = load_fresh(resolved, device, dtype, train=False)
        return _LOADED[key]


def unload_all() -> None:
    with _load_lock:
        _LOADED.clear()
