"""Debounced WhatsApp turns: a burst of messages is answered by one turn, whose reply is then sent."""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import or_, select, true, update

from core.db import utcnow
from kb.models import Assistant
from runtime import store
from runtime.config import AssistantConfig
from runtime.models import Conversation, Message, MessagePart
from runtime.services import Services
from runtime.turn import run_turn
from runtime.types import TurnResult
from runtime.whatsapp.media import awaited
from runtime.whatsapp.outbound import send_reply
from runtime.whatsapp.presence import TypingRenewer

if TYPE_CHECKING:
    from runtime.queue import WorkQueue

log = logging.getLogger(__name__)
# this process, as a turn lease's owner: a lease of another owner may belong to a live turn in another process
LEASE_OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:100]
_active: dict[str, int] = {}  # conversation -> this process's turns holding its lease
_active_guard = threading.Lock()


def run_whatsapp_turn(services: Services, conversation_id: str, scheduled_at: datetime) -> TurnResult | None:
    """The scheduled turn (``WorkQueue.schedule_turn``): answer the conversation's pending messages once the
    newest is ``whatsapp_debounce_s`` old.

    Every stored message schedules this job after the debounce, marked with the time it was scheduled.
    A job that finds a message newer than its mark steps aside (that message's job follows); the job of
    the newest message waits out the rest of the debounce. A burst is answered at the latest
    ``whatsapp_debounce_max_s`` after its first message, however long the customer keeps typing -- unless a
    voice note or document of the burst is still being fetched or read (``runtime.whatsapp.media.awaited``):
    then the turn looks again every ``media_poll_s`` until it is, at most ``media_wait_max_s`` after the first
    message, so a question split between a voice note and a text is answered once and whole.
    """
    s = services.settings
    with services.session() as session:
        pending = store.pending_inbound(session, conversation_id)
        if not pending:  # nothing to answer; but a dead turn's lease to clear or its reply to send (recovery)
            lease = session.scalar(select(Conversation.turn_lease_until).where(Conversation.id == conversation_id))
            if (lease is not None and lease <= services.clock()) or unsent_replies(services, conversation_id):
                return answer_conversation(services, conversation_id)
            return None
        newest = max(m.created_at for m in pending)
        oldest = min(m.created_at for m in pending)
        unread = awaited(session, [m.id for m in pending])
    now = utcnow()
    overdue = (now - oldest).total_seconds() >= s.whatsapp_debounce_max_s
    if not overdue:
        if newest > scheduled_at:
            return None
        wait = s.whatsapp_debounce_s - (now - newest).total_seconds()
        if wait > 0:
            services.queue.schedule_turn(conversation_id, wait)
            return None
    if unread and (now - oldest).total_seconds() < s.media_wait_max_s:
        # a voice note (or document) of the burst is still being fetched or read: answer it whole, not in two
        if newest > scheduled_at:
            return None
        services.queue.schedule_turn(conversation_id, s.media_poll_s)
        return None
    if unread:
        log.warning("conversation %s: %d media file(s) still unread after %.0fs; answering with their descriptions",
                    conversation_id, len(unread), s.media_wait_max_s)
    return answer_conversation(services, conversation_id)


def answer_conversation(services: Services, conversation_id: str) -> TurnResult | None:
    """Run the conversation's turn now and send its reply (what a queue that cannot wait does at once), under
    the conversation's turn lease (``claim_turn``); first the replies of earlier turns that were logged but
    never handed to the outbox (their process died in between, ``unsent_replies``).

    Returns None, running nothing, when another process holds a live lease: its turn is running (a dead
    one's expires, and ``runtime.recovery`` queues the turn again)."""
    if not claim_turn(services, conversation_id):
        log.info("conversation %s: another process holds the turn lease; the recovery sweep follows up",
                 conversation_id)
        return None
    try:
        for message_id in unsent_replies(services, conversation_id):
            send_reply(services, message_id)
        with TypingRenewer(services, conversation_id):  # ends before the reply is sent
            result = run_turn(services, conversation_id)
        if result is not None and result.message_id is not None:
            send_reply(services, result.message_id)
        return result
    finally:
        release_turn(services, conversation_id)


def turn_lease_s(services: Services, conversation_id: str) -> float:
    """How long a turn of the conversation holds its lease: the assistant's turn deadline, plus
    ``Settings.recovery_margin_s`` for the rest (retrieval before it, logging and the send after it)."""
    with services.session() as session:
        assistant = session.scalar(select(Assistant).join(Conversation, Conversation.assistant_id == Assistant.id)
                                   .where(Conversation.id == conversation_id))
        config = AssistantConfig.model_validate((assistant.config if assistant else None) or {})
    return config.turn_deadline_s + services.settings.recovery_margin_s


def claim_turn(services: Services, conversation_id: str) -> bool:
    """Take the conversation's turn lease for this process, until ``turn_lease_s`` from now
    (``services.clock``); False when another process holds a live one.

    The lease tells the recovery sweep a turn is running (and, once expired, that its process died); it also
    keeps two processes on SQLite from answering one conversation at once. Turns of this process share the
    lease (``runtime.turn.conversation_lock`` serializes them). On PostgreSQL the advisory lock of
    ``conversation_lock`` already serializes turns across processes, so the lease is always taken over: a turn
    waiting behind another one there must not be skipped."""
    lease_s = turn_lease_s(services, conversation_id)
    now = services.clock()
    free = or_(Conversation.turn_lease_until.is_(None), Conversation.turn_lease_until <= now,
               Conversation.turn_lease_owner == LEASE_OWNER)
    with _active_guard, services.session() as session:
        condition = true() if services.engine.dialect.name == "postgresql" else free
        claimed = session.execute(
            update(Conversation).where(Conversation.id == conversation_id, condition)
            .values(turn_lease_until=now + timedelta(seconds=lease_s), turn_lease_owner=LEASE_OWNER)
        ).rowcount
        session.commit()
        if claimed:
            _active[conversation_id] = _active.get(conversation_id, 0) + 1
    return bool(claimed)


def release_turn(services: Services, conversation_id: str) -> None:
    """Give back the lease ``claim_turn`` took, once this process's last turn of the conversation is done (a
    lease another process took over in the meantime is left to it)."""
    with _active_guard:
        left = _active.get(conversation_id, 1) - 1
        if left > 0:
            _active[conversation_id] = left
            return
        _active.pop(conversation_id, None)
        with services.session() as session:
            session.execute(update(Conversation).where(Conversation.id == conversation_id,
                                                       Conversation.turn_lease_owner == LEASE_OWNER)
                            .values(turn_lease_until=None, turn_lease_owner=None))
            session.commit()


def unsent_replies(services: Services, conversation_id: str | None = None) -> list[str]:
    """Turn replies logged but never handed to the outbox (``answered`` with no part: the process died between
    ``runtime.store.log_turn`` and ``send_reply``), at most ``whatsapp_retry_for_s`` old, oldest first; of one
    WhatsApp conversation, or of all."""
    since = services.clock() - timedelta(seconds=services.settings.whatsapp_retry_for_s)
    query = (select(Message.id).join(Conversation, Conversation.id == Message.conversation_id)
             .where(Conversation.channel == "whatsapp", Message.direction == "outbound",
                    Message.status == "answered", Message.turn_id.is_not(None), Message.created_at >= since,
                    ~select(MessagePart.id).where(MessagePart.message_id == Message.id).exists())
             .order_by(Message.created_at, Message.id))
    if conversation_id is not None:
        query = query.where(Message.conversation_id == conversation_id)
    with services.session() as session:
        return list(session.scalars(query))


def start_turns(queue: WorkQueue, conversation_ids: Iterable[str], debounce_s: float) -> None:
    """Schedule the turns of the conversations a webhook post gave new messages, each after the debounce."""
    for conversation_id in conversation_ids:
        queue.schedule_turn(conversation_id, debounce_s)
