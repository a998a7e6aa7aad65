"""A customer's LGPD rights over the real app (signed webhooks, the queue, the Graph stand-in), on SQLite and
PostgreSQL: their data exported, then erased with a record that names nobody, another customer untouched, and
nothing left in the database that names them (searched by phone, name and CPF in every table; on SQLite in the raw
database file too)."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, inspect, select, text

from atende.app import create_app
from runtime.models import Appointment, CollectedData, Conversation, Message
from runtime.regression import RegressionCase
from runtime.whatsapp.models import MessageMedia, WebhookPost
from runtime.whatsapp.standin import GraphStandIn, sign
from tests.conftest import ADMIN_TOKEN, make_services
from tests.factories import use_scripted_model, wait_until

SECRET, PHONE_ID = "app-secret-privacy", "106540352242922"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(200)
ANA = {"phone": "5511987654321", "name": "Joana Prado", "cpf": "123.456.789-09"}
BEN = {"phone": "5521912345678", "name": "Carlos Lima", "cpf": "987.654.321-00"}


@pytest.fixture
def app(tmp_path, embedders, database_url):
    with GraphStandIn() as graph:
        services = make_services(tmp_path / "home", embedders, database_url, whatsapp_graph_url=graph.base_url,
                                 whatsapp_debounce_s=0.3, media_retry_delay_s=0)
        graph.media.add("m-ana-doc", PNG, "image/png")
        model = use_scripted_model(services)
        with TestClient(create_app(services=services)) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            client.post("/api/assistants", json={"name": "clinica"}).raise_for_status()
            client.post("/api/whatsapp/senders", json={
                "assistant_id": "clinica", "phone_number_id": PHONE_ID, "display_phone_number": "15550001111",
                "access_token": "token-xyz", "app_secret": SECRET, "verify_token": "verify-me"}).raise_for_status()
            yield client, services, model, graph
        services.engine.dispose()


def _message(person: dict, wamid: str, body: str, at: datetime) -> tuple[dict, dict]:
    contact = {"profile": {"name": person["name"]}, "wa_id": person["phone"]}
    message = {"from": person["phone"], "id": wamid, "timestamp": str(int(at.timestamp())), "type": "text",
               "text": {"body": body}}
    return contact, message


def _image(person: dict, wamid: str, media_id: str, at: datetime) -> tuple[dict, dict]:
    contact = {"profile": {"name": person["name"]}, "wa_id": person["phone"]}
    message = {"from": person["phone"], "id": wamid, "timestamp": str(int(at.timestamp())), "type": "image",
               "image": {"id": media_id, "mime_type": "image/png", "caption": "meu documento"}}
    return contact, message


def _post(client, *items: tuple[dict, dict]) -> None:
    value = {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550001111",
                                                           "phone_number_id": PHONE_ID},
             "contacts": [c for c, _ in items], "messages": [m for _, m in items]}
    raw = json.dumps({"object": "whatsapp_business_account",
                      "entry": [{"id": "0", "changes": [{"value": value, "field": "messages"}]}]}).encode()
    r = client.post("/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": sign(SECRET, raw),
                                                                "Content-Type": "application/json"})
    assert r.status_code == 200, r.text


def _replies(services) -> int:
    with services.session() as session:
        return session.scalar(select(func.count()).select_from(Message).where(
            Message.direction == "outbound", Message.status.in_(("sent", "delivered")))) or 0


def _dump(services) -> str:
    """Every row of every table as text (PostgreSQL: as the server holds it), plus on SQLite the raw files."""
    with services.engine.connect() as conn:
        rows = []
        for table in inspect(conn).get_table_names():
            if services.engine.dialect.name == "postgresql":
                rows += conn.execute(text(f'SELECT row_to_json(t)::text FROM "{table}" t')).scalars().all()
            else:
                rows += [repr(tuple(r)) for r in conn.execute(text(f'SELECT * FROM "{table}"'))]
    dump = "\n".join(rows)
    if services.engine.dialect.name == "sqlite":
        services.engine.dispose()
        dump += b"".join(p.read_bytes() for p in services.settings.home.glob("atende.db*")).decode("latin-1")
    return dump


def test_a_customer_is_exported_then_erased_and_nothing_names_them(app):
    client, services, model, graph = app
    model.enqueue("Claro, Joana. Podemos remarcar.", "Olá Carlos, confirmado.", "Sim, às 10h.", "Recebi a foto.")
    now = datetime.now(UTC)
    _post(client, _message(ANA, "wamid.a1", f"Sou {ANA['name']}, CPF {ANA['cpf']}, quero remarcar", now))
    wait_until(lambda: _replies(services) >= 1, what="the first reply")
    # one post carrying both customers' messages: Meta batches them
    _post(client, _message(BEN, "wamid.b1", f"Sou {BEN['name']}, CPF {BEN['cpf']}", now + timedelta(seconds=1)),
          _message(ANA, "wamid.a2", "Pode ser amanhã?", now + timedelta(seconds=1)))
    wait_until(lambda: _replies(services) >= 3, what="the replies to both")
    _post(client, _image(ANA, "wamid.a3", "m-ana-doc", now + timedelta(seconds=2)))  # a photo of her document
    wait_until(lambda: _replies(services) >= 4, what="the reply to the photo")
    with services.session() as session:
        [photo] = session.scalars(select(MessageMedia)).all()
    assert photo.status == "stored" and services.blobs.get(photo.sha256) == PNG
    with services.session() as session:
        ana = session.scalar(select(Conversation).where(Conversation.customer_id == ANA["phone"]))
        first = session.scalar(select(Message).where(Message.channel_message_id == "wamid.a1"))
        session.add(CollectedData(conversation_id=ana.id, field="cpf", value=ANA["cpf"]))
        session.add(Appointment(assistant_id=ana.assistant_id, conversation_id=ana.id, starts_at=now + timedelta(days=1),
                                ends_at=now + timedelta(days=1, hours=1), name=ANA["name"], notes=ANA["phone"]))
        session.add(RegressionCase(assistant_id=ana.assistant_id, question=first.text, expected_status="answered",
                                   created_from_message_id=first.id))
        session.commit()
    before = _dump(services)
    assert all(v in before for v in ANA.values()) and all(v in before for v in BEN.values())

    exported = client.get(f"/api/customers/{ANA['phone']}/export").json()
    [conv] = exported["conversations"]
    texts = [m["text"] for m in conv["messages"]]
    assert any(ANA["cpf"] in t for t in texts) and "Pode ser amanhã?" in texts and not any(BEN["name"] in t for t in texts)
    assert [d["value"] for d in conv["collected_data"]] == [ANA["cpf"]] and conv["appointments"][0]["name"] == ANA["name"]
    assert {o.get("id") or o.get("wa_id") for o in exported["webhook_objects"]} == \
        {"wamid.a1", "wamid.a2", "wamid.a3", ANA["phone"]}
    assert [m["sha256"] for m in conv["media"]] == [photo.sha256]

    r = client.post(f"/api/customers/{ANA['phone']}/erase", json={"requested_by": "dpo@clinica.example",
                                                                   "reason": "pedido do titular, 2026-12-01"})
    assert r.status_code == 200, r.text
    record = r.json()
    counts = record["counts"]
    assert counts["conversations"] == 1 and counts["messages"] == 6 and counts["collected_data"] == 1
    assert counts["message_media"] == 1 and counts["files"] == 1
    with pytest.raises(FileNotFoundError):  # the photo is gone from the file store too
        services.blobs.get(photo.sha256)
    assert counts["appointments"] == 1 and counts["regression_cases"] == 1
    assert counts["webhook_posts_redacted"] + counts["webhook_posts_deleted"] == 3
    assert ANA["phone"] not in json.dumps(record) and record["requested_by"] == "dpo@clinica.example"

    after = _dump(services)
    assert not [v for v in ANA.values() if v in after]  # by phone, name and CPF: nothing names her
    assert all(v in after for v in BEN.values())  # the other customer is untouched
    with services.session() as session:
        ben = session.scalar(select(Conversation).where(Conversation.customer_id == BEN["phone"]))
        assert session.scalar(select(func.count()).select_from(Message).where(Message.conversation_id == ben.id)) == 2
        bodies = [json.dumps(b) for b in session.scalars(select(WebhookPost.body))]
        assert any("wamid.b1" in b for b in bodies) and not any("wamid.a" in b for b in bodies)
    assert client.get(f"/api/customers/{ANA['phone']}/export").json()["conversations"] == []
    [found] = client.get(f"/api/customers/{ANA['phone']}/erasures").json()
    assert found["id"] == record["id"] and client.get(f"/api/customers/{BEN['phone']}/erasures").json() == []


def test_erasure_needs_the_admin_and_says_who_asked(app):
    client = app[0]
    assert client.post("/api/customers/5511/erase", json={"requested_by": "x"},
                       headers={"Authorization": "Bearer wrong-token-of-someone"}).status_code == 401
    assert client.post("/api/customers/5511/erase", json={}).status_code == 422
    r = client.post("/api/customers/5511/erase", json={"requested_by": "dpo"})  # nobody held: recorded, nothing removed
    assert r.status_code == 200 and not any(r.json()["counts"].values())
