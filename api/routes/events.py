"""Outbound events (``runtime.events``): an assistant's subscriptions (where its events go, signed with a secret
shown once), the deliveries with every attempt, a re-send; and the dashboard's deliveries page."""
from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated, Literal, get_args

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select

from api.deps import AdminDep, ServicesDep, SessionDep, same_origin
from api.routes.dashboard import render, require_page_session
from core.db import new_id, utcnow
from core.errors import NotFound
from kb import registry
from runtime import events
from runtime.models import EventAttempt, EventSubscription, OutboundEvent

router = APIRouter(tags=["events"], dependencies=[AdminDep])
pages = APIRouter(prefix="/dashboard", include_in_schema=False, dependencies=[Depends(require_page_session), AdminDep])
EventType = Literal["conversation.started", "message.received", "reply.sent", "delivery.failed", "handoff.requested",
                    "data.collected", "appointment.booked", "feedback.given", "automation.run_finished", "*"]
Status = Literal["pending", "delivered", "failed"]
assert set(get_args(EventType)) == {*events.EVENT_TYPES, "*"}


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1].split("/", 1)[0]) == 0:
        raise ValueError("an http:// or https:// URL with a host (it must reach a public address when sent)")
    return value


class SubscriptionFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=2000, description="where the events are POSTed")
    events: list[EventType] | None = Field(default=None, min_length=1, max_length=20,
                                           description='the event types to send ("*": all)')
    description: str | None = Field(default=None, max_length=200)
    enabled: bool | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        return value if value is None else _http_url(value)


class SubscriptionCreate(SubscriptionFields):
    url: str = Field(max_length=2000)
    events: list[EventType] = Field(min_length=1, max_length=20)


class SubscriptionUpdate(SubscriptionFields):
    rotate_secret: bool = Field(default=False, description="a new signing secret (in the answer, this once)")


class SubscriptionPublic(BaseModel):
    id: str
    assistant_id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: datetime
    secret: str | None = Field(default=None, description="the signing secret: only when created or rotated")


class AttemptPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str = Field(description="the event type")
    subscription_id: str | None = Field(description="null: the assistant's handoff_url")
    assistant_id: str | None
    conversation_id: str | None
    url: str
    status: Status
    attempts: int
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    payload: dict
    attempt_log: list[AttemptPublic] = Field(default_factory=list)


def _public(subscription: EventSubscription, secret: str | None = None) -> SubscriptionPublic:
    """The subscription as the API shows it: its secret only when just made (``secret``), never read back."""
    fields = {k: getattr(subscription, k) for k in SubscriptionPublic.model_fields if k != "secret"}
    return SubscriptionPublic(**fields, secret=secret)


def _subscription(session, subscription_id: str) -> EventSubscription:
    subscription = session.get(EventSubscription, subscription_id)
    if subscription is None:
        raise NotFound(f"event subscription {subscription_id!r} not found")
    return subscription


@router.post("/api/assistants/{assistant_id}/event-subscriptions", status_code=201, response_model=SubscriptionPublic)
def create_subscription(assistant_id: str, body: SubscriptionCreate, session: SessionDep):
    """Send the assistant's events of ``events`` to ``url``, signed with the secret in the answer (shown once)."""
    assistant = registry.get_assistant(session, assistant_id)
    secret = secrets.token_urlsafe(32)
    subscription = EventSubscription(id=new_id(), assistant_id=assistant.id, url=body.url, events=list(body.events),
                                     secret=secret, description=body.description or "",
                                     enabled=True if body.enabled is None else body.enabled, created_at=utcnow())
    session.add(subscription)
    session.commit()
    return _public(subscription, secret)


@router.get("/api/assistants/{assistant_id}/event-subscriptions", response_model=list[SubscriptionPublic])
def list_subscriptions(assistant_id: str, session: SessionDep):
    assistant = registry.get_assistant(session, assistant_id)
    return [_public(s) for s in session.scalars(select(EventSubscription).where(
        EventSubscription.assistant_id == assistant.id).order_by(EventSubscription.created_at))]


@router.patch("/api/event-subscriptions/{subscription_id}", response_model=SubscriptionPublic)
def update_subscription(subscription_id: str, body: SubscriptionUpdate, session: SessionDep):
    subscription = _subscription(session, subscription_id)
    changes = body.model_dump(exclude_unset=True, exclude={"rotate_secret"})
    for key, value in changes.items():
        if value is not None:
            setattr(subscription, key, list(value) if key == "events" else value)
    secret = secrets.token_urlsafe(32) if body.rotate_secret else None
    if secret:
        subscription.secret = secret
    session.commit()
    return _public(subscription, secret)


@router.delete("/api/event-subscriptions/{subscription_id}", status_code=204)
def delete_subscription(subscription_id: str, session: SessionDep):
    """Stop sending; its events still pending fail (their log stays)."""
    events.delete_subscription(session, subscription_id)
    session.commit()
    return Response(status_code=204)


def _query_events(session, assistant_id: str | None, conversation_id: str | None, status: str | None,
                  kind: str | None, limit: int) -> list[OutboundEvent]:
    query = select(OutboundEvent)
    if assistant_id:
        query = query.where(OutboundEvent.assistant_id == registry.get_assistant(session, assistant_id).id)
    if conversation_id:
        query = query.where(OutboundEvent.conversation_id == conversation_id)
    if status:
        query = query.where(OutboundEvent.status == status)
    if kind:
        query = query.where(OutboundEvent.kind == kind)
    return list(session.scalars(query.order_by(OutboundEvent.created_at.desc(), OutboundEvent.id.desc()).limit(limit)))


@router.get("/api/events", response_model=list[EventPublic])
def list_events(session: SessionDep, assistant_id: str | None = None, conversation_id: str | None = None,
                status: Status | None = None, kind: Annotated[str | None, Query(max_length=50)] = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 100):
    """The deliveries, newest first, with their state (the attempts: ``GET /api/events/{id}``)."""
    return _query_events(session, assistant_id, conversation_id, status, kind, limit)


@router.get("/api/events/{event_id}", response_model=EventPublic)
def get_event(event_id: str, session: SessionDep):
    """One delivery with every attempt (when, the receiver's status or the error, how long)."""
    event = session.get(OutboundEvent, event_id)
    if event is None:
        raise NotFound(f"event {event_id!r} not found")
    attempts = session.scalars(select(EventAttempt).where(EventAttempt.event_id == event_id).order_by(EventAttempt.at))
    return EventPublic.model_validate(event).model_copy(
        update={"attempt_log": [AttemptPublic.model_validate(a) for a in attempts]})


@router.post("/api/events/{event_id}/resend", response_model=EventPublic,
             responses={404: {"description": "no such event"}})
def resend_event(event_id: str, services: ServicesDep):
    """Deliver the event again (in its conversation's order); the earlier attempts stay in its log."""
    return events.resend(services, event_id)


@pages.get("/events")
def events_page(request: Request, session: SessionDep, status: Status | Literal["all"] = "all"):
    """The latest deliveries, failed ones first to the eye, with a re-send button."""
    rows = _query_events(session, None, None, None if status == "all" else status, None, 200)
    counts = dict(session.execute(select(OutboundEvent.status, func.count()).group_by(OutboundEvent.status)).all())
    return render(request, "events.html", events=rows, status=status, counts=counts)


@pages.post("/events/{event_id}/resend")
def resend_form(request: Request, event_id: str, services: ServicesDep,
                back: Annotated[str, Form(max_length=20)] = "all"):
    """The page's "Re-send" button."""
    if not same_origin(request):
        raise HTTPException(status_code=403, detail="cross-site request refused")
    events.resend(services, event_id)
    return RedirectResponse(f"/dashboard/events?status={back if back in ('pending', 'delivered', 'failed') else 'all'}",
                            status_code=303)
