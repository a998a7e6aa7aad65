"""The review dashboard's backend: the conversation list, the metrics and the streamed export, all
under one set of filters (``runtime.review.filters.ConversationFilters``, parsed here from the query string); and
the waiting-for-a-human queue (``runtime.review.queue``).

Include this router before ``conversations.router``: ``GET /api/conversations/export`` would otherwise
be taken for ``GET /api/conversations/{conversation_id}``.
"""
from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from api.deps import MAX_OFFSET, CurrentUser, ServicesDep, SessionDep, SignedIn, allow
from runtime.accounts.roles import ADMIN, SUPERVISOR, VIEWER, Principal
from runtime.review import conversations, queue
from runtime.review.export import stream_export
from runtime.review.filters import ConversationFilters
from runtime.review.metrics import compute_metrics

router = APIRouter(tags=["review"], dependencies=[SignedIn])

MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


class ConversationSummary(BaseModel):
    id: str
    channel: str
    customer_id: str
    assistant_id: str
    assistant_name: str
    message_count: int
    last_activity: datetime
    llm_cost: float
    channel_cost: float
    cost: float
    ai_enabled: bool
    handoff_state: str = Field(description="ai | waiting_for_human | with_human")
    handoff_reason: str | None
    created_at: datetime


class ConversationsPage(BaseModel):
    items: list[ConversationSummary]
    total: int
    limit: int
    offset: int


class ResponseTimes(BaseModel):
    count: int
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None


class CostSummary(BaseModel):
    llm: float
    channel: float
    total: float
    per_conversation: float | None


class DayMetrics(BaseModel):
    day: date
    conversations: int
    messages: int
    replies: int
    cost: float


class DayFeedback(BaseModel):
    day: date
    good: int
    bad: int
    neutral: int
    satisfaction_rate: float | None


class BadReason(BaseModel):
    reason: str
    count: int


class FeedbackSummary(BaseModel):
    total: int
    by_rating: dict[str, int] = Field(description="good / bad / neutral")
    by_source: dict[str, dict[str, int]] = Field(description="reviewer / customer_reaction / widget -> rating -> count")
    bad_reasons: list[BadReason] = Field(description="most frequent first")
    per_day: list[DayFeedback] = Field(description="by the UTC day of the rated reply")


class FirstHumanReply(BaseModel):
    count: int = Field(description="handoffs to waiting_for_human an operator answered before they ended")
    p50_s: float | None
    p95_s: float | None


class HandoffFigures(BaseModel):
    """Definitions: ``runtime.review.handoff_metrics``."""

    total: int
    by_reason: dict[str, int] = Field(description="customer_request, model_transfer, fallback_streak, model_failure, "
                                                  "operator_takeover, business_app, other")
    first_reply: FirstHumanReply = Field(description="time from the handoff to the first operator message")
    abandoned: int = Field(description="handoffs to waiting_for_human that returned to the AI with no operator message")
    abandoned_rate: float | None = Field(description="abandoned / such handoffs that ended")
    still_waiting: int = Field(description="such handoffs not ended, no operator message yet")


class Metrics(BaseModel):
    conversations: int
    messages: int
    inbound_messages: int
    outbound_messages: int
    messages_per_conversation: float | None
    turn_worthy_inbound: int
    answered_inbound: int
    response_rate: float | None
    response_time: ResponseTimes
    cost: CostSummary
    delivery_failures: int
    unknown_sends: int
    not_sent: int
    retrying_sends: int = Field(description="outbound messages the outbox will send again (status retrying)")
    turns: dict[str, int]
    handoff_conversations: int
    handoff_rate: float | None
    fallback_rate: float | None
    handoffs: HandoffFigures
    per_day: list[DayMetrics]
    satisfaction_rate: float | None = Field(description="good / (good + bad) ratings of the AI replies")
    feedback: FeedbackSummary


def visible_to(principal: Principal, filters: ConversationFilters) -> ConversationFilters:
    """``filters`` kept to the assistants the user sees (naming another one is refused: 403)."""
    if filters.assistant_id:
        principal.require_assistant(filters.assistant_id)
    return dataclasses.replace(filters, assistant_ids=principal.assistant_ids)


def conversation_filters(
    principal: CurrentUser,
    channel: Literal["whatsapp", "widget", "test", "api"] | None = None,
    assistant_id: str | None = None,
    since: Annotated[str | None, Query(description="ISO date or datetime (UTC if no offset), on last activity")] = None,
    until: Annotated[str | None, Query(description="ISO date (the whole day) or datetime, inclusive")] = None,
    customer: Annotated[str | None, Query(description="substring of the customer id, any case")] = None,
    waiting_for_human: Annotated[bool | None, Query(description="true: the AI is off (after a handoff)")] = None,
    feedback: Annotated[Literal["good", "bad", "any"] | None,
                        Query(description="a reply of the conversation was rated so (any: rated at all)")] = None,
) -> ConversationFilters:
    return visible_to(principal, ConversationFilters.parse(
        channel=channel, assistant_id=assistant_id, since=since, until=until, customer=customer,
        waiting_for_human=waiting_for_human, feedback=feedback))


FiltersDep = Annotated[ConversationFilters, Depends(conversation_filters)]


@router.get("/api/conversations", response_model=ConversationsPage, dependencies=[allow(VIEWER)])
def list_conversations(filters: FiltersDep, session: SessionDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                       offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0):
    """Conversations, most recently active first, with message count, cost and handoff state."""
    total, items = conversations.list_conversations(session, filters, limit=limit, offset=offset)
    return ConversationsPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/api/conversations/export", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}},
            dependencies=[allow(SUPERVISOR)])
def export_conversations(filters: FiltersDep, services: ServicesDep, principal: CurrentUser,
                         fmt: Annotated[Literal["csv", "jsonl"], Query(alias="format")] = "csv",
                         unmasked: Annotated[bool, Query(description="CPF/CNPJ, e-mails, phone numbers and customer "
                                                                     "ids in clear (masked by default)")] = False):
    """One row per message, with its conversation, sources, function calls and feedback, streamed; personal data
    masked unless ``unmasked`` (admins only)."""
    if unmasked:
        principal.require(ADMIN)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return StreamingResponse(
        stream_export(services, fmt, filters, masked=not unmasked), media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="conversations-{stamp}.{fmt}"'},
    )


class QueueItem(BaseModel):
    id: str
    channel: str
    customer_id: str
    assistant_id: str
    assistant_name: str
    handoff_state: str = Field(description="waiting_for_human | with_human")
    entered_at: datetime = Field(description="when the conversation took its present state")
    waiting_since: datetime | None = Field(description="waiting_for_human: entered_at; with_human: the customer's "
                                           "first message after the operator's last one (null: none)")
    waiting_s: float | None = Field(description="seconds since waiting_since")
    reason: str | None = Field(description="why it left the AI")
    last_customer_message: str | None
    last_customer_message_at: datetime | None
    last_operator_message_at: datetime | None


class HandoffQueue(BaseModel):
    waiting: list[QueueItem] = Field(description="waiting_for_human, the longest waiting first")
    with_human: list[QueueItem] = Field(description="with_human: unanswered customers first (longest first), then "
                                                    "the longest with a person")


@router.get("/api/handoff-queue", response_model=HandoffQueue, dependencies=[allow(VIEWER)])
def handoff_queue(services: ServicesDep, session: SessionDep, principal: CurrentUser, assistant_id: str | None = None,
                  channel: Literal["whatsapp", "widget", "test", "api"] | None = None):
    """The conversations a person has or is awaited on (``runtime.review.queue``), of the assistants the user sees."""
    return visible_queue(principal, queue.handoff_queue(session, services.clock(), assistant_id=assistant_id,
                                                        channel=channel), assistant_id)


def visible_queue(principal: Principal, found: dict[str, list[dict]], assistant_id: str | None) -> dict[str, list[dict]]:
    """The queue kept to the assistants the user sees (naming another one is refused: 403)."""
    if assistant_id:
        principal.require_assistant(assistant_id)
    return {state: principal.visible(items) for state, items in found.items()}


@router.get("/api/metrics", response_model=Metrics, dependencies=[allow(VIEWER)])
def metrics(filters: FiltersDep, session: SessionDep):
    """Volume, response rate and time, cost, delivery problems, handoffs (by reason, time to the first human reply,
    abandoned) and fallbacks, per day; ratings of the replies (satisfaction rate, bad-reply reasons)."""
    return compute_metrics(session, filters)
