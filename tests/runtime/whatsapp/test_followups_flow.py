"""Outside business hours, end to end over the WhatsApp webhook and the Graph stand-in, on a frozen clock: the
customer asks for a person, is told when one will answer, leaves callback details (no model call, no AI answer),
a follow-up is created for the next opening with a template reminder, which goes out at the opening."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from runtime.config import DEFAULT_CALLBACK, DEFAULT_HANDOFF
from runtime.models import CollectedData, FollowUp, Message, Turn
from runtime.whatsapp.outbound import send_due
from tests.runtime.whatsapp import test_whatsapp_flow as flow
from tests.factories import wait_until
from tests.runtime.whatsapp.test_whatsapp_flow import post, text_payload

wa = flow.wa  # the WhatsApp app on the Graph stand-in, with its clock: (client, services, model, graph, clock, sender)

FRIDAY_NIGHT = datetime(2026, 12, 4, 23, 0, tzinfo=UTC)  # 20:00 in Sao Paulo; open again Monday 09:00 (12:00 UTC)
MONDAY_OPENING = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
HOURS = {"timezone": "America/Sao_Paulo", "weekly": {d: [["09:00", "18:00"]] for d in ("mon", "tue", "wed", "thu", "fri")},
         "reminder_template": "retomar_contato", "reminder_parameters": ["{name}", "{opening}"]}
OPENING_PT = "na segunda-feira, 7 de dezembro, às 09:00 (horário de Sao Paulo)"


def configure(client, sender, hours: dict) -> None:
    client.patch("/api/assistants/loja", json={"config": {"handoff": {"business_hours": hours}}}).raise_for_status()
    client.post("/api/whatsapp/templates", json={
        "sender_id": sender["id"], "name": "retomar_contato", "language": "pt_BR", "category": "UTILITY",
        "body": "Olá {{1}}, aqui é a loja: como combinado, estamos disponíveis {{2}}.", "status": "APPROVED",
    }).raise_for_status()


def say(client, graph, clock, wamid: str, text: str) -> str:
    """The customer writes; the reply sent to Meta."""
    before = len(graph.sent)
    post(client, text_payload(wamid, text, clock.now))
    wait_until(lambda: len(graph.sent) == before + 1)
    return graph.sent[-1]["json"]["text"]["body"]


def test_outside_business_hours_callback_details_are_collected_and_a_follow_up_is_left_for_the_opening(wa):
    client, services, model, graph, clock, sender = wa
    configure(client, sender, HOURS)
    clock.now = FRIDAY_NIGHT

    told = say(client, graph, clock, "wamid.o1", "Quero falar com um atendente")
    closed = DEFAULT_CALLBACK["closed"]["pt"].replace("{opening}", OPENING_PT)
    assert told == f"{closed}\n\n{DEFAULT_CALLBACK['ask_name']['pt']}"
    clock.now += timedelta(minutes=1)
    assert say(client, graph, clock, "wamid.o2", "Maria Souza") == DEFAULT_CALLBACK["ask_best_time"]["pt"]
    clock.now += timedelta(minutes=1)
    assert say(client, graph, clock, "wamid.o3", "Depois das 14h, por favor") == DEFAULT_CALLBACK["ask_phone"]["pt"]
    clock.now += timedelta(minutes=1)
    assert say(client, graph, clock, "wamid.o4", "Qual o preço da limpeza?") == DEFAULT_CALLBACK["invalid_phone"]["pt"]
    clock.now += timedelta(minutes=1)
    done = DEFAULT_CALLBACK["done"]["pt"].replace("{opening}", OPENING_PT)
    assert say(client, graph, clock, "wamid.o5", "(11) 98765-4321") == done
    assert model.requests == []  # nothing went to the model: no KB answer over the queue

    listed = client.get("/api/followups", params={"status": "open"}).json()
    assert len(listed) == 1
    followup = listed[0]
    assert followup["due_at"].startswith("2026-12-07T12:00:00")
    assert followup["details"] == {"name": "Maria Souza", "best_time": "Depois das 14h, por favor",
                                   "phone": "+5511987654321", "phone_tries": 1}
    assert followup["asking"] is None and followup["created_by"] == "customer" and followup["channel"] == "whatsapp"
    assert followup["reason"] == "the customer asked for a person"
    # the customer's window closes on Saturday night, before Monday's opening: a template waits for the opening
    assert followup["reminder_status"] == "scheduled" and "scheduled for the opening" in followup["reminder_note"]
    with services.session() as session:
        data = dict(session.execute(select(CollectedData.field, CollectedData.value)).all())
        assert data == {"callback_name": "Maria Souza", "callback_time": "Depois das 14h, por favor",
                        "callback_phone": "+5511987654321"}
        statuses = [t.status for t in session.scalars(select(Turn).order_by(Turn.started_at))]
        assert statuses == ["handoff", "callback", "callback", "callback", "callback"]
        reminder = session.get(Message, followup["reminder_message_id"])
        assert reminder.text == f"Olá Maria Souza, aqui é a loja: como combinado, estamos disponíveis {OPENING_PT}."
        assert reminder.parts[0].next_attempt_at == MONDAY_OPENING

    # later messages before the opening are notes, unanswered
    clock.now += timedelta(minutes=5)
    sent = len(graph.sent)
    post(client, text_payload("wamid.o6", "Obrigada!", clock.now))
    wait_until(lambda: client.get("/api/followups").json()[0]["details"].get("notes") == ["Obrigada!"])
    assert len(graph.sent) == sent

    clock.now = MONDAY_OPENING - timedelta(minutes=1)
    assert send_due(services) == 0 and len(graph.sent) == sent  # not before the opening
    clock.now = MONDAY_OPENING
    assert send_due(services) == 1
    template = graph.sent[-1]["json"]
    assert template["type"] == "template" and template["template"]["name"] == "retomar_contato"
    assert [p["text"] for p in template["template"]["components"][0]["parameters"]] == ["Maria Souza", OPENING_PT]

    r = client.post(f"/api/followups/{followup['id']}/done", json={"by": "joana"})
    assert r.status_code == 200 and r.json()["status"] == "done" and r.json()["closed_by"] == "joana"
    assert client.post(f"/api/followups/{followup['id']}/done").status_code == 409
    assert client.get("/api/followups", params={"status": "open"}).json() == []


def test_within_business_hours_the_handoff_is_as_before(wa):
    client, services, model, graph, clock, sender = wa
    configure(client, sender, HOURS)
    clock.now = MONDAY_OPENING + timedelta(hours=1)
    assert say(client, graph, clock, "wamid.i1", "Quero falar com um atendente") == DEFAULT_HANDOFF["pt"]
    assert client.get("/api/followups").json() == []


@pytest.mark.parametrize("hours, note", [
    ({**HOURS, "reminder_template": None}, "no handoff.business_hours.reminder_template is configured"),
    ({**HOURS, "weekly": {"sat": [["09:00", "12:00"]]}}, "not needed: the customer's 24-hour window is open"),
])
def test_a_reminder_is_skipped_with_a_note_when_none_is_configured_or_needed(wa, hours, note):
    client, services, model, graph, clock, sender = wa
    configure(client, sender, hours)
    clock.now = FRIDAY_NIGHT
    say(client, graph, clock, "wamid.n1", "Quero falar com um atendente")
    followup = client.get("/api/followups").json()[0]
    assert followup["reminder_message_id"] is None and note in followup["reminder_note"]
    with services.session() as session:
        assert session.scalars(select(Message).where(Message.kind == "template")).all() == []
        assert session.scalars(select(FollowUp)).one().status == "open"


def test_marking_the_follow_up_done_before_the_opening_cancels_the_reminder(wa):
    client, services, model, graph, clock, sender = wa
    configure(client, sender, HOURS)
    clock.now = FRIDAY_NIGHT
    say(client, graph, clock, "wamid.c1", "Quero falar com um atendente")
    followup = client.get("/api/followups").json()[0]
    done = client.post(f"/api/followups/{followup['id']}/done").json()
    assert done["closed_by"] == "operator" and done["reminder_status"] == "cancelled"
    sent = len(graph.sent)
    clock.now = MONDAY_OPENING
    assert send_due(services) == 0 and len(graph.sent) == sent
