"""Follow-ups: the operator tasks left by handoffs outside business hours (``runtime.followups``): listed and
marked done through the API, and on their own dashboard page: read by whoever sees the assistant, done by an
operator of it."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from api import scopes
from api.deps import CurrentUser, ServicesDep, SessionDep, SignedIn, allow
from api.routes.dashboard import render, require_page_session
from kb import registry
from runtime import followups
from runtime.accounts.roles import OPERATOR, VIEWER
from runtime.models import Conversation, FollowUp, Message

router = APIRouter(tags=["followups"], dependencies=[SignedIn])
pages = APIRouter(prefix="/dashboard", include_in_schema=False, dependencies=[Depends(require_page_session)])


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
    status: Literal["open", "done"]
    created_at: datetime
    created_by: str = Field(description="who handed off: customer, assistant or system")
    closed_at: datetime | None
    closed_by: str | None
    reminder_message_id: str | None = Field(description="the WhatsApp template scheduled for the opening")
    reminder_status: str | None = Field(description="scheduled, pending, sent ... or cancelled")
    reminder_note: str | None = Field(description="what became of the reminder, or why there is none")

    @classmethod
    def of(cls, session, followup: FollowUp) -> FollowUpPublic:
        conv = session.get(Conversation, followup.conversation_id)
        reminder = session.get(Message, followup.reminder_message_id) if followup.reminder_message_id else None
        fields = {k: getattr(followup, k) for k in ("id", "conversation_id", "reason", "due_at", "details", "asking",
                                                   "status", "created_at", "created_by", "closed_at", "closed_by",
                                                   "reminder_message_id", "reminder_note")}
        return cls(**fields, assistant_id=conv.assistant_id, channel=conv.channel, customer_id=conv.customer_id,
                   reminder_status=reminder.status if reminder else None)


class FollowUpDone(BaseModel):
    by: str = Field(default="operator", min_length=1, max_length=100, description="who did it")


@router.get("/api/followups", response_model=list[FollowUpPublic], dependencies=[allow(VIEWER)])
def list_followups(session: SessionDep, principal: CurrentUser, status: Literal["open", "done"] | None = None,
                   assistant_id: str | None = None):
    """Follow-ups of the assistants the user sees, soonest due first; by ``status`` and assistant (id or name) when
    given."""
    assistant = registry.get_assistant(session, assistant_id).id if assistant_id else None
    if assistant:
        principal.require_assistant(assistant)
    return principal.visible(FollowUpPublic.of(session, f)
                             for f in followups.list_followups(session, status=status, assistant_id=assistant))


@router.post("/api/followups/{followup_id}/done", response_model=FollowUpPublic,
             responses={404: {"description": "no such follow-up"}, 409: {"description": "done already"}},
             dependencies=[allow(OPERATOR, scopes.followup)])
def mark_done(followup_id: str, services: ServicesDep, session: SessionDep, body: FollowUpDone | None = None):
    """Mark the follow-up done; a template reminder not sent yet is cancelled."""
    followups.close(services, followup_id, actor=(body or FollowUpDone()).by)
    return FollowUpPublic.of(session, session.get(FollowUp, followup_id))


@pages.get("/followups", dependencies=[allow(VIEWER)])
def followups_page(request: Request, session: SessionDep, principal: CurrentUser,
                   status: Literal["open", "done", "all"] = "open"):
    """The follow-ups to make, soonest due first (``status``: open, done or all)."""
    rows = principal.visible(FollowUpPublic.of(session, f)
                             for f in followups.list_followups(session, status=None if status == "all" else status))
    return render(request, "followups.html", followups=rows, status=status)


@pages.post("/followups/{followup_id}/done", dependencies=[allow(OPERATOR, scopes.followup)])
def followup_done_form(request: Request, followup_id: str, services: ServicesDep,
                       by: Annotated[str, Form(max_length=100)] = "operator"):
    """The page's "Done" button (``require_page_session`` refuses a form from another site)."""
    followups.close(services, followup_id, actor=by.strip() or "operator")
    return RedirectResponse("/dashboard/followups", status_code=303)
