"""The "waiting for a human" queue: every conversation away from the AI, in two lists.

- ``waiting``: ``waiting_for_human`` (handed off, no operator has written yet), the longest waiting first. Waiting
  since: the change that put it there (``runtime.models.HandoffChange``; for one handed off before changes were
  logged, its ``handoff.at``, else its creation).
- ``with_human``: an operator has written. First those whose customer wrote after the operator's last message,
  the longest unanswered first (waiting since: that customer message), then the others, longest with a person first.

Each item also gives the reason the conversation left the AI (the reason of the last change out of ``ai``, else its
``handoff`` record's), the customer's last message and the operator's last message time.

Per-operator assignment waits for operator accounts (issue 17): the assignee becomes a column of the conversation,
``handoff_queue`` gains an ``assignee`` filter beside ``assistant_id`` and ``channel``, and each item its assignee;
the ordering above stays.
"""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased

from kb.models import Assistant
from runtime.handoff import changes
from runtime.models import Conversation, HandoffChange, Message
from runtime.review.conversations import handoff_reason

PREVIEW_CHARS = 280


def handoff_queue(session: Session, now: datetime, *, assistant_id: str | None = None,
                  channel: str | None = None) -> dict[str, list[dict]]:
    """``{"waiting": [...], "with_human": [...]}``, ordered as the module docstring says, of one assistant or
    channel or all; ``waiting_s`` is counted up to ``now``."""
    conds = [Conversation.handoff_state != "ai"]
    if assistant_id:
        conds.append(Conversation.assistant_id == assistant_id)
    if channel:
        conds.append(Conversation.channel == channel)
    rows = session.execute(select(Conversation, Assistant.name)
                           .join(Assistant, Assistant.id == Conversation.assistant_id).where(*conds)).all()
    ids = [conv.id for conv, _ in rows]
    log = changes(session, ids)
    last_in, last_operator = _last_inbound(session, ids), _last_operator(session, ids)
    unanswered = _unanswered(session, ids)
    waiting: list[dict] = []
    with_human: list[dict] = []
    for conv, assistant_name in rows:
        entered = _entered(conv, log[conv.id])
        since = entered if conv.handoff_state == "waiting_for_human" else unanswered.get(conv.id)
        left_ai = next((c for c in reversed(log[conv.id]) if c.from_state == "ai"), None)
        message = last_in.get(conv.id)
        item = {
            "id": conv.id, "channel": conv.channel, "customer_id": conv.customer_id, "assistant_id": conv.assistant_id,
            "assistant_name": assistant_name, "handoff_state": conv.handoff_state, "entered_at": entered,
            "waiting_since": since, "waiting_s": (now - since).total_seconds() if since else None,
            "reason": left_ai.reason if left_ai else handoff_reason(conv.handoff),
            "last_customer_message": message.text[:PREVIEW_CHARS] if message else None,
            "last_customer_message_at": message.created_at if message else None,
            "last_operator_message_at": last_operator.get(conv.id),
        }
        (waiting if conv.handoff_state == "waiting_for_human" else with_human).append(item)
    waiting.sort(key=lambda i: (i["entered_at"], i["id"]))
    with_human.sort(key=lambda i: (i["waiting_since"] is None, i["waiting_since"] or i["entered_at"], i["id"]))
    return {"waiting": waiting, "with_human": with_human}


def _entered(conv: Conversation, log: list[HandoffChange]) -> datetime:
    """When the conversation took its present state."""
    change = next((c for c in reversed(log) if c.to_state == conv.handoff_state), None)
    if change is not None:
        return change.at
    at = conv.handoff.get("at") if isinstance(conv.handoff, dict) else None
    try:
        when = datetime.fromisoformat(at) if isinstance(at, str) else conv.created_at
    except ValueError:
        return conv.created_at
    return when if when.tzinfo else when.replace(tzinfo=UTC)  # compared with the aware times of the others


def _last_inbound(session: Session, ids: list[str]) -> dict[str, Message]:
    newest = (select(Message.conversation_id, func.max(Message.created_at).label("at"))
              .where(Message.conversation_id.in_(ids), Message.direction == "inbound")
              .group_by(Message.conversation_id).subquery())
    found = session.scalars(select(Message).join(newest, (Message.conversation_id == newest.c.conversation_id)
                                                 & (Message.created_at == newest.c.at))
                            .where(Message.direction == "inbound").order_by(Message.id))
    return {m.conversation_id: m for m in found}


def _last_operator(session: Session, ids: list[str]) -> dict[str, datetime]:
    return dict(session.execute(select(Message.conversation_id, func.max(Message.created_at))
                                .where(Message.conversation_id.in_(ids), Message.kind == "operator")
                                .group_by(Message.conversation_id)).all())


def _unanswered(session: Session, ids: list[str]) -> dict[str, datetime]:
    """Per conversation, the customer's first message (reactions and such aside) after the operator's last one."""
    op = aliased(Message)
    last_op = (select(func.max(op.created_at))
               .where(op.conversation_id == Message.conversation_id, op.kind == "operator")
               .correlate(Message).scalar_subquery())
    return dict(session.execute(select(Message.conversation_id, func.min(Message.created_at))
                                .where(Message.conversation_id.in_(ids), Message.direction == "inbound",
                                       Message.status != "logged", or_(last_op.is_(None), Message.created_at > last_op))
                                .group_by(Message.conversation_id)).all())
