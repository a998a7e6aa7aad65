"""Ratings of AI replies for reviewers (the dashboard's conversation page): rate a reply, read a message's
ratings (customers' WhatsApp reactions and widget thumbs included), withdraw one, and the reasons a bad
rating can give. The rules live in ``runtime.feedback``. Rating and withdrawing are a supervisor's (the review)."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from api import scopes
from api.deps import SessionDep, SignedIn, allow
from runtime import feedback
from runtime.accounts.roles import SUPERVISOR, VIEWER
from runtime.feedback import COMMENT_MAX, REASONS, Reason

router = APIRouter(tags=["feedback"], dependencies=[SignedIn])


class FeedbackCreate(BaseModel):
    rating: Literal["good", "bad"]
    reason: Reason | None = Field(default=None, description="required with a bad rating (GET /api/feedback/reasons)")
    comment: str | None = Field(default=None, max_length=COMMENT_MAX)
    author: str | None = Field(default=None, max_length=200, description="who rated, as the reviewer writes it")


class FeedbackPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    message_id: str
    conversation_id: str
    source: str = Field(description="reviewer | customer_reaction | widget")
    rating: str = Field(description="good | bad | neutral (reactions that say neither)")
    reason: str | None
    comment: str | None
    emoji: str | None = Field(description="the customer's reaction, as sent")
    author: str | None
    created_at: datetime


class FeedbackReason(BaseModel):
    code: str
    description: str


@router.get("/api/feedback/reasons", response_model=list[FeedbackReason], dependencies=[allow(VIEWER)])
def feedback_reasons():
    """The reasons a bad rating can give, in the order to offer them."""
    return [FeedbackReason(code=code, description=text) for code, text in REASONS.items()]


@router.post("/api/messages/{message_id}/feedback", status_code=201, response_model=FeedbackPublic,
             responses={404: {"description": "no such message"},
                        422: {"description": "not an AI reply, or a bad rating without a reason"}},
             dependencies=[allow(SUPERVISOR, scopes.message)])
def rate_message(message_id: str, body: FeedbackCreate, session: SessionDep):
    """A reviewer rates an AI reply: good, or bad with a reason; each rating is kept."""
    row = feedback.rate_reply(session, message_id, source="reviewer", rating=body.rating, reason=body.reason,
                              comment=body.comment, author=body.author)
    session.commit()
    return row


@router.get("/api/messages/{message_id}/feedback", response_model=list[FeedbackPublic],
            responses={404: {"description": "no such message"}}, dependencies=[allow(VIEWER, scopes.message)])
def message_feedback(message_id: str, session: SessionDep):
    """Every rating of a message, oldest first: reviewers', the customer's reaction, the widget's thumbs."""
    return feedback.list_feedback(session, message_id)


@router.delete("/api/feedback/{feedback_id}", status_code=204, responses={404: {"description": "no such rating"}},
               dependencies=[allow(SUPERVISOR, scopes.feedback)])
def delete_feedback(feedback_id: str, session: SessionDep) -> Response:
    """Withdraw one rating."""
    feedback.delete_feedback(session, feedback_id)
    session.commit()
    return Response(status_code=204)
