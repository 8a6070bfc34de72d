"""DSPy language models for reasonlab: offline models in-process, or any OpenAI-compatible endpoint.

An LM is described by plain data (an `LMSpec`), which is what cache keys and results hold:

    spec = local_spec("qwen2.5-coder-0.5b-instruct", temperature=0.0, max_tokens=256)
    lm = build_lm(spec)               # dspy.LM("reasonlab/qwen2.5-coder-0.5b-instruct@<fp>", engine=LocalEngine(...))
    spec = endpoint_spec(EndpointConfig(base_url=..., model="gpt-4o", api_key_env="OPENAI_API_KEY"))
    lm = build_lm(spec)               # dspy.LM("openai/gpt-4o", api_base=..., api_key=...)

Offline models run in-process through DSPy's engine extension point (`dspy.LM(engine=...)`, DSPy 3.4):
`LocalEngine.complete(Request) -> Response` over the project's one model loader, serialised by a lock
(thread-safe under DSPy's `num_threads`), with usage (prompt / completion tokens) counted by the
tokenizer and the compute seconds of each generation recorded in the response. DSPy's cache key
ignores `api_base`, so the weights fingerprint is part of the model name: two checkpoints never share
cache entries. The temperature is always explicit. DSPy's disk cache lives under $REASONLAB_HOME/dspy_cache.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm would fetch a price list at import

from reasonlab import paths
from reasonlab.errors import ReasonlabError

VERSION = "1"
STOP = "[[ ## completed ## ]]"  # DSPy's ChatAdapter end marker: generation stops there (saves CPU time)
_CACHE_DIR: str | None = None


@dataclass(frozen=True)
class LMSpec:
    """Plain data naming one LM and how it is called (no key values)."""

    kind: str  # "local" (in-process engine) | "endpoint" (OpenAI-compatible HTTP)
    model: str  # registry name / folder (local) or the endpoint's model name
    fingerprint: str = ""  # weights fingerprint (local), "" for endpoints
    source: str = ""  # local folder or Hub id (local); base_url (endpoint)
    api_key_env: str | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    price_input_per_1k: float = 0.0  # USD (endpoints)
    price_output_per_1k: float = 0.0
    usd_per_hour: float = 0.0  # what an hour of local compute costs (0: report compute seconds only)
    device: str = "cpu"
    timeout_s: float = 120.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        return self.model.rsplit("/", 1)[-1] if self.kind == "local" else self.model

    @property
    def dspy_model(self) -> str:
        """The name DSPy sees (and keys its cache by)."""
        if self.kind == "local":
            import hashlib

            return f"reasonlab/{self.label}@{hashlib.sha256(self.fingerprint.encode()).hexdigest()[:16]}"
        return f"openai/{self.model}"

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, compute_s: float) -> float:
        return ((prompt_tokens * self.price_input_per_1k + completion_tokens * self.price_output_per_1k) / 1000
                + compute_s * self.usd_per_hour / 3600)


def spec_from_dict(d: dict[str, Any]) -> LMSpec:
    return LMSpec(**d)


def local_spec(model: str, *, temperature: float = 0.0, max_tokens: int = 256, usd_per_hour: float = 0.0,
               device: str = "cpu") -> LMSpec:
    """An offline model (registry name, folder or Hub id), resolved now: its fingerprint enters the spec."""
    from reasonlab.models import resolve_model

    resolved = resolve_model(model)
    return LMSpec(kind="local", model=model, fingerprint=resolved.fingerprint, source=resolved.source,
                  temperature=temperature, max_tokens=max_tokens, usd_per_hour=usd_per_hour, device=device)


def endpoint_spec(cfg, *, temperature: float = 0.0, max_tokens: int = 256) -> LMSpec:
    """An OpenAI-compatible endpoint from the project's EndpointConfig (an LLMEndpoint block or env vars)."""
    cfg = cfg.validate()
    if cfg.is_local:  # an LLMEndpoint block that names an offline model: run it in-process
        return local_spec(cfg.local_model, temperature=temperature, max_tokens=max_tokens)
    return LMSpec(kind="endpoint", model=cfg.model, source=cfg.base_url, api_key_env=cfg.api_key_env,
                  temperature=temperature, max_tokens=max_tokens, price_input_per_1k=cfg.price_input_per_1k,
                  price_output_per_1k=cfg.price_output_per_1k, timeout_s=cfg.timeout_s)


def parse_lm(ref: str, *, temperature: float, max_tokens: int, usd_per_hour: float = 0.0,
             device: str = "cpu") -> LMSpec:
    """"endpoint:<LLMEndpoint block>", "env" (REASONLAB_LLM_* vars), or an offline model name / folder."""
    if ref.startswith("endpoint:"):
        from blocks.llm_endpoint import load_endpoint

        return endpoint_spec(load_endpoint(ref.split(":", 1)[1]).to_config(), temperature=temperature,
                             max_tokens=max_tokens)
    if ref == "env":
        from reasonlab.llm_client import endpoint_from_env

        return endpoint_spec(endpoint_from_env(), temperature=temperature, max_tokens=max_tokens)
    return local_spec(ref, temperature=temperature, max_tokens=max_tokens, usd_per_hour=usd_per_hour, device=device)


def configure_dspy_cache() -> str:
    """DSPy's disk cache under $REASONLAB_HOME (a compile killed halfway resumes from the calls it made)."""
    global _CACHE_DIR
    import dspy

    target = str(paths.home() / "dspy_cache")
    if _CACHE_DIR != target:
        os.makedirs(target, exist_ok=True)
        dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=target)
        _CACHE_DIR = target
    return target


# ---------------------------------------------------------------------------------------------------------
# The in-process engine


_LEDGER_LOCK = threading.Lock()
_GENERATIONS = 0  # real generations run by every LocalEngine in this process (cache hits never get here)


def generations() -> int:
    return _GENERATIONS


class LocalEngine:
    """DSPy engine over the project's model loader: one generation at a time (a lock), greedy at temperature 0."""

    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto"):
        self.model, self.device, self.dtype = model, device, dtype
        self._lock = threading.Lock()
        self._loaded = None

    # DSPy saves an LM's engine with the program when asked to; the state is plain data
    def dump_state(self) -> dict:
        return {"model": self.model, "device": self.device, "dtype": self.dtype}

    @classmethod
    def load_state(cls, state: dict) -> "LocalEngine":
        return cls(**state)

    def _load(self):
        if self._loaded is None:
            from reasonlab.models import load_model, resolve_model

            self._loaded = load_model(resolve_model(self.model), self.device, self.dtype)
        return self._loaded

    @staticmethod
    def _messages(request) -> list[dict]:
        out = []
        if request.system is not None:
            system = request.system if isinstance(request.system, str) else "".join(
                getattr(p, "text", "") for p in request.system)
            out.append({"role": "system", "content": system})
        for m in request.messages:
            text = m.text if m.text is not None else "".join(getattr(p, "text", "") for p in m.parts)
            out.append({"role": m.role if m.role in ("user", "assistant", "system") else "user", "content": text})
        return out

    def complete(self, request):
        global _GENERATIONS
        import torch
        from dspy.lm15 import Message, Response, TextPart, Usage

        cfg = request.config
        temperature = 0.0 if cfg.temperature is None else float(cfg.temperature)
        max_new = int(cfg.max_tokens or 256)
        stops = tuple(cfg.stop or ()) + (STOP,)
        with self._lock:
            model, tokenizer = self._load()
            messages = self._messages(request)
            if getattr(tokenizer, "chat_template", None):
                ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True)["input_ids"]
            else:  # a base model: the turns as plain text
                text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
                ids = tokenizer(text, return_tensors="pt")["input_ids"]
            ids = ids.to(model.device)
            gen = dict(max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                       stop_strings=list(stops), tokenizer=tokenizer)
            if temperature > 0:
                gen.update(do_sample=True, temperature=temperature, top_p=cfg.top_p or 1.0)
                if cfg.seed is not None:
                    torch.manual_seed(int(cfg.seed))
            else:
                gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            started = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), **gen)
            compute_s = time.perf_counter() - started
            new = out[0, ids.shape[1]:]
            text = tokenizer.decode(new, skip_special_tokens=True)
            with _LEDGER_LOCK:
                _GENERATIONS += 1
        finish = "stop"
        if any(s in text for s in stops):
            cut = min(text.index(s) + (len(s) if s == STOP else 0) for s in stops if s in text)
            text = text[:cut]
        elif len(new) >= max_new:
            finish = "length"
        return Response(id=None, model=self.model, message=Message.assistant([TextPart(text)]), finish_reason=finish,
                        usage=Usage(input_tokens=int(ids.shape[1]), output_tokens=int(len(new))),
                        provider_data={"compute_s": round(compute_s, 4)})

    def close(self) -> None:
        pass


_ENGINES: dict[tuple, LocalEngine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine_for(spec: LMSpec) -> LocalEngine:
    key = (spec.model, spec.fingerprint, spec.device)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = LocalEngine(spec.model, device=spec.device)
        return _ENGINES[key]


def _api_key(spec: LMSpec, key_block: str | None = None) -> str:
    from reasonlab.llm_client import EndpointConfig, resolve_api_key

    if key_block:
        from blocks.llm_endpoint import load_endpoint

        return load_endpoint(key_block).api_key_value()
    return resolve_api_key(EndpointConfig(model=spec.model, base_url=spec.source, api_key_env=spec.api_key_env))


def check_endpoint(spec: LMSpec, key_block: str | None = None) -> None:
    """Before any work: an endpoint that is down or refuses the key is one clear error."""
    if spec.kind != "endpoint":
        return
    key = _api_key(spec, key_block)
    req = urllib.request.Request(spec.source.rstrip("/") + "/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=min(spec.timeout_s, 15)):
            return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise ReasonlabError(f"LLM endpoint {spec.source} refused the API key (HTTP {e.code}): check "
                                 f"{spec.api_key_env or 'the LLMEndpoint block key'}") from None
        return  # e.g. 404: no /models route; the first call will tell
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ReasonlabError(f"LLM endpoint {spec.source} is unreachable ({reason}): is the server up?") from None


def build_lm(spec: LMSpec, key_block: str | None = None):
    """A dspy.LM for the spec (temperature and max_tokens always explicit)."""
    import dspy

    configure_dspy_cache()
    if spec.kind == "local":
        return dspy.LM(spec.dspy_model, engine=_engine_for(spec), temperature=spec.temperature,
                       max_tokens=spec.max_tokens, num_retries=0)
    if spec.kind == "endpoint":
        return dspy.LM(spec.dspy_model, api_base=spec.source, api_key=_api_key(spec, key_block),
                       temperature=spec.temperature, max_tokens=spec.max_tokens, timeout=spec.timeout_s,
                       num_retries=2)
    raise ReasonlabError(f"unknown LM kind {spec.kind!r}: use local or endpoint")


def with_sampling(spec: LMSpec, temperature: float | None = None, max_tokens: int | None = None) -> LMSpec:
    return replace(spec, temperature=spec.temperature if temperature is None else temperature,
                   max_tokens=spec.max_tokens if max_tokens is None else max_tokens)
