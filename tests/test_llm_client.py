"""The provider layer against real loopback HTTP servers: retries, Retry-After, usage, keys, local serving."""

from __future__ import annotations

import socket
import time

import pytest

from loopback_llm import ScriptedLLM
from reasonlab.errors import ReasonlabError
from reasonlab.llm_client import (EndpointConfig, LLMCallError, LLMClient, LLMUnavailable, endpoint_from_env,
                                  resolve_api_key, retry_after_seconds)

MSGS = [{"role": "user", "content": "hi"}]


def cfg(server, **kw) -> EndpointConfig:
    return EndpointConfig(base_url=server.base_url, model="m", backoff_base_s=0.05, **kw)


def test_429_retry_after_is_honoured_and_usage_recorded():
    with ScriptedLLM([("status", 429, {"retry-after": "1"}), ("ok", "hello")]) as srv:
        client = LLMClient(cfg(srv, price_input_per_1k=0.01, price_output_per_1k=0.03))
        t0 = time.monotonic()
        reply = client.chat(MSGS, label="t")
        assert time.monotonic() - t0 >= 1.0
    assert reply.content == "hello" and reply.attempts == 2
    rec = client.calls[0]
    assert rec.status == "ok" and rec.waits_s[0] >= 1.0 and "HTTP 429" in rec.errors[0]
    assert (rec.prompt_tokens, rec.completion_tokens) == (100, 50)
    assert rec.cost_usd == pytest.approx(100 * 0.01 / 1000 + 50 * 0.03 / 1000)
    assert client.usage_summary()["attempts"] == 2


def test_5xx_and_timeout_are_retried_then_give_up():
    with ScriptedLLM([("status", 500), ("status", 503), ("sleep", 1.5, "late"), ("ok", "fine")]) as srv:
        reply = LLMClient(cfg(srv, timeout_s=0.5)).chat(MSGS)
        assert reply.content == "fine" and reply.attempts == 4
    with ScriptedLLM([("status", 502)]) as srv:
        client = LLMClient(cfg(srv, max_retries=2))
        with pytest.raises(LLMUnavailable, match="after 3 attempts"):
            client.chat(MSGS)
        assert srv.posts() == 3 and client.calls[0].status == "error"


def test_4xx_is_not_retried_and_long_retry_after_fails_fast():
    with ScriptedLLM([("status", 401)]) as srv:
        with pytest.raises(LLMCallError, match="HTTP 401"):
            LLMClient(cfg(srv)).chat(MSGS)
        assert srv.posts() == 1
    with ScriptedLLM([("status", 429, {"retry-after": "3600"})]) as srv:
        with pytest.raises(LLMUnavailable, match="Retry-After 3600s exceeds"):
            LLMClient(cfg(srv, max_wait_s=5)).chat(MSGS)
        assert srv.posts() == 1


def test_response_format_rejected_is_dropped_once():
    with ScriptedLLM([("status", 400, {}, "response_format json_schema is not supported"), ("ok", "{}")]) as srv:
        client = LLMClient(cfg(srv))
        assert client.chat(MSGS, response_format={"type": "json_object"}).content == "{}"
        assert "response_format" in srv.requests[0]["body"] and "response_format" not in srv.requests[1]["body"]
    with ScriptedLLM([("status", 400)]) as srv:  # any other 400 is final
        with pytest.raises(LLMCallError):
            LLMClient(cfg(srv)).chat(MSGS, response_format={"type": "json_object"})
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({}) is None


def test_key_resolution_and_missing_endpoint(monkeypatch):
    monkeypatch.delenv("MY_LLM_KEY", raising=False)
    remote = EndpointConfig(base_url="https://api.example.com/v1", model="gpt-4o", api_key_env="MY_LLM_KEY")
    with pytest.raises(ReasonlabError, match="MY_LLM_KEY"):
        resolve_api_key(remote)
    monkeypatch.setenv("MY_LLM_KEY", "sk-secret-123")
    assert resolve_api_key(remote) == "sk-secret-123"
    assert "sk-secret" not in repr(LLMClient(remote)) and "sk-secret" not in str(remote.to_dict())
    with pytest.raises(ReasonlabError, match="needs an API key"):
        resolve_api_key(EndpointConfig(base_url="https://api.example.com/v1", model="x"))
    assert resolve_api_key(EndpointConfig(base_url="http://127.0.0.1:9/v1", model="x"))  # loopback: no key needed
    with pytest.raises(ReasonlabError) as e:
        endpoint_from_env({}).validate()
    assert "REASONLAB_LLM_BASE_URL" in str(e.value) and "REASONLAB_LLM_LOCAL_MODEL" in str(e.value)


def test_local_server_serves_and_always_stops(stories_chat, tmp_path):
    from reasonlab.local_server import serve_local

    with pytest.raises(RuntimeError, match="boom"):
        with serve_local(str(stories_chat), log_dir=tmp_path) as server:
            client = LLMClient(EndpointConfig(base_url=server.base_url, model=server.model, json_mode="none"))
            reply = client.chat([{"role": "user", "content": "Once upon a time"}], max_tokens=12, temperature=0)
            assert reply.content and reply.completion_tokens > 0 and reply.prompt_tokens > 0
            port = int(server.base_url.split(":")[2].split("/")[0])
            raise RuntimeError("boom")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    import os
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
