"""The web widget channel: visitor tokens, a conversation across messages (each message accepted with 202,
its reply polled), CORS per assistant, the per-visitor rate limit and the embeddable script. Real app, real
SQLite, scripted chat model; abuse (limits under concurrency, the turn cap, load) in test_widget_abuse.py."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from atende.app import create_app
from api.routes import widget
from runtime.config import DEFAULT_UNAVAILABLE
from runtime.models import Conversation, Message
from tests import factories
from tests.factories import use_scripted_model

SHOP = "https://shop.example"
HOURS = "Horário\n\nAbrimos de segunda a sexta, das 8h às 18h."


def add_assistant(services, name: str, documents=(), **config) -> str:
    # the scripted model answers the whole prompt
    return factories.add_assistant(services, name, config={"focused_answers": False, **config}, documents=documents)


@pytest.fixture
def shop(sqlite_services):
    """A public client (no admin token) on the real app with the widget router, and two assistants:
    ``loja`` (one document, any origin, 3 messages a minute) and ``fechada`` (only SHOP may embed it)."""
    services = sqlite_services
    services.settings.secret_key = "widget-test-secret"
    model = use_scripted_model(services)
    aid = add_assistant(services, "loja", retrieval={"top_k": 1, "min_score": -1.0},
                        widget={"title": "Loja Exemplo", "greeting": "Olá! Como posso ajudar?", "rate_limit_per_minute": 3,
                                "allowed_origins": ["*"]}, documents=[("horarios.txt", HOURS)])
    closed = add_assistant(services, "fechada", widget={"allowed_origins": [SHOP + "/"]})
    with TestClient(create_app(services=services)) as client:
        yield client, services, model, aid, closed


def new_token(client, assistant: str) -> str:
    r = client.post(f"/api/widget/{assistant}/session")
    assert r.status_code == 200, r.text
    return r.json()["token"]


def send(client, assistant, token, message, **kw):
    return client.post(f"/api/widget/{assistant}/messages", json={"token": token, "message": message}, **kw)


def poll(client, assistant, token, message_id, **kw):
    """The reply to a message, asked for until its turn has run (or 60 s have passed: then still pending)."""
    deadline = time.monotonic() + 60
    while True:
        r = client.post(f"/api/widget/{assistant}/messages/{message_id}/reply", json={"token": token}, **kw)
        assert r.status_code == 200, r.text
        if r.json()["status"] != "pending" or time.monotonic() > deadline:
            return r
        time.sleep(0.02)


def ask(client, assistant, token, message, **kw):
    """Send a message (accepted with 202 and its id) and return the polled reply."""
    r = send(client, assistant, token, message, **kw)
    assert r.status_code == 202 and r.json()["status"] == "pending", r.text
    return poll(client, assistant, token, r.json()["message_id"], **kw)


def test_config_is_public_and_session_token_round_trips(shop):
    client, services, model, aid, closed = shop
    assert "Authorization" not in client.headers
    assert client.get("/api/widget/loja/config").json() == {"title": "Loja Exemplo", "greeting": "Olá! Como posso ajudar?"}
    body = client.post("/api/widget/loja/session").json()
    visitor_id, sig = body["token"].rsplit(".", 1)
    assert visitor_id == body["visitor_id"] and visitor_id.startswith("v_") and sig
    secret = services.settings.secret_key
    assert widget.verify_visitor_token(secret, aid, body["token"]) == visitor_id
    assert widget.verify_visitor_token("another-secret", aid, body["token"]) is None
    assert widget.verify_visitor_token(secret, closed, body["token"]) is None  # bound to its assistant
    assert new_token(client, aid) != body["token"]  # by id too; each session is a new visitor
    model.enqueue("Abrimos às 8h.")
    assert ask(client, "loja", body["token"], "Que horas abrem?").json()["reply"] == "Abrimos às 8h."


def test_forged_tokens_are_refused_and_nothing_is_stored(shop):
    client, services, model, aid, closed = shop
    token = new_token(client, "loja")
    visitor_id, sig = token.rsplit(".", 1)
    forged = [f"{visitor_id}.{sig[:-1]}{'A' if sig[-1] != 'A' else 'B'}", f"v_{'x' * 24}.{sig}", visitor_id, "",
              f"{visitor_id}.", "not a token", new_token(client, "fechada")]
    for bad in forged:
        r = send(client, "loja", bad, "tenho uma dúvida")
        assert r.status_code == 401, (bad, r.text)
        assert client.post("/api/widget/loja/history", json={"token": bad}).status_code == 401
        assert client.post(f"/api/widget/loja/messages/{'0' * 32}/reply", json={"token": bad}).status_code == 401
    with services.session() as session:
        assert session.scalars(select(Conversation)).all() == []
    assert model.requests == []


def test_a_conversation_continues_with_the_same_token(shop):
    client, services, model, aid, closed = shop
    token = new_token(client, "loja")
    model.enqueue("Abrimos de *segunda a sexta*.", "Aos sábados não abrimos.")
    first = ask(client, "loja", token, "Que horas abrem?").json()
    assert first["reply"] == "Abrimos de *segunda a sexta*." and first["ai_enabled"] is True
    assert first["status"] == "answered"
    assert first["sources"] == [{"filename": "horarios.txt", "page": None, "section": first["sources"][0]["section"]}]
    second = ask(client, "loja", token, "E no sábado?").json()
    assert second["reply"] == "Aos sábados não abrimos."
    assert "Que horas abrem?" in json.dumps(model.requests[1].messages, ensure_ascii=False)  # history reached the model
    with services.session() as session:
        [conv] = session.scalars(select(Conversation)).all()
        assert (conv.channel, conv.sender, conv.assistant_id) == ("widget", f"widget:{aid}", aid)
        assert conv.customer_id == token.rsplit(".", 1)[0]
        assert session.query(Message).filter_by(conversation_id=conv.id).count() == 4
    history = client.post("/api/widget/loja/history", json={"token": token}).json()
    assert [(m["direction"], m["text"]) for m in history["messages"]] == [
        ("inbound", "Que horas abrem?"), ("outbound", "Abrimos de *segunda a sexta*."),
        ("inbound", "E no sábado?"), ("outbound", "Aos sábados não abrimos."),
    ]
    assert client.post("/api/widget/loja/history", json={"token": new_token(client, "loja")}).json() == \
        {"messages": [], "ai_enabled": True}
    # a message is found only by its visitor, and only the visitor's own message (not the reply) has a reply
    question, answer = history["messages"][0]["message_id"], history["messages"][1]["message_id"]
    other = new_token(client, "loja")
    for who, message_id in ((other, question), (token, answer), (token, "0" * 32)):
        r = client.post(f"/api/widget/loja/messages/{message_id}/reply", json={"token": who})
        assert r.status_code == 404, (who, message_id)


def test_paused_ai_and_model_failure(shop):
    client, services, model, aid, closed = shop
    token = new_token(client, "loja")
    model.enqueue(lambda messages, tools: (_ for _ in ()).throw(ConnectionError("refused")))
    r = ask(client, "loja", token, "tenho uma dúvida", headers={"Origin": SHOP})
    assert r.json()["status"] == "error" and r.json()["reply"] == DEFAULT_UNAVAILABLE["pt"]
    assert r.headers["access-control-allow-origin"] == SHOP
    with services.session() as session:
        session.execute(update(Conversation).values(handoff_state="with_human"))
        session.commit()
    assert ask(client, "loja", token, "alô?").json() == {"status": "paused", "reply": None, "sources": [],
                                                        "ai_enabled": False, "message_id": None, "options": []}
    assert client.post("/api/widget/loja/history", json={"token": token}).json()["ai_enabled"] is False


def test_bad_input_and_unknown_assistant(shop):
    client, services, model, aid, closed = shop
    token = new_token(client, "loja")
    for message in ("", "   ", "x" * 2001):
        assert send(client, "loja", token, message).status_code == 422, repr(message[:5])
    assert client.post("/api/widget/loja/messages", json={"message": "tenho uma dúvida"}).status_code == 422
    for client_id in ("short", "has spaces in it", "x" * 65, 12345678):
        r = client.post("/api/widget/loja/messages", json={"token": token, "message": "oi", "client_message_id": client_id})
        assert r.status_code == 422, client_id
    model.enqueue("ok")
    assert ask(client, "loja", token, "x" * 2000).json()["reply"] == "ok"
    assert client.get("/api/widget/nope/config").status_code == 404
    assert client.post("/api/widget/nope/session").status_code == 404
    assert send(client, "nope", token, "tenho uma dúvida").status_code == 404
    assert client.options("/api/widget/nope/messages", headers={"Origin": SHOP}).status_code == 404


def test_allowed_origins_and_preflight(shop):
    client, services, model, aid, closed = shop
    ok = client.get("/api/widget/fechada/config", headers={"Origin": SHOP})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == SHOP and "Origin" in ok.headers["vary"]
    assert client.get("/api/widget/fechada/config", headers={"Origin": "https://evil.example"}).status_code == 403
    assert client.post("/api/widget/fechada/session", headers={"Origin": "http://shop.example"}).status_code == 403
    no_origin = client.get("/api/widget/fechada/config")  # not a browser on another site: not CORS
    assert no_origin.status_code == 200 and "access-control-allow-origin" not in no_origin.headers

    pre = client.options("/api/widget/fechada/messages", headers={
        "Origin": SHOP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == SHOP
    assert "POST" in pre.headers["access-control-allow-methods"] and "Content-Type" in pre.headers["access-control-allow-headers"]
    refused = client.options("/api/widget/fechada/messages", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers

    anywhere = client.get("/api/widget/loja/config", headers={"Origin": "https://any.example"})  # "*": any origin
    assert anywhere.status_code == 200 and anywhere.headers["access-control-allow-origin"] == "https://any.example"
    add_assistant(services, "padrao")  # by default: no other website, only the server's own pages (dashboard, demo)
    for origin in ("https://any.example", SHOP, "null", "http://testserver.evil.example"):
        assert client.get("/api/widget/padrao/config", headers={"Origin": origin}).status_code == 403, origin
        assert client.post("/api/widget/padrao/session", headers={"Origin": origin}).status_code == 403, origin
    own = client.post("/api/widget/padrao/session", headers={"Origin": "http://testserver"})  # TestClient's host
    assert own.status_code == 200 and own.headers["access-control-allow-origin"] == "http://testserver"
    unauthorized = send(client, "fechada", "forged", "tenho uma dúvida", headers={"Origin": SHOP})  # errors stay readable
    assert unauthorized.status_code == 401 and unauthorized.headers["access-control-allow-origin"] == SHOP


def test_rate_limit_counts_messages_in_the_database(shop):
    client, services, model, aid, closed = shop
    now = [datetime(2026, 12, 1, 12, 0, 5, tzinfo=UTC)]  # 5 s into a minute's window
    services.clock = lambda: now[0]
    token, other = new_token(client, "loja"), new_token(client, "loja")
    model.enqueue("Resposta um.", "Resposta dois.", "Resposta três.")
    assert [ask(client, "loja", token, f"m{i}").json()["status"] for i in range(3)] == ["answered"] * 3
    limited = send(client, "loja", token, "m3", headers={"Origin": SHOP})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "55"  # when the window ends
    assert limited.headers["access-control-allow-origin"] == SHOP
    assert "Retry-After" in limited.headers["access-control-expose-headers"]
    model.enqueue("other visitor")
    assert ask(client, "loja", other, "tenho uma dúvida").json()["reply"] == "other visitor"  # the limit is per visitor
    with services.session() as session:
        visitor = token.rsplit(".", 1)[0]
        conv = session.scalar(select(Conversation).filter_by(customer_id=visitor))
        assert session.query(Message).filter_by(conversation_id=conv.id, direction="inbound").count() == 3  # refused: not stored
    now[0] += timedelta(seconds=55)  # the next window: the visitor may write again
    model.enqueue("4")
    assert ask(client, "loja", token, "m4").json()["reply"] == "4"


def test_widget_js_is_served_and_has_no_hard_coded_host(shop):
    client = shop[0]
    r = client.get("/widget.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    js = r.text
    for host in ("http://", "https://", "localhost", "127.0.0.1", "0.0.0.0"):
        assert host not in js.replace("https://YOUR-HOST/widget.js", ""), host  # only the usage comment
    assert "document.currentScript" in js and "data-assistant" in js and "localStorage" in js
    for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert unsafe not in js, unsafe


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_widget_js_parses_and_renders_whatsapp_formatting_as_nodes():
    subprocess.run(["node", "--check", str(widget.SCRIPT)], check=True)
    probe = """
    const { renderRich } = require(process.argv[1]);
    const node = (tag) => ({ tag, textContent: "", children: [], appendChild(c) { this.children.push(c); return c; } });
    const doc = { createElement: node, createTextNode: (text) => ({ text }) };
    const root = node("div");
    renderRich(doc, root, process.argv[2]);
    console.log(JSON.stringify(root.children.map((c) => (c.tag ? [c.tag, c.textContent] : c.text)).filter((c) => c !== "")));
    """
    text = "*Horário:* seg a sex\n<img src=x onerror=alert(1)> _até_ 18h, file_name_here 2*3*4 **negrito** ~não~."
    out = subprocess.run(["node", "-e", probe, str(widget.SCRIPT), text], check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == [
        ["strong", "Horário:"], " seg a sex", ["br", ""], "<img src=x onerror=alert(1)> ", ["em", "até"],
        " 18h, file_name_here 2*3*4 ", ["strong", "negrito"], " ", ["s", "não"], ".",
    ]
