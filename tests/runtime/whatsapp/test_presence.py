"""Read receipts and the typing indicator (runtime.whatsapp.presence) on the real app and queue, over real HTTP to
the Graph API stand-in, on SQLite and PostgreSQL: sent for the newest message of a burst before the reply, renewed
on a long turn, never for what the customer did not write, per sender, and never in the way of the reply."""
from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from atende.app import create_app
from runtime.whatsapp.graph import GraphClient
from runtime.whatsapp.standin import GraphStandIn, echo_body, sign, status_body
from tests.conftest import ADMIN_TOKEN, make_services
from tests.factories import use_scripted_model, wait_until

SECRET, PHONE_ID, CUSTOMER = "app-secret-presence", "106540352242955", "5511987650000"


@pytest.fixture
def wa(tmp_path, embedders, database_url):
    with GraphStandIn() as graph:
        services = make_services(tmp_path / "home", embedders, database_url, whatsapp_graph_url=graph.base_url,
                                 whatsapp_debounce_s=0.3, whatsapp_typing_renew_s=0.25,
                                 whatsapp_presence_timeout_s=0.5)
        model = use_scripted_model(services)
        with TestClient(create_app(services=services)) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            client.post("/api/assistants", json={"name": "loja"}).raise_for_status()
            sender = client.post("/api/whatsapp/senders", json={
                "assistant_id": "loja", "phone_number_id": PHONE_ID, "display_phone_number": "15550001111",
                "access_token": "token-presence", "app_secret": SECRET, "verify_token": "v"}).json()
            yield client, services, model, graph, sender
        services.engine.dispose()


def messages_body(*messages: tuple[str, str, str]) -> dict:
    """A webhook post with ``(wamid, type, text-or-emoji-target)`` messages of CUSTOMER."""
    ts = str(int(datetime.now(UTC).timestamp()))
    items = []
    for wamid, kind, content in messages:
        item = {"from": CUSTOMER, "id": wamid, "timestamp": ts, "type": kind}
        item[kind] = {"body": content} if kind == "text" else {"message_id": content, "emoji": "👍"}
        items.append(item)
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_ID},
             "contacts": [{"profile": {"name": "Ana"}, "wa_id": CUSTOMER}], "messages": items}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "0", "changes": [{"value": value, "field": "messages"}]}]}


def post(client, body: dict) -> None:
    raw = json.dumps(body).encode()
    r = client.post("/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": sign(SECRET, raw),
                                                                "Content-Type": "application/json"})
    assert r.status_code == 200, r.text


def test_the_newest_message_of_a_burst_is_marked_read_with_typing_before_the_reply(wa):
    client, services, model, graph, _ = wa
    model.enqueue("Abrimos às 9h.")
    post(client, messages_body(("wamid.p1", "text", "Oi"), ("wamid.p2", "text", "que horas abrem?")))
    wait_until(lambda: graph.sent, what="the reply")
    first = graph.receipts[0]
    assert first["path"] == f"/v21.0/{PHONE_ID}/messages"
    assert first["json"] == {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.p2",
                             "typing_indicator": {"type": "text"}}
    assert first["headers"]["Authorization"] == "Bearer token-presence"
    assert {r["json"]["message_id"] for r in graph.receipts} == {"wamid.p2"}
    assert all(r["at"] < graph.sent[0]["at"] for r in graph.receipts)  # no indicator after the reply


def test_typing_is_renewed_while_a_long_turn_runs_and_stops_before_the_reply(wa):
    client, services, model, graph, _ = wa

    def slow(messages, tools):
        time.sleep(1.2)  # several renewal periods (0.25 s in this fixture)
        return "Pronto, verifiquei."
    model.enqueue(slow)
    post(client, messages_body(("wamid.slow", "text", "Vocês têm o produto X?")))
    wait_until(lambda: graph.sent, what="the reply")
    time.sleep(0.6)  # a renewal that (wrongly) went on after the turn would land here
    typing = [r for r in graph.receipts if r["json"].get("typing_indicator")]
    assert len(typing) >= 3 and {r["json"]["message_id"] for r in typing} == {"wamid.slow"}
    assert max(r["at"] for r in graph.receipts) < graph.sent[0]["at"]


def test_nothing_the_customer_did_not_write_is_marked_read(wa):
    client, services, model, graph, _ = wa
    model.enqueue("Olá!")
    post(client, messages_body(("wamid.q1", "text", "Oi")))
    wait_until(lambda: graph.sent, what="the reply")
    receipts = len(graph.receipts)
    reply_wamid = wait_until(lambda: graph.sent[0]["json"] and _reply_wamid(services))
    post(client, messages_body(("wamid.react", "reaction", reply_wamid)))  # a reaction: logged, no turn
    post(client, status_body(PHONE_ID, reply_wamid, CUSTOMER, "delivered"))
    post(client, echo_body(PHONE_ID, CUSTOMER, "wamid.echo", "Oi, aqui é a Maria", display_phone_number="15550001111"))
    time.sleep(1.0)
    assert len(graph.receipts) == receipts and len(graph.sent) == 1


def _reply_wamid(services) -> str | None:
    from sqlalchemy import select

    from runtime.models import Message
    with services.session() as session:
        return session.scalar(select(Message.channel_message_id).where(Message.direction == "outbound",
                                                                       Message.channel_message_id.is_not(None)))


@pytest.mark.parametrize("options, expected", [
    ({"show_typing": False}, {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.o1"}),
    ({"mark_read": False}, None),
])
def test_read_and_typing_are_per_sender(wa, options, expected):
    client, services, model, graph, sender = wa
    r = client.patch(f"/api/whatsapp/senders/{sender['id']}", json=options)
    assert r.status_code == 200 and all(r.json()[k] == v for k, v in options.items())
    model.enqueue("Olá!")
    post(client, messages_body(("wamid.o1", "text", "Oi")))
    wait_until(lambda: graph.sent, what="the reply")
    assert [r["json"] for r in graph.receipts][:1] == ([expected] if expected else [])
    assert client.patch(f"/api/whatsapp/senders/{sender['id']}", json={"mark_read": "yes"}).status_code == 422
    assert client.patch("/api/whatsapp/senders/nope", json={"mark_read": True}).status_code == 404


@pytest.mark.parametrize("failure", ["error", "slow"])
def test_a_failing_receipt_never_keeps_the_reply_from_going_out(wa, failure):
    client, services, model, graph, _ = wa
    if failure == "error":
        graph.fail_next_receipt(500, times=20)
    else:
        graph.fail_next_receipt(503, times=20, delay_s=2.0)  # past the 0.5 s receipt timeout
    model.enqueue("Respondido mesmo assim.")
    post(client, messages_body(("wamid.f1", "text", "Qual o prazo de entrega para Recife?")))
    sent = wait_until(lambda: graph.sent, what="the reply")
    assert sent[0]["json"]["text"]["body"] == "Respondido mesmo assim."
    assert len(graph.sent) == 1 and graph.receipts  # tried once per occasion, never retried in a loop


def test_mark_read_against_the_stand_in_reports_refusals_and_never_logs_the_token(caplog):
    with GraphStandIn() as graph, GraphClient(graph.base_url) as client:
        sender = type("S", (), {"phone_number_id": "123", "access_token": "secret-token", "graph_version": "v21.0"})()
        assert client.mark_read(sender, "wamid.ok", typing=True) is True
        assert client.mark_read(sender, "not-a-wamid") is False  # refused by the stand-in (400)
        graph.fail_next_receipt(401)
        assert client.mark_read(sender, "wamid.x") is False
        assert len(graph.receipts) == 3 and graph.sent == []
    with GraphClient("http://127.0.0.1:9") as client:  # nothing listens: refused, at once
        assert client.mark_read(sender, "wamid.y", timeout_s=0.5) is False
    assert "secret-token" not in caplog.text


def test_a_redelivered_answered_message_and_a_stale_receipt_get_no_receipt(wa):
    from runtime.whatsapp.presence import Receipt, _send_fresh

    client, services, model, graph, _ = wa
    model.enqueue("Abrimos às 9h.")
    body = messages_body(("wamid.r1", "text", "Que horas vocês abrem amanhã?"))
    post(client, body)
    wait_until(lambda: graph.sent, what="the reply")
    wait_until(lambda: _answered(services, "wamid.r1"), what="the message answered")
    receipts = len(graph.receipts)
    post(client, body)  # Meta redelivers it after the reply: a typing indicator now would follow the reply
    time.sleep(0.8)
    assert len(graph.receipts) == receipts and len(graph.sent) == 1
    stale = Receipt(PHONE_ID, "token-presence", "v21.0", "wamid.r1", True)
    assert _send_fresh(services, stale, time.monotonic() - 60) is False  # queued a minute ago: dropped
    assert len(graph.receipts) == receipts


def _answered(services, wamid: str) -> bool:
    from sqlalchemy import select

    from runtime.models import Message
    with services.session() as session:
        return session.scalar(select(Message.status).where(Message.channel_message_id == wamid)) == "answered"
