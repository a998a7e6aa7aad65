"""What the profile, fault and handoff tests do as an operator and as Meta: an assistant and its WhatsApp number
created through one API process, documents uploaded and searched, a customer's signed message posted to the
webhook, the replies the Graph API stand-in got, the database rows that say a message was stored once and answered
once (and by which turns), and the dashboard signed in to as a person does."""
from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import sqlalchemy as sa

from runtime.whatsapp.standin import GraphStandIn, sign
from tests.api.test_dashboard import login
from tests.conftest import shared_doc
from tests.factories import wait_until
from tests.system.stack import admin_client


@dataclass
class Number:
    """A business number of a new assistant: its phone number id and the app secret that signs its posts."""

    assistant_id: str
    phone_id: str
    secret: str


def new_assistant(api: str, name: str, config: dict | None = None, chunk_size: int = 128) -> Number:
    """An assistant (MiniLM embeddings, chunks of ``chunk_size`` tokens) with a WhatsApp number, made through the
    API at ``api``; ``config``: its conversation settings."""
    suffix = uuid.uuid4().hex[:8]
    with admin_client(api) as client:
        r = client.post("/api/assistants", json={"name": f"{name}-{suffix}", "embedding_model": "all-minilm-l6-v2",
                                                 "chunk_size": chunk_size, "chunk_overlap": chunk_size // 8})
        assert r.status_code == 201, r.text
        assistant_id = r.json()["id"]
        if config:
            r = client.patch(f"/api/assistants/{assistant_id}", json={"config": config})
            assert r.status_code == 200, r.text
        number = Number(assistant_id, f"1065{uuid.uuid4().int % 10**11:011d}", f"app-secret-{suffix}")
        r = client.post("/api/whatsapp/senders", json={
            "assistant_id": assistant_id, "phone_number_id": number.phone_id, "access_token": f"token-{suffix}",
            "app_secret": number.secret, "verify_token": f"verify-{suffix}"})
        assert r.status_code == 201, r.text
    return number


def customer_number() -> str:
    return f"55119{uuid.uuid4().int % 10**8:08d}"


def message_body(number: Number, customer: str, text: str, wamid: str | None = None) -> bytes:
    """Meta's webhook body for one text message of ``customer`` to ``number``, sent now."""
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550001111", "phone_number_id": number.phone_id},
             "contacts": [{"profile": {"name": "Ana"}, "wa_id": customer}],
             "messages": [{"from": customer, "id": wamid or f"wamid.{uuid.uuid4().hex}",
                           "timestamp": str(int(time.time())), "type": "text", "text": {"body": text}}]}
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "0", "changes": [{"value": value, "field": "messages"}]}]}).encode()


def post_webhook(api: str, number: Number, raw: bytes) -> int:
    """POST ``raw`` to the webhook of ``api`` signed as Meta would; the HTTP status (0: no answer at all)."""
    try:
        return httpx.post(f"{api}/webhooks/whatsapp", content=raw, timeout=10, trust_env=False,
                          headers={"X-Hub-Signature-256": sign(number.secret, raw),
                                   "Content-Type": "application/json"}).status_code
    except httpx.TransportError:
        return 0


def deliver(api: str, number: Number, raw: bytes) -> None:
    """Post as Meta does: again until it is acknowledged (200)."""
    status = post_webhook(api, number, raw)
    assert status == 200, status


def replies_to(graph: GraphStandIn, customer: str) -> list[str]:
    """The texts of the sends to ``customer`` that reached the Graph API stand-in."""
    return [r["json"]["text"]["body"] for r in list(graph.sent)
            if r["json"] and r["json"].get("to") == customer]


def messages(engine: sa.Engine, customer: str) -> list[tuple[str, str]]:
    """(direction, status) of the customer's messages in the profile's database, oldest first."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(
            "SELECT m.direction, m.status FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE c.customer_id = :customer ORDER BY m.created_at, m.direction"), {"customer": customer})]


def turns(engine: sa.Engine, conversation_id: str) -> list[str]:
    """The statuses of the conversation's turns, oldest first."""
    with engine.connect() as conn:
        return list(conn.scalars(sa.text("SELECT status FROM turns WHERE conversation_id = :id ORDER BY started_at"),
                                 {"id": conversation_id}))


@contextmanager
def signed_in(api: str) -> Iterator[httpx.Client]:
    """A client of ``api`` signed in through the dashboard's login form (no bearer token: the session cookie);
    it sends the page's ``Origin`` as the dashboard's own requests do (changes that carry only the cookie must
    come from our origin)."""
    with httpx.Client(base_url=api, headers={"Origin": api}, timeout=30, trust_env=False) as client:
        login(client)
        yield client


def waiting_conversation(dashboard: httpx.Client, number: Number, customer: str) -> str:
    """The id of the customer's conversation, as the operator finds it: on the waiting queue's page."""
    page = dashboard.get("/dashboard/queue", params={"assistant_id": number.assistant_id})
    assert page.status_code == 200, page.text
    waiting = page.text.split('id="waiting"', 1)[1].split('id="with-human"', 1)[0]
    found = re.search(rf'<a href="/dashboard/conversations/(\w+)">{customer}</a>', waiting)
    assert found, waiting
    return found.group(1)


def upload(api: str, assistant_id: str, relative: str) -> str:
    with admin_client(api) as client:
        r = client.post(f"/api/assistants/{assistant_id}/documents",
                        files={"file": (relative.rsplit("/", 1)[-1], shared_doc(relative).read_bytes())})
        assert r.status_code == 202, r.text
        return r.json()["id"]


def wait_ready(api: str, document_id: str) -> dict:
    with admin_client(api) as client:
        doc = wait_until(lambda: (d := client.get(f"/api/documents/{document_id}").json())["status"]
                         in ("ready", "failed") and d, 180, f"document {document_id} ingested")
    assert doc["status"] == "ready", doc
    return doc


def search(api: str, assistant_id: str, query: str, mode: str = "hybrid") -> list[dict]:
    with admin_client(api) as client:
        r = client.post(f"/api/assistants/{assistant_id}/search", json={"query": query, "mode": mode})
        assert r.status_code == 200, r.text
        return r.json()["results"]
