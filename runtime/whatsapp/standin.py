"""A local stand-in for Meta's Graph API and webhook sender, for tests and the demo.

``GraphStandIn`` is a threaded stdlib HTTP server on loopback that answers
``POST /{version}/{phone_number_id}/messages`` the way Meta does, records every request, and
can be told to fail, stall or hang up on the next requests. ``post_status`` / ``signed_post``
play Meta's side of webhooks: a body signed with the app secret, POSTed to our endpoint.
The server is the standard library's, so the real ``GraphClient`` is what gets tested.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from runtime.whatsapp import webhook

_MESSAGES_PATH = re.compile(r"^/v\d+(?:\.\d+)?/[^/]+/messages$")
_UPLOAD_PATH = re.compile(r"^/v\d+(?:\.\d+)?/[^/]+/media$")
_BSUID = re.compile(r"^[A-Z]{2}\.[A-Za-z0-9.]+$")

# Meta's error code and message for a status, when a test does not pick one.
_DEFAULT_ERRORS = {
    400: (100, "Invalid parameter"),
    401: (190, "Invalid OAuth access token"),
    403: (200, "Permissions error"),
    404: (100, "Unsupported post request"),
    429: (130429, "Rate limit hit"),
    500: (131000, "Something went wrong"),
    503: (131016, "Service unavailable"),
}


@dataclass
class _Plan:
    """What to do with one coming request instead of answering it normally."""

    status: int | None = None
    error_code: int | None = None
    message: str | None = None
    details: str | None = None
    delay_s: float = 0.0
    drop: bool = False


class GraphStandIn:
    """The Graph API's ``/messages`` endpoint on 127.0.0.1; use as a context manager.

    ``.sent`` lists every request that reached it (also those failed, delayed or dropped on
    purpose), each ``{"method", "path", "headers", "json", "body", "peer", "at", "wall"}`` (``peer``: the client's
    address and port, which tells the connections apart; ``at``: ``time.monotonic()`` when it arrived, ``wall``:
    ``time.time()``), except read receipts and typing indicators (a body with ``"status": "read"``): those go to
    ``.receipts``, in the same form, and only ``fail_next_receipt`` disturbs them, so that tests of sends are
    not thrown off by them. Media uploads (``POST /{version}/{phone_number_id}/media``, multipart) are answered
    with a media id and kept in ``.uploads`` (``{"id", "data", "mime_type", "filename"}``); a document or image
    message must name one of them.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sent: list[dict] = []
        self.receipts: list[dict] = []
        self.uploads: list[dict] = []
        self._receipt_plans: deque[_Plan] = deque()
        self._address = (host, port)
        self._plans: deque[_Plan] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()  # open client connections (kept alive between requests)
        self._thread: threading.Thread | None = None
        self.media = _MediaShelf()  # the media endpoints' files (add_media) and the GETs that reached them

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> GraphStandIn:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Listen (again, after ``stop``: a stand-in made with a port comes back on it, as Meta after an outage)."""
        self._stopping.clear()
        self._server = ThreadingHTTPServer(self._address, _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="graph-standin", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut every open connection, as Meta going down would: a client's kept-alive
        connection does not reach it any more."""
        self._stopping.set()  # cuts short a request held by delay_next
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ failure injection

    def fail_next(self, status: int = 500, error_code: int | None = None, message: str | None = None,
                  *, details: str | None = None, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``status`` and a Meta error object."""
        code, text = _DEFAULT_ERRORS.get(status, (1, "An unknown error occurred"))
        plan = _Plan(status=status, error_code=error_code or code, message=message or text, details=details)
        with self._lock:
            self._plans.extend([plan] * times)

    def fail_next_receipt(self, status: int = 500, *, times: int = 1, delay_s: float = 0.0) -> None:
        """Answer the next ``times`` read receipts / typing indicators with ``status`` (after ``delay_s``)."""
        code, text = _DEFAULT_ERRORS.get(status, (1, "An unknown error occurred"))
        with self._lock:
            self._receipt_plans.extend([_Plan(status=status, error_code=code, message=text, delay_s=delay_s)] * times)

    def delay_next(self, seconds: float) -> None:
        """Hold the next request ``seconds`` before answering it (it is still accepted, like Meta would)."""
        with self._lock:
            self._plans.append(_Plan(delay_s=seconds))

    def drop_next(self) -> None:
        """Read the next request, then close the connection without answering."""
        with self._lock:
            self._plans.append(_Plan(drop=True))

    # ------------------------------------------------------------------ handling

    def _next_plan(self, receipt: bool = False) -> _Plan | None:
        with self._lock:
            plans = self._receipt_plans if receipt else self._plans
            return plans.popleft() if plans else None

    def _record(self, method: str, path: str, headers: dict, body: bytes, peer: tuple) -> tuple[dict | None, bool]:
        """Record the request; returns its JSON and whether it is a read receipt (``.receipts``)."""
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        receipt = isinstance(payload, dict) and payload.get("status") == "read"
        with self._lock:
            (self.receipts if receipt else self.sent).append({
                "method": method, "path": path, "headers": headers, "json": payload, "body": body, "peer": peer,
                "at": time.monotonic(), "wall": time.time()})
        return payload, receipt

    def _upload(self, headers: dict, body: bytes) -> tuple[int, dict]:
        """Meta's answer to a media upload: the multipart form's ``file`` kept, its media id."""
        form = BytesParser(policy=email_policy).parsebytes(
            b"Content-Type: " + headers.get("Content-Type", "").encode() + b"\r\n\r\n" + body)
        fields = {part.get_param("name", header="content-disposition"): part for part in form.iter_parts()}
        file = fields.get("file")
        if fields.get("messaging_product") is None or file is None or not file.get_payload(decode=True):
            return _error(400, 100, "Invalid parameter", "messaging_product and a file are required")
        media_id = f"{len(self.uploads) + 1}{uuid.uuid4().int % 10**12:012d}"
        with self._lock:
            self.uploads.append({"id": media_id, "data": file.get_payload(decode=True),
                                 "mime_type": file.get_content_type(), "filename": file.get_filename()})
        return 200, {"id": media_id}

    def _answer(self, path: str, headers: dict, payload, body: bytes = b"") -> tuple[int, dict]:
        """Meta's answer to an undisturbed request."""
        if _UPLOAD_PATH.match(path) and headers.get("Authorization", "").startswith("Bearer "):
            return self._upload(headers, body)
        if not _MESSAGES_PATH.match(path):
            return _error(404, 100, "Unsupported post request")
        if not headers.get("Authorization", "").startswith("Bearer ") or len(headers["Authorization"]) <= 7:
            return _error(401, 190, "Invalid OAuth access token")
        if not isinstance(payload, dict) or payload.get("messaging_product") != "whatsapp":
            return _error(400, 100, "Invalid parameter", "messaging_product must be 'whatsapp'")
        if payload.get("status") == "read":
            if not str(payload.get("message_id") or "").startswith("wamid."):
                return _error(400, 100, "Invalid parameter", "message_id must be a received message's wamid")
            typing = payload.get("typing_indicator")
            if typing is not None and typing != {"type": "text"}:
                return _error(400, 100, "Invalid parameter", "typing_indicator.type must be 'text'")
            return 200, {"success": True}
        target = payload.get("to") or payload.get("recipient")
        if not target:
            return _error(400, 100, "Invalid parameter", "to or recipient is required")
        if payload.get("type") == "interactive":
            problem = interactive_problem(payload.get("interactive"))
            if problem:
                return _error(400, 131009, "Parameter value is not valid", problem)
        if payload.get("type") in ("document", "image"):
            media_id = (payload.get(payload["type"]) or {}).get("id")
            if media_id not in {u["id"] for u in self.uploads}:
                return _error(400, 131053, "Media upload error", f"unknown media id {media_id!r}")
        contact = {"input": target, "user_id" if _BSUID.match(target) and not payload.get("to") else "wa_id": target}
        return 200, {
            "messaging_product": "whatsapp",
            "contacts": [contact],
            "messages": [{"id": f"wamid.{uuid.uuid4().hex.upper()}"}],
        }


def interactive_problem(interactive) -> str | None:
    """What breaks Meta's rules for reply buttons and list messages in ``interactive`` (the limits of
    ``runtime.whatsapp.interactive``, checked independently here), or None."""
    from runtime.whatsapp import interactive as limits

    if not isinstance(interactive, dict) or interactive.get("type") not in ("button", "list"):
        return "interactive.type must be button or list"
    body = (interactive.get("body") or {}).get("text")
    if not isinstance(body, str) or not body.strip() or len(body) > limits.BODY:
        return f"interactive.body.text is required, at most {limits.BODY} characters"
    for part, most in (("header", limits.HEADER), ("footer", limits.FOOTER)):
        if part in interactive and len(str((interactive[part] or {}).get("text") or "")) > most:
            return f"interactive.{part}.text: at most {most} characters"
    action = interactive.get("action") or {}
    if interactive["type"] == "button":
        buttons = action.get("buttons") or []
        if not 1 <= len(buttons) <= limits.MAX_BUTTONS:
            return "action.buttons: 1 to 3 buttons"
        items = [(b["reply"]["id"], b["reply"]["title"], None, limits.BUTTON_ID, limits.BUTTON_TITLE) for b in buttons]
    else:
        label = action.get("button")
        if not isinstance(label, str) or not label or len(label) > limits.LIST_BUTTON:
            return f"action.button: 1 to {limits.LIST_BUTTON} characters"
        sections = action.get("sections") or []
        if not 1 <= len(sections) <= 10 or (len(sections) > 1 and not all(s.get("title") for s in sections)):
            return "action.sections: 1 to 10, each titled when there are several"
        if any(len(s.get("title") or "") > limits.SECTION_TITLE for s in sections):
            return f"section title: at most {limits.SECTION_TITLE} characters"
        rows = [r for s in sections for r in s.get("rows") or []]
        if not 1 <= len(rows) <= limits.MAX_ROWS:
            return "rows: 1 to 10 in all"
        items = [(r["id"], r["title"], r.get("description"), limits.ROW_ID, limits.ROW_TITLE) for r in rows]
    for option_id, title, description, id_most, title_most in items:
        if not option_id or len(option_id) > id_most or not title or len(title) > title_most:
            return f"an option's id (at most {id_most}) or title (at most {title_most}) is empty or too long"
        if description is not None and len(description) > limits.ROW_DESCRIPTION:
            return f"row description: at most {limits.ROW_DESCRIPTION} characters"
    if len({i[0] for i in items}) < len(items) or len({i[1] for i in items}) < len(items):
        return "option ids and titles must be unique"
    return None


def _error(status: int, code: int, message: str, details: str | None = None) -> tuple[int, dict]:
    error = {"message": f"(#{code}) {message}", "type": "OAuthException", "code": code,
             "fbtrace_id": uuid.uuid4().hex[:22]}
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return status, {"error": error}


def _handler_for(standin: GraphStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with standin._lock:
                standin._connections.add(self.connection)

        def finish(self) -> None:
            with standin._lock:
                standin._connections.discard(self.connection)
            super().finish()

        def do_POST(self) -> None:  # noqa: N802 (stdlib name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.title(): value for name, value in self.headers.items()}
            payload, receipt = standin._record("POST", self.path, headers, body, self.client_address)
            plan = standin._next_plan(receipt) or _Plan()
            if plan.drop:
                self.close_connection = True
                return
            if plan.delay_s and standin._stopping.wait(plan.delay_s):
                self.close_connection = True
                return
            if plan.status is not None:
                status, answer = _error(plan.status, plan.error_code, plan.message, plan.details)
            else:
                status, answer = standin._answer(self.path, headers, payload, body)
            self._send_json(status, answer)

        def do_GET(self) -> None:  # noqa: N802
            headers = {name.title(): value for name, value in self.headers.items()}
            answer = standin.media.answer(self.path, headers, standin.base_url)
            if isinstance(answer, _Bytes):
                self._send_bytes(answer)
            else:
                self._send_json(*answer)

        def _send_bytes(self, answer: _Bytes) -> None:
            try:
                self.send_response(200)
                self.send_header("Content-Type", answer.mime_type)
                if answer.chunked:  # no Content-Length: the client learns the size only by reading
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(answer.data), 65536):
                        piece = answer.data[start:start + 65536]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(answer.data)))
                    self.end_headers()
                    self.wfile.write(answer.data)
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (a size cap)
                self.close_connection = True

        def _send_json(self, status: int, answer: dict) -> None:
            data = json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (read timeout)
                self.close_connection = True

        def log_message(self, format, *args) -> None:  # noqa: A002 (stdlib signature)
            pass

    return Handler


# --------------------------------------------------------------------------- media endpoints

_MEDIA_INFO_PATH = re.compile(r"^/v\d+(?:\.\d+)?/(?P<media_id>[^/?]+)/?(?:\?.*)?$")
_MEDIA_DOWNLOAD_PATH = re.compile(r"^/media-download/(?P<ticket>[0-9a-f]{32})$")


@dataclass
class _Media:
    data: bytes
    mime_type: str
    declared_size: int | None
    sha256: str | None
    info_failures: list[int]
    download_failures: list[int]
    chunked: bool


@dataclass(frozen=True)
class _Bytes:
    data: bytes
    mime_type: str
    chunked: bool


class _MediaShelf:
    """The files the stand-in's media endpoints serve, as Meta's do: ``GET /{version}/{media_id}`` gives a download
    URL (good for one download: a retry must ask again, as Meta's expire), the declared MIME type, sha256 and size;
    ``GET`` on that URL, with a bearer token, gives the bytes. ``.requests`` lists the GETs: ``(path, headers)``."""

    def __init__(self) -> None:
        self._files: dict[str, _Media] = {}
        self._tickets: dict[str, str] = {}  # download ticket -> media id
        self._lock = threading.Lock()
        self.requests: list[tuple[str, dict]] = []

    def add(self, media_id: str, data: bytes, mime_type: str, *, declared_size: int | None = None,
            sha256: str | None = None, omit_sha256: bool = False, fail_info: list[int] | None = None,
            fail_download: list[int] | None = None, chunked: bool = False) -> None:
        """Serve ``data`` as ``media_id``. ``declared_size``/``sha256``: what the info says (default: the truth; a
        lie to test the checks); ``fail_info``/``fail_download``: HTTP statuses the next requests get instead;
        ``chunked``: no Content-Length on the download."""
        digest = None if omit_sha256 else (sha256 or hashlib.sha256(data).hexdigest())
        with self._lock:
            self._files[media_id] = _Media(data, mime_type, len(data) if declared_size is None else declared_size,
                                           digest, list(fail_info or []), list(fail_download or []), chunked)

    def answer(self, path: str, headers: dict, base_url: str) -> tuple[int, dict] | _Bytes:
        with self._lock:
            self.requests.append((path, headers))
            if not headers.get("Authorization", "").startswith("Bearer ") or len(headers["Authorization"]) <= 7:
                return _error(401, 190, "Invalid OAuth access token")
            if (match := _MEDIA_DOWNLOAD_PATH.match(path)) is not None:
                media_id = self._tickets.pop(match["ticket"], None)
                media = self._files.get(media_id) if media_id else None
                if media is None:
                    return _error(404, 100, "URL expired or unknown")
                if media.download_failures:
                    status = media.download_failures.pop(0)
                    return _error(status, *_DEFAULT_ERRORS.get(status, (1, "An unknown error occurred")))
                return _Bytes(media.data, media.mime_type, media.chunked)
            if (match := _MEDIA_INFO_PATH.match(path)) is None:
                return _error(404, 100, "Unsupported get request")
            media_id = match["media_id"]
            media = self._files.get(media_id)
            if media is None:
                return _error(400, 100, "Invalid parameter", f"media {media_id} not found")
            if media.info_failures:
                status = media.info_failures.pop(0)
                return _error(status, *_DEFAULT_ERRORS.get(status, (1, "An unknown error occurred")))
            ticket = uuid.uuid4().hex
            self._tickets[ticket] = media_id
            info: dict = {"messaging_product": "whatsapp", "url": f"{base_url}/media-download/{ticket}",
                          "mime_type": media.mime_type, "file_size": media.declared_size, "id": media_id}
            if media.sha256 is not None:
                info["sha256"] = media.sha256
            return 200, info


# --------------------------------------------------------------------------- webhooks


def status_body(phone_number_id: str, wamid: str, recipient_id: str, status: str, *,
                timestamp: int | None = None, errors: list | None = None, pricing: dict | None = None,
                callback_data: str | None = None,
                display_phone_number: str = "15550000000", waba_id: str = "0") -> dict:
    """A Meta ``statuses`` webhook body for one message (shape of Meta's sent/delivered/read/failed posts)."""
    entry = {"id": wamid, "status": status, "timestamp": str(int(time.time()) if timestamp is None else timestamp),
             "recipient_id": recipient_id}
    if status == "failed":
        entry["errors"] = errors if errors is not None else [{
            "code": 131026, "title": "Message undeliverable", "message": "Message undeliverable",
            "error_data": {"details": "Message Undeliverable."},
        }]
    elif errors is not None:
        entry["errors"] = errors
    if pricing is not None:
        entry["pricing"] = pricing
    if callback_data is not None:
        entry["biz_opaque_callback_data"] = callback_data
    contact = {"user_id": recipient_id} if _BSUID.match(recipient_id) else {"wa_id": recipient_id}
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display_phone_number, "phone_number_id": phone_number_id},
        "contacts": [contact],
        "statuses": [entry],
    }
    return {"object": "whatsapp_business_account",
            "entry": [{"id": waba_id, "changes": [{"value": value, "field": "messages"}]}]}


def echo_body(phone_number_id: str, to: str, wamid: str, text: str, *, timestamp: int | None = None,
              display_phone_number: str = "15550000000", waba_id: str = "0") -> dict:
    """A Meta ``smb_message_echoes`` webhook body: a text the business sent ``to`` a customer from its WhatsApp
    Business app (the shape of Meta's smb_message_echoes webhook reference)."""
    echo = {"from": display_phone_number, "to": to, "id": wamid,
            "timestamp": str(int(time.time()) if timestamp is None else timestamp), "type": "text",
            "text": {"body": text}}
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": display_phone_number, "phone_number_id": phone_number_id},
             "message_echoes": [echo]}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": waba_id, "changes": [{"value": value, "field": "smb_message_echoes"}]}]}


def tap_body(phone_number_id: str, customer: str, wamid: str, option_id: str, title: str, *, kind: str = "list_reply",
             description: str | None = None, context_id: str | None = None, timestamp: int | None = None,
             display_phone_number: str = "15550000000", waba_id: str = "0") -> dict:
    """A Meta ``messages`` webhook body: the customer tapped a reply button (``kind="button_reply"``) or a list row
    (``"list_reply"``) of our message ``context_id`` (the shape of Meta's interactive reply webhook)."""
    reply = {"id": option_id, "title": title}
    if description is not None:
        reply["description"] = description
    message = {"from": customer, "id": wamid, "timestamp": str(int(time.time()) if timestamp is None else timestamp),
               "type": "interactive", "interactive": {"type": kind, kind: reply}}
    if context_id:
        message["context"] = {"from": display_phone_number, "id": context_id}
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": display_phone_number, "phone_number_id": phone_number_id},
             "contacts": [{"profile": {"name": "Cliente"}, "wa_id": customer}], "messages": [message]}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": waba_id, "changes": [{"value": value, "field": "messages"}]}]}


def sign(app_secret: str, raw_body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends with ``raw_body``."""
    return webhook.sign(raw_body, app_secret)


def signed_post(webhook_url: str, app_secret: str, body: dict) -> int:
    """POST ``body`` as Meta would (JSON, signed with ``app_secret``); returns the HTTP status."""
    raw = json.dumps(body, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "facebookexternalua",
               "X-Hub-Signature-256": sign(app_secret, raw)}
    with httpx.Client(trust_env=False, timeout=10) as client:  # loopback: never via a proxy
        return client.post(webhook_url, content=raw, headers=headers).status_code


def post_status(webhook_url: str, app_secret: str, phone_number_id: str, wamid: str, recipient_id: str,
                status: str, *, timestamp: int | None = None, errors: list | None = None,
                pricing: dict | None = None) -> int:
    """Send Meta's status webhook for ``wamid`` (sent/delivered/read/failed) to ``webhook_url``."""
    body = status_body(phone_number_id, wamid, recipient_id, status,
                       timestamp=timestamp, errors=errors, pricing=pricing)
    return signed_post(webhook_url, app_secret, body)
