"""Follow-ups (``runtime.followups``): the operator tasks left by handoffs outside business hours, and the messages
and calls scheduled for later (by the model's ``schedule_followup`` or an operator): scheduled, listed, cancelled
and marked done through the API, and on their own dashboard page: read by whoever sees the assistant, scheduled,
cancelled and done by an operator of it."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select

from api import scopes
from api.deps import CurrentUser, ServicesDep, SessionDep, SignedIn, allow
from api.routes.dashboard import render, require_page_session
from kb import registry
from runtime import followups
from runtime.accounts.roles import OPERATOR, VIEWER
from runtime.models import Conversation, FollowUp, Message

router = APIRouter(tags=["followups"], dependencies=[SignedIn])
pages = APIRouter(prefix="/dashboard", include_in_schema=False, dependencies=[Depends(require_page_session)])
PAGE = 200  # follow-ups on the dashboard's page, the soonest due first


class FollowUpPublic(BaseModel):
    """A call back to make at ``due_at`` (the next opening), with the details the customer gave."""

    id: str
    conversation_id: str
    assistant_id: str
    channel: str
    customer_id: str
    reason: str = Field(description="why the conversation was handed off")
    due_at: datetime | None = Field(description="the next opening after the handoff; null: none within a year")
    details: dict = Field(description="name, best_time, phone as collected; notes: later messages")
    asking: str | None = Field(description="the detail the customer is being asked for; null: collection over")
    status: Literal["open", "done", "cancelled", "failed"]
    kind: Literal["callback", "message", "call"] = Field(description="callback: left by a handoff out of hours; "
                                                                     "message: send text at due_at; call: call then")
    text: str | None = Field(description="the message to send, or the note for a call")
    template: dict | None = Field(description="the template for a closed window (else the assistant's)")
    message_id: str | None = Field(description="what a message follow-up sent")
    result: str | None = Field(description="what became of it")
    created_at: datetime
    created_by: str = Field(description="who handed off: customer, assistant or system")
    closed_at: datetime | None
    closed_by: str | None
    reminder_message_id: str | None = Field(description="the WhatsApp template scheduled for the opening")
    reminder_status: str | None = Field(description="scheduled, pending, sent ... or cancelled")
    reminder_note: str | None = Field(description="what became of the reminder, or why there is none")

    @classmethod
    def of(cls, session, followup: FollowUp, conv: Conversation | None = None,
           reminder_status: str | None = None) -> FollowUpPublic:
        """The follow-up as the API shows it (``conv`` and ``reminder_status`` when the caller read them)."""
        conv = conv or session.get(Conversation, followup.conversation_id)
        if reminder_status is None and followup.reminder_message_id:
            reminder = session.get(Message, followup.reminder_message_id)
            reminder_status = reminder.status if reminder else None
        fields = {k: getattr(followup, k) for k in ("id", "conversation_id", "reason", "due_at", "details", "asking",
                                                   "status", "created_at", "created_by", "closed_at", "closed_by",
                                                   "reminder_message_id", "reminder_note", "kind", "text",
                                                   "template", "message_id", "result")}
        return cls(**fields, assistant_id=conv.assistant_id, channel=conv.channel, customer_id=conv.customer_id,
                   reminder_status=reminder_status)

    @classmethod
    def many(cls, session, rows: list[FollowUp]) -> list[FollowUpPublic]:
        """``of`` for a page of follow-ups: their conversations and reminders read in one query each."""
        convs = {c.id: c for c in session.scalars(select(Conversation).where(
            Conversation.id.in_({f.conversation_id for f in rows})))} if rows else {}
        reminder_ids = {f.reminder_message_id for f in rows if f.reminder_message_id}
        statuses = dict(session.execute(select(Message.id, Message.status).where(
            Message.id.in_(reminder_ids))).all()) if reminder_ids else {}
        return [cls.of(session, f, convs[f.conversation_id], statuses.get(f.reminder_message_id or ""))
                for f in rows]


class FollowUpDone(BaseModel):
    by: str = Field(default="operator", min_length=1, max_length=100, description="who did it")


class FollowUpTemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=512)
    language: str = Field(min_length=2, max_length=16)
    parameters: list[Annotated[str, Field(max_length=1000)]] = Field(default_factory=list, max_length=20,
                                                                     description="may use {text} and {{variable}}")


class FollowUpCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    due_at: AwareDatetime = Field(description="when, with its time zone (e.g. 2026-05-04T15:00:00-03:00)")
    kind: Literal["message", "call"] = "message"
    text: str = Field(default="", max_length=4096, description="the message; for a call, a note for the caller")
    template: FollowUpTemplateIn | None = Field(default=None, description="sent instead when the window is closed")
    by: str = Field(default="operator", min_length=1, max_length=100)


@router.get("/api/followups", response_model=list[FollowUpPublic], dependencies=[allow(VIEWER)])
def list_followups(session: SessionDep, principal: CurrentUser,
                   status: Literal["open", "done", "cancelled", "failed"] | None = None,
                   assistant_id: str | None = None, conversation_id: str | None = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 100):
    """Follow-ups of the assistants the user sees, soonest due first (at most ``limit``); by ``status``, assistant
    (id or name) and conversation when given."""
    assistant = registry.get_assistant(session, assistant_id).id if assistant_id else None
    if assistant:
        principal.require_assistant(assistant)
    return FollowUpPublic.many(session, followups.list_followups(
        session, status=status, assistant_id=assistant, conversation_id=conversation_id,
        assistant_ids=principal.assistant_ids, limit=limit))


@router.post("/api/conversations/{conversation_id}/followups", status_code=201, response_model=FollowUpPublic,
             responses={404: {"description": "no such conversation"}, 422: {"description": "a time in the past..."}},
             dependencies=[allow(OPERATOR, scopes.conversation)])
def schedule_followup(conversation_id: str, body: FollowUpCreate, services: ServicesDep, session: SessionDep):
    """Schedule a follow-up: send ``text`` at ``due_at`` (a template if the window is closed then), or a call."""
    followup = followups.schedule(services, conversation_id, due_at=body.due_at, kind=body.kind, text=body.text,
                                  created_by=body.by, template=body.template.model_dump() if body.template else None)
    return FollowUpPublic.of(session, session.get(FollowUp, followup.id))


@router.post("/api/followups/{followup_id}/cancel", response_model=FollowUpPublic,
             responses={404: {"description": "no such follow-up"}, 409: {"description": "not open any more"}},
             dependencies=[allow(OPERATOR, scopes.followup)])
def cancel_followup(followup_id: str, services: ServicesDep, session: SessionDep, body: FollowUpDone | None = None):
    """Cancel an open follow-up (nothing is sent)."""
    followups.cancel(services, followup_id, actor=(body or FollowUpDone()).by)
    return FollowUpPublic.of(session, session.get(FollowUp, followup_id))


@router.post("/api/followups/{followup_id}/done", response_model=FollowUpPublic,
             responses={404: {"description": "no such follow-up"}, 409: {"description": "done already"}},
             dependencies=[allow(OPERATOR, scopes.followup)])
def mark_done(followup_id: str, services: ServicesDep, session: SessionDep, body: FollowUpDone | None = None):
    """Mark the follow-up done; a template reminder not sent yet is cancelled."""
    followups.close(services, followup_id, actor=(body or FollowUpDone()).by)
    return FollowUpPublic.of(session, session.get(FollowUp, followup_id))


@pages.get("/followups", dependencies=[allow(VIEWER)])
def followups_page(request: Request, session: SessionDep, principal: CurrentUser,
                   status: Literal["open", "done", "cancelled", "failed", "all"] = "open"):
    """The follow-ups to make, soonest due first (``status``: open, done or all)."""
    rows = FollowUpPublic.many(session, followups.list_followups(
        session, status=None if status == "all" else status, assistant_ids=principal.assistant_ids, limit=PAGE))
    return render(request, "followups.html", followups=rows, status=status)


@pages.post("/followups/{followup_id}/done", dependencies=[allow(OPERATOR, scopes.followup)])
def followup_done_form(request: Request, followup_id: str, services: ServicesDep,
                       by: Annotated[str, Form(max_length=100)] = "operator"):
    """The page's "Done" button (``require_page_session`` refuses a form from another site)."""
    followups.close(services, followup_id, actor=by.strip() or "operator")
    return RedirectResponse("/dashboard/followups", status_code=303)


@pages.post("/followups/{followup_id}/cancel", dependencies=[allow(OPERATOR, scopes.followup)])
def followup_cancel_form(request: Request, followup_id: str, services: ServicesDep,
                         by: Annotated[str, Form(max_length=100)] = "operator",
                         back: Annotated[str, Form(max_length=200)] = "/dashboard/followups"):
    """The "Cancel" button of the follow-ups page and of a conversation's page (``require_page_session`` refuses a
    form from another site)."""
    followups.cancel(services, followup_id, actor=by.strip() or "operator")
    target = back if back.startswith("/dashboard/") and not back.startswith("/dashboard//") else "/dashboard/followups"
    return RedirectResponse(target, status_code=303)
