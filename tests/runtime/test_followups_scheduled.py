"""Scheduled follow-ups (runtime.followups: message and call) on SQLite and PostgreSQL, sent to the Graph API
stand-in: refused when they make no sense, sent once at their time (a text inside the window, the template outside
it, failed and said so without one), cancelled, re-handed to the outbox after a crash, and scheduled by the
model's ``schedule_followup`` tool. Time moves through ``services.clock``."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from core.errors import Conflict, InvalidRequest, NotFound
from kb import registry
from runtime import followups
from runtime.config import AssistantConfig, merge_config
from runtime.handoff import collecting_callback
from runtime.models import Conversation, FollowUp, Message
from runtime.store import find_or_create_conversation
from runtime.tools.context import ToolContext
from runtime.tools.toolset import build_toolset
from runtime.types import ToolCall
from runtime.whatsapp.graph import GraphClient
from runtime.whatsapp.models import WhatsAppSender, WhatsAppTemplate
from runtime.whatsapp.standin import GraphStandIn
from tests.conftest import make_services

PHONE_ID, CUSTOMER = "106540352242777", "5511987654321"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def env(tmp_path, embedders, database_url):
    """``(services, graph, clock, conversation_id)``: the customer wrote just now, the assistant sends a follow-up
    as template ``reminder`` when the window is closed."""
    clock = Clock()
    with GraphStandIn() as graph:
        services = make_services(tmp_path / "home", embedders, database_url, whatsapp_graph_url=graph.base_url)
        services.whatsapp_graph = GraphClient(graph.base_url, timeout_s=2, attempts=1)
        services.clock = clock
        with services.session() as session:
            a = registry.create_assistant(session, name="loja", embedding_model="all-minilm-l6-v2", chunk_size=128,
                                          chunk_overlap=16)
            a.config = merge_config({}, {"tools": ["schedule_followup"], "followup_template": {
                "name": "reminder", "language": "en", "parameters": ["{{first_name}}", "{text}"]}})
            session.add(WhatsAppSender(id="snd1", assistant_id=a.id, phone_number_id=PHONE_ID, access_token="t",
                                       app_secret="app-secret-followups", verify_token="v"))
            session.add(WhatsAppTemplate(id="tpl1", sender_id="snd1", name="reminder", language="en",
                                         category="UTILITY", status="APPROVED", body="Hi {{1}}: {{2}}"))
            conv = find_or_create_conversation(session, assistant_id=a.id, channel="whatsapp", sender=PHONE_ID,
                                               customer_id=CUSTOMER, variables={"first_name": "Ana"})
            conv.last_inbound_at = clock.now
            session.commit()
            cid = conv.id
        yield services, graph, clock, cid
        services.close()
        services.engine.dispose()


def _sent(graph: GraphStandIn) -> list[dict]:
    return [r["json"] for r in list(graph.sent) if r["json"] and r["json"].get("to") == CUSTOMER]


def _schedule(services, cid, clock, minutes: float, text="Hi {{first_name}}, your cart is waiting.", **kw):
    return followups.schedule(services, cid, due_at=clock.now + timedelta(minutes=minutes), kind=kw.pop("kind", "message"),
                              text=text, created_by="operator", **kw)


@pytest.mark.parametrize("when, kind, text, message", [
    (timedelta(minutes=-1), "message", "x", "is in the past"),
    (timedelta(days=91), "message", "x", "at most 90 days ahead"),
    (timedelta(hours=1), "message", "  ", "needs the text to send"),
    (timedelta(hours=1), "visit", "x", "kind must be one of"),
    (timedelta(hours=1), "message", "x" * 5000, "longer than 4096"),
])
def test_a_followup_that_makes_no_sense_is_refused(env, when, kind, text, message):
    services, graph, clock, cid = env
    with pytest.raises(InvalidRequest, match=message):
        followups.schedule(services, cid, due_at=clock.now + when, kind=kind, text=text, created_by="operator")
    with pytest.raises(InvalidRequest, match="time zone"):
        followups.schedule(services, cid, due_at=datetime(2030, 1, 1), kind="message", text="x", created_by="o")
    with pytest.raises(NotFound):
        followups.schedule(services, "nope", due_at=clock.now + timedelta(hours=1), kind="message", text="x",
                           created_by="o")


def test_a_message_is_sent_once_at_its_time_inside_the_window(env):
    services, graph, clock, cid = env
    followup = _schedule(services, cid, clock, 30)
    assert followups.run_due(services, followup.id).status == "open" and _sent(graph) == []  # not yet
    clock.now += timedelta(minutes=31)
    assert followups.queue_due(services) == 1  # the sweep: the inline queue runs it at once
    assert [s["text"]["body"] for s in _sent(graph)] == ["Hi Ana, your cart is waiting."]
    done = followups.run_due(services, followup.id)
    assert (done.status, done.closed_by, done.result) == ("done", "system", ("sent as a message (the 24-hour window "
                                                                            "was open)"))
    assert followups.queue_due(services) == 0 and len(_sent(graph)) == 1  # once
    with services.session() as session:
        assert session.get(Message, done.message_id).kind == "followup"


def test_outside_the_window_the_template_goes_and_without_one_it_fails_saying_why(env):
    services, graph, clock, cid = env
    first = _schedule(services, cid, clock, 60 * 25)
    second = _schedule(services, cid, clock, 60 * 26, template={"name": "missing", "language": "en", "parameters": []})
    clock.now += timedelta(hours=27)  # the window closed meanwhile
    followups.queue_due(services)
    (send,) = _sent(graph)
    assert send["template"]["name"] == "reminder"
    assert [p["text"] for p in send["template"]["components"][0]["parameters"]] == ["Ana", "Hi Ana, your cart is waiting."]
    with services.session() as session:
        first, second = session.get(FollowUp, first.id), session.get(FollowUp, second.id)
    assert first.status == "done" and first.result.startswith("sent as template 'reminder' (en)")
    assert second.status == "failed" and "no approved template 'missing' (en)" in second.result
    with services.session() as session:
        a = session.scalar(select(Conversation)).assistant_id
        assistant = registry.get_assistant(session, a)
        assistant.config = merge_config(assistant.config, {"followup_template": None})
        session.commit()
    third = _schedule(services, cid, clock, 5)
    clock.now += timedelta(minutes=6)
    assert followups.run_due(services, third.id).status == "failed"
    with services.session() as session:
        assert "no template was given" in session.get(FollowUp, third.id).result


def test_a_cancelled_followup_is_never_sent(env):
    services, graph, clock, cid = env
    followup = _schedule(services, cid, clock, 10)
    assert followups.cancel(services, followup.id, actor="maria").status == "cancelled"
    with pytest.raises(Conflict, match="is cancelled, not open"):
        followups.cancel(services, followup.id, actor="maria")
    clock.now += timedelta(minutes=11)
    assert followups.queue_due(services) == 0 and followups.run_due(services, followup.id).status == "cancelled"
    assert _sent(graph) == []


def test_a_message_stored_but_never_handed_to_the_outbox_is_sent_by_the_sweep(env):
    """A process that died between storing the follow-up's message and sending it: the sweep sends it, once."""
    services, graph, clock, cid = env
    followup = _schedule(services, cid, clock, 1)
    clock.now += timedelta(minutes=2)
    with services.session() as session:  # what run_due commits before the send
        row = session.get(FollowUp, followup.id)
        followups._send(services, session, row, clock.now)
        row.status = "done"
        session.commit()
    assert _sent(graph) == []
    assert followups.queue_due(services) == 1 and len(_sent(graph)) == 1
    assert followups.queue_due(services) == 0 and len(_sent(graph)) == 1


def test_an_open_message_followup_is_no_callback_collection(env):
    """A conversation waiting for a person with a message follow-up open is not collecting callback details (those
    are the ``callback`` follow-ups of a handoff out of hours)."""
    services, graph, clock, cid = env
    _schedule(services, cid, clock, 60)
    with services.session() as session:
        conv = session.get(Conversation, cid)
        conv.handoff_state = "waiting_for_human"
        assert collecting_callback(session, conv, clock.now) is False


def test_the_model_schedules_a_followup_with_its_tool(env):
    services, graph, clock, cid = env
    with services.session() as session:
        assistant = registry.get_assistant(session, session.get(Conversation, cid).assistant_id)
        config = AssistantConfig.model_validate(assistant.config)
    local = (clock.now + timedelta(hours=2)).astimezone(ZoneInfo(config.scheduling.timezone))
    toolset = build_toolset(config)
    ctx = ToolContext(services=services, assistant=assistant, config=config, conversation_id=cid, now=clock.now)
    result = toolset.run(ctx, ToolCall("c1", "schedule_followup", {"at": local.strftime("%Y-%m-%d %H:%M"),
                                                                   "message": "Your order is ready."}))
    assert result.error is None and result.content.startswith("Follow-up scheduled: the message will be sent on")
    bad = toolset.run(ctx, ToolCall("c2", "schedule_followup", {"at": "tomorrow", "message": "x"}))
    assert "at must be a local time" in bad.error
    past = toolset.run(ctx, ToolCall("c3", "schedule_followup", {"at": "2020-01-01 10:00", "message": "x"}))
    assert "is in the past" in past.error
    with services.session() as session:
        (followup,) = followups.list_followups(session, conversation_id=cid)
    assert (followup.kind, followup.created_by, followup.text) == ("message", "assistant", "Your order is ready.")
    assert abs((followup.due_at - (clock.now + timedelta(hours=2))).total_seconds()) < 60


def test_a_message_sent_on_a_channel_without_an_outbox_is_not_queued_again_by_every_sweep(env):
    """A follow-up of a widget/API conversation is stored and done (no outbox: the channel reads its messages); the
    sweep looks for WhatsApp messages never handed to the outbox, not for those."""
    services, graph, clock, cid = env
    with services.session() as session:
        a = session.get(Conversation, cid).assistant_id
        web = find_or_create_conversation(session, assistant_id=a, channel="api", sender="api", customer_id="c1")
        session.commit()
        web_id = web.id
    followup = _schedule(services, web_id, clock, 1)
    clock.now += timedelta(minutes=2)
    assert followups.queue_due(services) == 1
    with services.session() as session:
        row = session.get(FollowUp, followup.id)
        assert (row.status, row.result) == ("done", "sent as a message")
        assert session.get(Message, row.message_id).status == "answered"
    assert followups.queue_due(services) == 0  # done: never queued again
    assert _sent(graph) == []


def test_the_sweep_leaves_a_message_older_than_the_retry_period_and_takes_a_bounded_batch(env, monkeypatch):
    """A follow-up's message never handed to the outbox is sent by the sweep within WhatsApp's retry period only
    (like a turn's reply); each sweep queues at most ``SWEEP_LIMIT`` follow-ups, the soonest due first."""
    services, graph, clock, cid = env
    old = _schedule(services, cid, clock, 1)
    clock.now += timedelta(minutes=2)
    with services.session() as session:  # stored, then the process died
        row = session.get(FollowUp, old.id)
        followups._send(services, session, row, clock.now)
        row.status = "done"
        session.commit()
    clock.now += timedelta(seconds=services.settings.whatsapp_retry_for_s + 60)
    with services.session() as session:
        session.get(Conversation, cid).last_inbound_at = clock.now
        session.commit()
    _later, sooner = _schedule(services, cid, clock, 20), _schedule(services, cid, clock, 10)
    clock.now += timedelta(minutes=30)
    monkeypatch.setattr(followups, "SWEEP_LIMIT", 1, raising=False)
    queued = []
    monkeypatch.setattr(services.queue, "schedule_followup", lambda fid, delay: queued.append(fid))
    assert followups.queue_due(services) == 1 and queued == [sooner.id]  # not the old message, not ``later`` yet


def test_a_variable_s_value_is_sent_as_written_in_the_template_never_filled_again(env):
    """A value that looks like a placeholder (``{{order_id}}`` given as a name) is text: the message and the
    template parameters are filled once, not again with what the first pass put in."""
    services, graph, clock, cid = env
    with services.session() as session:
        session.get(Conversation, cid).variables = {"first_name": "{{order_id}}", "order_id": "AZ-1"}
        session.commit()
    _schedule(services, cid, clock, 60 * 25, text="Hi {{first_name}}.")
    clock.now += timedelta(hours=26)  # the window closed: the template, with {{first_name}} and {text}
    followups.queue_due(services)
    (send,) = _sent(graph)
    assert [p["text"] for p in send["template"]["components"][0]["parameters"]] == ["{{order_id}}",
                                                                                     "Hi {{order_id}}."]


def test_a_conversation_has_a_bounded_number_of_open_scheduled_followups(env):
    """A customer cannot have the model schedule message after message (each outside the window a paid template):
    at most ``MAX_OPEN`` open at once; one cancelled makes room."""
    services, graph, clock, cid = env
    scheduled = [_schedule(services, cid, clock, 60 + n) for n in range(followups.MAX_OPEN)]
    with pytest.raises(InvalidRequest, match=f"already has {followups.MAX_OPEN} follow-ups scheduled"):
        _schedule(services, cid, clock, 90)
    followups.cancel(services, scheduled[0].id, actor="maria")
    assert _schedule(services, cid, clock, 90).status == "open"
