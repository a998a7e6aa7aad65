"""A stand-in for ``llama_cpp.server`` that can really crash or hang, run as a child process by the
supervision tests (``python -m tests.llm_standin --model ... --host ... --port ...``).

It answers ``GET /v1/models``, ``POST /v1/chat/completions`` with a fixed reply and
``POST /extras/tokenize/count`` (one token per word), like the real server. ``STANDIN_CRASH`` makes it die by
a real segmentation fault: ``startup`` before it listens, ``always`` on every completion, ``once:PATH`` on a
completion while the file PATH exists (the file is removed first, so the restarted process answers).
``STANDIN_REPLY`` is the reply's text (default: "standin pid N"); with ``STANDIN_HOLD=PATH`` a completion
waits while the file PATH exists, after touching PATH.held (a test holds a turn at its model call, there).
Requests are served each on its own thread.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _segfault() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV, as a bad instruction in a native library would


def _should_crash() -> bool:
    mode = os.environ.get("STANDIN_CRASH", "")
    if mode == "always":
        return True
    if mode.startswith("once:"):
        marker = Path(mode.removeprefix("once:"))
        if marker.exists():
            marker.unlink()
            return True
    return False


def _hold() -> None:
    """Wait while the file ``STANDIN_HOLD`` names exists, having touched that path + ".held"."""
    hold = os.environ.get("STANDIN_HOLD")
    if hold and Path(hold).exists():
        Path(hold + ".held").touch()
        while Path(hold).exists():
            time.sleep(0.05)


class Handler(BaseHTTPRequestHandler):
    def _send(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        self._send({"object": "list", "data": [{"id": "standin", "object": "model"}]})

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if _should_crash():
            _segfault()
        if self.path == "/extras/tokenize/count":
            self._send({"count": len(json.loads(body)["input"].split())})
            return
        _hold()
        reply = os.environ.get("STANDIN_REPLY") or f"standin pid {os.getpid()}"
        self._send({
            "id": "chatcmpl-standin", "object": "chat.completion", "created": 0, "model": "standin",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": reply}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
        })

    def log_message(self, fmt: str, *args) -> None:
        print(fmt % args, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()  # --model, --n_threads... as llama_cpp.server takes them
    if os.environ.get("STANDIN_CRASH") == "startup":
        _segfault()
    print(f"standin listening on {args.host}:{args.port}", flush=True)
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
