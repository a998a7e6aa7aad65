"""A customer's rights over their personal data (LGPD art. 18): everything atende holds about one customer, exported
(machine-readable) or erased, with a record that the erasure happened that does not name them.

A customer is the channel's id for the person (``Conversation.customer_id``: a WhatsApp number or business-scoped
user id, a widget visitor, an API caller's id), across the business's assistants or within one. What names them:

- their conversations and everything under them: messages (texts, raw channel payloads, the parts sent), the
  passages and tool calls logged with the replies, turns, collected data (CPF, phone...), follow-ups, handoff
  changes, feedback, outbound events, the files they sent (``MessageMedia``, with their transcripts; a stored file
  is deleted from the file store once nothing else refers to its content); appointments booked in those
  conversations; regression cases a reviewer made from their messages;
- the raw WhatsApp webhook bodies kept as received (``WhatsAppWebhookPost``): every object in them that names the
  customer (their messages, contact card, statuses of our messages to them, business-app echoes to them) is
  removed; a body that would still name them after that is deleted. The body's hash stays, so Meta redelivering the
  same post does not bring the data back.

The erasure is one transaction. The record (:class:`Erasure`) keeps who asked, when, the rows removed per table, and
the customer as an HMAC of their id under the deployment's secret: an operator can check that a given id was
erased, nobody can read the id back from it. On SQLite, deleted content is overwritten (``secure_delete``, set on
every connection by ``core.db.make_engine``) and the write-ahead log is checkpointed, so the database file keeps no
copy; PostgreSQL reclaims the rows at its next vacuum.
"""
from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text, delete, func, select, text, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base, UTCDateTime, new_id, utcnow
from runtime.models import (
    Appointment, CollectedData, Conversation, FollowUp, HandoffChange, Message, MessageFeedback, MessagePart,
    MessageSource, OutboundEvent, ReplyOption, ToolCallRecord, Turn,
)
from runtime.regression import RegressionCase
from runtime.services import Services
from kb.models import DocumentVersion
from runtime.whatsapp.models import MessageMedia, WebhookPost

_DROPPED = object()  # a JSON object naming the customer, taken out of its list
ANONYMOUS = "anon-"  # an anonymised conversation's customer id starts so (runtime.retention)


class Erasure(Base):
    """That one customer's data was erased: by whom, when, what was removed (rows per table); the customer only as
    :func:`customer_ref`."""

    __tablename__ = "erasures"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    customer_ref: Mapped[str] = mapped_column(String(64), index=True)
    assistant_id: Mapped[str | None] = mapped_column(ForeignKey("assistants.id", ondelete="SET NULL"), nullable=True)
    requested_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    counts: Mapped[dict] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def customer_ref(secret: str, customer_id: str) -> str:
    """The customer as the erasure record keeps them: HMAC-SHA256 of their id under ``secret``."""
    return hmac.new(secret.encode(), customer_id.encode(), hashlib.sha256).hexdigest()


def _conversation_ids(session: Session, customer_id: str, assistant_id: str | None) -> list[str]:
    query = select(Conversation.id).where(Conversation.customer_id == customer_id)
    if assistant_id:
        query = query.where(Conversation.assistant_id == assistant_id)
    return list(session.scalars(query.order_by(Conversation.created_at)))


def _rows(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _record(obj: Base, *skip: str) -> dict:
    return {c.key: _rows(getattr(obj, c.key)) for c in obj.__table__.columns if c.key not in skip}


def export_customer(session: Session, customer_id: str, assistant_id: str | None = None) -> dict:
    """Everything held about the customer, as JSON-ready dicts: their conversations, each with its messages (and
    the parts sent, sources and tool calls of the replies), turns, collected data, follow-ups, handoff changes,
    feedback and appointments; and the raw webhook objects that name them."""
    conversations = []
    for cid in _conversation_ids(session, customer_id, assistant_id):
        conv = session.get(Conversation, cid)
        assert conv is not None
        messages = []
        for m in session.scalars(select(Message).where(Message.conversation_id == cid).order_by(Message.created_at)):
            messages.append({**_record(m), "parts": [_record(p) for p in m.parts],
                             "sources": [_record(s) for s in m.sources],
                             "tool_calls": [_record(t) for t in m.tool_calls]})
        conversations.append({
            **_record(conv, "turn_lease_until", "turn_lease_owner"), "messages": messages,
            **{name: [_record(r) for r in session.scalars(select(model).where(model.conversation_id == cid))]
               for name, model in (("turns", Turn), ("collected_data", CollectedData), ("followups", FollowUp),
                                   ("handoff_changes", HandoffChange), ("feedback", MessageFeedback),
                                   ("appointments", Appointment), ("media", MessageMedia))},
        })
    return {"customer_id": customer_id, "assistant_id": assistant_id, "exported_at": utcnow().isoformat(),
            "conversations": conversations,
            "webhook_objects": [obj for post in _posts_naming(session, customer_id)
                                for obj in _objects_naming(post.body, customer_id)]}


def _posts_naming(session: Session, customer_id: str) -> list[WebhookPost]:
    return list(session.scalars(select(WebhookPost).where(
        func.cast(WebhookPost.body, Text).contains(customer_id, autoescape=True))))


def _names(value: Any, customer_id: str) -> bool:
    """Whether a JSON value holds ``customer_id`` as one of its strings, at any depth."""
    if isinstance(value, dict):
        return any(_names(v, customer_id) for v in value.values())
    if isinstance(value, list):
        return any(_names(v, customer_id) for v in value)
    return isinstance(value, str) and customer_id in value


def _objects_naming(value: Any, customer_id: str) -> list[dict]:
    """The objects in lists of ``value`` that name the customer in one of their own fields (a message's ``from``,
    a contact's ``wa_id``, a status's ``recipient_id``, an echo's ``to``)."""
    found: list[dict] = []
    if isinstance(value, dict):
        for v in value.values():
            found += _objects_naming(v, customer_id)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and any(isinstance(v, str) and customer_id in v for v in item.values()):
                found.append(item)
            else:
                found += _objects_naming(item, customer_id)
    return found


def _redacted(value: Any, customer_id: str) -> Any:
    """``value`` without the objects :func:`_objects_naming` finds."""
    if isinstance(value, dict):
        return {k: _redacted(v, customer_id) for k, v in value.items()}
    if isinstance(value, list):
        kept = [_DROPPED if isinstance(item, dict) and any(isinstance(v, str) and customer_id in v
                                                           for v in item.values())
                else _redacted(item, customer_id) for item in value]
        return [item for item in kept if item is not _DROPPED]
    return value


def erase_customer(services: Services, customer_id: str, *, requested_by: str, assistant_id: str | None = None,
                   reason: str = "") -> Erasure:
    """Erase everything held about the customer (see the module's docstring) in one transaction, and record it;
    the record, with the rows removed per table. An id nobody holds is recorded too (with no rows)."""
    if not customer_id.strip():
        raise ValueError("a customer id is needed")
    with services.session() as session:
        counts, files = remove_conversations(session, _conversation_ids(session, customer_id, assistant_id))
        redacted = deleted = 0
        for post in _posts_naming(session, customer_id):
            body = _redacted(post.body, customer_id)
            if _names(body, customer_id):  # named elsewhere too (a text, a caption): the whole body goes
                session.delete(post)
                deleted += 1
            else:
                post.body = body
                redacted += 1
        counts["webhook_posts_redacted"], counts["webhook_posts_deleted"] = redacted, deleted
        secret = services.settings.secret_key or ""
        erasure = Erasure(customer_ref=customer_ref(secret, customer_id), assistant_id=assistant_id,
                          requested_by=requested_by[:200], reason=reason, counts=counts)
        session.add(erasure)
        session.flush()
        files = unshared_files(session, files)
        erasure.counts = {**counts, "files": len(files)}
        session.commit()
    forget(services, files)
    return erasure


_PER_MESSAGE = (("message_parts", MessagePart), ("message_sources", MessageSource), ("tool_calls", ToolCallRecord))
_PER_CONVERSATION = (("messages", Message), ("turns", Turn), ("collected_data", CollectedData), ("followups", FollowUp),
                     ("handoff_changes", HandoffChange), ("message_feedback", MessageFeedback),
                     ("outbound_events", OutboundEvent), ("message_media", MessageMedia), ("reply_options", ReplyOption))


def remove_conversations(session: Session, ids: list[str]) -> tuple[dict[str, int], set[str]]:
    """Delete the conversations ``ids`` and everything under them or made from them (appointments booked in them,
    regression cases made from their messages), in ``session`` (not committed); the rows per table, and the files
    their media held (for :func:`unshared_files`)."""
    counts: dict[str, int] = {}
    message_ids = select(Message.id).where(Message.conversation_id.in_(ids))
    for name, model in _PER_MESSAGE:
        counts[name] = _count(session, select(model).where(model.message_id.in_(message_ids)))
    for name, model in _PER_CONVERSATION:
        counts[name] = _count(session, select(model).where(model.conversation_id.in_(ids)))
    files = _files_of(session, ids)
    # kept by their own tables (SET NULL on the conversation or message): removed first
    counts["regression_cases"] = session.execute(delete(RegressionCase).where(
        RegressionCase.created_from_message_id.in_(message_ids))).rowcount  # type: ignore[attr-defined]
    counts["appointments"] = session.execute(delete(Appointment).where(
        Appointment.conversation_id.in_(ids))).rowcount  # type: ignore[attr-defined]
    counts["conversations"] = session.execute(delete(Conversation).where(
        Conversation.id.in_(ids))).rowcount  # type: ignore[attr-defined]  # the rest by ON DELETE CASCADE
    return counts, files


def anonymise_conversations(session: Session, ids: list[str], secret: str) -> tuple[dict[str, int], set[str]]:
    """Keep the conversations ``ids`` as figures and take out every word of them, in ``session`` (not committed):
    the customer's id becomes ``anon-`` and the first 16 characters of :func:`customer_ref`; the texts and raw
    payloads of messages and parts, tool calls' arguments and results, retrieval queries, variables, feedback
    comments and appointment names and notes are emptied; collected data, follow-ups, outbound events, media
    (their files too), option lists and regression cases made from them are deleted. Kinds, times, statuses,
    tokens, costs, latencies, ratings and the knowledge-base passages cited stay, so metrics still count them.
    The rows touched per table, and the files the media held (for :func:`unshared_files`)."""
    counts: dict[str, int] = {}
    message_ids = select(Message.id).where(Message.conversation_id.in_(ids))
    files = _files_of(session, ids)
    for conv in session.scalars(select(Conversation).where(Conversation.id.in_(ids))):
        conv.customer_id = ANONYMOUS + customer_ref(secret, f"{conv.channel}:{conv.customer_id}")[:16]
        conv.variables, conv.handoff = {}, None
    counts["conversations"] = len(ids)
    edits = ((Message, Message.conversation_id.in_(ids), {"text": "", "payload": None}),
             (MessagePart, MessagePart.message_id.in_(message_ids), {"text": "", "interactive": None, "media": None}),
             (ToolCallRecord, ToolCallRecord.message_id.in_(message_ids), {"arguments": {}, "result": None, "error": None}),
             (Turn, Turn.conversation_id.in_(ids), {"retrieval_query": None}),
             (MessageFeedback, MessageFeedback.conversation_id.in_(ids), {"comment": None}),
             (Appointment, Appointment.conversation_id.in_(ids), {"name": "", "notes": ""}))
    for model, where, values in edits:
        counts[model.__tablename__] = session.execute(  # type: ignore[attr-defined]
            update(model).where(where).values(**values).execution_options(synchronize_session=False)).rowcount
    for model in (CollectedData, FollowUp, OutboundEvent, MessageMedia, ReplyOption):
        counts[model.__tablename__] = session.execute(  # type: ignore[attr-defined]
            delete(model).where(model.conversation_id.in_(ids))).rowcount
    counts["regression_cases"] = session.execute(delete(RegressionCase).where(
        RegressionCase.created_from_message_id.in_(message_ids))).rowcount  # type: ignore[attr-defined]
    return counts, files


def _files_of(session: Session, ids: list[str]) -> set[str]:
    return set(session.scalars(select(MessageMedia.sha256).where(
        MessageMedia.conversation_id.in_(ids), MessageMedia.sha256.is_not(None))))


def unshared_files(session: Session, files: set[str]) -> set[str]:
    """Of ``files`` (blob hashes), those no media row and no document version holds any more (after a flush)."""
    shared = set(session.scalars(select(MessageMedia.sha256).where(MessageMedia.sha256.in_(files)))) | set(
        session.scalars(select(DocumentVersion.content_hash).where(DocumentVersion.content_hash.in_(files))))
    return files - shared


def forget(services: Services, files: set[str]) -> None:
    """After the commit that removed what named them: delete ``files`` from the file store (a file is never gone
    while a row still names it) and, on SQLite, checkpoint the write-ahead log so it keeps no copy of the pages."""
    for digest in files:
        services.blobs.delete(digest)
    if services.engine.dialect.name == "sqlite":
        with services.engine.connect() as conn:
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))


def _count(session: Session, query) -> int:
    return session.scalar(select(func.count()).select_from(query.subquery())) or 0


def erasures_of(services: Services, customer_id: str) -> list[Erasure]:
    """The erasure records of a customer id (found by :func:`customer_ref`), newest first."""
    ref = customer_ref(services.settings.secret_key or "", customer_id)
    with services.session() as session:
        return list(session.scalars(select(Erasure).where(Erasure.customer_ref == ref).order_by(Erasure.at.desc())))
