"""SFT through TRL on real tiny models: full fine-tune and LoRA really change the right parameters."""

import json

import pytest
import torch
from safetensors.torch import load_file

from reasonlab.models import resolve_model
from reasonlab.concept_sft.sft_config import SFTConfig
from reasonlab.concept_sft.sft_trainer import run_sft

TEXTS = ["Lily had a red ball. She liked to play with it in the sun every day.",
         "Tom saw a big tree. He climbed it and looked at the sky with a smile."]


def weights(folder):
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("which", ["stories", "llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("lora", [False, True])
def test_sft_changes_parameters_and_saves_hf_checkpoint(which, lora, stories_path, tiny_models, tmp_path):
    folder = stories_path if which == "stories" else tiny_models[which]
    config = SFTConfig(texts=TEXTS, epochs=2, learning_rate=1e-2 if lora else 1e-3, use_chat_template=which != "stories",
                       lora={"r": 4, "alpha": 8} if lora else None)
    out = tmp_path / "ckpt"
    seen = []
    summary = run_sft(resolve_model(str(folder)), config, out, progress=lambda s, n, loss: seen.append((s, n)))
    assert summary["steps"] == 4 and seen[-1] == (4, 4) and len(summary["losses"]) == 4
    n_weights = sum(v.numel() for v in weights(folder).values())
    assert 0 < summary["trainable_params"] < n_weights / 10 if lora else summary["trainable_params"] > 0
    before, after = weights(folder), weights(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if lora:  # merged LoRA on q/v: only those projections move
        assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)
    else:
        assert any("mlp" in k for k in changed) and any("embed" in k for k in changed)
    manifest = json.loads((out / "reasonlab-model.json").read_text())
    assert manifest["fingerprint"].startswith("sha256:") and manifest["base_model"]["source"] == str(folder.resolve())
    assert resolve_model(str(out)).fingerprint == manifest["fingerprint"]
    assert not list(tmp_path.glob(".ckpt*")), "temp folders left behind"


def test_chat_template_training_text_needs_a_template(stories_path, tmp_path):
    from reasonlab.errors import ReasonlabError

    config = SFTConfig(texts=TEXTS, epochs=1, use_chat_template=True)
    with pytest.raises(ReasonlabError, match="has no chat template"):
        run_sft(resolve_model(str(stories_path)), config, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
