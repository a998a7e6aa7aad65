"""Retention rules on the real app (signed webhooks, the queue, the Graph stand-in), on SQLite and PostgreSQL: an
assistant's old conversations anonymised (figures kept, no word and no customer id left: searched in every table
and, on SQLite, in the raw database file) or deleted, raw webhook bodies emptied by the strictest rule that names
their number, newer data untouched, every run recorded and listed by the admin API."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from core.db import new_id
from kb import registry
from runtime.models import Appointment, CollectedData, Conversation, Message
from runtime.regression import RegressionCase
from runtime.retention import POSTS_PER_PAGE, run_until_done, sweep
from runtime.whatsapp.models import MessageMedia, WebhookPost, WhatsAppSender
from tests.factories import wait_until
from tests.runtime.test_privacy import ANA, BEN, _dump, _image, _message, _post, _replies, app  # noqa: F401 (fixture)


def _conversation(services, person: dict) -> Conversation:
    with services.session() as session:
        return session.scalar(select(Conversation).where(Conversation.customer_id == person["phone"]))


def _age(services, conversation_id: str, days: int) -> None:
    """Make a conversation's messages, and every webhook post, ``days`` old."""
    then = datetime.now(UTC) - timedelta(days=days)
    with services.session() as session:
        session.execute(update(Message).where(Message.conversation_id == conversation_id).values(created_at=then))
        session.execute(update(Conversation).where(Conversation.id == conversation_id).values(created_at=then))
        session.execute(update(WebhookPost).values(received_at=then))
        session.commit()


def _talk(client, services, model) -> None:
    """Ana writes (her CPF, then a photo) and Ben writes; each gets a reply. Ana's data is collected and booked."""
    model.enqueue("Claro, Joana.", "Olá Carlos.", "Sim.", "Recebi a foto.")
    now = datetime.now(UTC)
    _post(client, _message(ANA, "wamid.a1", f"Sou {ANA['name']}, CPF {ANA['cpf']}, quero remarcar", now))
    wait_until(lambda: _replies(services) >= 1, what="the first reply")
    _post(client, _message(BEN, "wamid.b1", f"Sou {BEN['name']}, CPF {BEN['cpf']}", now))
    wait_until(lambda: _replies(services) >= 2, what="the reply to Ben")
    _post(client, _image(ANA, "wamid.a2", "m-ana-doc", now))
    wait_until(lambda: _replies(services) >= 3, what="the reply to the photo")
    ana = _conversation(services, ANA)
    with services.session() as session:
        first = session.scalar(select(Message).where(Message.channel_message_id == "wamid.a1"))
        session.add(CollectedData(conversation_id=ana.id, field="cpf", value=ANA["cpf"]))
        session.add(Appointment(assistant_id=ana.assistant_id, conversation_id=ana.id, starts_at=now,
                                ends_at=now + timedelta(hours=1), name=ANA["name"], notes=ANA["phone"]))
        session.add(RegressionCase(assistant_id=ana.assistant_id, question=first.text, expected_status="answered",
                                   created_from_message_id=first.id))
        session.commit()


def test_old_conversations_are_anonymised_and_nothing_names_the_customer(app):  # noqa: F811
    client, services, model, graph = app
    _talk(client, services, model)
    r = client.patch("/api/assistants/clinica", json={"config": {"retention": {"conversations_days": 90}}})
    assert r.status_code == 200, r.text
    assert sweep(services).runs == []  # nothing is 90 days old yet
    ana, ben = _conversation(services, ANA), _conversation(services, BEN)
    with services.session() as session:
        [photo] = session.scalars(select(MessageMedia)).all()
        ana_messages = session.scalar(select(func.count()).where(Message.conversation_id == ana.id))
    _age(services, ana.id, days=91)

    runs = sweep(services).runs
    assert [(r.rule, r.items) for r in runs] == [("anonymise", 1), ("webhook_bodies", 3)]
    counts = runs[0].counts
    assert counts["collected_data"] == 1 and counts["message_media"] == 1 and counts["files"] == 1
    assert counts["regression_cases"] == 1 and counts["messages"] == ana_messages
    assert sweep(services).runs == []  # done once
    with services.session() as session:
        kept = session.get(Conversation, ana.id)
        assert kept.customer_id.startswith("anon-") and kept.tokens_in == ana.tokens_in and kept.cost == ana.cost
        messages = list(session.scalars(select(Message).where(Message.conversation_id == ana.id)))
        assert len(messages) == ana_messages and {m.text for m in messages} == {""}
        assert {m.direction for m in messages} == {"inbound", "outbound"}  # the figures still count them
        [booking] = session.scalars(select(Appointment)).all()
        assert (booking.name, booking.notes) == ("", "") and booking.conversation_id == ana.id
        ben_texts = [m.text for m in session.scalars(select(Message).where(Message.conversation_id == ben.id))]
    assert any(BEN["cpf"] in t for t in ben_texts)  # Ben's conversation is not 90 days old
    try:
        services.blobs.get(photo.sha256)
        raise AssertionError("the photo is still in the file store")
    except FileNotFoundError:
        pass
    dump = _dump(services)
    assert not [v for v in ANA.values() if v in dump]
    assert BEN["name"] in dump
    listed = client.get("/api/retention/runs").json()
    assert [(r["rule"], r["items"]) for r in listed] in ([("anonymise", 1), ("webhook_bodies", 3)],
                                                          [("webhook_bodies", 3), ("anonymise", 1)])
    assert ANA["phone"] not in str(listed)


def test_old_conversations_are_deleted_by_the_delete_rule(app):  # noqa: F811
    client, services, model, graph = app
    _talk(client, services, model)
    client.patch("/api/assistants/clinica", json={"config": {"retention": {"conversations_days": 30,
                                                                           "action": "delete"}}}).raise_for_status()
    ana, ben = _conversation(services, ANA), _conversation(services, BEN)
    _age(services, ana.id, days=31)
    [run] = [r for r in run_until_done(services) if r.rule == "delete"]
    assert run.items == 1 and run.counts["conversations"] == 1 and run.counts["appointments"] == 1
    with services.session() as session:
        assert session.get(Conversation, ana.id) is None and session.get(Conversation, ben.id) is not None
        assert session.scalar(select(func.count()).select_from(Appointment)) == 0


def test_webhook_bodies_go_by_the_strictest_rule_naming_their_number(services):
    """Processed bodies older than their rule are emptied (the hash stays), the rest are kept: the assistant's own
    days for its numbers, the deployment's default for a number nobody has, never those not yet processed."""
    now = datetime.now(UTC)
    with services.session() as session:
        strict = registry.create_assistant(session, name="strict", embedding_model="all-minilm-l6-v2",
                                           chunk_size=256, chunk_overlap=32)
        strict.config = {"retention": {"webhook_bodies_days": 2}}
        relaxed = registry.create_assistant(session, name="relaxed", embedding_model="all-minilm-l6-v2",
                                           chunk_size=256, chunk_overlap=32)
        for assistant, number in ((strict, "111"), (relaxed, "222")):
            session.add(WhatsAppSender(id=new_id(), assistant_id=assistant.id, phone_number_id=number,
                                       access_token="t", app_secret=f"s{number}", verify_token="v"))
        session.commit()

    def post(numbers: list[str], days: float, processed: bool = True) -> str:
        body = {"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [
            {"field": "messages", "value": {"metadata": {"phone_number_id": n}}} for n in numbers]}]}
        row = WebhookPost(id=new_id(), received_at=now - timedelta(days=days), body=body, body_sha256=new_id() * 2,
                          processed=processed)
        with services.session() as session:
            session.add(row)
            session.commit()
        return row.id

    due = [post(["111"], 3), post(["111", "222"], 3), post(["999"], 31), post([], 31)]
    kept = [post(["111"], 1), post(["222"], 3), post(["222"], 29), post(["111"], 5, processed=False)]
    [run] = sweep(services, now).runs
    assert (run.rule, run.items) == ("webhook_bodies", len(due))
    with services.session() as session:
        bodies = {p.id: (p.body, p.purged_at, p.body_sha256) for p in session.scalars(select(WebhookPost))}
    assert all(bodies[i][0] == {} and bodies[i][1] is not None and bodies[i][2] for i in due)
    assert all(bodies[i][0] != {} and bodies[i][1] is None for i in kept)
    assert sweep(services, now).runs == []


def test_a_backlog_is_worked_off_a_batch_per_sweep(services):
    """More due bodies than one sweep empties: the sweep says more is left, and the next ones finish it."""
    old = datetime.now(UTC) - timedelta(days=40)
    with services.session() as session:
        session.add_all(WebhookPost(id=new_id(), received_at=old, body={"entry": []}, body_sha256=new_id() * 2,
                                    processed=True) for _ in range(POSTS_PER_PAGE + 5))
        session.commit()
    first = sweep(services)
    assert first.more and first.runs[0].items == POSTS_PER_PAGE
    assert [r.items for r in run_until_done(services)] == [5]


def test_bodies_kept_longer_by_their_own_rule_do_not_hold_back_the_due_ones(services):
    """A full page of old bodies that their number's rule still keeps is paged past (by time and id), so the due
    bodies after it are emptied in the same sweep."""
    old = datetime.now(UTC) - timedelta(days=40)
    with services.session() as session:
        patient = registry.create_assistant(session, name="patient", embedding_model="all-minilm-l6-v2",
                                            chunk_size=256, chunk_overlap=32)
        patient.config = {"retention": {"webhook_bodies_days": 60}}
        session.add(WhatsAppSender(id=new_id(), assistant_id=patient.id, phone_number_id="555", access_token="t",
                                   app_secret="s", verify_token="v"))
        body = {"entry": [{"changes": [{"value": {"metadata": {"phone_number_id": "555"}}}]}]}
        session.add_all(WebhookPost(id=new_id(), received_at=old, body=body, body_sha256=new_id() * 2, processed=True)
                        for _ in range(POSTS_PER_PAGE + 1))
        due = [WebhookPost(id=new_id(), received_at=old + timedelta(minutes=1), body={"entry": []},
                           body_sha256=new_id() * 2, processed=True) for _ in range(3)]
        session.add_all(due)
        session.commit()
    [run] = sweep(services).runs
    assert run.items == 3
    with services.session() as session:
        assert session.scalar(select(func.count()).select_from(WebhookPost).where(WebhookPost.purged_at.is_not(None))) == 3
