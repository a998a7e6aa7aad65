"""Conversation store: find or create conversations, store inbound messages at once, read history,
and write a whole turn (reply, tool calls, cited sources, usage) in one transaction."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from core.errors import InvalidRequest, NotFound
from runtime.events import emit
from runtime.models import CHANNELS, Conversation, Message, MessageSource, ToolCallRecord, Turn
from runtime.options import store_options
from runtime.types import ToolRun, TurnResult


def find_or_create_conversation(
    session: Session, *, assistant_id: str, channel: str, sender: str, customer_id: str, variables: dict | None = None
) -> Conversation:
    """The conversation of (channel, assistant, sender, customer), created on first contact.

    ``variables`` are merged into the conversation's variables (they fill ``{{placeholders}}``).
    Safe under concurrency: a lost insert race falls back to the row the winner created.
    """
    if channel not in CHANNELS:
        raise InvalidRequest(f"unknown channel {channel!r}; one of {CHANNELS}")
    customer_id = (customer_id or "").strip()
    if not customer_id:
        raise InvalidRequest("customer_id must not be empty")
    key = dict(assistant_id=assistant_id, channel=channel, sender=sender, customer_id=customer_id)
    conv = session.scalar(select(Conversation).filter_by(**key))
    started = False
    if conv is None:
        try:
            with session.begin_nested():
                conv = Conversation(id=new_id(), variables={}, **key)
                session.add(conv)
        except IntegrityError:
            conv = session.scalar(select(Conversation).filter_by(**key))
        else:
            started = True
    if variables:
        conv.variables = {**(conv.variables or {}), **{str(k): str(v) for k, v in variables.items()}}
    if started:  # after the variables: the event carries them
        emit(session, conv, "conversation.started", {})
    return conv


def get_conversation(session: Session, conversation_id: str) -> Conversation:
    conv = session.get(Conversation, conversation_id)
    if conv is None:
        raise NotFound(f"conversation {conversation_id!r} not found")
    return conv


def store_inbound(
    session: Session, conv: Conversation, text: str, *, channel_message_id: str | None = None,
    received_at: datetime | None = None,
) -> Message:
    """Store an inbound message (status ``received``) and commit at once, before any processing."""
    text = (text or "").strip()
    if not text:
        raise InvalidRequest("message must not be empty")
    now = received_at or utcnow()
    msg = Message(
        id=new_id(), conversation_id=conv.id, direction="inbound", text=text, status="received",
        channel_message_id=channel_message_id, received_at=now, created_at=utcnow(),
    )
    session.add(msg)
    conv.last_inbound_at = max(conv.last_inbound_at or now, now)
    emit(session, conv, "message.received", received_data(msg))
    session.commit()
    return msg


def received_data(msg: Message) -> dict:
    """The ``message.received`` event's data (``runtime.events``)."""
    return {"message_id": msg.id, "kind": msg.kind or "text", "text": msg.text,
            "channel_message_id": msg.channel_message_id}


def pending_inbound(session: Session, conversation_id: str) -> list[Message]:
    """Inbound messages no turn has covered yet, oldest first."""
    return list(
        session.scalars(
            select(Message)
            .where(Message.conversation_id == conversation_id, Message.direction == "inbound", Message.status == "received")
            .order_by(Message.created_at, Message.id)
        )
    )


def recent_history(session: Session, conversation_id: str, limit: int) -> list[Message]:
    """The last ``limit`` covered messages (both directions), oldest first, for the model's prompt.

    Handoff exchanges (the customer's request and the "passing you to a person" reply, the callback details
    asked outside business hours) are left out: once the AI is resumed they are settled, and a small model shown
    them tends to repeat the handoff. So are messages not sent yet, or never (a scheduled template reminder).
    """
    if limit <= 0:
        return []
    handoff_turns = select(Turn.id).where(Turn.conversation_id == conversation_id, Turn.status.in_(("handoff", "callback")))
    rows = session.scalars(
        select(Message)
        .where(Message.conversation_id == conversation_id, Message.status.not_in(("received", "scheduled", "cancelled")),
               Message.turn_id.is_(None) | Message.turn_id.not_in(handoff_turns))
        .order_by(Message.created_at.desc(), Message.id.desc())
        .limit(limit)
    )
    return list(reversed(list(rows)))


def log_turn(
    session: Session, conv: Conversation, covered: list[Message], result: TurnResult, *, tool_results: list[ToolRun],
    retrieval_query: str | None, rounds: int, model: str, started_at: datetime, error: str | None = None,
) -> None:
    """Write the turn, its reply with tool calls and sources, and mark the covered messages — one commit."""
    turn = Turn(
        id=new_id(), conversation_id=conv.id, status=result.status, retrieval_query=retrieval_query,
        rounds=rounds, timings=result.timings, error=error, started_at=started_at, finished_at=utcnow(),
    )
    session.add(turn)
    session.flush()  # the turn row first: covered messages and the reply point at it
    for msg in covered:
        msg.turn_id = turn.id
        msg.status = "skipped" if result.status == "paused" else "answered"
    if result.reply is not None:
        reply = Message(
            id=new_id(), conversation_id=conv.id, direction="outbound", text=result.reply, status="answered",
            turn_id=turn.id, created_at=utcnow(), model=model, tokens_in=result.usage.prompt_tokens,
            tokens_out=result.usage.completion_tokens, cost=result.cost, latency_ms=int(result.timings.get("total_ms", 0)),
        )
        reply.sources = [MessageSource(id=new_id(), **s.logged()) for s in result.sources]
        reply.tool_calls = [ToolCallRecord(id=new_id(), position=i, **run.logged()) for i, run in enumerate(tool_results)]
        payload = {"options_prompt": result.options_prompt} if result.options and result.options_prompt else {}
        if result.files:
            payload["files"] = result.files
        reply.payload = payload or None
        session.add(reply)
        result.message_id = reply.id
        if result.options:  # the choices offered with it, each with its id in the conversation
            session.flush()
            result.options = [o.to_dict() for o in store_options(session, reply, result.options)]
        if conv.channel != "whatsapp":  # returned to the caller now; WhatsApp's once Meta takes it (outbound)
            emit(session, conv, "reply.sent", {"message_id": reply.id, "kind": reply.kind or "text",
                                               "text": reply.text, "turn_status": result.status})
    conv.tokens_in += result.usage.prompt_tokens
    conv.tokens_out += result.usage.completion_tokens
    conv.cost += result.cost
    session.commit()
