"""A real OpenAI-compatible HTTP server on a local port, for the tests where the LLM goes down and comes back.

It answers ``/v1/completions`` as vLLM does in shape (prompt log-probabilities with ``echo``, a
greedy text that ends at the stop string ``"``) with fixed made-up values: the tests exercise the
service around the LLM, not the model. ``stop()`` closes the port (clients get "connection
refused"), ``start()`` opens it again; ``status`` makes it answer an error code; ``delay`` makes
each request take that long.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StubLLM:
    """An OpenAI-compatible server in a thread of the test process."""

    def __init__(self, port: int | None = None, delay: float = 0.0, status: int | None = None) -> None:
        self.port = port or free_port()
        self.delay = delay
        self.status = status  # answer every request with this code (None: 200 with an answer)
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.prompts: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """The base URL (``LOGTRIAGE_OPENAI_BASE_URL``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StubLLM:
        """Listen (again) on the port."""
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with stub._lock:
                    stub.requests += 1
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    if stub.delay:
                        time.sleep(stub.delay)
                    code, answer = stub.answer(self.path, body)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1
                data = json.dumps(answer).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout) or the server is stopping
                    pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the port: connections are refused until ``start()``."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The status code and JSON body for one request."""
        if self.status is not None:
            return self.status, {"error": {"message": f"stub answers {self.status}"}}
        if path != "/v1/completions":
            return 404, {"error": {"message": "not found"}}
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        self.prompts.extend(prompts)
        choices = []
        for index, prompt in enumerate(prompts):
            if body.get("echo"):  # label scoring: a "token" every 4 characters, each -1 (shorter labels win)
                offsets = list(range(0, len(prompt), 4))
                logprobs = [None] + [-1.0] * (len(offsets) - 1)
                choices.append({"index": index, "text": prompt,
                                "logprobs": {"text_offset": offsets, "token_logprobs": logprobs}})  # fmt: skip
            else:  # a text field: a short string closed by its quote
                choices.append({"index": index, "text": 'stub text from the test server"', "finish_reason": "stop"})
        return 200, {"choices": choices, "usage": {"completion_tokens": 6}}

    def __enter__(self) -> StubLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
