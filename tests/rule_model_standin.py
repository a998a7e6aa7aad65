"""An OpenAI-compatible chat-model stand-in, in the test's process, whose answers a test writes as a function of the
request: ``respond(messages, tools) -> {"content": ...}`` or ``{"tool_calls": [(name, arguments), ...]}``. The
real client (``runtime.llm``) talks to it over HTTP, in the server under test; every request is kept
(``requests``), so a test can check what the model was shown."""
from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Respond = Callable[[list[dict], list[dict]], dict]


class RuleModelStandIn:
    def __init__(self, respond: Respond, port: int = 0) -> None:
        self.respond = respond
        self.requests: list[dict] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                self._send({"object": "list", "data": [{"id": "rules", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path.endswith("/tokenize/count"):
                    self._send({"count": len(str(body.get("input", "")).split())})
                    return
                standin.requests.append(body)
                self._send(standin._completion(body))

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _completion(self, body: dict) -> dict:
        answer = self.respond(body.get("messages") or [], body.get("tools") or [])
        message: dict = {"role": "assistant", "content": answer.get("content", "")}
        if answer.get("tool_calls"):
            message["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
                                      "function": {"name": name, "arguments": json.dumps(arguments)}}
                                     for name, arguments in answer["tool_calls"]]
        return {"id": "chatcmpl-rules", "object": "chat.completion", "created": 0, "model": "rules",
                "choices": [{"index": 0, "finish_reason": "tool_calls" if answer.get("tool_calls") else "stop",
                             "message": message}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}

    def __enter__(self) -> RuleModelStandIn:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
