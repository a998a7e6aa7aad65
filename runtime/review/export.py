"""The review's export: one row per message of the conversations the filters select, with its
conversation, its sources, function calls and feedback, read in pages and written as CSV or JSONL while
the client downloads (``stream_export``) or into a file (``export_conversations``)."""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import IO

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from core.errors import InvalidRequest
from kb.models import Assistant
from runtime import handoff
from runtime.masking import mask_id, mask_json
from runtime.models import Conversation, Message, MessageFeedback, MessageSource, ToolCallRecord
from runtime.review.conversations import handoff_reason
from runtime.review.filters import ConversationFilters
from runtime.services import Services
from runtime.whatsapp.media import media_of_messages, media_summary

EXPORT_FORMATS = ("csv", "jsonl")
EXPORT_PAGE_SIZE = 1000
EXPORT_COLUMNS = (
    "conversation_id", "channel", "assistant_id", "assistant_name", "customer_id", "ai_enabled", "handoff_state",
    "handoff_reason", "handoff_changes",
    "message_id", "direction", "kind", "text", "status", "created_at", "received_at", "sent_at", "turn_id", "model",
    "tokens_in", "tokens_out", "cost", "channel_cost", "latency_ms", "error_code", "error_title",
    "sources", "function_calls", "feedback", "media",
)


def stream_export(services: Services, fmt: str, filters: ConversationFilters, *,
                  page_size: int = EXPORT_PAGE_SIZE, masked: bool = True) -> Iterator[str]:
    """The export as text chunks (one per page), for a streaming HTTP response; checks ``fmt`` at once. Personal
    data is masked (:func:`masked_row`) unless ``masked`` is False."""
    return (text for _, text in _encoded(services, fmt, filters, page_size, masked))


def export_conversations(services: Services, out: IO[str], fmt: str, filters: ConversationFilters, *,
                         page_size: int = EXPORT_PAGE_SIZE, masked: bool = True) -> int:
    """Write the export to ``out`` (personal data masked unless ``masked`` is False); the message rows written."""
    count = 0
    for rows, text in _encoded(services, fmt, filters, page_size, masked):
        out.write(text)
        count += rows
    return count


def _encoded(services: Services, fmt: str, filters: ConversationFilters, page_size: int,
             masked: bool) -> Iterator[tuple[int, str]]:
    """(rows, text) per page of the export; ``fmt`` is checked here, before any page is read, so that an
    unknown one fails the request instead of a response already streaming."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidRequest(f"unknown export format {fmt!r}; one of {EXPORT_FORMATS}")
    pages = export_pages(services, filters, page_size=page_size)
    return _encode(fmt, ([masked_row(r) for r in page] for page in pages) if masked else pages)


# the fields of a row that may hold personal data: what the customer wrote or was told, tool arguments and results,
# reasons and comments (ids, statuses, the business's own sources are left alone)
_FREE_TEXT = ("text", "handoff_reason", "handoff_changes", "function_calls", "feedback", "error_title")


def masked_row(row: dict) -> dict:
    """An export row with CPF/CNPJ numbers, e-mail addresses and phone numbers masked (``runtime.masking``) in its
    free text, and the customer's id masked."""
    return {**row, "customer_id": mask_id(row["customer_id"]), **{k: mask_json(row[k]) for k in _FREE_TEXT}}


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
               Conversation.customer_id, Conversation.handoff_state, Conversation.handoff)
        .join(Assistant, Assistant.id == Conversation.assistant_id)
        .where(*filters.conditions(), Conversation.id > after).order_by(Conversation.id).limit(size)).all()
    log = handoff.changes(session, [r[0] for r in rows])
    return [{"conversation_id": r[0], "channel": r[1], "assistant_id": r[2], "assistant_name": r[3],
             "customer_id": r[4], "ai_enabled": r[5] == "ai", "handoff_state": r[5], "handoff_reason": handoff_reason(r[6]),
             "handoff_changes": [c.as_dict() for c in log[r[0]]]} for r in rows]


_MESSAGE_COLUMNS = (Message.id.label("message_id"), Message.conversation_id, Message.direction, Message.kind, Message.text, Message.status,
                    Message.created_at, Message.received_at, Message.sent_at, Message.turn_id, Message.model,
                    Message.tokens_in, Message.tokens_out, Message.cost, Message.channel_cost, Message.latency_ms,
                    Message.error_code, Message.error_title)
_MESSAGE_KEYS = tuple(c.key for c in _MESSAGE_COLUMNS)


def _message_rows(session: Session, conds: list, order: tuple, limit: int | None = None) -> list[tuple]:
    """(message row, its sources, its function calls, its feedback) for the messages matching ``conds``."""
    msgs = session.execute(select(*_MESSAGE_COLUMNS).where(*conds).order_by(*order).limit(limit)).all()
    media = {mid: media_summary(r) for mid, r in media_of_messages(
        session, [m.message_id for m in msgs if m.direction == "inbound"]).items()}
    ids = [m.message_id for m in msgs if m.direction == "outbound"]
    if not ids:  # no replies among them: no sources, calls or ratings to read
        return [(m, [], [], [], media.get(m.message_id)) for m in msgs]
    sources, calls, feedback = _sources(session, ids), _calls(session, ids), _feedback(session, ids)
    return [(m, sources.get(m.message_id, []), calls.get(m.message_id, []), feedback.get(m.message_id, []),
             media.get(m.message_id)) for m in msgs]


def _sources(session: Session, ids: list[str]) -> dict[str, list[dict]]:
    """The sources of the replies ``ids``, by message id, in rank order."""
    sources = defaultdict(list)
    for s in session.execute(
            select(MessageSource.message_id, MessageSource.rank, MessageSource.filename, MessageSource.page,
                   MessageSource.section, MessageSource.score, MessageSource.text)
            .where(MessageSource.message_id.in_(ids)).order_by(MessageSource.message_id, MessageSource.rank)):
        sources[s.message_id].append({"rank": s.rank, "filename": s.filename, "page": s.page, "section": s.section,
                                      "score": s.score, "text": s.text})
    return sources


def _calls(session: Session, ids: list[str]) -> dict[str, list[dict]]:
    """The function calls of the replies ``ids``, by message id, in the order they were made."""
    calls = defaultdict(list)
    for c in session.execute(
            select(ToolCallRecord.message_id, ToolCallRecord.name, ToolCallRecord.arguments, ToolCallRecord.result,
                   ToolCallRecord.error, ToolCallRecord.round, ToolCallRecord.duration_ms)
            .where(ToolCallRecord.message_id.in_(ids))
            .order_by(ToolCallRecord.message_id, ToolCallRecord.position)):
        calls[c.message_id].append({"name": c.name, "arguments": c.arguments, "result": c.result, "error": c.error,
                                    "round": c.round, "duration_ms": c.duration_ms})
    return calls


def _feedback(session: Session, ids: list[str]) -> dict[str, list[dict]]:
    """The ratings of the replies ``ids``, by message id, oldest first."""
    feedback = defaultdict(list)
    for f in session.execute(
            select(MessageFeedback.message_id, MessageFeedback.source, MessageFeedback.rating, MessageFeedback.reason,
                   MessageFeedback.comment, MessageFeedback.emoji, MessageFeedback.author, MessageFeedback.created_at)
            .where(MessageFeedback.message_id.in_(ids))
            .order_by(MessageFeedback.message_id, MessageFeedback.created_at, MessageFeedback.id)):
        feedback[f.message_id].append({"source": f.source, "rating": f.rating, "reason": f.reason, "comment": f.comment,
                                       "emoji": f.emoji, "author": f.author, "created_at": f.created_at.isoformat()})
    return feedback


def _export_row(conv: dict, m, sources: list[dict], calls: list[dict], feedback: list[dict],
                media: dict | None) -> dict:
    row = {**conv, **dict(zip(_MESSAGE_KEYS, m, strict=True))}
    for key in ("created_at", "received_at", "sent_at"):
        if row[key] is not None:
            row[key] = row[key].isoformat()
    row["sources"], row["function_calls"], row["feedback"] = sources, calls, feedback
    row["media"] = media  # an inbound file: its state and transcript (runtime.whatsapp.media.media_summary)
    return row


def _encode(fmt: str, pages: Iterable[list[dict]]) -> Iterator[tuple[int, str]]:
    """(rows, text) per page: JSONL with sources, function calls, feedback and handoff changes nested, or CSV with them as
    JSON columns (after a header). CSV text cells a spreadsheet would run as formulas get a leading ``'``."""
    if fmt == "jsonl":
        for rows in pages:
            yield len(rows), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return
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
    if key in ("sources", "function_calls", "feedback", "handoff_changes"):
        return json.dumps(value, ensure_ascii=False)
    if key == "media":
        return "" if value is None else json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
