"""A local stand-in of an OpenAI-compatible ``POST /v1/audio/transcriptions`` endpoint (a real HTTP server on
loopback), for the tests of ``runtime.transcription.OpenAICompatibleTranscriber`` and of voice notes in turns.

It knows the text of each audio file by the file's sha256 (``add``), answers ``verbose_json`` like OpenAI
(``text``, ``language`` as an English name, ``duration``), and can be told to fail the next requests or to hold
them until ``release`` (a transcription still running)."""
from __future__ import annotations

import hashlib
import json
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class TranscriptionStandIn:
    def __init__(self) -> None:
        self._texts: dict[str, tuple[str, str]] = {}
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = 0  # requests held by ``hold`` right now
        self.requests: list[dict] = []  # {"fields": {...}, "file": bytes, "filename", "content_type", "headers"}
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> TranscriptionStandIn:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.gate.set()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def add(self, audio: bytes, text: str, language: str = "portuguese") -> None:
        with self._lock:
            self._texts[hashlib.sha256(audio).hexdigest()] = (text, language)

    def fail_next(self, status: int, times: int = 1) -> None:
        with self._lock:
            self._failures.extend([status] * times)

    def hold(self) -> None:
        """Hold every coming request until ``release``."""
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def answer(self, path: str, headers: dict, body: bytes) -> tuple[int, dict]:
        with self._lock:
            self.waiting += 1
        self.gate.wait(30)
        with self._lock:
            self.waiting -= 1
        form = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {headers.get('Content-Type', '')}\r\n\r\n".encode() + body)
        fields, upload = {}, None
        for part in form.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename() is not None:
                upload = (part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
            else:
                fields[name] = part.get_payload(decode=True).decode()
        with self._lock:
            self.requests.append({"path": path, "fields": fields, "headers": headers,
                                  "filename": upload and upload[0], "content_type": upload and upload[1],
                                  "file": upload and upload[2]})
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            return failure, {"error": {"message": "stand-in failure", "type": "server_error"}}
        if path != "/v1/audio/transcriptions" or upload is None or "model" not in fields:
            return 400, {"error": {"message": "file and model are required", "type": "invalid_request_error"}}
        known = self._texts.get(hashlib.sha256(upload[2]).hexdigest())
        if known is None:
            return 400, {"error": {"message": "could not decode the audio", "type": "invalid_request_error"}}
        text, language = known
        if fields.get("response_format") != "verbose_json":
            return 200, {"text": text}
        return 200, {"task": "transcribe", "language": language, "duration": 2.5, "text": text, "segments": []}


def _handler_for(standin: TranscriptionStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (stdlib name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, answer = standin.answer(self.path, dict(self.headers.items()), body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args) -> None:  # noqa: A002
            pass

    return Handler
