"""A receiver of atende's outbound events, as a team's own system would run one (README, "Outbound events"): it
checks each delivery's signature with the subscription's secret, refuses stale timestamps, drops a repeated event
id, and keeps what it got. It can be stopped (nothing listens: deliveries fail to connect) and started again on
the same port."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_S = 300


def verify(secret: str, timestamp: str, signature: str, body: bytes, now: float | None = None) -> bool:
    """Whether ``signature`` (``X-Atende-Signature``) is ``sha256=`` + hex HMAC-SHA256 of ``f"{timestamp}."`` + the
    raw body, keyed by ``secret``, and the timestamp (``X-Atende-Timestamp``) is recent."""
    expected = "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    fresh = timestamp.isdigit() and abs((now or time.time()) - int(timestamp)) <= TOLERANCE_S
    return hmac.compare_digest(expected, signature) and fresh


class EventReceiver:
    """``received``: each accepted event (the parsed body), in arrival order; ``rejected``: bodies whose signature
    did not verify; ``repeats``: event ids delivered again."""

    def __init__(self, port: int, secret: str = "") -> None:
        self.port, self.secret = port, secret
        self.received: list[dict] = []
        self.rejected: list[bytes] = []
        self.repeats: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/atende-events"

    def start(self) -> EventReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok = verify(receiver.secret, self.headers.get("X-Atende-Timestamp", ""),
                            self.headers.get("X-Atende-Signature", ""), body)
                with receiver._lock:
                    if not ok:
                        receiver.rejected.append(body)
                    else:
                        event = json.loads(body)
                        if any(e["id"] == event["id"] for e in receiver.received):
                            receiver.repeats.append(event["id"])
                        else:
                            receiver.received.append(event)
                self.send_response(204 if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self, conversation_id: str | None = None, kind: str | None = None) -> list[dict]:
        with self._lock:
            return [e for e in self.received if (conversation_id is None or e["conversation"]["id"] == conversation_id)
                    and (kind is None or e["type"] == kind)]
