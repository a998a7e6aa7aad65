"""Which conversations the review looks at: ``ConversationFilters``, parsed from query-string values and
turned into SQL conditions on ``Conversation``; the list, the metrics, the export and the insights all
select through it.

- last activity: the newest message's ``created_at`` (the conversation's own if it has none);
  ``since`` / ``until`` select on it.
- feedback: keeps conversations with at least one ``good`` / ``bad`` rating, or ``any``.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from core.errors import InvalidRequest
from runtime.models import CHANNELS, Conversation, Message, MessageFeedback

FEEDBACK_FILTERS = ("good", "bad", "any")


@dataclass(frozen=True)
class ConversationFilters:
    """Which conversations to review. ``since`` is inclusive and ``until`` exclusive, both on last
    activity; ``parse`` builds one from query-string values."""

    channel: str | None = None
    assistant_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    customer: str | None = None  # case-insensitive substring of customer_id
    waiting_for_human: bool | None = None  # True: a person has it or is awaited (handoff_state is not ai)
    feedback: str | None = None  # good | bad | any: a reply of the conversation was rated so
    assistant_ids: frozenset[str] | None = None  # only these assistants' (the user's, runtime.accounts); None: all

    @classmethod
    def parse(cls, *, channel: str | None = None, assistant_id: str | None = None, since: str | None = None,
              until: str | None = None, customer: str | None = None,
              waiting_for_human: bool | None = None, feedback: str | None = None) -> ConversationFilters:
        """A date means the whole day (UTC); a datetime without offset is UTC; ``until`` includes itself."""
        if channel and channel not in CHANNELS:
            raise InvalidRequest(f"unknown channel {channel!r}; one of {CHANNELS}")
        if feedback and feedback not in FEEDBACK_FILTERS:
            raise InvalidRequest(f"feedback: {feedback!r} is not one of {FEEDBACK_FILTERS}")
        return cls(channel=channel or None, assistant_id=assistant_id or None,
                   since=_instant(since, "since", end=False), until=_instant(until, "until", end=True),
                   customer=(customer or "").strip() or None, waiting_for_human=waiting_for_human,
                   feedback=feedback or None)

    def conditions(self) -> list:
        """SQL conditions on ``Conversation``."""
        conds = []
        if self.channel:
            conds.append(Conversation.channel == self.channel)
        if self.assistant_id:
            conds.append(Conversation.assistant_id == self.assistant_id)
        if self.assistant_ids is not None:
            conds.append(Conversation.assistant_id.in_(sorted(self.assistant_ids)))
        if self.customer:
            conds.append(func.lower(Conversation.customer_id).contains(self.customer.lower(), autoescape=True))
        if self.waiting_for_human is not None:
            conds.append(Conversation.handoff_state != "ai" if self.waiting_for_human else Conversation.handoff_state == "ai")
        if self.feedback:
            rated = select(MessageFeedback.conversation_id)
            if self.feedback != "any":
                rated = rated.where(MessageFeedback.rating == self.feedback)
            conds.append(Conversation.id.in_(rated))
        if self.since is not None or self.until is not None:
            active = last_activity()  # one correlated subquery serves both bounds
            if self.since is not None:
                conds.append(active >= self.since)
            if self.until is not None:
                conds.append(active < self.until)
        return conds


def _instant(value: str | None, name: str, *, end: bool) -> datetime | None:
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        day = None
    try:
        when = datetime(day.year, day.month, day.day) if day else datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name}: {value!r} is not an ISO date or datetime") from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if end:  # an exclusive bound: the next day, or the next microsecond (the databases' resolution)
        when += timedelta(days=1) if day else timedelta(microseconds=1)
    return when


def last_activity():
    """The conversation's last activity, correlated to the enclosing query's ``Conversation``."""
    m = aliased(Message)
    newest = select(func.max(m.created_at)).where(m.conversation_id == Conversation.id).correlate(Conversation)
    return func.coalesce(newest.scalar_subquery(), Conversation.created_at)


def selected_ids(filters: ConversationFilters):
    """The ids of the conversations ``filters`` selects, as a subquery for ``in_``."""
    return select(Conversation.id).where(*filters.conditions())
