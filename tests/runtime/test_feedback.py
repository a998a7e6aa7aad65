"""Feedback on AI replies on real SQLite and PostgreSQL: reviewers through the admin API, customers' WhatsApp
reactions through the signed webhook (the reply really sent to the Graph stand-in first), the widget's thumbs
with visitor tokens, and the figures, filter and export columns of the review backend."""
from __future__ import annotations

import csv
import io
import json
import time

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy import select

from atende.app import create_app
from core.db import new_id, utcnow
from kb import registry
from runtime import feedback, store
from runtime.feedback import REASONS, Reason, rating_for_emoji
from runtime.models import Conversation, Message, MessageFeedback, MessagePart
from runtime.queue import InlineQueue
from runtime.types import TurnResult, Usage
from runtime.whatsapp.standin import GraphStandIn
from tests.conftest import ADMIN_TOKEN
from tests.factories import use_scripted_model
from tests.api.test_widget import ask
from tests.runtime.test_review import fixture_log  # noqa: F401  (the review backend's fixture of five conversations)
from tests.runtime.whatsapp.test_whatsapp_webhook import PYWA, add_sender, new_assistant, post_signed, text_payload

PHONE_ID, CUSTOMER = "1122334455667", "972987654321"  # as in the pywa reaction payloads


def admin_client(services) -> TestClient:
    client = TestClient(create_app(services=services))
    client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    return client


def ai_reply(services, conversation_id: str, text: str, status: str = "answered") -> str:
    """The conversation's pending messages answered by a turn, through the real store; the reply's id."""
    with services.session() as s:
        conv = s.get(Conversation, conversation_id)
        result = TurnResult(conv.id, text, status, usage=Usage(100, 10), timings={"total_ms": 500.0})
        store.log_turn(s, conv, store.pending_inbound(s, conv.id), result, tool_results=[], retrieval_query=None,
                       rounds=1, model="scripted", started_at=utcnow())
        return result.message_id


def stored(services, message_id: str) -> list[tuple]:
    with services.session() as s:
        return [tuple(r) for r in s.execute(
            select(MessageFeedback.source, MessageFeedback.rating, MessageFeedback.reason, MessageFeedback.emoji)
            .where(MessageFeedback.message_id == message_id).order_by(MessageFeedback.created_at))]


# --------------------------------------------------------------------------- schema and vocabulary


def test_emoji_ratings_ignore_skin_tones_and_presentation_selectors():
    for emoji in ("👍", "👍🏻", "👍🏿", "❤️", "❤", "😍", "🙏", "🙏🏽", "👏", "👏🏼", "😊", "🥰", "💯", "✅", "✅\ufe0f"):
        assert rating_for_emoji(emoji) == "good", emoji
    for emoji in ("👎", "👎🏾", "😡", "😠", "😞", "😢", "🤬", "❌"):
        assert rating_for_emoji(emoji) == "bad", emoji
    for emoji in ("😮", "😂", "🎉", "❤️‍🔥", "👍👎", "x"):
        assert rating_for_emoji(emoji) == "neutral", emoji


def test_the_reasons_are_one_vocabulary():
    from typing import get_args

    assert tuple(REASONS) == get_args(Reason)


# --------------------------------------------------------------------------- reviewers (admin API)


@pytest.fixture
def conversation(services):
    """An API-channel conversation: question, AI reply, an operator's message."""
    with services.session() as s:
        assistant = registry.create_assistant(s, name="loja", embedding_model="all-minilm-l6-v2", chunk_size=256,
                                              chunk_overlap=32)
        conv = store.find_or_create_conversation(s, assistant_id=assistant.id, channel="api", sender="api",
                                                 customer_id="cliente-1")
        s.commit()
        question = store.store_inbound(s, conv, "Vocês abrem no sábado?")
        conv_id, question_id = conv.id, question.id
    reply = ai_reply(services, conv_id, "Sim, das 9h às 13h.")
    with services.session() as s:
        operator = Message(id=new_id(), conversation_id=conv_id, direction="outbound", text="Oi, sou a Maria.",
                           status="answered", kind="operator", created_at=utcnow())
        s.add(operator)
        s.commit()
    return {"conversation": conv_id, "question": question_id, "reply": reply, "operator": operator.id}


def test_reviewers_rate_replies_through_the_api(services, conversation):
    client, ids = admin_client(services), conversation
    url = f"/api/messages/{ids['reply']}/feedback"
    good = client.post(url, json={"rating": "good", "author": " Ana "})
    assert good.status_code == 201, good.text
    assert {k: good.json()[k] for k in ("message_id", "conversation_id", "source", "rating", "reason", "author")} == {
        "message_id": ids["reply"], "conversation_id": ids["conversation"], "source": "reviewer", "rating": "good",
        "reason": None, "author": "Ana"}
    bad = client.post(url, json={"rating": "bad", "reason": "incomplete", "comment": "Faltou o domingo.", "author": "Rui"})
    assert bad.status_code == 201 and bad.json()["reason"] == "incomplete"
    listed = client.get(url).json()
    assert [(f["rating"], f["reason"], f["comment"]) for f in listed] == [
        ("good", None, None), ("bad", "incomplete", "Faltou o domingo.")]  # each reviewer's rating is kept

    detail = client.get(f"/api/conversations/{ids['conversation']}").json()
    by_id = {m["id"]: m for m in detail["messages"]}
    assert [f["id"] for f in by_id[ids["reply"]]["feedback"]] == [f["id"] for f in listed]
    assert by_id[ids["question"]]["feedback"] == [] and by_id[ids["reply"]]["sources"] == []

    assert client.delete(f"/api/feedback/{listed[0]['id']}").status_code == 204
    assert client.delete(f"/api/feedback/{listed[0]['id']}").status_code == 404
    assert [f["rating"] for f in client.get(url).json()] == ["bad"]
    codes = [r["code"] for r in client.get("/api/feedback/reasons").json()]
    assert codes == ["wrong", "incomplete", "not_grounded", "wrong_language", "tone", "should_handoff", "other"]


def test_reviewer_ratings_are_refused_when_invalid_or_not_on_an_ai_reply(services, conversation):
    client, ids = admin_client(services), conversation
    url = f"/api/messages/{ids['reply']}/feedback"
    for body in ({"rating": "bad", "reason": "ugly"}, {"rating": "bad"}, {"rating": "good", "reason": "wrong"},
                 {"rating": "neutral"}, {"rating": "meh"}, {"rating": "bad", "reason": "tone", "comment": "x" * 1001},
                 {"rating": "good", "author": "a" * 201}):
        assert client.post(url, json=body).status_code == 422, body
    for kind in ("question", "operator"):
        r = client.post(f"/api/messages/{ids[kind]}/feedback", json={"rating": "good"})
        assert r.status_code == 422 and "not an AI reply" in r.json()["detail"], kind
    assert client.post("/api/messages/nope/feedback", json={"rating": "good"}).status_code == 404
    assert client.get("/api/messages/nope/feedback").status_code == 404
    assert client.post(url, json={"rating": "good"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert stored(services, ids["reply"]) == []


def test_deleting_the_conversation_deletes_its_feedback(services, conversation):
    with services.session() as s:
        feedback.rate_reply(s, conversation["reply"], source="reviewer", rating="good")
        s.commit()
        s.delete(s.get(Conversation, conversation["conversation"]))
        s.commit()
        assert s.scalar(select(sa.func.count()).select_from(MessageFeedback)) == 0


# --------------------------------------------------------------------------- WhatsApp reactions


@pytest.fixture
def whatsapp(services):
    """The real app processing webhooks inline, a sender, and an AI reply really sent to the Graph stand-in:
    (client, services, the reply, the conversation id)."""
    with GraphStandIn() as graph:
        services.settings.whatsapp_graph_url = graph.base_url
        model = use_scripted_model(services)
        client = admin_client(services)
        services.queue = InlineQueue(services)
        add_sender(client, new_assistant(client), PHONE_ID)
        model.enqueue("Abrimos às 9h.")
        now = int(time.time())
        # no queue: the webhook runs the turn and sends its reply before answering
        assert post_signed(client, text_payload(PHONE_ID, "wamid.Q1", "Que horas abrem?", CUSTOMER, now)).status_code == 200
        with services.session() as s:
            conv_id = s.scalar(select(Conversation.id))
            reply = s.scalars(select(Message).where(Message.direction == "outbound")).one()
        assert reply.status == "sent" and reply.channel_message_id and graph.sent
        yield client, services, reply, conv_id


def reaction(wamid: str, reacted_to: str, emoji: str | None, ts: int) -> dict:
    """Meta's reaction payload (the pywa fixture's shape); ``emoji`` None leaves the key out (removed)."""
    body = {"message_id": reacted_to} if emoji is None else {"message_id": reacted_to, "emoji": emoji}
    payload = text_payload(PHONE_ID, wamid, "", CUSTOMER, ts)
    payload["entry"][0]["changes"][0]["value"]["messages"][0] = {
        "from": CUSTOMER, "id": wamid, "timestamp": str(ts), "type": "reaction", "reaction": body}
    return payload


def test_reactions_are_the_customers_feedback_on_the_reply(whatsapp):
    client, services, reply, conv_id = whatsapp
    t = int(time.time())
    assert post_signed(client, reaction("wamid.R1", reply.channel_message_id, "👍", t)).status_code == 200
    assert stored(services, reply.id) == [("customer_reaction", "good", None, "👍")]
    for _ in range(3):  # a new reaction replaces the old; redeliveries change nothing
        post_signed(client, reaction("wamid.R2", reply.channel_message_id, "👎🏽", t + 1))
    post_signed(client, reaction("wamid.R1", reply.channel_message_id, "👍", t))
    assert stored(services, reply.id) == [("customer_reaction", "bad", None, "👎🏽")]
    post_signed(client, reaction("wamid.R0", reply.channel_message_id, "😍", t - 30))  # an older one, delivered late
    assert stored(services, reply.id) == [("customer_reaction", "bad", None, "👎🏽")]
    post_signed(client, reaction("wamid.R3", reply.channel_message_id, "", t + 2))  # removed
    assert stored(services, reply.id) == []
    post_signed(client, reaction("wamid.R4", reply.channel_message_id, "😮", t + 3))
    assert stored(services, reply.id) == [("customer_reaction", "neutral", None, "😮")]
    post_signed(client, reaction("wamid.R5", reply.channel_message_id, None, t + 4))  # removed, emoji key left out
    assert stored(services, reply.id) == []
    with services.session() as s:
        rows = s.scalars(select(Message).where(Message.kind == "reaction").order_by(Message.received_at)).all()
        assert [m.channel_message_id for m in rows] == ["wamid.R0", "wamid.R1", "wamid.R2", "wamid.R3", "wamid.R4",
                                                        "wamid.R5"]  # each logged once, as before
        assert {m.status for m in rows} == {"logged"} and {m.conversation_id for m in rows} == {conv_id}


def test_reactions_to_other_messages_record_nothing(whatsapp):
    client, services, reply, conv_id = whatsapp
    with services.session() as s:
        operator = Message(id=new_id(), conversation_id=conv_id, direction="outbound", text="Sou a Maria.",
                           status="sent", kind="operator", channel_message_id="wamid.OP1", created_at=utcnow())
        s.add(operator)
        s.commit()
    t = int(time.time())
    for wamid, target in (("wamid.X1", "wamid.unknown"), ("wamid.X2", "wamid.OP1"), ("wamid.X3", "wamid.Q1")):
        assert post_signed(client, reaction(wamid, target, "👍", t)).status_code == 200
    with services.session() as s:
        assert s.scalar(select(sa.func.count()).select_from(MessageFeedback)) == 0
        assert s.scalar(select(sa.func.count()).select_from(Message).where(Message.kind == "reaction")) == 3


@pytest.mark.skipif(not (PYWA / "split" / "message__reaction.json").is_file(), reason=f"pywa fixtures not under {PYWA}")
def test_the_pywa_reaction_payloads(whatsapp):
    client, services, reply, _ = whatsapp
    for i, name in enumerate(("message__reaction", "message__unreaction_empty", "message__reaction",
                              "message__unreaction_no_emoji")):
        body = json.loads((PYWA / "split" / f"{name}.json").read_text())
        message = body["entry"][0]["changes"][0]["value"]["messages"][0]
        message["id"] = f"wamid.pywa{i}"  # the fixtures share one id; each is a new reaction here
        message["timestamp"] = str(int(time.time()) + i)
        message["reaction"]["message_id"] = reply.channel_message_id
        assert post_signed(client, body).status_code == 200
        assert stored(services, reply.id) == ([] if "unreaction" in name else [("customer_reaction", "neutral", None, "😮")])


# --------------------------------------------------------------------------- widget thumbs


@pytest.fixture
def widget(services):
    """A public client (no admin token) on the real app and an assistant ``loja`` answering from a script."""
    services.settings.secret_key = "feedback-test-secret"
    model = use_scripted_model(services)
    with services.session() as s:
        a = registry.create_assistant(s, name="loja", embedding_model="all-minilm-l6-v2", chunk_size=256, chunk_overlap=32)
        a.config = {"widget": {"allowed_origins": ["https://shop.example"]}}
        s.commit()
    with TestClient(create_app(services=services)) as client:  # the app's lifespan starts the widget's turn pool
        yield client, services, model


def visitor(client) -> str:
    return client.post("/api/widget/loja/session").json()["token"]


def test_visitors_rate_the_replies_of_their_own_conversation(widget):
    client, services, model = widget
    token, other = visitor(client), visitor(client)
    model.enqueue("Abrimos às 9h.", "Abrimos às 9h.")
    sent = ask(client, "loja", token, "Que horas vocês abrem?").json()
    reply_id = sent["message_id"]
    assert sent["reply"] and reply_id
    url = f"/api/widget/loja/messages/{reply_id}/feedback"
    r = client.post(url, json={"token": token, "rating": "good"}, headers={"Origin": "https://shop.example"})
    assert r.status_code == 200 and r.json() == {"message_id": reply_id, "rating": "good", "reason": None}
    assert r.headers["access-control-allow-origin"] == "https://shop.example"
    r = client.post(url, json={"token": token, "rating": "bad", "reason": "wrong", "comment": "Abrem às 8h."})
    assert r.status_code == 200
    assert stored(services, reply_id) == [("widget", "bad", "wrong", None)]  # one per reply: replaced

    history = client.post("/api/widget/loja/history", json={"token": token}).json()["messages"]
    assert [(m["direction"], m["rateable"], m["rating"]) for m in history] == [("inbound", False, None),
                                                                               ("outbound", True, "bad")]
    assert history[1]["message_id"] == reply_id
    ask(client, "loja", other, "Que horas vocês abrem?")
    for bad_token, status in ((other, 404), ("v_forged.token", 401)):  # another visitor's reply is not found
        assert client.post(url, json={"token": bad_token, "rating": "good"}).status_code == status
    question = history[0]["message_id"]
    r = client.post(f"/api/widget/loja/messages/{question}/feedback", json={"token": token, "rating": "good"})
    assert r.status_code == 422 and "not an AI reply" in r.json()["detail"]
    assert client.post(f"/api/widget/loja/messages/{new_id()}/feedback", json={"token": token, "rating": "good"}).status_code == 404
    assert client.post(url, json={"token": token, "rating": "neutral"}).status_code == 422
    assert stored(services, reply_id) == [("widget", "bad", "wrong", None)]
    pre = client.options(url, headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "https://shop.example"


def test_widget_js_offers_accessible_thumbs(widget):
    js = widget[0].get("/widget.js").text
    assert '"/feedback"' in js and "aria-label" in js and "aria-pressed" in js and "disabled" in js


# --------------------------------------------------------------------------- metrics, filter, export


@pytest.fixture
def rated(services, fixture_log):  # noqa: F811  (the imported fixture)
    """The review fixture's replies rated: C1 (03-01) good by a reviewer and 👍, bad (wrong); C2 (03-02, the
    handoff) bad in the widget; C3 (03-02, the fallback) bad twice (not_grounded, wrong); C4 (03-03) 😮."""
    with services.session() as s:
        replies = {}
        for name in ("c1", "c2", "c3", "c4"):
            replies[name] = list(s.scalars(select(Message.id).where(
                Message.conversation_id == fixture_log[name], Message.turn_id.is_not(None),
                Message.direction == "outbound").order_by(Message.created_at)))
        rate = feedback.rate_reply
        rate(s, replies["c1"][0], source="reviewer", rating="good", author="Ana")
        rate(s, replies["c1"][1], source="reviewer", rating="bad", reason="wrong")
        rate(s, replies["c2"][0], source="widget", rating="bad")
        rate(s, replies["c3"][0], source="reviewer", rating="bad", reason="not_grounded", comment="inventou")
        rate(s, replies["c3"][0], source="reviewer", rating="bad", reason="wrong")
        for name, wamid, emoji in (("c1", "wamid.c1", "👍🏼"), ("c4", "wamid.c4", "😮")):
            reply = s.get(Message, replies[name][0])  # as if sent on WhatsApp, in one part
            reply.parts = [MessagePart(id=new_id(), position=0, text=reply.text, status="sent", channel_message_id=wamid)]
            assert feedback.record_reaction(s, fixture_log[name], wamid, emoji, at=utcnow()) is not None
        s.commit()
    return fixture_log, replies


def test_metrics_count_ratings_reasons_and_satisfaction(services, rated):
    ids, _ = rated
    client = admin_client(services)
    m = client.get("/api/metrics").json()
    assert m["satisfaction_rate"] == pytest.approx(2 / 6)
    f = m["feedback"]
    assert f["total"] == 7 and f["by_rating"] == {"good": 2, "bad": 4, "neutral": 1}
    assert f["by_source"] == {"reviewer": {"good": 1, "bad": 3, "neutral": 0},
                              "customer_reaction": {"good": 1, "bad": 0, "neutral": 1},
                              "widget": {"good": 0, "bad": 1, "neutral": 0}}
    assert f["bad_reasons"] == [{"reason": "wrong", "count": 2}, {"reason": "not_grounded", "count": 1}]
    assert f["per_day"] == [
        {"day": "2024-03-01", "good": 2, "bad": 1, "neutral": 0, "satisfaction_rate": pytest.approx(2 / 3)},
        {"day": "2024-03-02", "good": 0, "bad": 3, "neutral": 0, "satisfaction_rate": 0.0},
        {"day": "2024-03-03", "good": 0, "bad": 0, "neutral": 1, "satisfaction_rate": None},
    ]
    c4 = client.get("/api/metrics", params={"customer": "5521988880004"}).json()
    assert c4["satisfaction_rate"] is None and c4["feedback"]["total"] == 1
    none = client.get("/api/metrics", params={"customer": "nobody"}).json()
    assert none["satisfaction_rate"] is None and none["feedback"]["by_rating"] == {"good": 0, "bad": 0, "neutral": 0}
    assert none["feedback"]["bad_reasons"] == [] and none["feedback"]["per_day"] == []


def test_the_feedback_filter_selects_conversations(services, rated):
    ids, _ = rated
    client = admin_client(services)

    def listed(**params):
        return [i["id"] for i in client.get("/api/conversations", params=params).json()["items"]]

    assert listed(feedback="bad") == [ids["c3"], ids["c2"], ids["c1"]]
    assert listed(feedback="good") == [ids["c1"]]
    assert listed(feedback="any") == [ids["c4"], ids["c3"], ids["c2"], ids["c1"]]
    assert listed(feedback="bad", channel="whatsapp") == [ids["c1"]]
    assert client.get("/api/metrics", params={"feedback": "bad"}).json()["conversations"] == 3
    for path in ("/api/conversations", "/api/metrics", "/api/conversations/export"):
        assert client.get(path, params={"feedback": "maybe"}).status_code == 422, path


def test_export_has_each_messages_feedback(services, rated):
    ids, replies = rated
    client = admin_client(services)
    rows = [json.loads(x) for x in client.get("/api/conversations/export",
                                               params={"format": "jsonl", "feedback": "bad"}).text.splitlines()]
    assert {r["conversation_id"] for r in rows} == {ids["c1"], ids["c2"], ids["c3"]}
    by_id = {r["message_id"]: r for r in rows}
    first = by_id[replies["c1"][0]]["feedback"]
    assert [(f["source"], f["rating"], f["emoji"], f["author"]) for f in first] == [
        ("reviewer", "good", None, "Ana"), ("customer_reaction", "good", "👍🏼", None)]
    assert first[0]["created_at"].endswith("+00:00")
    assert [(f["reason"], f["comment"]) for f in by_id[replies["c3"][0]]["feedback"]] == [
        ("not_grounded", "inventou"), ("wrong", None)]
    assert all(r["feedback"] == [] for r in rows if r["direction"] == "inbound")

    table = list(csv.DictReader(io.StringIO(client.get("/api/conversations/export").text, newline="")))
    assert list(table[0])[-2:] == ["feedback", "media"] and len(table) == 18
    reply = next(r for r in table if r["message_id"] == replies["c2"][0])
    assert json.loads(reply["feedback"])[0]["source"] == "widget"
