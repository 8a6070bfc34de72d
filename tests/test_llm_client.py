"""The provider layer against real loopback HTTP servers: retries, Retry-After, usage, keys, local serving."""

from __future__ import annotations

import email.utils
import socket
import threading
import time

import pytest

from loopback_llm import ScriptedLLM
from reasonlab.errors import ReasonlabError
from reasonlab.llm_client import (EndpointConfig, LLMCallError, LLMClient, LLMUnavailable, endpoint_from_env,
                                  resolve_api_key, retry_after_seconds)

MSGS = [{"role": "user", "content": "hi"}]


def cfg(server, **kw) -> EndpointConfig:
    kw.setdefault("backoff_base_s", 0.05)
    return EndpointConfig(base_url=server.base_url, model="m", **kw)


def test_429_retry_after_is_honoured_and_usage_recorded():
    with ScriptedLLM([("status", 429, {"retry-after": "1"}), ("ok", "hello")]) as srv:
        client = LLMClient(cfg(srv, price_input_per_1k=0.01, price_output_per_1k=0.03))
        t0 = time.monotonic()
        reply = client.chat(MSGS, label="t")
        assert time.monotonic() - t0 >= 1.0
    assert reply.content == "hello" and reply.attempts == 2
    rec = client.calls[0]
    assert rec.status == "ok" and rec.label == "t" and rec.waits_s[0] >= 1.0 and "HTTP 429" in rec.errors[0]
    assert 1.0 < rec.latency_s < 3.0 and rec.latency_s == round(rec.latency_s, 3)  # the wait is in the latency
    assert (rec.prompt_tokens, rec.completion_tokens) == (100, 50)
    assert rec.cost_usd == pytest.approx(100 * 0.01 / 1000 + 50 * 0.03 / 1000)
    assert client.usage_summary()["attempts"] == 2


def test_5xx_and_timeout_are_retried_then_give_up():
    with ScriptedLLM([("status", 500), ("status", 503), ("sleep", 1.5, "late"), ("ok", "fine")]) as srv:
        client = LLMClient(cfg(srv, timeout_s=0.5))
        reply = client.chat(MSGS)
        assert reply.content == "fine" and reply.attempts == 4
        assert client.calls[0].errors[2] == "timeout after 0.5s"
    waits = client.calls[0].waits_s  # exponential backoff, base 0.05 s, up to 25 % jitter, kept to the millisecond
    assert len(waits) == 3 and all(0.05 * 2 ** i <= w <= 0.0625 * 2 ** i + 0.001 for i, w in enumerate(waits))
    assert waits == [round(w, 3) for w in waits]
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


@pytest.mark.parametrize("status", [408, 409, 429, 500, 503])
def test_retryable_statuses_are_retried(status):
    with ScriptedLLM([("status", status), ("ok", "after")]) as srv:
        client = LLMClient(cfg(srv, max_wait_s=0.2))
        reply = client.chat(MSGS)
        assert reply.content == "after" and reply.attempts == 2 and srv.posts() == 2
    [error] = client.calls[0].errors
    assert error.startswith(f"HTTP {status}: ") and f"injected {status}" in error and len(client.calls[0].waits_s) == 1


@pytest.mark.parametrize("status", [400, 403, 404, 410, 422])
def test_other_4xx_fail_at_once(status):
    with ScriptedLLM([("status", status), ("ok", "never")]) as srv:
        with pytest.raises(LLMCallError, match=f"HTTP {status}"):
            LLMClient(cfg(srv)).chat(MSGS)
        assert srv.posts() == 1


def test_connection_refused_is_retried_then_unavailable():
    with socket.socket() as held:  # bound, never listening: connections to it are refused, and no one can take it
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/v1"
        waits = []
        client = LLMClient(EndpointConfig(base_url=url, model="m", max_retries=2, backoff_base_s=0.01),
                           sleep=waits.append)
        with pytest.raises(LLMUnavailable, match="after 3 attempts: connection error; connection error"):
            client.chat(MSGS)
    assert client.calls[0].attempts == 3 and client.calls[0].errors == ["connection error"] * 3
    # exponential backoff: base * 2**attempt * (1 .. 1.25), two waits for three attempts
    assert len(waits) == 2 and 0.01 <= waits[0] <= 0.0125 and 0.02 <= waits[1] <= 0.025


def test_backoff_is_capped_by_max_wait_and_retry_after_raises_the_wait():
    waits = []
    with ScriptedLLM([("status", 503), ("status", 503), ("status", 503), ("ok", "x")]) as srv:
        client = LLMClient(cfg(srv, backoff_base_s=1.0, max_wait_s=1.5), sleep=waits.append)
        assert client.chat(MSGS).attempts == 4
    assert 1.0 <= waits[0] <= 1.25 and waits[1:] == [1.5, 1.5]
    waits.clear()
    with ScriptedLLM([("status", 429, {"retry-after": "3"}), ("ok", "x")]) as srv:
        LLMClient(cfg(srv, backoff_base_s=0.01, max_wait_s=5), sleep=waits.append).chat(MSGS)
    assert waits == [3.0]


def test_rate_limit_spaces_requests():
    waits = []

    def sleep(s):  # really sleeps, at most 0.3 s (a broken limiter fails fast instead of hanging)
        waits.append(s)
        time.sleep(min(s, 0.3))

    with ScriptedLLM([("ok", "x")]) as srv:
        client = LLMClient(cfg(srv, requests_per_minute=600), sleep=sleep)  # one request every 0.1 s
        for _ in range(4):
            client.chat(MSGS)
        at = [r["at"] for r in srv.requests]
    # the first call's own set-up (client, connection) comes after its limiter pass: time from the second on
    assert len(at) == 4 and at[2] - at[1] >= 0.09 and at[3] - at[2] >= 0.09, at
    # the first call goes at once; the second waits what is left of 0.1 s after the first (none if it took longer)
    assert len(waits) in (2, 3) and all(0 < w <= 0.1 for w in waits) and min(waits[-2:]) > 0.05, waits


def test_concurrency_limit_holds_across_threads():
    for limit in (1, 2):
        with ScriptedLLM([("sleep", 0.3, "x")]) as srv:
            client = LLMClient(cfg(srv, max_concurrency=limit))
            threads = [threading.Thread(target=client.chat, args=(MSGS,)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert srv.posts() == 4 and srv.max_in_flight == limit
        assert client.usage_summary()["calls"] == 4


def test_the_key_is_redacted_from_errors_and_records(monkeypatch):
    key = "sk-live-abcdef123456"
    monkeypatch.setenv("REDACT_TEST_KEY", key)
    echo = f"Incorrect API key provided: {key}"
    with ScriptedLLM([("status", 401, {}, echo)]) as srv:
        client = LLMClient(EndpointConfig(base_url=srv.base_url, model="m", api_key_env="REDACT_TEST_KEY"))
        with pytest.raises(LLMCallError) as e:
            client.chat(MSGS)
        assert srv.requests[0]["authorization"] == f"Bearer {key}"
    assert key not in str(e.value) and "Incorrect API key provided: ***" in str(e.value)
    assert key not in str(client.calls[0].to_dict()) and "***" in client.calls[0].errors[0]
    with ScriptedLLM([("status", 500, {}, echo)]) as srv:
        client = LLMClient(cfg(srv, max_retries=1, api_key_env="REDACT_TEST_KEY"))
        with pytest.raises(LLMUnavailable) as e:
            client.chat(MSGS)
    assert key not in str(e.value) and str(e.value).count("***") == 2


def test_retry_after_in_every_form():
    assert retry_after_seconds(None) is None and retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after-ms": "soon", "retry-after": "3"}) == 3.0  # a bad ms falls back
    assert retry_after_seconds({"retry-after": "0.5"}) == 0.5
    assert retry_after_seconds({"retry-after": "-4"}) == 0.0 and retry_after_seconds({"retry-after-ms": "-9"}) == 0.0
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after_seconds({"retry-after": future}) <= 30.5
    assert retry_after_seconds({"retry-after": email.utils.formatdate(time.time() - 30, usegmt=True)}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None  # malformed: no hint, not a crash


def test_a_malformed_retry_after_is_retried_with_backoff():
    waits = []
    with ScriptedLLM([("status", 503, {"retry-after": "in a while"}), ("ok", "x")]) as srv:
        reply = LLMClient(cfg(srv, backoff_base_s=0.01), sleep=waits.append).chat(MSGS)
    assert reply.content == "x" and len(waits) == 1 and 0.01 <= waits[0] <= 0.0125


def test_redaction_rules_and_the_limiter_interval():
    from reasonlab.llm_client import LOCAL_PLACEHOLDER_KEY, _RateLimiter, redact

    assert redact("key abcd here, abcd again", "abcd") == "key *** here, *** again"
    assert redact("key abc here", "abc") == "key abc here"  # 3 characters: too short to find safely
    assert redact(f"sent {LOCAL_PLACEHOLDER_KEY}", LOCAL_PLACEHOLDER_KEY) == f"sent {LOCAL_PLACEHOLDER_KEY}"
    assert redact("nothing", None) == "nothing" and redact("nothing", "") == "nothing"
    assert _RateLimiter(600).interval == pytest.approx(0.1) and _RateLimiter(None).interval == 0.0
    assert _RateLimiter(30).interval == pytest.approx(2.0)


def test_request_body_defaults_and_the_ledger_label():
    with ScriptedLLM([("ok", "x")]) as srv:
        client = LLMClient(cfg(srv))
        client.chat(MSGS)
        client.chat(MSGS, label="lbl", max_tokens=7, temperature=0.0, seed=3, extra_body={"top_k": 2})
        plain_body, full = srv.requests[0]["body"], srv.requests[1]["body"]
    assert plain_body["max_tokens"] == 512 and plain_body["model"] == "m" and plain_body["messages"] == MSGS
    assert not {"temperature", "seed", "top_k", "response_format"} & set(plain_body)
    assert (full["max_tokens"], full["temperature"], full["seed"], full["top_k"]) == (7, 0.0, 3, 2)
    assert [c.label for c in client.calls] == ["", "lbl"] and [c.status for c in client.calls] == ["ok", "ok"]



def test_structured_output_is_sent_then_dropped_for_good_and_labels_name_the_call():
    fmt = {"type": "json_object"}
    with ScriptedLLM([("ok", "{}"), ("status", 400, {}, "response_format json_object is not supported"),
                      ("ok", "{}"), ("ok", "{}")]) as srv:
        client = LLMClient(cfg(srv))
        client.chat(MSGS, response_format=fmt)
        client.chat(MSGS, response_format=fmt)  # refused: asked again without it
        client.chat(MSGS, response_format=fmt)  # and never sent again
        bodies = [r["body"] for r in srv.requests]
    assert bodies[0]["response_format"] == fmt and bodies[1]["response_format"] == fmt
    assert "response_format" not in bodies[2] and "response_format" not in bodies[3]
    assert client.schema_supported is False and [c.model for c in client.calls] == ["m"] * 3
    # a 5xx whose message mentions response_format is an ordinary transient failure
    waits = []
    with ScriptedLLM([("status", 500, {}, "response_format backend crashed"), ("ok", "x")]) as srv:
        assert LLMClient(cfg(srv, backoff_base_s=0.01), sleep=waits.append).chat(MSGS).content == "x"
    assert len(waits) == 1
    with ScriptedLLM([("status", 404)]) as srv:
        with pytest.raises(LLMCallError, match=r"^LLM call judge-7 to http://127\.0\.0\.1:\d+/v1 failed: HTTP 404"):
            LLMClient(cfg(srv)).chat(MSGS, label="judge-7")
        with pytest.raises(LLMCallError, match=r"^LLM call  to http"):
            LLMClient(cfg(srv)).chat(MSGS)


def test_a_retry_after_equal_to_max_wait_is_waited():
    waits = []
    with ScriptedLLM([("status", 429, {"retry-after": "2"}), ("ok", "x")]) as srv:
        reply = LLMClient(cfg(srv, max_wait_s=2, backoff_base_s=0.01), sleep=waits.append).chat(MSGS)
    assert reply.content == "x" and waits == [2.0]
