"""The slow scripted model as an OpenAI-compatible HTTP endpoint, for workers in other processes.

``POST /v1/chat/completions`` sleeps ``delay_s`` and answers REPLY (no tool calls), like a remote LLM; the
app reaches it through ``ATENDE_LLM_BASE_URL`` (``runtime.llm.OpenAICompatibleChatModel``), as it would any
external OpenAI-compatible endpoint. It counts calls and the most in flight at once (``calls``,
``max_in_flight``, as ``harness.SlowScriptedLLM`` does in process).
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from atende.bench.whatsapp_load.payloads import REPLY


class SlowModelServer:
    """A threaded HTTP server on 127.0.0.1 (a free port); ``with`` gives its base URL (``.../v1``)."""

    def __init__(self, delay_s: float, reply: str = REPLY, name: str = "slow-scripted") -> None:
        self.delay_s, self.reply, self.name = delay_s, reply, name
        self.calls = self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.request_queue_size = 256
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="bench-model", daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def completion(self, request: dict) -> dict:
        """Sleep ``delay_s``, then the chat completion of REPLY (usage: words in, words out)."""
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay_s)
        finally:
            with self._lock:
                self.in_flight -= 1
        words = sum(len(str(m.get("content") or "").split()) for m in request.get("messages", []))
        out = len(self.reply.split())
        return {"id": f"chatcmpl-{self.calls}", "object": "chat.completion", "created": int(time.time()),
                "model": request.get("model", self.name),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": self.reply}}],
                "usage": {"prompt_tokens": words, "completion_tokens": out, "total_tokens": words + out}}


def _handler_for(server: SlowModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._answer(404, {"error": {"message": f"no {self.path}"}})
                return
            self._answer(200, server.completion(json.loads(raw or b"{}")))

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # quiet
            pass

    return Handler
