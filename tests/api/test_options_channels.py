"""Choices on the plain-text channels: the HTTP API and the test console return the options (buttons) and the reply
as a numbered list, and take the number or the option's text back; the widget's reply carries them as buttons.
Real app, scripted model; the API on SQLite and PostgreSQL."""
from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from atende.app import create_app
from runtime.types import ToolCall
from tests import factories
from tests.api.test_dashboard import login
from tests.conftest import ADMIN_TOKEN, make_services
from tests.factories import use_scripted_model


@pytest.fixture
def api(tmp_path, embedders, database_url):
    services = make_services(tmp_path / "home", embedders, database_url)
    model = use_scripted_model(services)
    aid = factories.add_assistant(services, "loja", config={"tools": ["offer_options"], "focused_answers": False})
    with TestClient(create_app(services=services)) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield client, model, aid
    services.engine.dispose()


def said(model) -> str:
    return next(m["content"] for m in reversed(model.requests[-1].messages) if m["role"] == "user")


@pytest.mark.parametrize("route", ["/api/chat", "/api/console/chat"])
@pytest.mark.parametrize("answer, chosen", [("2", "Cartão de crédito"), ("  pix. ", "Pix"), ("cartao de credito", "Cartão de crédito"),
                                            ("7", None), ("Boleto", None)])
def test_options_come_back_numbered_and_the_number_or_the_text_is_the_answer(api, route, answer, chosen):
    client, model, aid = api
    model.enqueue([ToolCall("c1", "offer_options", {"options": ["Pix", "Cartão de crédito", "Débito 💳"],
                                                    "prompt": "Como prefere pagar?"})], "Como prefere pagar?")
    r = client.post(route, json={"assistant_id": aid, "customer_id": "c1", "message": "Quero pagar meu pedido"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(o["position"], o["title"]) for o in body["options"]] == [(1, "Pix"), (2, "Cartão de crédito"), (3, "Débito 💳")]
    assert body["reply_text"] == "Como prefere pagar?\n\n1. Pix\n2. Cartão de crédito\n3. Débito 💳"
    model.enqueue("Certo.")
    r = client.post(route, json={"assistant_id": aid, "customer_id": "c1", "message": answer})
    assert r.status_code == 200, r.text
    expected = f"The customer chose: {chosen}" if chosen else answer
    assert said(model).endswith(expected), said(model)
    assert r.json()["options"] == []


def test_an_offer_answered_later_by_a_number_is_no_longer_a_choice(api):
    """Only the newest reply's options take a bare number: after another reply, "1" is just "1"."""
    client, model, aid = api
    model.enqueue([ToolCall("c1", "offer_options", {"options": ["Sim", "Não"]})], "Confirma?", "Ok, outra coisa.",
                  "Entendi.")
    for text in ("Quero cancelar meu pedido", "Qual o prazo de entrega?", "1"):
        r = client.post("/api/chat", json={"assistant_id": aid, "customer_id": "c2", "message": text})
        assert r.status_code == 200, r.text
    assert said(model).endswith("\n1") and "chose" not in said(model)


def test_offer_options_refuses_empty_choices_and_a_single_option_is_still_offered(api):
    client, model, aid = api
    model.enqueue([ToolCall("c1", "offer_options", {"options": ["", "  "]})],
                  [ToolCall("c2", "offer_options", {"options": ["Falar com atendente"]})], "Posso ajudar?")
    r = client.post("/api/chat", json={"assistant_id": aid, "customer_id": "c3", "message": "Preciso de ajuda com meu pedido"})
    body = r.json()
    assert body["function_calls"][0]["error"] and [o["title"] for o in body["options"]] == ["Falar com atendente"]


def test_the_widget_reply_carries_the_options(sqlite_services):
    services = sqlite_services
    services.settings.secret_key = "widget-test-secret"
    model = use_scripted_model(services)
    aid = factories.add_assistant(services, "loja", config={"tools": ["offer_options"], "focused_answers": False,
                                                           "widget": {"allowed_origins": ["*"]}})
    with TestClient(create_app(services=services)) as client:
        token = client.post(f"/api/widget/{aid}/session").json()["token"]
        model.enqueue([ToolCall("c1", "offer_options", {"options": ["Manhã", "Tarde"]})], "Qual período?")
        mid = client.post(f"/api/widget/{aid}/messages", json={"token": token, "message": "Quero agendar uma visita"}
                          ).json()["message_id"]
        deadline = time.monotonic() + 60
        while (r := client.post(f"/api/widget/{aid}/messages/{mid}/reply", json={"token": token}).json())["status"] \
                == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r["reply"] == "Qual período?" and r["options"] == [{"position": 1, "title": "Manhã"},
                                                                  {"position": 2, "title": "Tarde"}]


def test_the_conversation_shows_the_options_offered_and_the_one_chosen(api):
    """The conversation's detail (API and dashboard page) lists each reply's options in order, the chosen one with
    when; a reply without options has none."""
    client, model, aid = api
    model.enqueue([ToolCall("c1", "offer_options", {"options": ["Pix", "Cartão de crédito", "Boleto"]})],
                  "Como prefere pagar?", "Certo, cartão.")
    first = client.post("/api/chat", json={"assistant_id": aid, "customer_id": "c9", "message": "Quero pagar"}).json()
    client.post("/api/chat", json={"assistant_id": aid, "customer_id": "c9", "message": "2"}).raise_for_status()
    detail = client.get(f"/api/conversations/{first['conversation_id']}").json()
    replies = [m for m in detail["messages"] if m["direction"] == "outbound"]
    assert [(o["position"], o["title"], o["chosen_at"] is not None) for o in replies[0]["options"]] == [
        (1, "Pix", False), (2, "Cartão de crédito", True), (3, "Boleto", False)]
    assert replies[1]["options"] == []
    login(client)
    page = client.get(f"/dashboard/conversations/{first['conversation_id']}")
    assert page.status_code == 200
    assert '<li class="option">Pix</li>' in page.text and '<li class="option chosen">Cartão de crédito' in page.text
