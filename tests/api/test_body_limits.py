"""Request-body caps (api/body_limits.py): per route, before and while the body streams in.

In process: each public route's cap from the settings, bodies under it pass, a body without a declared
length is cut off after at most one piece past the cap. Against a real server (a child process started
like ``atende serve``) with raw sockets: ``Expect: 100-continue`` over the cap is answered 413 without
``100 Continue``; 64 MiB streamed at every public route is refused long before it is all sent.
"""
from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from atende.app import create_app
from benchmarks.body_limits import MIB, PUBLIC_ROUTES, ServerProcess, stream
from runtime.whatsapp.models import WebhookPost, WhatsAppSender
from runtime.whatsapp.webhook import sign
from tests.conftest import ADMIN_TOKEN, make_services

KIB = 1024
CAPS = dict(max_json_kb=8, max_webhook_kb=16, max_upload_mb=0.25)  # small, so tests send little
# no job worker: an accepted upload stays queued (its ingestion is not what these tests are about)
UPLOAD_CAP = int(0.25 * MIB) + 64 * KIB  # the file limit plus room for the multipart framing
ROUTE_CAPS = {"webhook": 16 * KIB, "api chat": 8 * KIB, "upload": UPLOAD_CAP, "dashboard login": 8 * KIB,
              "widget message": 8 * KIB, "widget feedback": 8 * KIB, "widget history": 8 * KIB}
BODY_ROUTES = [r for r in PUBLIC_ROUTES if r.name in ROUTE_CAPS]  # "widget session" takes no body
SECRET = "app-secret-limits"


@pytest.fixture
def capped(tmp_path, embedders):
    services = make_services(tmp_path / "home", embedders, workers=0, **CAPS)
    with TestClient(create_app(services=services)) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield client
    services.engine.dispose()


def _detail(limit: int, declared: int | None = None) -> str:
    size = f"{limit / MIB:.4g} MiB" if limit >= MIB else f"{limit / KIB:.4g} KiB"
    told = f" ({declared / 1e6:.1f} MB)" if declared else ""
    return f"request body too large{told}: the limit for this route is {size}"


# ------------------------------------------------------------------------------------ in process


@pytest.mark.parametrize("route", BODY_ROUTES, ids=lambda r: r.name)
def test_each_route_refuses_a_declared_length_over_its_cap(capped, route):
    limit = ROUTE_CAPS[route.name]
    public = TestClient(capped.app)
    body = route.prefix + b"x" * limit
    r = public.post(route.path, content=body, headers={"Content-Type": route.content_type})
    assert (r.status_code, r.json()) == (413, {"detail": _detail(limit, len(body))})
    assert r.headers["connection"] == "close"


def test_bodies_under_the_caps_pass(capped):
    """The caps are the settings' (ATENDE_MAX_WEBHOOK_KB, ATENDE_MAX_UPLOAD_MB): just under them, the
    routes answer as usual."""
    services = capped.app.state.services
    assistant = capped.post("/api/assistants", json={"name": "shop"}).json()["id"]
    with services.session() as s:
        s.add(WhatsAppSender(id="snd1", assistant_id=assistant, phone_number_id="111", access_token="t",
                             app_secret=SECRET, verify_token="v"))
        s.commit()
    body = {"object": "whatsapp_business_account", "entry": [], "padding": ""}
    body["padding"] = "p" * (16 * KIB - len(json.dumps(body)))
    raw = json.dumps(body).encode()
    assert len(raw) == 16 * KIB
    r = capped.post("/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": sign(raw, SECRET)})
    assert r.status_code == 200, r.text
    with services.session() as s:
        assert s.query(WebhookPost).count() == 1
    text = b"Opening hours: 9 to 6.\n" * (int(0.25 * MIB) // 23)
    r = capped.post(f"/api/assistants/{assistant}/documents", files={"file": ("hours.txt", text, "text/plain")})
    assert r.status_code == 202, r.text
    r = capped.post(f"/api/assistants/{assistant}/documents", files={"file": ("big.txt", text + b"x" * 80 * KIB)})
    declared = int(r.request.headers["content-length"])
    assert r.status_code == 413 and r.json() == {"detail": _detail(UPLOAD_CAP, declared)}


async def _pull_long_body(app, path: str, content_type: str, prefix: bytes, piece: int = 4 * KIB,
                          total: int = 4 * MIB) -> tuple[int, list[dict]]:
    """Drive the ASGI app with a chunked body of ``total`` bytes (``prefix``, then filler) far over every cap
    here; returns (bytes the app pulled, messages it sent)."""
    pulled, sent = 0, []

    async def receive() -> dict:
        nonlocal pulled
        body = (prefix + b"x" * piece)[:piece] if pulled == 0 else b"x" * piece
        pulled += piece
        return {"type": "http.request", "body": body, "more_body": pulled < total}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"testserver"), (b"content-type", content_type.encode()),
                         (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    await app(scope, receive, send)
    return pulled, sent


@pytest.mark.parametrize("route", BODY_ROUTES, ids=lambda r: r.name)
def test_a_body_without_a_declared_length_is_cut_off_at_the_cap(capped, route):
    """A long body: the app pulls at most one piece past the cap, then answers 413 and closes."""
    pulled, sent = asyncio.run(_pull_long_body(capped.app, route.path, route.content_type, route.prefix))
    limit = ROUTE_CAPS[route.name]
    assert limit < pulled <= limit + 4 * KIB
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413 and (b"connection", b"close") in start["headers"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert json.loads(body) == {"detail": _detail(limit)}


@pytest.mark.parametrize("route", BODY_ROUTES, ids=lambda r: r.name)
def test_a_client_that_hangs_up_mid_body_is_not_a_server_error(capped, route):
    """The client sends a first piece, then disconnects (a sender giving up under load): the app answers a 4xx
    (nobody reads it) instead of raising ClientDisconnect into the server's log as an ASGI error (seen from the
    webhook in the 200 posts/s bench)."""
    sent: list[dict] = []
    pieces = iter([{"type": "http.request", "body": route.prefix, "more_body": True}, {"type": "http.disconnect"}])

    async def receive() -> dict:
        return next(pieces, {"type": "http.disconnect"})

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": route.path, "raw_path": route.path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"testserver"), (b"content-type", route.content_type.encode()),
                         (b"content-length", b"1000")],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    asyncio.run(capped.app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    # the webhook reads its raw body (the signature is over it): 499; FastAPI's body parsing says 400, and a route
    # that checks the caller first (the widget's session, the admin's token) refuses before reading
    assert start["status"] == 499 if route.name == "webhook" else 400 <= start["status"] < 500


# ------------------------------------------------------------------------------ a real server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``atende serve`` in a child process; uploads capped at 4 MiB, the rest at the defaults."""
    with ServerProcess(Path(tmp_path_factory.mktemp("server")), env={"ATENDE_MAX_UPLOAD_MB": "4"}) as running:
        yield running


@pytest.mark.parametrize("route", BODY_ROUTES, ids=lambda r: r.name)
def test_expect_100_continue_over_the_cap_is_answered_413_without_reading(server, route):
    """8 GiB declared with ``Expect: 100-continue``: the final answer comes first (no ``100 Continue``, so
    the client never sends the body) and the server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST {route.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {route.content_type}\r\n"
                     f"Content-Length: {8 * 1024 * MIB}\r\nExpect: 100-continue\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and b"connection: close" in head.lower()
    assert json.loads(body)["detail"].startswith("request body too large (8589.9 MB): the limit for this route is")


def test_expect_100_continue_under_the_cap_gets_100_continue(server):
    """The control: under the cap uvicorn asks for the body, which is read (and refused without a token)."""
    body = b'{"customer_id": "c1", "message": "hello"}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body))
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 401 ")


@pytest.mark.parametrize("mode", ["declared", "chunked"])
@pytest.mark.parametrize("route", PUBLIC_ROUTES, ids=lambda r: r.name)
def test_a_64_mib_stream_is_refused_before_it_is_all_sent(server, route, mode):
    """A client that never stops: the server answers (413 where the route reads a body) and closes the
    connection, so the client gets only a fraction of the 64 MiB into its socket."""
    total = 64 * MIB
    result = stream(server.port, route, total, mode)
    assert not result.stalled
    assert result.status == (413 if route in BODY_ROUTES else 404)  # the widget session ignores bodies
    assert result.sent < total / 2
