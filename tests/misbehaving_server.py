"""A small, real OpenAI-compatible HTTP server of ours that misbehaves on purpose.

Real servers (vLLM) cannot be made to stream slowly on demand, fail the first request, echo back
what they were sent, or answer with escape-laden errors; tests that need those cases start this
one. It speaks the parts of the API personachat uses (``/v1/models``, ``/version``,
``/v1/chat/completions`` streamed and not, ``/tokenize``) over a real socket, in a thread.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Behaviour:
    """What the server does. Change the fields at any time; the next request sees them.

    ``answer``: the text of every answer (``None``: echo the last user message back as
    ``heard: ...``). ``chunk``: characters per streamed chunk; ``delay``: seconds between chunks.
    ``fail_first``: that many chat requests fail with HTTP ``fail_status`` and ``error``.
    ``max_model_len``: reported in ``/v1/models``. ``mid_stream_error``: sent as an SSE error event
    after the first chunk. ``missing_for``: for that many seconds after the server starts, every
    model is missing (HTTP 404, as a router or dynamic loader answers while a model loads).
    """

    models: list[str] = field(default_factory=lambda: ["base"])
    answer: str | None = None
    chunk: int = 4
    delay: float = 0.0
    fail_first: int = 0
    fail_status: int = 500
    error: str = "the server is on fire"
    max_model_len: int = 4096
    mid_stream_error: str | None = None
    missing_for: float = 0.0


class MisbehavingServer:
    """Start with ``with MisbehavingServer() as server:``; ``server.url`` is its base URL.

    ``requests`` holds the JSON body of every chat request received, in order.
    """

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.requests: list[dict[str, Any]] = []
        self._failed = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._get(self)

            def do_POST(self) -> None:
                server._post(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> MisbehavingServer:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- handlers ------------------------------------------------------------------------------

    @staticmethod
    def _json(handler: BaseHTTPRequestHandler, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _get(self, handler: BaseHTTPRequestHandler) -> None:
        b = self.behaviour
        if handler.path == "/v1/models":
            data = [
                {"id": m, "object": "model", "root": m, "parent": None, "max_model_len": b.max_model_len}
                for m in b.models
            ]
            self._json(handler, 200, {"object": "list", "data": data})
        elif handler.path == "/version":
            self._json(handler, 200, {"version": "misbehaving-1"})
        elif handler.path == "/health":
            self._json(handler, 200, {})
        else:
            self._json(handler, 404, {"error": {"message": "Not Found", "type": "NotFoundError"}})

    def _post(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}")
        if handler.path == "/tokenize":
            text = json.dumps(body.get("messages") or body.get("prompt") or "")
            self._json(handler, 200, {"count": len(text) // 4, "max_model_len": self.behaviour.max_model_len})
            return
        if handler.path != "/v1/chat/completions":
            self._json(handler, 404, {"error": {"message": "Not Found", "type": "NotFoundError"}})
            return
        b = self.behaviour
        with self._lock:
            self.requests.append(body)
            failing = self._failed < b.fail_first
            if failing:
                self._failed += 1
        if failing:
            self._json(handler, b.fail_status, {"error": {"message": b.error, "type": "InternalServerError"}})
            return
        if body.get("model") not in b.models or time.monotonic() - self.started < b.missing_for:
            message = f"The model `{body.get('model')}` does not exist."
            self._json(handler, 404, {"error": {"message": message, "type": "NotFoundError"}})
            return
        messages = body.get("messages") or []
        users = [m.get("content", "") for m in messages if m.get("role") == "user"]
        text = b.answer if b.answer is not None else f"heard: {users[-1] if users else ''}"
        n = int(body.get("n") or 1)
        if body.get("stream"):
            self._stream(handler, text, n)
            return
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            for i in range(n)
        ]
        usage = {"prompt_tokens": 7, "completion_tokens": len(text) // 4 + 1}
        self._json(handler, 200, {"object": "chat.completion", "choices": choices, "usage": usage})

    def _stream(self, handler: BaseHTTPRequestHandler, text: str, n: int) -> None:
        b = self.behaviour
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()

        def send(data: Any) -> None:
            handler.wfile.write(
                b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"
            )
            handler.wfile.flush()

        pieces = [text[i : i + b.chunk] for i in range(0, len(text), b.chunk)] or [""]
        try:
            for number, piece in enumerate(pieces):
                for i in range(n):
                    send({"choices": [{"index": i, "delta": {"content": piece}, "finish_reason": None}]})
                if number == 0 and b.mid_stream_error is not None:
                    send({"error": {"message": b.mid_stream_error, "type": "InternalServerError"}})
                    return
                if b.delay:
                    time.sleep(b.delay)
            for i in range(n):
                send({"choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]})
            send({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": len(pieces)}})
            send(b"[DONE]")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (cancelled): nothing to do
        finally:
            handler.close_connection = True
