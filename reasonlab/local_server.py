"""Offline LLM endpoint: a local model behind a real OpenAI-compatible HTTP server on loopback.

    with serve_local("smollm2-135m-instruct") as server:     # `transformers serve` on a free port
        client = LLMClient(EndpointConfig(base_url=server.base_url, model=server.model))
        ...
    # the server is stopped here, whatever happened inside

    with serving(EndpointConfig(local_model="qwen2.5-coder-0.5b-instruct")) as live:   # for a whole stage
        client = LLMClient(live.config())   # served here, on first use, not before (a cached rerun starts none)

`live.config()` is the running server's EndpointConfig (a random loopback port): keep it out of cache keys.

The server is transformers' own (`transformers serve`, the `transformers[serving]` extra). It runs
in its own process group, offline (HF_HUB_OFFLINE=1), with no API-key env vars, and is always killed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from reasonlab.errors import ReasonlabError
from reasonlab.llm_client import EndpointConfig

_RUNNING: set[subprocess.Popen] = set()


@dataclass(frozen=True)
class LocalServer:
    base_url: str  # http://127.0.0.1:PORT/v1
    model: str  # the model id requests must name (the served folder)
    pid: int
    log_file: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout_s: float, log_file: Path | None = None) -> None:
    """Poll `url` until it answers 200; fail early (with the log's tail) if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ReasonlabError(f"local LLM server exited with code {proc.returncode} before it was healthy"
                                 f"{_tail(log_file)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise ReasonlabError(f"local LLM server not healthy at {url} after {timeout_s:.0f}s{_tail(log_file)}")


def _tail(log_file: Path | None, n: int = 15) -> str:
    if not log_file or not Path(log_file).is_file():
        return ""
    lines = Path(log_file).read_text(errors="replace").splitlines()[-n:]
    return ":\n" + "\n".join(lines) if lines else ""


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Terminate the server's whole process group; kill it if it does not exit in `grace_s`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    _RUNNING.discard(proc)


@atexit.register
def _stop_all() -> None:
    for proc in list(_RUNNING):
        stop(proc, grace_s=3)


def _server_env(drop: tuple[str, ...] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not (k.endswith("_API_KEY") or k in drop or k in ("OPENAI_API_KEY", "HF_TOKEN"))}
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def model_folder(model: str) -> str:
    """A registry name or folder -> the local HF folder to serve (materialized offline if needed)."""
    from reasonlab.models import resolve_model

    resolved = resolve_model(model)
    folder = Path(resolved.source)
    if not (folder / "config.json").is_file():
        raise ReasonlabError(f"local model {model!r} resolved to {resolved.source}, not a local model folder; "
                             "offline serving needs a folder (or a registry model with an offline source)")
    return str(folder)


@contextlib.contextmanager
def serve_local(model: str, *, port: int | None = None, startup_timeout_s: float = 240.0, device: str = "cpu",
                log_dir: Path | str | None = None, drop_env: tuple[str, ...] = (), batching: bool = False,
                dtype: str = "auto") -> Iterator[LocalServer]:
    """Serve `model` (registry name or HF folder) with `transformers serve` on 127.0.0.1; stop it on exit.

    `batching`: continuous batching, so that requests sent at once share each forward pass (the concept study's
    text stage sends every case's requests together); `dtype`: the weights' dtype ("auto": as stored)."""
    folder = model_folder(model)
    port = port or free_port()
    log_dir = Path(log_dir) if log_dir else Path(tempfile.gettempdir())
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"llm-server-{port}.log"
    cmd = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve", folder,
           "--host", "127.0.0.1", "--port", str(port), "--device", device, "--log-level", "warning", "--dtype", dtype,
           *(["--continuous-batching"] if batching else [])]
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_server_env(drop_env), start_new_session=True)
    _RUNNING.add(proc)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, startup_timeout_s, log_file)
        print(f"local LLM server for {folder} at http://127.0.0.1:{port}/v1 (pid {proc.pid})")
        yield LocalServer(base_url=f"http://127.0.0.1:{port}/v1", model=folder, pid=proc.pid, log_file=str(log_file))
    finally:
        stop(proc)


def describe(server: LocalServer) -> str:
    return json.dumps({"base_url": server.base_url, "model": server.model})


LOCAL_TIMEOUT_S = 3600.0  # per request to a model served here: a batch of many requests on a CPU takes long


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
        server = self._stack.enter_context(serve_local(self.cfg.local_model, log_dir=_runs_dir() / "llm-server",
                                                       batching=True, dtype="bfloat16"))
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


def _runs_dir() -> Path:
    from reasonlab import paths

    return paths.runs_dir()
