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

from atende.bench.whatsapp_load.harness import SlowScriptedLLM
from atende.bench.whatsapp_load.payloads import REPLY


class SlowModelServer(SlowScriptedLLM):
    """:class:`SlowScriptedLLM` served by a threaded HTTP server on 127.0.0.1 (a free port); ``with`` gives its
    base URL (``.../v1``)."""

    def __init__(self, delay_s: float, reply: str = REPLY, name: str = "slow-scripted") -> None:
        super().__init__(delay_s, reply, name)
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
        resp = self.complete(request.get("messages", []))
        words, out = resp.usage.prompt_tokens, resp.usage.completion_tokens
        return {"id": f"chatcmpl-{self.calls}", "object": "chat.completion", "created": int(time.time()),
                "model": request.get("model", self.name),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": resp.content}}],
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
