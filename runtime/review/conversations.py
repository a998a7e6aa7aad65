"""The review's conversation list (one page of the conversations the filters select, with their message
count and cost) and a conversation's collected data.

cost: LLM cost plus channel (Meta) cost, summed from the messages.
"""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kb.models import Assistant
from runtime.cost import round_usd
from runtime.models import CollectedData, Conversation, Message
from runtime.review.filters import ConversationFilters, last_activity


def list_conversations(session: Session, filters: ConversationFilters, *, limit: int = 50,
                       offset: int = 0) -> tuple[int, list[dict]]:
    """(total, one page of conversations, most recently active first) in three queries."""
    conds = filters.conditions()
    total = session.scalar(select(func.count()).select_from(Conversation).where(*conds))
    active = last_activity().label("last_activity")
    rows = session.execute(
        select(Conversation.id, Conversation.channel, Conversation.customer_id, Conversation.assistant_id,
               Assistant.name.label("assistant_name"), Conversation.handoff_state, Conversation.handoff,
               Conversation.created_at, active)
        .join(Assistant, Assistant.id == Conversation.assistant_id).where(*conds)
        .order_by(active.desc(), Conversation.id.desc()).limit(limit).offset(offset)
    ).all()
    stats = {r.conversation_id: r for r in session.execute(
        select(Message.conversation_id, func.count().label("n"), func.sum(Message.cost).label("llm"),
               func.sum(Message.channel_cost).label("channel"))
        .where(Message.conversation_id.in_([r.id for r in rows])).group_by(Message.conversation_id))}
    return total, [_summary(r, stats.get(r.id)) for r in rows]


def _summary(row, stats) -> dict:
    """One conversation of the list: its row and its messages' count and cost (``stats``, None: no messages)."""
    llm, channel = (stats.llm or 0.0, stats.channel or 0.0) if stats else (0.0, 0.0)
    return {
        "id": row.id, "channel": row.channel, "customer_id": row.customer_id, "assistant_id": row.assistant_id,
        "assistant_name": row.assistant_name, "message_count": stats.n if stats else 0,
        "last_activity": row.last_activity, "llm_cost": round_usd(llm), "channel_cost": round_usd(channel),
        "cost": round_usd(llm + channel), "ai_enabled": row.handoff_state == "ai",
        "handoff_state": row.handoff_state, "handoff_reason": handoff_reason(row.handoff),
        "created_at": row.created_at,
    }


def handoff_reason(handoff) -> str | None:
    """The reason of a conversation's ``handoff`` record (JSON: reason, callback, at), if it has one."""
    return handoff.get("reason") if isinstance(handoff, dict) else None


def collected_data(session: Session, conversation_id: str) -> list[dict]:
    """The data fields collected in a conversation (by the AI's ``collect_data`` or by hand), by field name."""
    rows = session.scalars(select(CollectedData).where(CollectedData.conversation_id == conversation_id)
                           .order_by(CollectedData.field))
    return [{"field": r.field, "value": r.value, "source": r.source, "updated_at": r.updated_at} for r in rows]
