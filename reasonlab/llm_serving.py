"""An endpoint for a whole stage: a local model is served once, on first use, and stopped at the end.

    with serving(EndpointConfig(local_model="qwen2.5-coder-0.5b-instruct")) as live:
        client = LLMClient(live.config())     # the server starts here, not before (a cached rerun starts none)

`live.config()` is the running server's EndpointConfig (a random loopback port): keep it out of cache keys.
A remote endpoint is returned as configured. Pickled (to a worker process), a LiveEndpoint becomes that plain
EndpointConfig.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import replace
from typing import Iterator

from reasonlab import paths
from reasonlab.llm_client import EndpointConfig
from reasonlab.local_server import serve_local

LOCAL_TIMEOUT_S = 900.0  # per request to a model this project serves itself on loopback


class LiveEndpoint:
    """The configured endpoint made callable; thread-safe; `close()` stops a served model."""

    def __init__(self, cfg: EndpointConfig):
        self.cfg = cfg.validate()
        self._live: EndpointConfig | None = None
        self._lock = threading.Lock()
        self._stack = contextlib.ExitStack()

    def config(self) -> EndpointConfig:
        with self._lock:
            if self._live is None:
                self._live = self._start() if self.cfg.is_local else self.cfg
            return self._live

    def _start(self) -> EndpointConfig:
        server = self._stack.enter_context(serve_local(self.cfg.local_model, log_dir=paths.runs_dir() / "llm-server"))
        # a CPU-served model needs minutes for a reply; a timed-out request keeps it busy: wait long, retry little
        return replace(self.cfg.with_server(server.base_url, server.model),
                       json_mode="none" if self.cfg.json_mode == "auto" else self.cfg.json_mode,
                       timeout_s=max(self.cfg.timeout_s, LOCAL_TIMEOUT_S), max_retries=min(self.cfg.max_retries, 1))

    @property
    def started(self) -> bool:
        """True once a local model is being served."""
        return self._live is not None and self.cfg.is_local

    def close(self) -> None:
        with self._lock:
            self._stack.close()
            self._live = None

    def __reduce__(self):
        return (_endpoint, (self.config().to_dict(),))


def _endpoint(fields: dict) -> EndpointConfig:
    return EndpointConfig(**fields)


@contextlib.contextmanager
def serving(endpoint: EndpointConfig) -> Iterator[LiveEndpoint]:
    """The live endpoint for a whole stage; a served model stops on exit, whatever happened inside."""
    live = LiveEndpoint(endpoint)
    try:
        yield live
    finally:
        live.close()
