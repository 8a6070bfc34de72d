"""`LLMEndpoint`: where the project's LLM calls go (OpenAI, vLLM, llama.cpp, Ollama, any OpenAI-compatible URL).

    LLMEndpoint(base_url="https://api.openai.com/v1", model="gpt-4o", api_key_env="OPENAI_API_KEY").save("gpt4o")
    LLMEndpoint(local_model="smollm2-135m-instruct").save("offline")   # served on loopback by the project

Without a Prefect server, the same settings come from REASONLAB_LLM_* env vars (`reasonlab.llm_client`).
The key is a SecretStr (or the name of an env var); `to_config()` never carries it.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from reasonlab.errors import ReasonlabError
from reasonlab.llm_client import EndpointConfig, resolve_api_key


class LLMEndpoint(Block):
    _block_type_name = "LLM Endpoint"
    _block_type_slug = "llm-endpoint"
    _description = "An OpenAI-compatible chat endpoint (or a local model served offline) for reasonlab's LLM calls."

    base_url: str | None = Field(None, description="e.g. https://api.openai.com/v1; empty with local_model: served locally")
    model: str = Field("", description="model name sent with each request, e.g. gpt-4o")
    api_key: SecretStr | None = Field(None, description="the API key (stored as a secret)")
    api_key_env: str | None = Field(None, description="or: the name of an env var holding the key")
    local_model: str | None = Field(None, description="registry name or model folder to serve offline on loopback")
    price_input_per_1k: float = Field(0.0, description="USD per 1K prompt tokens")
    price_output_per_1k: float = Field(0.0, description="USD per 1K completion tokens")
    max_concurrency: int = Field(1, ge=1)
    requests_per_minute: float | None = Field(None, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0)
    json_mode: str = Field("auto", description="auto | schema | object | none")

    def to_config(self) -> EndpointConfig:
        """Plain data without the key value: safe for cache keys, results and files."""
        return EndpointConfig(
            model=self.model, base_url=self.base_url or None, api_key_env=self.api_key_env,
            local_model=self.local_model, price_input_per_1k=self.price_input_per_1k,
            price_output_per_1k=self.price_output_per_1k, max_concurrency=self.max_concurrency,
            requests_per_minute=self.requests_per_minute, timeout_s=self.timeout_s, max_retries=self.max_retries,
            json_mode=self.json_mode,
        ).validate()

    def api_key_value(self) -> str:
        """The key for a call (the secret, else the env var); read at call time, never returned by a task."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key.get_secret_value()
        return resolve_api_key(self.to_config())


def load_endpoint(name: str) -> LLMEndpoint:
    try:
        return LLMEndpoint.load(name)
    except ValueError as e:
        raise ReasonlabError(f"no LLMEndpoint block named {name!r} ({e}); create one with "
                             f"LLMEndpoint(...).save({name!r}) or use REASONLAB_LLM_* env vars") from None
