"""A small upstream HTTP server for the server-performed steps (`step.fetch`, `step.ai.infer`):
`stepwell serve` calls it on the steps' behalf (there is no internet here).

Routes:
- `GET /quote?key=K`: `{"key": K, "price": 21, "header": <x-request-key>}` with an
  `x-quote-source` header;
- `POST /echo`: the method, content type and JSON body it received;
- anything else under GET: 404 with a text body;
- `POST /ai/chat/completions`: a fake OpenAI chat completion; answers 401 unless the request
  carries `Authorization: Bearer <API_KEY>`;
- `POST /anthropic/.../messages`: a fake Anthropic message; 401 unless `x-api-key` is API_KEY;
- `POST /ai-broken/chat/completions`: 500 with a JSON error.
Every request is recorded (path, method, headers, header names as sent, body) for the tests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_KEY = "sk-test-upstream"


@dataclass
class Upstream:
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)

    def seen(self, path: str) -> list[dict[str, Any]]:
        return [r for r in list(self.requests) if r["path"] == path]


def _handler(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:   # quiet
            pass

        def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            ctype = "text/plain" if isinstance(body, str) else "application/json"
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(raw)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(raw)

        def _record(self) -> tuple[str, dict[str, list[str]], Any]:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            upstream.requests.append({"path": parts.path, "method": self.command,
                                      "header_names": list(self.headers.keys()),
                                      "headers": {k.lower(): v for k, v in self.headers.items()},
                                      "body": body})
            return parts.path, parse_qs(parts.query), body

        def do_GET(self) -> None:
            path, query, _ = self._record()
            if path == "/quote":
                self._reply(200, {"key": query.get("key", [""])[0], "price": 21,
                                  "header": self.headers.get("x-request-key")},
                            {"x-quote-source": "upstream"})
            else:
                self._reply(404, f"nothing at {path}")

        def do_POST(self) -> None:
            path, _, body = self._record()
            if path == "/echo":
                self._reply(200, {"method": self.command, "body": body,
                                  "contentType": self.headers.get("content-type")})
            elif path == "/ai/chat/completions":
                if self.headers.get("authorization") != f"Bearer {API_KEY}":
                    self._reply(401, {"error": {"message": "bad api key"}})
                    return
                text = body["messages"][-1]["content"]
                self._reply(200, {
                    "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": f"summary of: {text}"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
            elif path.startswith("/anthropic/") and path.endswith("/messages"):
                if self.headers.get("x-api-key") != API_KEY:
                    self._reply(401, {"type": "error", "error": {"message": "bad api key"}})
                    return
                self._reply(200, {"id": "msg_1", "type": "message", "role": "assistant",
                                  "model": body["model"], "stop_reason": "end_turn",
                                  "content": [{"type": "text", "text": "hello"}]})
            elif path == "/ai-broken/chat/completions":
                self._reply(500, {"error": {"message": "model overloaded"}})
            else:
                self._reply(404, f"nothing at {path}")

    return Handler


@contextmanager
def running_upstream() -> Iterator[Upstream]:
    upstream = Upstream()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(upstream))
    server.daemon_threads = True
    upstream.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="upstream", daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
