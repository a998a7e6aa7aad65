"""Outbound events (runtime.events) on SQLite and PostgreSQL, delivered over HTTP to a local receiver that checks
each signature: who gets which event, nothing from a transaction that rolled back, retries persisted with
growing delays, one conversation's events in order behind a failing one, the sweep, the re-send. Time moves
through ``services.clock``, not by waiting."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from kb import registry
from runtime import events
from runtime.events import deliver_event, due_events, emit
from runtime.models import Conversation, EventAttempt, EventSubscription, OutboundEvent
from runtime.store import find_or_create_conversation
from tests.conftest import make_services
from tests.event_receiver import EventReceiver
from tests.system.stack import free_port


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


class Kept:
    """A queue that keeps the events handed to it (when and with what delay) instead of delivering them."""

    def __init__(self) -> None:
        self.handed: list[tuple[list[str], float]] = []

    def deliver_events(self, event_ids: list[str], delay_s: float = 0.0) -> None:
        self.handed.append((list(event_ids), delay_s))


@pytest.fixture
def env(tmp_path, embedders, database_url):
    receiver = EventReceiver(free_port(), secret="subscription-secret-of-the-events-tests")
    services = make_services(tmp_path / "home", embedders, database_url, http_tools_allow_private=True,
                             events_retry_first_delay_s=5, events_retry_max_delay_s=60)
    services.clock = clock = Clock()
    services.queue = kept = Kept()  # type: ignore[assignment]
    with services.session() as session:
        a = registry.create_assistant(session, name="loja", embedding_model="all-minilm-l6-v2", chunk_size=128,
                                      chunk_overlap=16)
        session.add_all([
            EventSubscription(id="crm", assistant_id=a.id, url=receiver.url, events=["*"], secret=receiver.secret,
                              description="", enabled=True),
            EventSubscription(id="bookings", assistant_id=a.id, url=receiver.url + "/bookings",
                              events=["appointment.booked"], secret="s2", description="", enabled=True),
            EventSubscription(id="off", assistant_id=a.id, url=receiver.url, events=["*"], secret="s3",
                              description="", enabled=False)])
        session.commit()
        aid = a.id
    yield services, receiver, clock, kept, aid
    receiver.stop()
    services.engine.dispose()


def _conversation(services, aid: str, customer: str = "5511999990000") -> str:
    with services.session() as session:
        conv = find_or_create_conversation(session, assistant_id=aid, channel="api", sender="api", customer_id=customer)
        session.commit()
        return conv.id


def _emit(services, conversation_id: str, event_type: str, **data) -> list[str]:
    with services.session() as session:
        ids = emit(session, session.get(Conversation, conversation_id), event_type, data)
        session.commit()
        return ids


def test_each_enabled_subscription_gets_the_types_it_wants_queued_once_committed(env):
    services, receiver, clock, kept, aid = env
    cid = _conversation(services, aid)  # conversation.started: the "*" subscription only
    (started,) = kept.handed[0][0]
    booked = _emit(services, cid, "appointment.booked", appointment_id="a1")
    assert len(booked) == 2 and kept.handed[-1] == (booked, 0.0)
    with services.session() as session:
        rows = {e.id: e for e in session.scalars(select(OutboundEvent))}
    assert {rows[i].subscription_id for i in booked} == {"crm", "bookings"}
    assert rows[started].kind == "conversation.started" and rows[started].subscription_id == "crm"
    payload = rows[booked[0]].payload
    assert set(payload) == {"id", "type", "version", "created_at", "assistant_id", "conversation", "data"}
    assert payload["conversation"] == {"id": cid, "channel": "api", "customer_id": "5511999990000", "variables": {}}
    with pytest.raises(ValueError, match="unknown event type"):
        _emit(services, cid, "something.else")


def test_an_event_of_a_transaction_rolled_back_never_existed(env):
    services, receiver, clock, kept, aid = env
    cid = _conversation(services, aid)
    before = len(kept.handed)
    with services.session() as session:
        emit(session, session.get(Conversation, cid), "data.collected", {"field": "cpf"})
        session.rollback()
    with services.session() as session:
        session.commit()  # a later commit of the same kind of session hands nothing over
        assert session.scalars(select(OutboundEvent).where(OutboundEvent.kind == "data.collected")).all() == []
    assert len(kept.handed) == before


def test_a_failing_receiver_holds_the_conversation_back_then_gets_everything_once_in_order(env):
    services, receiver, clock, kept, aid = env
    cid = _conversation(services, aid)
    ids = [_emit(services, cid, "message.received", n=n)[0] for n in range(3)]
    clock.now = datetime.now(UTC)  # events are stamped with the real time
    first = kept.handed[0][0][0]  # conversation.started
    assert deliver_event(services, first) is False  # nothing listens
    assert deliver_event(services, ids[0]) is False  # waits behind it: not even tried
    with services.session() as session:
        head, waiting = session.get(OutboundEvent, first), session.get(OutboundEvent, ids[0])
        assert (head.status, head.attempts, waiting.attempts) == ("pending", 1, 0)
        assert head.next_attempt_at == clock.now + timedelta(seconds=5)
    assert kept.handed[-1] == ([first], 5.0)  # the retry, queued for its time
    assert due_events(services) == []  # the head is not due yet; the others wait behind it
    clock.now += timedelta(seconds=5)
    assert deliver_event(services, first) is False
    with services.session() as session:
        assert session.get(OutboundEvent, first).next_attempt_at == clock.now + timedelta(seconds=10)  # doubled
    receiver.start()
    clock.now += timedelta(seconds=10)
    assert due_events(services) == [first]  # the head of the line only
    assert deliver_event(services, first) is True  # and the rest behind it, in order
    assert [e["id"] for e in receiver.events(cid)] == [first, *ids]
    assert [e["data"].get("n") for e in receiver.events(cid)] == [None, 0, 1, 2]
    assert receiver.rejected == [] and receiver.repeats == []
    for event_id in ids:
        assert deliver_event(services, event_id) is True  # delivered already: not sent again
    assert len(receiver.events(cid)) == 4 and due_events(services) == []
    with services.session() as session:
        codes = [a.status_code for a in session.scalars(select(EventAttempt).where(EventAttempt.event_id == first)
                                                         .order_by(EventAttempt.at))]
    assert codes == [None, None, 204]


def test_the_sweep_hands_the_due_events_to_the_queue_and_a_resend_delivers_again(env):
    services, receiver, clock, kept, aid = env
    receiver.start()
    _conversation(services, aid)
    clock.now = datetime.now(UTC)
    kept.handed.clear()
    assert events.queue_due(services) == 1 and kept.handed == [(due_events(services), 0.0)]
    (event_id,) = kept.handed[0][0]
    assert deliver_event(services, event_id) is True and due_events(services) == []
    event = events.resend(services, event_id)
    assert (event.status, event.next_attempt_at) == ("pending", clock.now) and kept.handed[-1] == ([event_id], 0.0)
    assert deliver_event(services, event_id) is True
    assert len(receiver.repeats) == 1  # the receiver saw it twice (a re-send), and can tell by its id
    with services.session() as session:
        assert session.get(OutboundEvent, event_id).attempts == 2


def test_a_subscription_signs_with_its_own_secret(env):
    services, receiver, clock, kept, aid = env
    receiver.start()
    cid = _conversation(services, aid)
    booked = _emit(services, cid, "appointment.booked", appointment_id="a1")
    for event_id in [kept.handed[0][0][0], *booked]:  # conversation.started first
        deliver_event(services, event_id)
    assert len(receiver.events(cid, "appointment.booked")) == 1  # the crm subscription's, signed with its secret
    assert len(receiver.rejected) == 1  # the bookings subscription's: another secret


def test_an_address_the_guard_refuses_fails_at_once(env):
    services, receiver, clock, kept, aid = env
    services.settings.http_tools_allow_private = False
    cid = _conversation(services, aid)
    (event_id,) = kept.handed[0][0]
    assert deliver_event(services, event_id) is False
    with services.session() as session:
        event = session.get(OutboundEvent, event_id)
    clock.now = datetime.now(UTC)
    assert event.status == "failed" and "loopback" in event.last_error and event.next_attempt_at is None
    assert cid and due_events(services) == []


def test_an_event_of_a_deleted_subscription_resent_fails_once_and_is_not_swept_forever(env):
    """An operator re-sends an event whose subscription was deleted since: it fails, saying why, instead of raising
    in every attempt the sweep queues again."""
    services, receiver, clock, kept, aid = env
    receiver.start()
    _conversation(services, aid)
    (event_id,) = kept.handed[0][0]
    clock.now = datetime.now(UTC)
    assert deliver_event(services, event_id) is True
    with services.session() as session:
        events.delete_subscription(session, "crm")
        session.commit()
    assert events.resend(services, event_id).status == "pending"
    assert deliver_event(services, event_id) is False
    with services.session() as session:
        event = session.get(OutboundEvent, event_id)
        assert (event.status, event.last_error, event.claimed_until) == ("failed", "the subscription was deleted",
                                                                         None)
    clock.now += timedelta(hours=1)
    assert due_events(services) == [] and len(receiver.received) == 1  # the first delivery only


def test_a_subscription_deleted_while_its_event_is_in_flight_leaves_the_event_failed(env, monkeypatch):
    """The attempt fails after the subscription was deleted (its pending events failed): logged, not retried."""
    services, receiver, clock, kept, aid = env
    _conversation(services, aid)
    (event_id,) = kept.handed[0][0]
    clock.now = datetime.now(UTC)
    post = events.post_json

    def deleted_meanwhile(*args, **kwargs):
        with services.session() as session:
            events.delete_subscription(session, "crm")
            session.commit()
        return post(*args, **kwargs)  # nothing listens

    monkeypatch.setattr(events, "post_json", deleted_meanwhile)
    handed = len(kept.handed)
    assert deliver_event(services, event_id) is False
    with services.session() as session:
        event = session.get(OutboundEvent, event_id)
        assert (event.status, event.last_error, event.next_attempt_at) == ("failed", "the subscription was deleted",
                                                                           None)
        assert event.attempts == 1 and session.scalar(select(EventAttempt.error)) is not None
    assert len(kept.handed) == handed  # no retry queued


def test_a_subscription_whose_url_is_corrected_gets_its_pending_and_resent_events_there(env):
    """The receiver's address was wrong: once the operator corrects the subscription, the event retrying and an
    event that failed for good (re-sent) go to the new address, signed with its secret."""
    services, receiver, clock, kept, aid = env
    receiver.start()
    with services.session() as session:
        session.get(EventSubscription, "crm").url = f"http://127.0.0.1:{free_port()}/wrong"
        session.commit()
    cid = _conversation(services, aid)
    (first,) = kept.handed[0][0]
    clock.now = datetime.now(UTC)
    assert deliver_event(services, first) is False  # nothing listens there: retried later
    with services.session() as session:
        old = session.get(OutboundEvent, first)
        old.status, old.next_attempt_at = "failed", None  # given up, as after the retry period
        session.commit()
    second = _emit(services, cid, "message.received", n=1)
    clock.now = datetime.now(UTC)
    assert deliver_event(services, second[0]) is False
    with services.session() as session:
        session.get(EventSubscription, "crm").url = receiver.url
        session.commit()
    clock.now += timedelta(minutes=1)
    assert deliver_event(services, second[0]) is True
    events.resend(services, first)
    assert deliver_event(services, first) is True
    assert [e["id"] for e in receiver.events(cid)] == [second[0], first]
    with services.session() as session:
        assert {session.get(OutboundEvent, i).url for i in (first, *second)} == {receiver.url}


def test_a_resend_while_an_attempt_is_in_flight_sends_it_once(env):
    """Re-send pressed while a worker is sending the event (its claim held): no second worker sends it meanwhile."""
    services, receiver, clock, kept, aid = env
    receiver.start()
    cid = _conversation(services, aid)
    (event_id,) = kept.handed[0][0]
    clock.now = datetime.now(UTC)
    with services.session() as session:  # what an attempt in flight holds
        session.get(OutboundEvent, event_id).claimed_until = clock.now + timedelta(seconds=30)
        session.commit()
    assert events.resend(services, event_id).status == "pending"
    assert deliver_event(services, event_id) is False and receiver.events(cid) == []
    clock.now += timedelta(seconds=31)  # the claim lapsed (the worker died): the sweep's job sends it
    assert due_events(services) == [event_id] and deliver_event(services, event_id) is True
