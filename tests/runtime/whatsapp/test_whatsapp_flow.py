"""WhatsApp end to end on the real app and queue: signed webhook -> stored -> debounced turn -> reply sent
to the local Graph API stand-in -> status webhooks; duplicates, bursts, the 24-hour window, templates."""
from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from atende.app import create_app
from runtime.config import DEFAULT_AI_BACK, DEFAULT_HANDOFF, DEFAULT_UNAVAILABLE
from runtime.types import ToolCall
from runtime.models import Conversation, Message, MessagePart, Turn
from runtime.queue import InlineQueue
from runtime.whatsapp.models import WhatsAppSender
from runtime.whatsapp.standin import GraphStandIn, echo_body, sign, status_body
from tests.conftest import ADMIN_TOKEN, make_services, wait_for_document
from tests.factories import use_scripted_model
from tests.factories import wait_until

SECRET, PHONE_ID, CUSTOMER = "app-secret-flow", "106540352242922", "5511987654321"


class Clock:
    def __init__(self):
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def wa(tmp_path, embedders):
    with GraphStandIn() as graph:
        services = make_services(tmp_path / "home", embedders, whatsapp_graph_url=graph.base_url, whatsapp_debounce_s=0.4,
                                 whatsapp_prices={"utility": 0.008})
        model = use_scripted_model(services)
        clock = Clock()
        services.clock = clock
        with TestClient(create_app(services=services)) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            client.post("/api/assistants", json={"name": "loja"}).raise_for_status()
            sender = client.post("/api/whatsapp/senders", json={
                "assistant_id": "loja", "phone_number_id": PHONE_ID, "display_phone_number": "15550001111",
                "access_token": "token-xyz", "app_secret": SECRET, "verify_token": "verify-me"}).json()
            yield client, services, model, graph, clock, sender
        services.engine.dispose()


def text_payload(wamid: str, text: str, ts: datetime, customer: str = CUSTOMER) -> dict:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_ID},
             "contacts": [{"profile": {"name": "Ana"}, "wa_id": customer}],
             "messages": [{"from": customer, "id": wamid, "timestamp": str(int(ts.timestamp())), "type": "text",
                           "text": {"body": text}}]}
    return {"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [{"value": value, "field": "messages"}]}]}


def post(client, body: dict):
    raw = json.dumps(body).encode()
    r = client.post("/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": sign(SECRET, raw),
                                                                "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    return r




def outbound(services) -> list[Message]:
    with services.session() as session:
        return list(session.scalars(select(Message).where(Message.direction == "outbound").order_by(Message.created_at)))


def test_reply_is_rendered_sent_and_settled_by_status_webhooks(wa):
    client, services, model, graph, clock, _ = wa
    model.enqueue("**Olá!** Abrimos às [9h](https://loja.example/horarios).")
    post(client, text_payload("wamid.in1", "Que horas abrem?", clock.now))
    sent = wait_until(lambda: graph.sent)
    assert sent[0]["path"] == f"/v21.0/{PHONE_ID}/messages"
    assert sent[0]["json"]["text"]["body"] == "*Olá!* Abrimos às 9h (https://loja.example/horarios)."
    assert sent[0]["headers"]["Authorization"] == "Bearer token-xyz"
    reply = wait_until(lambda: [m for m in outbound(services) if m.status == "sent"])[0]
    for status in ("read", "delivered", "sent", "delivered"):  # out of order and repeated
        post(client, status_body(PHONE_ID, reply.channel_message_id, CUSTOMER, status,
                                 pricing={"billable": True, "category": "utility", "pricing_model": "PMP"}))
    final = wait_until(lambda: [m for m in outbound(services) if m.status == "read"])[0]
    assert final.billable is True and final.pricing_category == "utility"
    assert final.channel_cost == pytest.approx(0.008)  # charged once, however many statuses came
    with services.session() as session:
        assert session.get(Conversation, final.conversation_id).cost == pytest.approx(0.008)


def test_a_redelivered_message_gets_exactly_one_reply(wa):
    client, services, model, graph, clock, _ = wa
    model.enqueue("Resposta única.")
    body = text_payload("wamid.dup", "Tenho uma dúvida", clock.now)
    for _ in range(3):
        post(client, body)
    wait_until(lambda: graph.sent)
    time.sleep(1.5)  # time for any second turn to (wrongly) happen
    assert len(graph.sent) == 1 and model.remaining == 0
    with services.session() as session:
        assert session.scalar(select(func.count()).select_from(Message).where(Message.direction == "inbound")) == 1


def test_when_the_model_fails_the_customer_is_told_and_the_conversation_flagged(wa):
    client, services, model, graph, clock, _ = wa
    model.enqueue(lambda messages, tools: (_ for _ in ()).throw(ConnectionError("model endpoint down")))
    post(client, text_payload("wamid.down", "Tenho uma dúvida", clock.now))
    wait_until(lambda: graph.sent)
    assert graph.sent[0]["json"]["text"]["body"] == DEFAULT_UNAVAILABLE["pt"]
    with services.session() as session:
        turn = session.scalars(select(Turn)).one()
        conv = session.get(Conversation, turn.conversation_id)
        assert turn.status == "error" and "model endpoint down" in conv.handoff["reason"]


@pytest.mark.parametrize("replied_from", ["dashboard", "business_app"])
def test_a_person_asked_for_keeps_the_ai_quiet_until_handed_back(wa, replied_from):
    """The customer asks for a person (no model call) -> an operator replies, from the dashboard (sent by us) or
    from the WhatsApp Business app (its echo: recorded, not sent again) -> the customer's next two messages get
    no reply -> the operator hands back -> the AI answers again."""
    client, services, model, graph, clock, _ = wa
    post(client, text_payload("wamid.h1", "Quero falar com um atendente", clock.now))
    wait_until(lambda: graph.sent)
    assert graph.sent[0]["json"]["text"]["body"] == DEFAULT_HANDOFF["pt"] and model.requests == []
    with services.session() as session:
        cid = session.scalars(select(Conversation.id)).one()
    if replied_from == "dashboard":
        assert client.post(f"/api/conversations/{cid}/messages", json={"text": "Oi, sou a Maria."}).status_code == 201
        wait_until(lambda: len(graph.sent) == 2)
    else:
        post(client, echo_body(PHONE_ID, f"+{CUSTOMER}", "wamid.echo1", "Oi, sou a Maria.",
                               display_phone_number="15550001111"))
        wait_until(lambda: [m for m in outbound(services) if m.kind == "operator"])
    sent = len(graph.sent)
    assert sent == (2 if replied_from == "dashboard" else 1)  # WhatsApp delivered the app's message, not us
    conversation = client.get(f"/api/conversations/{cid}").json()
    assert conversation["handoff_state"] == "with_human"
    assert [m["text"] for m in conversation["messages"] if m["kind"] == "operator"] == ["Oi, sou a Maria."]
    assert conversation["handoff_changes"][-1]["actor"] == "operator"
    post(client, text_payload("wamid.h2", "Quero trocar um produto", clock.now))
    post(client, text_payload("wamid.h3", "É o pedido 123", clock.now))

    def skipped() -> int:
        with services.session() as session:
            return session.scalar(select(func.count()).select_from(Message).where(Message.status == "skipped"))
    wait_until(lambda: skipped() == 2)  # stored, covered by a paused turn
    time.sleep(1.0)  # time for any reply to (wrongly) go out
    assert len(graph.sent) == sent and model.requests == []
    assert client.post(f"/api/conversations/{cid}/handback").json()["handoff_state"] == "ai"
    wait_until(lambda: len(graph.sent) == sent + 1)
    assert graph.sent[sent]["json"]["text"]["body"] == DEFAULT_AI_BACK["pt"]
    model.enqueue("Abrimos às 8h.")
    post(client, text_payload("wamid.h4", "Que horas abrem?", clock.now))
    wait_until(lambda: len(graph.sent) == sent + 2)
    assert graph.sent[sent + 1]["json"]["text"]["body"] == "Abrimos às 8h." and len(model.requests) == 1


def test_a_burst_is_answered_by_one_turn(wa):
    client, services, model, graph, clock, _ = wa
    model.enqueue("Uma resposta para tudo.")
    for i, text in enumerate(("Oi", "queria saber o preço", "da limpeza")):
        post(client, text_payload(f"wamid.b{i}", text, clock.now))
        time.sleep(0.1)
    wait_until(lambda: graph.sent)
    time.sleep(1.0)
    assert len(graph.sent) == 1 and len(model.requests) == 1
    assert model.requests[0].messages[-1]["content"].endswith("Oi\nqueria saber o preço\nda limpeza")
    with services.session() as session:
        assert session.scalar(select(func.count()).select_from(Turn)) == 1


def test_24_hour_window_templates_and_reopening(wa):
    client, services, model, graph, clock, sender = wa
    start = clock.now
    model.enqueue("Dentro da janela.")
    post(client, text_payload("wamid.w1", "Tenho uma dúvida", start))
    wait_until(lambda: graph.sent)
    conv_id = outbound(services)[0].conversation_id
    clock.now = start + timedelta(hours=25)
    r = client.post(f"/api/conversations/{conv_id}/messages", json={"text": "Ainda precisa de ajuda?"})
    assert r.status_code == 409 and "template" in r.json()["detail"]
    assert len(graph.sent) == 1  # nothing free-form went to Meta
    client.post("/api/whatsapp/templates", json={"sender_id": sender["id"], "name": "retomar", "language": "pt_BR",
                                                 "category": "UTILITY", "body": "Olá {{1}}, podemos ajudar?",
                                                 "status": "APPROVED"}).raise_for_status()
    t = client.post("/api/whatsapp/messages/template", json={"sender_id": sender["id"], "customer_id": CUSTOMER,
                                                             "name": "retomar", "language": "pt_BR", "parameters": ["Ana"]})
    assert t.status_code == 201, t.text
    assert t.json()["kind"] == "template" and t.json()["text"] == "Olá Ana, podemos ajudar?" and t.json()["status"] == "sent"
    assert graph.sent[-1]["json"]["type"] == "template" and graph.sent[-1]["json"]["template"]["name"] == "retomar"
    model.enqueue("Que bom que voltou!")
    post(client, text_payload("wamid.w2", "Voltei", clock.now))  # the customer writes: the window re-opens
    wait_until(lambda: len(graph.sent) == 3)
    assert graph.sent[-1]["json"]["text"]["body"] == "Que bom que voltou!"


def test_a_reply_generated_after_the_window_is_not_sent(wa):
    client, services, model, graph, clock, _ = wa
    def late(messages, tools):
        clock.now += timedelta(hours=24, minutes=1)  # the model answered too late
        return "Tarde demais."
    model.enqueue(late)
    post(client, text_payload("wamid.late", "Tenho uma dúvida", clock.now))
    msg = wait_until(lambda: [m for m in outbound(services) if m.status == "not_sent"])[0]
    assert "24-hour window" in msg.error_title and graph.sent == []


def test_meta_refusing_outside_the_window_closes_it(wa):
    client, services, model, graph, clock, _ = wa
    graph.fail_next(status=400, error_code=131047, message="Re-engagement message")
    model.enqueue("Olá")
    post(client, text_payload("wamid.f1", "Tenho uma dúvida", clock.now))
    failed = wait_until(lambda: [m for m in outbound(services) if m.status == "failed"])[0]
    assert failed.error_code == 131047
    with services.session() as session:
        assert session.get(Conversation, failed.conversation_id).window_closed_at is not None
    assert client.post(f"/api/conversations/{failed.conversation_id}/messages", json={"text": "oi"}).status_code == 409


def test_a_send_timeout_is_unknown_not_resent_and_settled_by_status(wa):
    client, services, model, graph, clock, _ = wa
    services.settings.whatsapp_send_timeout_s = 0.5
    graph.delay_next(1.5)
    model.enqueue("Olá")
    post(client, text_payload("wamid.t1", "Tenho uma dúvida", clock.now))
    unknown = wait_until(lambda: [m for m in outbound(services) if m.status == "unknown"])[0]
    time.sleep(1.5)
    assert len(graph.sent) == 1 and unknown.channel_message_id is None  # never blindly re-sent
    (part,) = outbound_parts(services)
    assert graph.sent[0]["json"]["biz_opaque_callback_data"] == part.id and part.status == "unknown"
    post(client, status_body(PHONE_ID, "wamid.learnt", CUSTOMER, "delivered", callback_data=part.id))
    settled = wait_until(lambda: [m for m in outbound(services) if m.status == "delivered"])[0]
    assert settled.id == unknown.id and settled.channel_message_id == "wamid.learnt"
    assert [(p.status, p.channel_message_id) for p in outbound_parts(services)] == [("delivered", "wamid.learnt")]


def test_a_long_reply_is_logged_as_written_and_every_part_sent_is_tracked(wa):
    """A reply over WhatsApp's 4096 characters goes out in parts: the logged reply keeps what the model wrote and
    its sources, every part sent is recorded against it, and the statuses of every part settle the reply."""
    client, services, model, graph, clock, _ = wa
    assistant = client.get("/api/assistants/loja").json()
    client.patch(f"/api/assistants/{assistant['id']}", json={"config": {"retrieval": {"mode": "as_tool"}}})
    doc = client.post(f"/api/assistants/{assistant['id']}/documents",
                      files={"file": ("horarios.txt", "Horário\n\nAbrimos de segunda a sexta, das 8h às 18h.".encode())})
    wait_for_document(client, doc.json()["id"])
    written = "\n\n".join(f"**Parte {i}.** Abrimos de segunda a sexta, das 8h às 18h; {'detalhe ' * 60}fim."
                          for i in range(20))  # ~10,000 characters
    model.enqueue([ToolCall("call_0", "search_knowledge_base", {"query": "horário"})], written)
    post(client, text_payload("wamid.long", "Que horas abrem?", clock.now))
    wait_until(lambda: len(graph.sent) == 3 and [m for m in outbound(services) if m.status == "sent"])
    with services.session() as session:
        (reply,) = session.scalars(select(Message).where(Message.direction == "outbound")).all()
        assert reply.text == written and [s.filename for s in reply.sources] == ["horarios.txt"]
        parts = [(p.position, p.text, p.status, p.channel_message_id) for p in reply.parts]
    assert [p[1] for p in parts] == [s["json"]["text"]["body"] for s in graph.sent]
    assert [s["json"]["biz_opaque_callback_data"] for s in graph.sent] == [p.id for p in outbound_parts(services)]
    assert [p[2] for p in parts] == ["sent"] * 3 and all(p[3] for p in parts)
    assert reply.channel_message_id == parts[0][3]
    for _, _, _, wamid in parts:  # every part delivered: only then is the reply
        assert outbound(services)[0].status == "sent"
        post(client, status_body(PHONE_ID, wamid, CUSTOMER, "delivered",
                                 pricing={"billable": True, "category": "utility", "pricing_model": "PMP"}))
    final = wait_until(lambda: [m for m in outbound(services) if m.status == "delivered"])[0]
    assert final.channel_cost == pytest.approx(3 * 0.008)  # Meta charges each part
    conversation = client.get(f"/api/conversations/{final.conversation_id}").json()
    assert [m["direction"] for m in conversation["messages"]] == ["inbound", "outbound"]
    assert conversation["messages"][1]["text"] == written and conversation["messages"][1]["sources"]


def outbound_parts(services) -> list[MessagePart]:
    with services.session() as session:
        return list(session.scalars(select(MessagePart).order_by(MessagePart.position)))


def test_without_a_queue_the_webhook_runs_the_turn_and_sends_the_reply(wa):
    """No queue (posts processed and turns run inline): the post's conversation is answered before the
    webhook is acknowledged."""
    client, services, model, graph, clock, _ = wa
    services.queue = InlineQueue(services)
    model.enqueue("Abrimos às 9h.")
    post(client, text_payload("wamid.inline", "Que horas abrem?", clock.now))
    assert [s["json"]["text"]["body"] for s in graph.sent] == ["Abrimos às 9h."]
    with services.session() as session:
        assert session.scalar(select(func.count()).select_from(Turn)) == 1
        inbound = session.scalars(select(Message).where(Message.direction == "inbound")).one()
        assert inbound.status == "answered" and inbound.turn_id is not None
    assert [m.status for m in outbound(services)] == ["sent"]


def test_one_graph_client_serves_every_send_with_each_numbers_token_and_is_closed_on_shutdown(tmp_path, embedders):
    """Sends of two business numbers, one after the other, go over one kept-alive connection, each request with
    its own number's access token (also after a token changes); shutting the app down closes the client."""
    numbers = {"106540352242922": "token-one", "106540352242923": "token-two"}
    with GraphStandIn() as graph:
        services = make_services(tmp_path / "home", embedders, whatsapp_graph_url=graph.base_url)
        with TestClient(create_app(services=services)) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            client.post("/api/assistants", json={"name": "loja"}).raise_for_status()
            senders = {}
            for number, token in numbers.items():
                senders[number] = client.post("/api/whatsapp/senders", json={
                    "assistant_id": "loja", "phone_number_id": number, "access_token": token, "app_secret": SECRET,
                    "verify_token": f"verify-{number}"}).json()["id"]
                client.post("/api/whatsapp/templates", json={
                    "sender_id": senders[number], "name": "ola", "language": "pt_BR", "category": "UTILITY",
                    "body": "Olá!", "status": "APPROVED"}).raise_for_status()

            def send(number):
                r = client.post("/api/whatsapp/messages/template", json={
                    "sender_id": senders[number], "customer_id": CUSTOMER, "name": "ola", "language": "pt_BR"})
                assert r.status_code == 201 and r.json()["status"] == "sent", r.text

            for number in (*numbers, *numbers):
                send(number)
            with services.session() as session:  # the number's token changes: the next send carries the new one
                sender = session.get(WhatsAppSender, senders["106540352242923"])
                sender.access_token = "token-rotated"
                session.commit()
            send("106540352242923")
            shared = services.whatsapp_graph
        assert [(s["path"].split("/")[2], s["headers"]["Authorization"]) for s in graph.sent] == [
            ("106540352242922", "Bearer token-one"), ("106540352242923", "Bearer token-two"),
            ("106540352242922", "Bearer token-one"), ("106540352242923", "Bearer token-two"),
            ("106540352242923", "Bearer token-rotated")]
        assert len({s["peer"] for s in graph.sent}) == 1  # one connection, kept alive between sends
        assert services.whatsapp_graph is None and shared._http.is_closed
        services.engine.dispose()
