"""Review of the conversation log: one filter set (``ConversationFilters``) for the conversation list,
the metrics and the streamed export.

Everything is computed over the conversations the filters select, with all of their messages.

- last activity: the newest message's ``created_at`` (the conversation's own if it has none);
  ``since`` / ``until`` select on it.
- cost: LLM cost plus channel (Meta) cost, summed from the messages.
- response rate: turn-worthy inbound messages (every inbound one but ``logged`` ones such as reactions)
  covered by a turn that produced a reply / turn-worthy inbound messages; pending and paused ones count
  as unanswered.
- response time: per turn with a reply, its first reply's ``created_at`` minus its first covered inbound
  message's ``created_at`` -- what the customer waited, debounce and queueing included (the engine's own
  time is the reply's ``latency_ms``). Percentiles interpolate linearly between closest ranks.
- handoff rate: conversations with a ``handoff`` turn / conversations.
- fallback rate: ``fallback`` turns / turns that produced a reply (answered, fallback, handoff).
- delivery failures / unknown sends / not sent: outbound messages in status ``failed`` / ``unknown`` /
  ``not_sent``.
- per day (UTC, by message ``created_at``): conversations active that day, messages, replies (turns
  with a reply), cost.
- feedback (``runtime.feedback``): ratings of the selection's AI replies by rating and by source (reviewer,
  customer reaction, widget); satisfaction rate = good / (good + bad), neutral reactions left out; bad
  ratings' reasons, most frequent first; and per day of the rated reply (UTC), good / bad / neutral.
  The ``feedback`` filter keeps conversations with at least one ``good`` / ``bad`` rating, or ``any``.
Ratios whose denominator is zero are ``None``.
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import IO

import numpy as np
from sqlalchemy import case, func, literal_column, or_, select
from sqlalchemy.orm import Session, aliased

from core.errors import InvalidRequest
from kb.models import Assistant
from runtime.feedback import RATINGS, SOURCES
from runtime.models import (
    CHANNELS, CollectedData, Conversation, Message, MessageFeedback, MessageSource, ToolCallRecord, Turn,
)
from runtime.services import Services

EXPORT_FORMATS = ("csv", "jsonl")
EXPORT_PAGE_SIZE = 1000
REPLY_TURNS = ("answered", "smalltalk", "fallback", "handoff")
FEEDBACK_FILTERS = ("good", "bad", "any")
EXPORT_COLUMNS = (
    "conversation_id", "channel", "assistant_id", "assistant_name", "customer_id", "ai_enabled", "handoff_reason",
    "message_id", "direction", "kind", "text", "status", "created_at", "received_at", "sent_at", "turn_id", "model",
    "tokens_in", "tokens_out", "cost", "channel_cost", "latency_ms", "error_code", "error_title",
    "sources", "function_calls", "feedback",
)


@dataclass(frozen=True)
class ConversationFilters:
    """Which conversations to review. ``since`` is inclusive and ``until`` exclusive, both on last
    activity; ``parse`` builds one from query-string values."""

    channel: str | None = None
    assistant_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    customer: str | None = None  # case-insensitive substring of customer_id
    waiting_for_human: bool | None = None  # True: the AI is off for the conversation
    feedback: str | None = None  # good | bad | any: a reply of the conversation was rated so

    @classmethod
    def parse(cls, *, channel: str | None = None, assistant_id: str | None = None, since: str | None = None,
              until: str | None = None, customer: str | None = None,
              waiting_for_human: bool | None = None, feedback: str | None = None) -> "ConversationFilters":
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
        if self.customer:
            conds.append(func.lower(Conversation.customer_id).contains(self.customer.lower(), autoescape=True))
        if self.waiting_for_human is not None:
            conds.append(Conversation.ai_enabled.is_(not self.waiting_for_human))
        if self.feedback:
            rated = select(MessageFeedback.conversation_id)
            if self.feedback != "any":
                rated = rated.where(MessageFeedback.rating == self.feedback)
            conds.append(Conversation.id.in_(rated))
        if self.since is not None:
            conds.append(last_activity() >= self.since)
        if self.until is not None:
            conds.append(last_activity() < self.until)
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
    when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    if end:  # an exclusive bound: the next day, or the next microsecond (the databases' resolution)
        when += timedelta(days=1) if day else timedelta(microseconds=1)
    return when


def last_activity():
    """The conversation's last activity, correlated to the enclosing query's ``Conversation``."""
    m = aliased(Message)
    newest = select(func.max(m.created_at)).where(m.conversation_id == Conversation.id).correlate(Conversation)
    return func.coalesce(newest.scalar_subquery(), Conversation.created_at)


def selected_ids(filters: ConversationFilters):
    return select(Conversation.id).where(*filters.conditions())


# --------------------------------------------------------------------------- list


def list_conversations(session: Session, filters: ConversationFilters, *, limit: int = 50,
                       offset: int = 0) -> tuple[int, list[dict]]:
    """(total, one page of conversations, most recently active first) in three queries."""
    conds = filters.conditions()
    total = session.scalar(select(func.count()).select_from(Conversation).where(*conds))
    active = last_activity().label("last_activity")
    rows = session.execute(
        select(Conversation.id, Conversation.channel, Conversation.customer_id, Conversation.assistant_id,
               Assistant.name.label("assistant_name"), Conversation.ai_enabled, Conversation.handoff,
               Conversation.created_at, active)
        .join(Assistant, Assistant.id == Conversation.assistant_id).where(*conds)
        .order_by(active.desc(), Conversation.id.desc()).limit(limit).offset(offset)
    ).all()
    stats = {r.conversation_id: r for r in session.execute(
        select(Message.conversation_id, func.count().label("n"), func.sum(Message.cost).label("llm"),
               func.sum(Message.channel_cost).label("channel"))
        .where(Message.conversation_id.in_([r.id for r in rows])).group_by(Message.conversation_id))}
    items = []
    for r in rows:
        s = stats.get(r.id)
        llm, channel = (s.llm or 0.0, s.channel or 0.0) if s else (0.0, 0.0)
        items.append({
            "id": r.id, "channel": r.channel, "customer_id": r.customer_id, "assistant_id": r.assistant_id,
            "assistant_name": r.assistant_name, "message_count": s.n if s else 0, "last_activity": r.last_activity,
            "llm_cost": _money(llm), "channel_cost": _money(channel), "cost": _money(llm + channel),
            "ai_enabled": r.ai_enabled, "handoff_reason": _handoff_reason(r.handoff), "created_at": r.created_at,
        })
    return total, items


def _handoff_reason(handoff) -> str | None:
    return handoff.get("reason") if isinstance(handoff, dict) else None


def _money(value: float) -> float:
    return round(value or 0.0, 8)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def collected_data(session: Session, conversation_id: str) -> list[dict]:
    """The data fields collected in a conversation (by the AI's ``collect_data`` or by hand), by field name."""
    rows = session.scalars(select(CollectedData).where(CollectedData.conversation_id == conversation_id)
                           .order_by(CollectedData.field))
    return [{"field": r.field, "value": r.value, "source": r.source, "updated_at": r.updated_at} for r in rows]


# --------------------------------------------------------------------------- metrics


def compute_metrics(session: Session, filters: ConversationFilters) -> dict:
    """The review dashboard's figures (definitions in the module docstring)."""
    sel = selected_ids(filters)
    in_sel = Message.conversation_id.in_(sel)
    conversations = session.scalar(select(func.count()).select_from(sel.subquery()))
    out = Message.direction == "outbound"
    t = session.execute(select(
        func.count(), func.count(case((Message.direction == "inbound", 1))), func.count(case((out, 1))),
        func.sum(Message.cost), func.sum(Message.channel_cost),
        *(func.count(case((out & (Message.status == s), 1))) for s in ("failed", "unknown", "not_sent")),
    ).where(in_sel)).one()
    messages, inbound, outbound, llm, channel, failed, unknown, not_sent = t
    llm, channel = _money(llm), _money(channel)

    reply = aliased(Message)
    replied = Message.turn_id.in_(select(reply.turn_id).where(reply.direction == "outbound", reply.turn_id.is_not(None)))
    worthy, answered = session.execute(
        select(func.count(), func.count(case((replied, 1))))
        .where(in_sel, Message.direction == "inbound", Message.status != "logged")).one()

    turns, turn_conversations = {}, {}
    for status, n, convs in session.execute(
            select(Turn.status, func.count(), func.count(Turn.conversation_id.distinct()))
            .where(Turn.conversation_id.in_(sel)).group_by(Turn.status)):
        turns[status], turn_conversations[status] = n, convs
    waits = response_times_ms(session, sel)
    feedback = feedback_metrics(session, sel)
    good, bad = feedback["by_rating"]["good"], feedback["by_rating"]["bad"]
    return {
        "conversations": conversations, "messages": messages, "inbound_messages": inbound, "outbound_messages": outbound,
        "messages_per_conversation": _ratio(messages, conversations),
        "turn_worthy_inbound": worthy, "answered_inbound": answered, "response_rate": _ratio(answered, worthy),
        "response_time": {"count": len(waits), "avg_ms": _ratio(sum(waits), len(waits)),
                          "p50_ms": percentile(waits, 50), "p95_ms": percentile(waits, 95)},
        "cost": {"llm": llm, "channel": channel, "total": _money(llm + channel),
                 "per_conversation": _ratio(_money(llm + channel), conversations)},
        "delivery_failures": failed, "unknown_sends": unknown, "not_sent": not_sent,
        "turns": turns, "handoff_conversations": turn_conversations.get("handoff", 0),
        "handoff_rate": _ratio(turn_conversations.get("handoff", 0), conversations),
        "fallback_rate": _ratio(turns.get("fallback", 0), sum(turns.get(s, 0) for s in REPLY_TURNS)),
        "per_day": per_day(session, sel),
        "satisfaction_rate": _ratio(good, good + bad), "feedback": feedback,
    }


def response_times_ms(session: Session, sel) -> list[float]:
    """Per turn with a reply: first reply minus first covered inbound message, in milliseconds."""
    first_in = func.min(case((Message.direction == "inbound", Message.created_at)))
    first_out = func.min(case((Message.direction == "outbound", Message.created_at)))
    rows = session.execute(select(first_in, first_out)
                           .where(Message.conversation_id.in_(sel), Message.turn_id.is_not(None))
                           .group_by(Message.turn_id))
    return [(o - i).total_seconds() * 1000 for i, o in rows if i is not None and o is not None]


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile, interpolating linearly between closest ranks (numpy's default); None for none."""
    return float(np.percentile(values, p)) if values else None


def _utc_day(session: Session):
    """The UTC day of a message's ``created_at``, as SQL."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date(func.timezone(literal_column("'UTC'"), Message.created_at)).label("day")
    return func.date(Message.created_at).label("day")  # SQLite stores UTC text


def per_day(session: Session, sel) -> list[dict]:
    day = _utc_day(session)
    rows = session.execute(
        select(day, func.count(Message.conversation_id.distinct()), func.count(),
               func.count(case((Message.direction == "outbound", Message.turn_id)).distinct()),
               func.sum(Message.cost + Message.channel_cost))
        .where(Message.conversation_id.in_(sel)).group_by(day).order_by(day))
    return [{"day": str(d), "conversations": c, "messages": m, "replies": r, "cost": _money(cost)}
            for d, c, m, r, cost in rows]


def feedback_metrics(session: Session, sel) -> dict:
    """Ratings of the selected conversations' replies: by rating, by source, bad reasons, per day."""
    in_sel = MessageFeedback.conversation_id.in_(sel)
    by_source = {source: dict.fromkeys(RATINGS, 0) for source in SOURCES}
    for source, rating, count in session.execute(select(MessageFeedback.source, MessageFeedback.rating, func.count())
                                                 .where(in_sel).group_by(MessageFeedback.source, MessageFeedback.rating)):
        by_source[source][rating] = count
    by_rating = {rating: sum(counts[rating] for counts in by_source.values()) for rating in RATINGS}
    n = func.count().label("n")
    reasons = session.execute(select(MessageFeedback.reason, n)
                              .where(in_sel, MessageFeedback.rating == "bad", MessageFeedback.reason.is_not(None))
                              .group_by(MessageFeedback.reason).order_by(n.desc(), MessageFeedback.reason))
    day = _utc_day(session)
    days: dict[str, dict] = {}
    for d, rating, count in session.execute(
            select(day, MessageFeedback.rating, func.count())
            .join(Message, Message.id == MessageFeedback.message_id).where(in_sel)
            .group_by(day, MessageFeedback.rating).order_by(day)):
        days.setdefault(str(d), {"day": str(d), **dict.fromkeys(RATINGS, 0)})[rating] = count
    for row in days.values():
        row["satisfaction_rate"] = _ratio(row["good"], row["good"] + row["bad"])
    return {"total": sum(by_rating.values()), "by_rating": by_rating, "by_source": by_source,
            "bad_reasons": [{"reason": r, "count": c} for r, c in reasons], "per_day": list(days.values())}


# --------------------------------------------------------------------------- export


def export_pages(services: Services, filters: ConversationFilters, *, page_size: int = EXPORT_PAGE_SIZE) -> Iterator[list[dict]]:
    """One row per message of the selected conversations (by conversation id, then chronological), in
    pages of about ``page_size`` rows, each read from a fresh session so memory stays flat and no
    connection is held while the client downloads.

    Conversations come by keyset on id; their messages in chunks of whole conversations packed up to
    ``page_size`` messages (one ordered query each, never re-reading rows), and a conversation longer
    than that alone, by keyset on (created_at, id).
    """
    after = ""
    while True:
        with services.session() as session:
            convs = _conversation_page(session, filters, after, page_size)
            counts = _message_counts(session, [c["conversation_id"] for c in convs])
        if not convs:
            return
        after = convs[-1]["conversation_id"]
        by_id = {c["conversation_id"]: c for c in convs}
        for chunk in _pack(list(by_id), counts, page_size):
            for rows in _chunk_pages(services, chunk, page_size):
                yield [_export_row(by_id[m.conversation_id], m, *details) for m, *details in rows]


def _message_counts(session: Session, conversation_ids: list[str]) -> dict[str, int]:
    if not conversation_ids:
        return {}
    return dict(session.execute(select(Message.conversation_id, func.count())
                                .where(Message.conversation_id.in_(conversation_ids))
                                .group_by(Message.conversation_id)).all())


def _pack(ids: list[str], counts: dict[str, int], size: int) -> Iterator[list[str]]:
    """Consecutive conversations with messages, grouped while their messages fit in ``size``."""
    chunk, total = [], 0
    for cid in ids:
        n = counts.get(cid, 0)
        if not n:
            continue
        if chunk and total + n > size:
            yield chunk
            chunk, total = [], 0
        chunk.append(cid)
        total += n
    if chunk:
        yield chunk


def _chunk_pages(services: Services, ids: list[str], size: int) -> Iterator[list[tuple]]:
    if len(ids) > 1:  # fits one page by construction
        with services.session() as session:
            rows = _message_rows(session, [Message.conversation_id.in_(ids)],
                                 (Message.conversation_id, Message.created_at, Message.id))
        yield rows  # outside the session: no connection is held while the consumer writes
        return
    cursor = None
    while True:
        conds = [Message.conversation_id == ids[0]]
        if cursor is not None:  # (created_at, id) > cursor, spelled so the index range is used
            conds += [Message.created_at >= cursor[0], or_(Message.created_at > cursor[0], Message.id > cursor[1])]
        with services.session() as session:
            rows = _message_rows(session, conds, (Message.created_at, Message.id), limit=size)
        if rows:
            yield rows
        if len(rows) < size:
            return
        cursor = (rows[-1][0].created_at, rows[-1][0].message_id)


def _conversation_page(session: Session, filters: ConversationFilters, after: str, size: int) -> list[dict]:
    rows = session.execute(
        select(Conversation.id, Conversation.channel, Conversation.assistant_id, Assistant.name,
               Conversation.customer_id, Conversation.ai_enabled, Conversation.handoff)
        .join(Assistant, Assistant.id == Conversation.assistant_id)
        .where(*filters.conditions(), Conversation.id > after).order_by(Conversation.id).limit(size))
    return [{"conversation_id": r[0], "channel": r[1], "assistant_id": r[2], "assistant_name": r[3],
             "customer_id": r[4], "ai_enabled": r[5], "handoff_reason": _handoff_reason(r[6])} for r in rows]


_MESSAGE_COLUMNS = (Message.id.label("message_id"), Message.conversation_id, Message.direction, Message.kind, Message.text, Message.status,
                    Message.created_at, Message.received_at, Message.sent_at, Message.turn_id, Message.model,
                    Message.tokens_in, Message.tokens_out, Message.cost, Message.channel_cost, Message.latency_ms,
                    Message.error_code, Message.error_title)
_MESSAGE_KEYS = tuple(c.key for c in _MESSAGE_COLUMNS)


def _message_rows(session: Session, conds: list, order: tuple, limit: int | None = None) -> list[tuple]:
    """(message row, its sources, its function calls, its feedback) for the messages matching ``conds``."""
    msgs = session.execute(select(*_MESSAGE_COLUMNS).where(*conds).order_by(*order).limit(limit)).all()
    ids = [m.message_id for m in msgs if m.direction == "outbound"]
    sources, calls, feedback = defaultdict(list), defaultdict(list), defaultdict(list)
    if ids:
        for s in session.execute(
                select(MessageSource.message_id, MessageSource.rank, MessageSource.filename, MessageSource.page,
                       MessageSource.section, MessageSource.score, MessageSource.text)
                .where(MessageSource.message_id.in_(ids)).order_by(MessageSource.message_id, MessageSource.rank)):
            sources[s.message_id].append({"rank": s.rank, "filename": s.filename, "page": s.page, "section": s.section,
                                          "score": s.score, "text": s.text})
        for c in session.execute(
                select(ToolCallRecord.message_id, ToolCallRecord.name, ToolCallRecord.arguments, ToolCallRecord.result,
                       ToolCallRecord.error, ToolCallRecord.round, ToolCallRecord.duration_ms)
                .where(ToolCallRecord.message_id.in_(ids))
                .order_by(ToolCallRecord.message_id, ToolCallRecord.position)):
            calls[c.message_id].append({"name": c.name, "arguments": c.arguments, "result": c.result, "error": c.error,
                                        "round": c.round, "duration_ms": c.duration_ms})
        for f in session.execute(
                select(MessageFeedback.message_id, MessageFeedback.source, MessageFeedback.rating, MessageFeedback.reason,
                       MessageFeedback.comment, MessageFeedback.emoji, MessageFeedback.author, MessageFeedback.created_at)
                .where(MessageFeedback.message_id.in_(ids))
                .order_by(MessageFeedback.message_id, MessageFeedback.created_at, MessageFeedback.id)):
            feedback[f.message_id].append({"source": f.source, "rating": f.rating, "reason": f.reason, "comment": f.comment,
                                           "emoji": f.emoji, "author": f.author, "created_at": f.created_at.isoformat()})
    return [(m, sources.get(m.message_id, []), calls.get(m.message_id, []), feedback.get(m.message_id, []))
            for m in msgs]


def _export_row(conv: dict, m, sources: list[dict], calls: list[dict], feedback: list[dict]) -> dict:
    row = {**conv, **dict(zip(_MESSAGE_KEYS, m))}
    for key in ("created_at", "received_at", "sent_at"):
        if row[key] is not None:
            row[key] = row[key].isoformat()
    row["sources"], row["function_calls"], row["feedback"] = sources, calls, feedback
    return row


def encode_export(fmt: str, pages: Iterable[list[dict]]) -> Iterator[tuple[int, str]]:
    """(rows, text) per page: JSONL with sources, function calls and feedback nested, or CSV with them as
    JSON columns (after a header). CSV text cells a spreadsheet would run as formulas get a leading ``'``."""
    if fmt == "jsonl":
        for rows in pages:
            yield len(rows), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return
    if fmt != "csv":
        raise InvalidRequest(f"unknown export format {fmt!r}; one of {EXPORT_FORMATS}")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(EXPORT_COLUMNS)
    for rows in pages:
        writer.writerows([_csv_cell(k, r[k]) for k in EXPORT_COLUMNS] for r in rows)
        yield len(rows), buf.getvalue()
        buf.seek(0)
        buf.truncate()
    if buf.tell():  # no pages at all: just the header
        yield 0, buf.getvalue()


def _csv_cell(key: str, value):
    if key in ("sources", "function_calls", "feedback"):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def stream_export(services: Services, fmt: str, filters: ConversationFilters, *,
                  page_size: int = EXPORT_PAGE_SIZE) -> Iterator[str]:
    """The export as text chunks (one per page), for a streaming HTTP response; checks ``fmt`` at once."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidRequest(f"unknown export format {fmt!r}; one of {EXPORT_FORMATS}")
    return (text for _, text in encode_export(fmt, export_pages(services, filters, page_size=page_size)))


def export_conversations(services: Services, out: IO[str], fmt: str, filters: ConversationFilters, *,
                         page_size: int = EXPORT_PAGE_SIZE) -> int:
    """Write the export to ``out``; returns the number of message rows written."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidRequest(f"unknown export format {fmt!r}; one of {EXPORT_FORMATS}")
    count = 0
    for rows, text in encode_export(fmt, export_pages(services, filters, page_size=page_size)):
        out.write(text)
        count += rows
    return count
