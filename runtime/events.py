"""Outbound events: what happened in a conversation, told to the assistant's subscribers (and its ``handoff_url``).

- :func:`emit` adds one :class:`runtime.models.OutboundEvent` per enabled subscription of the assistant that wants
  the event type, inside the caller's transaction; once that commits, the events are handed to the queue
  (``WorkQueue.deliver_events``; a session from ``Services.session`` knows its services). An event made in a
  transaction that rolls back never existed.
- The body is JSON of a stable schema (``version`` 1): ``{"id", "type", "version", "created_at", "assistant_id",
  "conversation": {"id", "channel", "customer_id", "variables"}, "data": {...}}``; its type is one of
  :data:`EVENT_TYPES`. The legacy ``handoff_url`` gets the flat ``handoff`` body it always had.
- Each delivery is signed: ``X-Atende-Timestamp`` (Unix seconds) and ``X-Atende-Signature`` = ``sha256=`` + hex
  HMAC-SHA256 of ``f"{timestamp}."`` + the raw body, keyed by the subscription's secret
  (``runtime.http_tools.sign``); ``X-Atende-Event-Id`` lets a receiver drop a repeat. Each attempt goes to the
  subscription's address and secret as they are then: a corrected address gets the events still pending and
  those re-sent (the event records where it last went).
- :func:`deliver_event` makes one attempt, logged as a :class:`runtime.models.EventAttempt`, in its own short
  transactions (a slow receiver never holds a database lock). A failure is retried after exponentially growing
  delays (``Settings.events_retry_first_delay_s`` doubling up to ``events_retry_max_delay_s``) for
  ``events_retry_for_s``, the retry persisted on the event (``next_attempt_at``) and scheduled on the queue; the
  sweep (:func:`due_events`, every recovery interval) queues whatever is due, so a restart or a lost job delays an
  event, never loses it. An address the guard refuses fails at once.
- Order: a conversation's events reach one subscription in the order they were made; an event waits while an
  earlier one of its conversation to the same subscription is pending, and each settled event (delivered or given
  up) sends the next one at once. An attempt holds its event (``claimed_until``), so two workers never send it
  together.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import event as sa_event
from sqlalchemy import exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from core.db import new_id, utcnow
from core.errors import NotFound
from core.settings import Settings
from runtime.http_tools import HttpToolError, RefusedAddress, post_json
from runtime.models import Conversation, EventAttempt, EventSubscription, OutboundEvent
from runtime.services import SESSION_SERVICES, Services

log = logging.getLogger(__name__)

EVENT_TYPES = ("conversation.started", "message.received", "reply.sent", "delivery.failed", "handoff.requested",
               "data.collected", "appointment.booked", "feedback.given", "automation.run_finished")
VERSION = 1
EVENT_ID_HEADER, EVENT_TYPE_HEADER = "X-Atende-Event-Id", "X-Atende-Event-Type"
SWEEP_LIMIT = 500  # events queued by one sweep; the next sweep takes the rest
_QUEUED = "atende.events"  # the session's info key of the events to queue once it commits
_stamp_lock = threading.Lock()
_last_stamp: list[datetime] = [datetime.min.replace(tzinfo=utcnow().tzinfo)]


def stamp() -> datetime:
    """Now, strictly later than the previous stamp of this process: events made in one breath keep their order."""
    with _stamp_lock:
        now = max(utcnow(), _last_stamp[0] + timedelta(microseconds=1))
        _last_stamp[0] = now
        return now


def emit(session: Session, conversation: Conversation, event_type: str, data: dict) -> list[str]:
    """Add the ``event_type`` event of ``conversation`` with ``data`` for every enabled subscription of its assistant
    that wants it; queued for delivery once the caller commits. The new events' ids."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    with session.no_autoflush:  # the caller's pending rows are flushed by its own commit, where it expects a clash
        subscriptions = [s for s in session.scalars(select(EventSubscription).where(
            EventSubscription.assistant_id == conversation.assistant_id, EventSubscription.enabled.is_(True)))
            if event_type in (s.events or []) or "*" in (s.events or [])]
    ids = []
    for subscription in subscriptions:
        event_id, at = new_id(), stamp()
        payload = {"id": event_id, "type": event_type, "version": VERSION, "created_at": at.isoformat(),
                   "assistant_id": conversation.assistant_id,
                   "conversation": {"id": conversation.id, "channel": conversation.channel,
                                    "customer_id": conversation.customer_id,
                                    "variables": dict(conversation.variables or {})},
                   "data": data}
        session.add(OutboundEvent(id=event_id, conversation_id=conversation.id, kind=event_type, url=subscription.url,
                                  payload=payload, subscription_id=subscription.id,
                                  assistant_id=conversation.assistant_id, status="pending", attempts=0,
                                  created_at=at, next_attempt_at=at))
        ids.append(event_id)
    queue_on_commit(session, ids)
    return ids


def add_handoff_event(session: Session, conversation: Conversation, url: str, payload: dict) -> str:
    """The legacy ``handoff`` event for an assistant's ``handoff_url`` (signed with the server's webhook secret);
    queued for delivery once the caller commits. Its id."""
    event_id, at = new_id(), stamp()
    session.add(OutboundEvent(id=event_id, conversation_id=conversation.id, kind="handoff", url=url, payload=payload,
                              assistant_id=conversation.assistant_id, status="pending", attempts=0, created_at=at,
                              next_attempt_at=at))
    queue_on_commit(session, [event_id])
    return event_id


def queue_on_commit(session: Session, event_ids: list[str]) -> None:
    """Hand ``event_ids`` to the queue once ``session`` commits (dropped if it rolls back)."""
    if event_ids:
        session.info.setdefault(_QUEUED, []).extend(event_ids)


@sa_event.listens_for(Session, "after_commit")
def _queue_committed(session: Session) -> None:
    event_ids = session.info.pop(_QUEUED, None)
    services = session.info.get(SESSION_SERVICES)
    if event_ids and services is not None:  # without services the sweep finds them
        services.queue.deliver_events(event_ids)


@sa_event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_QUEUED, None)


def deliver_event(services: Services, event_id: str) -> bool:
    """One attempt at the event, if its turn has come, then the next events of its conversation to the same place
    while they go through; True once the event is delivered (now or before)."""
    delivered = False
    next_id: str | None = event_id
    while next_id is not None:
        outcome = _attempt(services, next_id)
        if next_id == event_id:
            delivered = outcome == "delivered"
        next_id = _next_in_line(services, next_id) if outcome in ("delivered", "failed") else None
    return delivered


def _attempt(services: Services, event_id: str) -> str:
    """delivered | failed (given up) | retrying | waiting (an earlier event goes first, or another worker has it)."""
    settings = services.settings
    now = services.clock()
    with services.session() as session:
        event = session.get(OutboundEvent, event_id)
        if event is None:
            log.debug("outbound event %s is gone", event_id)
            return "waiting"
        if event.status != "pending":
            return event.status
        if _earlier_pending(session, event):
            return "waiting"
        if event.subscription_id is None:
            url, secret = event.url, settings.webhook_secret
        elif (subscription := session.get(EventSubscription, event.subscription_id)) is not None:
            url, secret = subscription.url, subscription.secret  # where it is now (a corrected address)
        else:  # deleted since (a re-send): fails here, or the sweep would queue it forever
            event.status, event.next_attempt_at, event.claimed_until = "failed", None, None
            event.last_error = "the subscription was deleted"
            session.commit()
            return "failed"
        lease = now + timedelta(seconds=settings.events_timeout_s + settings.recovery_margin_s)
        claimed = session.execute(update(OutboundEvent).where(
            OutboundEvent.id == event_id, OutboundEvent.status == "pending",
            or_(OutboundEvent.claimed_until.is_(None), OutboundEvent.claimed_until <= now))
            .values(claimed_until=lease, url=url).execution_options(synchronize_session=False)).rowcount  # type: ignore[attr-defined]
        session.commit()
        if not claimed:
            return "waiting"
        payload, kind = event.payload, event.kind
    started = time.perf_counter()
    status_code, error, permanent = None, None, False
    try:
        status_code = post_json(url, payload, settings, settings.events_timeout_s, secret=secret,
                                headers={EVENT_ID_HEADER: event_id, EVENT_TYPE_HEADER: kind})
    except HttpToolError as exc:
        status_code, error, permanent = exc.status_code, str(exc), isinstance(exc, RefusedAddress)
    duration_ms = round((time.perf_counter() - started) * 1000)
    return _record(services, event_id, status_code, error, permanent, duration_ms)


def _stream(event: OutboundEvent) -> list:
    """The conditions of the events going to the same place as ``event`` for its conversation."""
    place = (OutboundEvent.subscription_id == event.subscription_id if event.subscription_id is not None
             else (OutboundEvent.subscription_id.is_(None)) & (OutboundEvent.url == event.url))
    return [place, OutboundEvent.conversation_id == event.conversation_id]


def _earlier_pending(session: Session, event: OutboundEvent) -> bool:
    if event.conversation_id is None:
        return False
    earlier = or_(OutboundEvent.created_at < event.created_at,
                  (OutboundEvent.created_at == event.created_at) & (OutboundEvent.id < event.id))
    return session.scalar(select(OutboundEvent.id).where(
        *_stream(event), OutboundEvent.status == "pending", OutboundEvent.id != event.id, earlier).limit(1)) is not None


def _next_in_line(services: Services, event_id: str) -> str | None:
    """The oldest pending event of the same conversation and place, now that ``event_id`` is settled."""
    with services.session() as session:
        event = session.get(OutboundEvent, event_id)
        if event is None or event.conversation_id is None:
            return None
        return session.scalar(select(OutboundEvent.id).where(*_stream(event), OutboundEvent.status == "pending")
                              .order_by(OutboundEvent.created_at, OutboundEvent.id).limit(1))


def retry_delay_s(settings: Settings, attempts: int) -> float:
    """The wait after the ``attempts``-th failed attempt: the first delay, doubled each time, up to the max."""
    return min(settings.events_retry_first_delay_s * 2 ** max(attempts - 1, 0), settings.events_retry_max_delay_s)


def _record(services: Services, event_id: str, status_code: int | None, error: str | None, permanent: bool,
            duration_ms: int) -> str:
    """Log the attempt and settle the event: delivered, retrying (when, and queued for then) or failed."""
    settings, now = services.settings, services.clock()
    delay = None
    with services.session() as session:
        event = session.get(OutboundEvent, event_id)
        if event is None:  # its conversation was deleted meanwhile
            return "failed"
        session.add(EventAttempt(id=new_id(), event_id=event_id, at=now, status_code=status_code,
                                 error=error[:1000] if error else None, duration_ms=duration_ms))
        event.attempts += 1
        event.claimed_until = None
        if error is None:
            event.status, event.delivered_at, event.next_attempt_at = "delivered", now, None
            outcome = "delivered"
        elif event.status != "pending":  # settled meanwhile (its subscription deleted): the attempt is only logged
            outcome = event.status
        else:
            event.last_error = error[:1000]
            due = now + timedelta(seconds=retry_delay_s(settings, event.attempts))
            if permanent or due > event.created_at + timedelta(seconds=settings.events_retry_for_s):
                event.status, event.next_attempt_at, outcome = "failed", None, "failed"
                log.error("event %s (%s) to %s failed for good after %d attempt(s): %s", event_id, event.kind,
                          event.url, event.attempts, error)
            else:
                event.next_attempt_at, outcome = due, "retrying"
                delay = (due - now).total_seconds()
                log.warning("event %s (%s) attempt %d failed: %s; again at %s", event_id, event.kind, event.attempts,
                            error, due.isoformat())
        session.commit()
    if delay is not None:
        services.queue.deliver_events([event_id], delay)
    return outcome


def due_events(services: Services) -> list[str]:
    """The pending events due now, held by no attempt and first in their conversation's line (those behind go
    once it is settled), oldest first (at most ``SWEEP_LIMIT``): what the sweep queues (an event whose retry job
    was lost, or made where no queue was told)."""
    now = services.clock()
    earlier = aliased(OutboundEvent)
    same_place = or_(earlier.subscription_id == OutboundEvent.subscription_id,
                     earlier.subscription_id.is_(None) & OutboundEvent.subscription_id.is_(None)
                     & (earlier.url == OutboundEvent.url))
    ahead = exists().where(earlier.conversation_id == OutboundEvent.conversation_id, earlier.status == "pending",
                           same_place, or_(earlier.created_at < OutboundEvent.created_at,
                                           (earlier.created_at == OutboundEvent.created_at) & (earlier.id < OutboundEvent.id)))
    with services.session() as session:
        return list(session.scalars(select(OutboundEvent.id).where(
            OutboundEvent.status == "pending", OutboundEvent.next_attempt_at <= now,
            or_(OutboundEvent.claimed_until.is_(None), OutboundEvent.claimed_until <= now), ~ahead)
            .order_by(OutboundEvent.created_at, OutboundEvent.id).limit(SWEEP_LIMIT)))


def queue_due(services: Services) -> int:
    """The sweep: queue every due event (``due_events``); how many."""
    event_ids = due_events(services)
    if event_ids:
        services.queue.deliver_events(event_ids)
    return len(event_ids)


def delete_subscription(session: Session, subscription_id: str) -> None:
    """Delete the subscription; its events still pending fail (their log stays). Raises NotFound. The caller
    commits."""
    subscription = session.get(EventSubscription, subscription_id)
    if subscription is None:
        raise NotFound(f"event subscription {subscription_id!r} not found")
    session.execute(update(OutboundEvent).where(OutboundEvent.subscription_id == subscription_id,
                                                OutboundEvent.status == "pending")
                    .values(status="failed", next_attempt_at=None, last_error="the subscription was deleted")
                    .execution_options(synchronize_session=False))
    session.delete(subscription)


def resend(services: Services, event_id: str) -> OutboundEvent:
    """Deliver the event again (an operator's "re-send"): pending and due now, queued; its attempts stay logged.
    Raises NotFound."""
    with services.session() as session:
        event = session.get(OutboundEvent, event_id)
        if event is None:
            raise NotFound(f"event {event_id!r} not found")
        # an attempt in flight keeps its claim: it settles the event, and no other worker sends it meanwhile
        event.status, event.next_attempt_at, event.delivered_at = "pending", services.clock(), None
        queue_on_commit(session, [event_id])
        session.commit()
        session.refresh(event)
        return event
