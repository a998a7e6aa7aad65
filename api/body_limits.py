"""Request-body caps per route, enforced before and while the body streams in (a pure ASGI middleware).

Each request gets the cap of the route it reaches: the WhatsApp webhook ``max_webhook_kb``, a route that
takes an uploaded file ``max_upload_mb`` (plus room for the multipart framing), any other route
``max_json_kb``. The route is known once the router has matched it (``scope["route"]``, set by Starlette
and FastAPI), which is before the app first asks for the body; at that first ``receive()``:

- a declared ``Content-Length`` over the cap is refused before anything is read. uvicorn sends
  ``100 Continue`` only from inside that call, so a client that asked first never sends the body;
- a body without a declared length (chunked) is counted and cut off at the first piece over the cap.

The 413 is JSON and says ``Connection: close``; so does any answer given before the body has all come in
(a route that never reads it): otherwise uvicorn keeps the connection and reads (and drops) the rest,
however long the client goes on.

Starlette's ``RequestBodyLimitMiddleware`` (FastAPI's ``max_body_size``) counts the same way, but answers a
plain "Content Too Large" without the limit, keeps the connection open, and takes its size per route
decorator, which would spread these settings over every router module.
"""
from __future__ import annotations

from fastapi import FastAPI, params
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.routes.whatsapp import WEBHOOK_PATH
from core.settings import Settings

# multipart boundaries, part headers and the small form fields beside the file
MULTIPART_ROOM = 64 * 1024


class BodyTooLarge(HTTPException):
    """A request body over its route's cap: a JSON 413 that closes the connection."""

    def __init__(self, limit: int, declared: int | None = None):
        size = f" ({declared / 1e6:.1f} MB)" if declared else ""
        super().__init__(413, detail=f"request body too large{size}: the limit for this route is {_size(limit)}",
                         headers={"Connection": "close"})


class BodyLimitMiddleware:
    """Refuses a request body over the cap of its route (``cap_for``), counting it as it streams in."""

    def __init__(self, app: ASGIApp, default: int, uploads: int, paths: dict[str, int]):
        self.app = app
        self.default, self.uploads, self.paths = default, uploads, paths

    def cap_for(self, route: BaseRoute | None) -> int:
        """The cap of a route: by its path, else ``uploads`` when it takes a file, else ``default``."""
        path = getattr(route, "path", None)
        if path in self.paths:
            return self.paths[path]
        body = getattr(route, "body_field", None)
        return self.uploads if body is not None and isinstance(body.field_info, params.File) else self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = _CappedRequest(self, scope, receive, send)
        try:
            await self.app(scope, request.receive, request.send)
        except BodyTooLarge as exc:  # FastAPI renders it itself; a plain Starlette route leaves it to us
            if request.started:
                raise
            await JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)(
                scope, receive, send)


class _CappedRequest:
    """One request's ``receive`` (the body counted against its route's cap) and ``send`` (closing the
    connection when the app answers before the whole body has come in)."""

    def __init__(self, caps: BodyLimitMiddleware, scope: Scope, receive: Receive, send: Send):
        self.caps, self.scope, self._receive, self._send = caps, scope, receive, send
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        self.declared = int(declared) if declared.isdigit() else None
        self.body_pending = "transfer-encoding" in headers or bool(self.declared)
        self.limit: int | None = None
        self.received, self.started = 0, False

    async def receive(self) -> Message:
        if self.limit is None:  # the first call: the router has picked the route by now
            self.limit = self.caps.cap_for(self.scope.get("route"))
            if self.declared is not None and self.declared > self.limit:
                raise BodyTooLarge(self.limit, self.declared)  # before uvicorn's 100 Continue and any byte read
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise BodyTooLarge(self.limit)
            self.body_pending = message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = message.get("headers", [])
            if self.body_pending and not any(name.lower() == b"connection" for name, _ in headers):
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await self._send(message)


def install_body_limits(app: FastAPI, settings: Settings) -> None:
    """Cap every route's request body from the settings (see the module docstring)."""
    app.add_middleware(BodyLimitMiddleware, default=settings.max_json_kb * 1024,
                       uploads=settings.max_upload_bytes + MULTIPART_ROOM,
                       paths={WEBHOOK_PATH: settings.max_webhook_kb * 1024})


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.4g} MiB" if n >= 1024 * 1024 else f"{n / 1024:.4g} KiB"
