"""Flagging a conversation for a person: the reason on the conversation (the dashboard's handoff column and
filters) and, when the assistant has a ``handoff_url``, a signed ``handoff`` event for the team's own system."""
from __future__ import annotations

from sqlalchemy.orm import Session

from core.db import new_id
from runtime.config import AssistantConfig
from runtime.models import Conversation, OutboundEvent


def flag_for_human(session: Session, conversation: Conversation, assistant_id: str, config: AssistantConfig,
                   handoff: dict, *, pause: bool) -> str | None:
    """Record ``handoff`` (reason, callback, ``at``) on ``conversation``, pause its automatic replies when
    ``pause``, and add the event for ``config.handoff_url``; the event's id (to deliver once the caller commits),
    or None without a URL."""
    conversation.handoff = handoff
    if pause:
        conversation.ai_enabled = False
    if not config.handoff_url:
        return None
    event_id = new_id()
    payload = {"event": "handoff", "conversation_id": conversation.id, "assistant_id": assistant_id,
               "channel": conversation.channel, "customer_id": conversation.customer_id, **handoff}
    session.add(OutboundEvent(id=event_id, conversation_id=conversation.id, kind="handoff", url=config.handoff_url,
                              payload=payload))
    return event_id
