"""The one LLM provider layer: any OpenAI-compatible endpoint through the official `openai` client.

    cfg = EndpointConfig(base_url="https://api.openai.com/v1", model="gpt-4o", api_key_env="OPENAI_API_KEY")
    client = LLMClient(cfg)                       # the key is read from the env var now, never stored in cfg
    reply = client.chat(messages, response_format={"type": "json_object"})
    reply.content, reply.usage, client.calls      # usage and cost recorded per call

`EndpointConfig` is plain data without the key value: safe in cache keys, task results and files.
Retries (our own, the client's are off): 429, 408/409, 5xx, timeouts and connection errors, with
exponential backoff that waits at least the server's Retry-After. Other 4xx fail at once.
"""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

from reasonlab.errors import ReasonlabError

VERSION = "1"
LOCAL_PLACEHOLDER_KEY = "reasonlab-local-no-key"  # sent to loopback servers, which ignore it
RETRY_STATUS = {408, 409, 429}  # and every 5xx
ENV_BASE_URL, ENV_MODEL, ENV_KEY_ENV = "REASONLAB_LLM_BASE_URL", "REASONLAB_LLM_MODEL", "REASONLAB_LLM_API_KEY_ENV"
ENV_LOCAL_MODEL = "REASONLAB_LLM_LOCAL_MODEL"


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to call an LLM. Holds the *name* of the key's env var, never the key."""

    model: str = ""
    base_url: str | None = None  # None with local_model set: the project serves local_model itself
    api_key_env: str | None = None
    local_model: str | None = None  # registry name or HF folder served on loopback by `transformers serve`
    price_input_per_1k: float = 0.0  # USD per 1K prompt tokens
    price_output_per_1k: float = 0.0
    max_concurrency: int = 1
    requests_per_minute: float | None = None
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_base_s: float = 1.0
    max_wait_s: float = 60.0  # longest single wait; a Retry-After beyond it fails the call instead
    json_mode: str = "auto"  # "schema" (json_schema), "object" (json_object), "none", auto: schema unless local

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_local(self) -> bool:
        """True when the project must start a local server (no base_url, a local model)."""
        return self.base_url is None and bool(self.local_model)

    def validate(self) -> EndpointConfig:
        if not self.base_url and not self.local_model:
            raise ReasonlabError(
                "no LLM endpoint configured and no offline model: set an LLMEndpoint block (endpoint=<block name>), "
                f"or {ENV_BASE_URL} + {ENV_MODEL} (+ {ENV_KEY_ENV}=<name of the env var holding the key>), "
                f"or a local model to serve offline ({ENV_LOCAL_MODEL}=smollm2-135m-instruct or a model folder)"
            )
        if self.base_url and not urlparse(self.base_url).scheme.startswith("http"):
            raise ReasonlabError(f"LLM base_url {self.base_url!r} is not an http(s) URL")
        if self.base_url and not self.model:
            raise ReasonlabError(f"LLM endpoint {self.base_url} has no model name: set `model` ({ENV_MODEL})")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ReasonlabError("LLM endpoint: max_concurrency >= 1, max_retries >= 0 and timeout_s > 0 required")
        if self.json_mode not in ("auto", "schema", "object", "none"):
            raise ReasonlabError(f"LLM json_mode {self.json_mode!r}: use auto, schema, object or none")
        return self

    def with_server(self, base_url: str, model: str) -> EndpointConfig:
        """This config pointed at a running local server."""
        from dataclasses import replace

        return replace(self, base_url=base_url, model=model)


def endpoint_from_env(env: dict[str, str] | None = None) -> EndpointConfig:
    """An EndpointConfig from REASONLAB_LLM_* env vars (usable without a Prefect server)."""
    env = os.environ if env is None else env
    return EndpointConfig(
        model=env.get(ENV_MODEL, ""),
        base_url=env.get(ENV_BASE_URL) or None,
        api_key_env=env.get(ENV_KEY_ENV) or None,
        local_model=env.get(ENV_LOCAL_MODEL) or None,
        price_input_per_1k=float(env.get("REASONLAB_LLM_PRICE_INPUT_PER_1K", 0) or 0),
        price_output_per_1k=float(env.get("REASONLAB_LLM_PRICE_OUTPUT_PER_1K", 0) or 0),
        timeout_s=float(env.get("REASONLAB_LLM_TIMEOUT_S", 60) or 60),
    )


def is_loopback(url: str | None) -> bool:
    host = (urlparse(url).hostname or "") if url else ""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def resolve_api_key(cfg: EndpointConfig, api_key: str | None = None) -> str:
    """The key for a call: given explicitly, else from the env var `cfg.api_key_env`.

    A loopback endpoint needs none (a placeholder is sent). A remote one without a key is an error
    naming the variable to set.
    """
    if api_key:
        return api_key
    if cfg.api_key_env:
        value = os.environ.get(cfg.api_key_env)
        if value:
            return value
        if not is_loopback(cfg.base_url):
            raise ReasonlabError(f"LLM endpoint {cfg.base_url}: env var {cfg.api_key_env} (the API key) is not set")
    if is_loopback(cfg.base_url) or cfg.is_local:
        return LOCAL_PLACEHOLDER_KEY
    raise ReasonlabError(
        f"LLM endpoint {cfg.base_url} needs an API key: set api_key_env to the name of an env var holding it "
        "(e.g. OPENAI_API_KEY), or store it in the LLMEndpoint block's api_key"
    )


def redact(text: str, secret: str | None) -> str:
    if secret and secret != LOCAL_PLACEHOLDER_KEY and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


class LLMCallError(ReasonlabError):
    """A call that will fail the same way again (4xx other than 408/409/429, bad config)."""


class LLMUnavailable(RuntimeError):
    """Retries exhausted on a transient failure (429, 5xx, timeout, connection): try later."""


@dataclass
class ChatReply:
    content: str | None
    refusal: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int


@dataclass
class CallRecord:
    """One logical call (all its attempts): the usage ledger entry."""

    label: str
    model: str
    status: str  # ok | error
    attempts: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    waits_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (delta seconds or an HTTP date); None if absent."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):  # a malformed header is no hint (it must not fail the call)
        return None
    return max(0.0, parsed.timestamp() - time.time())


class _RateLimiter:
    def __init__(self, per_minute: float | None, sleep=time.sleep):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.next_at = 0.0
        self.lock = threading.Lock()
        self.sleep = sleep

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            delay = self.next_at - now
            self.next_at = max(now, self.next_at) + self.interval
        if delay > 0:
            self.sleep(delay)


class LLMClient:
    """Calls one endpoint; thread-safe; records a CallRecord per call in `self.calls`."""

    def __init__(self, cfg: EndpointConfig, api_key: str | None = None, sleep=time.sleep):
        from openai import OpenAI

        self.cfg = cfg.validate()
        if cfg.is_local:
            raise ReasonlabError("LLMClient needs a running endpoint: start the local model with serve_local() first")
        self._key = resolve_api_key(cfg, api_key)
        self._openai = OpenAI(base_url=cfg.base_url, api_key=self._key, max_retries=0, timeout=cfg.timeout_s)
        self._sem = threading.BoundedSemaphore(cfg.max_concurrency)
        self._limiter = _RateLimiter(cfg.requests_per_minute, sleep)
        self._sleep = sleep
        self._lock = threading.Lock()
        self.calls: list[CallRecord] = []
        self.schema_supported = cfg.json_mode != "none"

    def __repr__(self) -> str:  # never show the key
        return f"LLMClient(base_url={self.cfg.base_url!r}, model={self.cfg.model!r})"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.cfg.price_input_per_1k + completion_tokens * self.cfg.price_output_per_1k) / 1000

    def usage_summary(self) -> dict[str, Any]:
        with self._lock:
            calls = list(self.calls)
        return {"calls": len(calls), "attempts": sum(c.attempts for c in calls),
                "prompt_tokens": sum(c.prompt_tokens for c in calls),
                "completion_tokens": sum(c.completion_tokens for c in calls),
                "cost_usd": round(sum(c.cost_usd for c in calls), 6),
                "failed_calls": sum(c.status != "ok" for c in calls)}

    def _backoff(self, attempt: int) -> float:
        return min(self.cfg.max_wait_s, self.cfg.backoff_base_s * 2 ** attempt * (1 + 0.25 * random.random()))

    def chat(self, messages: list[dict], *, label: str = "", max_tokens: int = 512, temperature: float | None = None,
             response_format: dict | None = None, seed: int | None = None, extra_body: dict | None = None) -> ChatReply:
        """One chat completion with retries; raises LLMUnavailable (transient) or LLMCallError (not)."""
        import openai

        record = CallRecord(label=label, model=self.cfg.model, status="error", attempts=0)
        kwargs: dict[str, Any] = dict(model=self.cfg.model, messages=messages, max_tokens=max_tokens)
        if temperature is not None:
            kwargs["temperature"] = temperature
        if seed is not None:
            kwargs["seed"] = seed
        if extra_body:
            kwargs["extra_body"] = extra_body
        if response_format and self.schema_supported:
            kwargs["response_format"] = response_format
        started = time.monotonic()
        try:
            attempt = 0
            while True:
                record.attempts += 1
                try:
                    self._limiter.wait()
                    with self._sem:
                        resp = self._openai.chat.completions.create(**kwargs)
                except openai.APIStatusError as e:
                    status = e.status_code
                    msg = redact(f"HTTP {status}: {_short(e.message)}", self._key)
                    record.errors.append(msg)
                    if status == 400 and "response_format" in kwargs and "response_format" in str(e.message).lower():
                        # the endpoint does not do structured output: ask again without it (tolerant parser)
                        self.schema_supported = False
                        kwargs.pop("response_format")
                        continue
                    if status not in RETRY_STATUS and status < 500:
                        raise LLMCallError(f"LLM call {label or ''} to {self.cfg.base_url} failed: {msg}") from None
                    wait = self._backoff(attempt)
                    hinted = retry_after_seconds(e.response.headers if e.response is not None else None)
                    if hinted is not None:
                        if hinted > self.cfg.max_wait_s:
                            raise LLMUnavailable(f"LLM {self.cfg.base_url}: {msg}; Retry-After {hinted:.0f}s exceeds "
                                                 f"max_wait_s={self.cfg.max_wait_s:.0f}") from None
                        wait = max(wait, hinted)
                except (openai.APITimeoutError, openai.APIConnectionError) as e:
                    kind = "timeout" if isinstance(e, openai.APITimeoutError) else "connection error"
                    record.errors.append(f"{kind} after {self.cfg.timeout_s:g}s" if kind == "timeout" else kind)
                    wait = self._backoff(attempt)
                else:
                    return self._reply(resp, record)
                if attempt >= self.cfg.max_retries:
                    raise LLMUnavailable(f"LLM {self.cfg.base_url} unavailable after {record.attempts} attempts: "
                                         f"{'; '.join(record.errors)}")
                record.waits_s.append(round(wait, 3))
                self._sleep(wait)
                attempt += 1
        finally:
            record.latency_s = round(time.monotonic() - started, 3)
            with self._lock:
                self.calls.append(record)

    def _reply(self, resp: Any, record: CallRecord) -> ChatReply:
        usage = getattr(resp, "usage", None)
        record.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        record.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        record.cost_usd = round(self.cost(record.prompt_tokens, record.completion_tokens), 8)
        record.status = "ok"
        if not resp.choices:
            return ChatReply(None, None, None, record.prompt_tokens, record.completion_tokens, record.attempts)
        choice = resp.choices[0]
        msg = choice.message
        return ChatReply(content=msg.content, refusal=getattr(msg, "refusal", None), finish_reason=choice.finish_reason,
                         prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens,
                         attempts=record.attempts)


def _short(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "…"
