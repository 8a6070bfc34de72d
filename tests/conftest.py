"""Shared fixtures: one Prefect test harness per session, a private REASONLAB_HOME, tiny real models."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports tasks/ (whose result storage reads REASONLAB_HOME at import time).
# Models are reused across sessions: the user's REASONLAB_MODEL_CACHE, else the models/ of their REASONLAB_HOME,
# else .test-cache/models in this checkout (never the user's ~/.cache: a test run writes only where it was told).
REPO = Path(__file__).resolve().parents[1]
if not os.environ.get("REASONLAB_MODEL_CACHE"):
    _user_home = os.environ.get("REASONLAB_HOME")
    os.environ["REASONLAB_MODEL_CACHE"] = str(Path(_user_home).expanduser() / "models" if _user_home
                                              else REPO / ".test-cache" / "models")
_HOME = Path(tempfile.mkdtemp(prefix="reasonlab-test-home-"))
os.environ["REASONLAB_HOME"] = str(_HOME)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the Hub is unreachable from CI; fail fast, not after retries
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network: each heartbeat logged an ERROR
# The repo's own small slices of every dataset (tests/fixtures/README.md) are the datasets' offline mirror: no
# test reads a folder beside the checkout, a user's mirror or the Hub
FIXTURES = REPO / "tests" / "fixtures"
STORIES = FIXTURES / "models" / "stories260K"
DATA = FIXTURES / "data"
os.environ["REASONLAB_SHARED_DATA"] = str(DATA)

import pytest  # noqa: E402


# bench/mutation.py runs only tests that need no Prefect API, once per mutant: it sets this to 0 so that each
# run does not start (and wait for) a temporary Prefect server.
WITH_PREFECT = os.environ.get("REASONLAB_TEST_PREFECT", "1") != "0"


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    if WITH_PREFECT:
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            yield
    else:
        yield
    shutil.rmtree(_HOME, ignore_errors=True)  # the suite leaves no reasonlab-test-home-* behind


@pytest.fixture(scope="session")
def stories_path() -> Path:
    assert (STORIES / "config.json").is_file(), f"missing {STORIES}: the test fixtures are part of the repo"
    return STORIES


@pytest.fixture(scope="session")
def stories_case(stories_path) -> dict:
    """A real target case on stories260K: after "The little girl saw a", the top-1 token (the wrong answer)
    and the first runner-up that is a word (the answer)."""
    from reasonlab.concept_sft.topk_filter import next_token_topk
    from reasonlab.models import load_model, resolve_model

    model, tokenizer = load_model(resolve_model(str(stories_path)))
    [top] = next_token_topk(model, tokenizer, ["The little girl saw a"], k=10)
    answer = next(t.token.strip() for t in top[1:5] if t.token.strip().isalpha() and len(t.token.strip()) >= 3)
    return {"prompt": "The little girl saw a", "wrong": top[0].token, "answer": answer}


TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _tiny_config(arch: str):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    # 600 > 512: with a qwen2 config, AutoTokenizer re-reads stories' tokenizer as Qwen2Tokenizer (+1 token)
    common = dict(vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "gemma3":
        return Gemma3TextConfig(**common, head_dim=16, sliding_window=64)
    raise ValueError(arch)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, stories_path) -> dict[str, Path]:
    """Randomly initialised tiny Llama / Qwen2 / Gemma3 folders sharing stories260K's tokenizer (with a chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("tiny-models")
    out = {}
    for arch in ("llama", "qwen2", "gemma3"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_tiny_config(arch))
        tokenizer = AutoTokenizer.from_pretrained(stories_path)
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
        model.save_pretrained(root / arch)
        tokenizer.save_pretrained(root / arch)
        out[arch] = root / arch
    return out


@pytest.fixture(scope="session")
def stories_chat(tmp_path_factory, stories_path) -> Path:
    """stories260K (real weights) with a chat template, so `transformers serve` can chat with it."""

    folder = tmp_path_factory.mktemp("stories-chat") / "stories260K"
    shutil.copytree(stories_path, folder)
    (folder / "chat_template.jinja").write_text(TINY_CHAT_TEMPLATE)
    return folder
