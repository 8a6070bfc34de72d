"""DSPy language models for reasonlab: offline models in-process, or any OpenAI-compatible endpoint.

An LM is described by plain data (an `LMSpec`), which is what cache keys and results hold:

    spec = local_spec("qwen2.5-coder-0.5b-instruct", temperature=0.0, max_tokens=256)
    lm = build_lm(spec)               # dspy.LM("reasonlab/qwen2.5-coder-0.5b-instruct@<fp>", engine=LocalEngine(...))
    spec = endpoint_spec(EndpointConfig(base_url=..., model="gpt-4o", api_key_env="OPENAI_API_KEY"))
    lm = build_lm(spec)               # dspy.LM("openai/gpt-4o", api_base=..., api_key=<$OPENAI_API_KEY>)
    lm = build_lm(spec, api_key=key)  # a key the caller read (e.g. from an LLMEndpoint block in tasks/)

Endpoints are resolved by the caller (`tasks/dspy_compile.py` reads "endpoint:<block>" references) and reach
this module as plain settings: base_url, model, the name of the key's env var or the key value itself,
passed as an argument and never stored in a spec, a result or a file.

Offline models run in-process through DSPy's engine extension point (`dspy.LM(engine=...)`, DSPy 3.4):
`LocalEngine.complete(Request) -> Response` over the project's one model loader, thread-safe under DSPy's
`num_threads` through a batching queue (concurrent greedy requests become one batched generate), with
usage (prompt / completion tokens) counted by the
tokenizer and the compute seconds of each generation recorded in the response. DSPy's cache key
ignores `api_base`, so the weights fingerprint is part of the model name: two checkpoints never share
cache entries. The temperature is always explicit. DSPy's disk cache lives under $REASONLAB_HOME/dspy_cache.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm would fetch a price list at import

from reasonlab import paths
from reasonlab.errors import ReasonlabError
from reasonlab.generation import generate

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
    api_key_env: str | None = None  # the env var holding the key (endpoints)
    key_block: str | None = None  # or the name of the LLMEndpoint block the caller reads the key from
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


def endpoint_spec(cfg, *, temperature: float = 0.0, max_tokens: int = 256, key_block: str | None = None) -> LMSpec:
    """An OpenAI-compatible endpoint from an `EndpointConfig` (plain settings: base_url, model, key env var, prices);
    `key_block` names where the caller reads a stored key from."""
    cfg = cfg.validate()
    if cfg.is_local:  # an endpoint that names an offline model: run it in-process
        return local_spec(cfg.local_model, temperature=temperature, max_tokens=max_tokens)
    return LMSpec(kind="endpoint", model=cfg.model, source=cfg.base_url, api_key_env=cfg.api_key_env,
                  key_block=key_block, temperature=temperature, max_tokens=max_tokens,
                  price_input_per_1k=cfg.price_input_per_1k, price_output_per_1k=cfg.price_output_per_1k,
                  timeout_s=cfg.timeout_s)


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


@dataclass
class _Job:
    """One request waiting for the batcher: its messages and sampling settings, then its result."""

    messages: list[dict]
    temperature: float
    max_new: int
    stops: tuple[str, ...]
    top_p: float
    seed: int | None
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple | None = None  # (text, finish, input_tokens, output_tokens, compute_s, batch_size)
    error: BaseException | None = None

    @property
    def batch_key(self) -> tuple | None:
        """Greedy requests with the same settings share a batch; a sampled one runs alone (its own seed)."""
        return None if self.temperature > 0 else (self.max_new, self.stops)


class LocalEngine:
    """DSPy engine over the project's model loader, thread-safe through a batching queue.

    Every `complete` call (from DSPy's `num_threads` workers) enqueues its request and waits; one worker thread
    takes what is waiting (up to `max_batch`, gathering for `window_s` after the first), and runs the greedy
    requests with the same settings as ONE left-padded `generate`. Decoding is memory-bound on small models,
    so a batch of b costs far less than b single generations. Sampled requests (temperature > 0) run alone.
    Each request's compute seconds are its share of its batch's wall time."""

    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto", max_batch: int = 8,
                 window_s: float = 0.02):
        self.model, self.device, self.dtype = model, device, dtype
        self.max_batch, self.window_s = max(1, int(max_batch)), window_s
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._start_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._loaded = None
        self.batch_sizes: list[int] = []  # every batch run (the benchmark reads it)

    # DSPy saves an LM's engine with the program when asked to; the state is plain data
    def dump_state(self) -> dict:
        return {"model": self.model, "device": self.device, "dtype": self.dtype, "max_batch": self.max_batch,
                "window_s": self.window_s}

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
        from dspy.lm15 import Message, Response, TextPart, Usage

        cfg = request.config
        job = _Job(messages=self._messages(request),
                   temperature=0.0 if cfg.temperature is None else float(cfg.temperature),
                   max_new=int(cfg.max_tokens or 256), stops=tuple(cfg.stop or ()) + (STOP,),
                   top_p=float(cfg.top_p or 1.0), seed=None if cfg.seed is None else int(cfg.seed))
        self._ensure_worker()
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        text, finish, n_in, n_out, compute_s, batch = job.result
        return Response(id=None, model=self.model, message=Message.assistant([TextPart(text)]), finish_reason=finish,
                        usage=Usage(input_tokens=n_in, output_tokens=n_out),
                        provider_data={"compute_s": round(compute_s, 4), "batch_size": batch})

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name=f"engine-{self.model}", daemon=True)
                self._worker.start()

    def _serve(self) -> None:
        while True:
            waiting = [self._queue.get()]
            deadline = time.monotonic() + self.window_s
            while len(waiting) < self.max_batch:
                try:
                    waiting.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups: dict[Any, list[_Job]] = {}
            for job in waiting:
                key = job.batch_key
                groups.setdefault(key if key is not None else id(job), []).append(job)
            for jobs in groups.values():
                try:
                    self._generate(jobs)
                except BaseException as e:  # every waiting caller gets the error, the worker lives on
                    for job in jobs:
                        job.error = e
                finally:
                    for job in jobs:
                        job.done.set()

    def _prompt_ids(self, tokenizer, messages: list[dict]) -> list[int]:
        if getattr(tokenizer, "chat_template", None):
            return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)["input_ids"])
        text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
        return list(tokenizer(text)["input_ids"])  # a base model: the turns as plain text

    def _generate(self, jobs: list[_Job]) -> None:
        """One left-padded greedy generate for the jobs (or one sampled job), results into each job."""
        global _GENERATIONS
        import torch

        model, tokenizer = self._load()
        first = jobs[0]
        prompts = [self._prompt_ids(tokenizer, job.messages) for job in jobs]
        if first.temperature > 0 and first.seed is not None:
            torch.manual_seed(first.seed)
        outs = generate(model, tokenizer, prompts, first.max_new, stop_strings=first.stops,
                        temperature=first.temperature, top_p=first.top_p)
        self.batch_sizes.append(len(jobs))
        for job, out in zip(jobs, outs):
            text, finish = out.text, "stop"
            if any(s in text for s in job.stops):
                cut = min(text.index(s) + (len(s) if s == STOP else 0) for s in job.stops if s in text)
                text = text[:cut]
            elif out.completion_tokens >= job.max_new:
                finish = "length"
            job.result = (text, finish, out.prompt_tokens, out.completion_tokens, out.batch_seconds / len(jobs),
                          len(jobs))
        with _LEDGER_LOCK:
            _GENERATIONS += len(jobs)

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


def _api_key(spec: LMSpec, api_key: str | None = None) -> str:
    """The key for a call: `api_key` when the caller passes one, else the env var the spec names."""
    from reasonlab.llm_client import EndpointConfig, resolve_api_key

    return resolve_api_key(EndpointConfig(model=spec.model, base_url=spec.source, api_key_env=spec.api_key_env),
                           api_key)


def check_endpoint(spec: LMSpec, api_key: str | None = None) -> None:
    """Before any work: an endpoint that is down or refuses the key is one clear error."""
    if spec.kind != "endpoint":
        return
    key = _api_key(spec, api_key)
    req = urllib.request.Request(spec.source.rstrip("/") + "/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=min(spec.timeout_s, 15)):
            return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise ReasonlabError(f"LLM endpoint {spec.source} refused the API key (HTTP {e.code}): check "
                                 f"{spec.api_key_env or f'the key of block {spec.key_block}'}") from None
        return  # e.g. 404: no /models route; the first call will tell
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ReasonlabError(f"LLM endpoint {spec.source} is unreachable ({reason}): is the server up?") from None


def build_lm(spec: LMSpec, api_key: str | None = None):
    """A dspy.LM for the spec (temperature and max_tokens always explicit)."""
    import dspy

    configure_dspy_cache()
    if spec.kind == "local":
        return dspy.LM(spec.dspy_model, engine=_engine_for(spec), temperature=spec.temperature,
                       max_tokens=spec.max_tokens, num_retries=0)
    if spec.kind == "endpoint":
        return dspy.LM(spec.dspy_model, api_base=spec.source, api_key=_api_key(spec, api_key),
                       temperature=spec.temperature, max_tokens=spec.max_tokens, timeout=spec.timeout_s,
                       num_retries=2)
    raise ReasonlabError(f"unknown LM kind {spec.kind!r}: use local or endpoint")


def with_sampling(spec: LMSpec, temperature: float | None = None, max_tokens: int | None = None) -> LMSpec:
    return replace(spec, temperature=spec.temperature if temperature is None else temperature,
                   max_tokens=spec.max_tokens if max_tokens is None else max_tokens)
