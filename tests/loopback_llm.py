"""A real OpenAI-compatible HTTP server on loopback that answers from a script (for fault injection).

Each POST /v1/chat/completions takes the next action from `script` (the last one repeats):
  ("ok", content)            200 with that message content and token usage
  ("status", code, headers)  that HTTP status with an OpenAI-style error body (e.g. 429 + Retry-After)
  ("sleep", seconds, content) answer late (a client timeout), then 200
  ("refusal", text)          200 with message.refusal set and no content
  a callable                 called with the request's JSON body; returns one of the actions above
Every request's JSON body, Authorization header and arrival time (time.monotonic) are kept in `requests`;
`max_in_flight` is the most requests the server was answering at once.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedLLM:
    def __init__(self, script: list[tuple]):
        self.script = list(script)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self._send(200, {"status": "ok"})

            def do_POST(self):
                with outer.lock:
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    self._answer()
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

            def _answer(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                with outer.lock:
                    outer.requests.append({"body": body, "authorization": self.headers.get("authorization"),
                                           "at": time.monotonic()})
                    action = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                if callable(action):  # a responder: the request's body -> an action
                    action = action(body)
                kind = action[0]
                if kind == "status":
                    code, headers = action[1], (action[2] if len(action) > 2 else {})
                    text = action[3] if len(action) > 3 else f"injected {code}"
                    self._send(code, {"error": {"message": text, "type": "injected", "code": code}},
                               headers)
                    return
                if kind == "sleep":
                    time.sleep(action[1])
                    action = ("ok", action[2])
                    kind = "ok"
                msg = {"role": "assistant", "content": None, "refusal": None}
                if kind == "refusal":
                    msg["refusal"] = action[1]
                else:
                    msg["content"] = action[1]
                self._send(200, {"id": "cmpl-1", "object": "chat.completion", "created": int(time.time()),
                                 "model": body.get("model", "x"),
                                 "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}})

            def _send(self, code, obj, headers=None):
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedLLM":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def posts(self) -> int:
        return len(self.requests)


def items(*pairs: tuple[str, str]) -> str:
    return json.dumps({"items": [{"prompt": p, "answer": a, "topic": []} for p, a in pairs]})
