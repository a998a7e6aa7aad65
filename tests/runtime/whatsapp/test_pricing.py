"""Per-message pricing (runtime.whatsapp.pricing): the price table by category and country prefix, a template
estimated at the send by its category, service replies free, Meta's status ``pricing`` confirming; cost per
message and per conversation. Real app and queue, the Graph API stand-in over HTTP, SQLite and PostgreSQL."""
from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from atende.app import create_app
from runtime.models import Conversation, Message
from runtime.whatsapp.pricing import price
from runtime.whatsapp.standin import GraphStandIn, sign, status_body
from tests.conftest import ADMIN_TOKEN, make_services
from tests.factories import use_scripted_model, wait_until

SECRET, PHONE_ID = "app-secret-pricing", "106540352247777"
BRAZIL, US, INDIA = "5511987653333", "14155550123", "919876543210"
# a fixture of known values: the table an operator would copy from Meta's rate card (USD per delivered template)
PRICES = {"marketing": 0.05, "marketing:55": 0.0625, "marketing:1": 0.025, "utility": 0.004, "utility:55": 0.0068,
          "authentication": 0.004, "authentication:55": 0.0068, "authentication:91": 0.0014,
          "authentication:9198": 0.0011}


@pytest.mark.parametrize("category, recipient, expected", [
    ("marketing", BRAZIL, 0.0625), ("MARKETING", "+55 11 98765-3333", 0.0625), ("marketing", US, 0.025),
    ("marketing", INDIA, 0.05), ("utility", BRAZIL, 0.0068), ("utility", US, 0.004),
    ("authentication", INDIA, 0.0011), ("authentication", "919123456789", 0.0014),  # the longest prefix wins
    ("service", BRAZIL, 0.0), ("marketing_lite", BRAZIL, 0.0), (None, BRAZIL, 0.0),
    ("marketing", "BR.13491208655302741918", 0.05),  # a business-scoped user id: no number, the category's price
])
def test_the_price_table_by_category_and_country_prefix(category, recipient, expected):
    assert price(PRICES, category, recipient) == pytest.approx(expected)


@pytest.fixture
def wa(tmp_path, embedders, database_url):
    with GraphStandIn() as graph:
        services = make_services(tmp_path / "home", embedders, database_url, whatsapp_graph_url=graph.base_url,
                                 whatsapp_debounce_s=0.2, whatsapp_prices=PRICES)
        model = use_scripted_model(services)
        with TestClient(create_app(services=services)) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            client.post("/api/assistants", json={"name": "loja"}).raise_for_status()
            sender = client.post("/api/whatsapp/senders", json={
                "assistant_id": "loja", "phone_number_id": PHONE_ID, "display_phone_number": "15550001111",
                "access_token": "token-p", "app_secret": SECRET, "verify_token": "v"}).json()
            for name, category in (("promo", "MARKETING"), ("lembrete", "UTILITY")):
                client.post("/api/whatsapp/templates", json={
                    "sender_id": sender["id"], "name": name, "language": "pt_BR", "category": category,
                    "body": "Olá {{1}}!", "status": "APPROVED"}).raise_for_status()
            yield client, services, model, graph, sender
        services.engine.dispose()


def post(client, body: dict) -> None:
    raw = json.dumps(body).encode()
    r = client.post("/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": sign(SECRET, raw),
                                                                "Content-Type": "application/json"})
    assert r.status_code == 200, r.text


def send_template(client, sender, customer, name) -> dict:
    r = client.post("/api/whatsapp/messages/template", json={"sender_id": sender["id"], "customer_id": customer,
                                                             "name": name, "language": "pt_BR", "parameters": ["Ana"]})
    assert r.status_code == 201, r.text
    return r.json()


def stored(services, message_id) -> tuple[Message, Conversation]:
    with services.session() as session:
        msg = session.get(Message, message_id)
        return msg, session.get(Conversation, msg.conversation_id)


def test_templates_are_estimated_at_the_send_and_confirmed_by_meta(wa):
    client, services, model, graph, sender = wa
    sent = send_template(client, sender, BRAZIL, "promo")
    msg, conv = stored(services, sent["id"])
    assert (msg.pricing_category, msg.billable, msg.channel_cost) == ("marketing", None, pytest.approx(0.0625))
    assert conv.cost == pytest.approx(0.0625)
    post(client, status_body(PHONE_ID, msg.channel_message_id, BRAZIL, "delivered",
                             pricing={"billable": True, "pricing_model": "PMP", "category": "marketing", "type": "regular"}))
    msg, conv = wait_until(lambda: (r := stored(services, sent["id"]))[0].billable is not None and r)
    assert (msg.billable, msg.channel_cost, conv.cost) == (True, pytest.approx(0.0625), pytest.approx(0.0625))
    us = send_template(client, sender, US, "promo")
    assert stored(services, us["id"])[0].channel_cost == pytest.approx(0.025)


def test_service_replies_and_utility_templates_inside_the_window_are_free(wa):
    client, services, model, graph, sender = wa
    model.enqueue("Sim, entregamos em Recife.")
    ts = str(int(time.time()))
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_ID},
             "contacts": [{"profile": {"name": "Ana"}, "wa_id": BRAZIL}],
             "messages": [{"from": BRAZIL, "id": "wamid.pr1", "timestamp": ts, "type": "text",
                           "text": {"body": "Vocês entregam em Recife?"}}]}
    post(client, {"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [{"value": value,
                                                                                             "field": "messages"}]}]})
    wait_until(lambda: graph.sent)
    with services.session() as session:
        reply = wait_until(lambda: session.scalars(select(Message).where(Message.direction == "outbound",
                                                                         Message.status == "sent")).first())
    assert (reply.pricing_category, reply.channel_cost) == ("service", 0.0)
    post(client, status_body(PHONE_ID, reply.channel_message_id, BRAZIL, "delivered", pricing={
        "billable": False, "pricing_model": "PMP", "category": "service", "type": "free_customer_service"}))
    reply, conv = wait_until(lambda: (r := stored(services, reply.id))[0].billable is not None and r)
    assert (reply.billable, reply.channel_cost) == (False, 0.0)
    utility = send_template(client, sender, BRAZIL, "lembrete")  # the window is open: free
    assert stored(services, utility["id"])[0].channel_cost == 0.0
    marketing = send_template(client, sender, BRAZIL, "promo")  # never free
    msg, conv = stored(services, marketing["id"])
    assert msg.channel_cost == pytest.approx(0.0625)
    assert conv.cost == pytest.approx(0.0625 + reply.cost)  # the conversation: model cost plus channel cost


def test_a_template_meta_never_took_costs_nothing(wa):
    client, services, model, graph, sender = wa
    graph.fail_next(400, 132001, "Template name does not exist in the translation")
    sent = send_template(client, sender, BRAZIL, "promo")
    msg, conv = stored(services, sent["id"])
    assert (msg.status, msg.channel_cost, conv.cost) == ("failed", 0.0, 0.0)
    ok = send_template(client, sender, BRAZIL, "promo")
    msg, _ = stored(services, ok["id"])
    post(client, status_body(PHONE_ID, msg.channel_message_id, BRAZIL, "failed"))  # Meta could not deliver it
    msg, conv = wait_until(lambda: (r := stored(services, ok["id"]))[0].status == "failed" and r)
    assert (msg.status, msg.channel_cost, conv.cost) == ("failed", 0.0, pytest.approx(0.0))
