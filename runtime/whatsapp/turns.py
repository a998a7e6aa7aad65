"""Debounced WhatsApp turns: a burst of messages is answered by one turn, whose reply is then sent."""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from core.db import utcnow
from runtime import store
from runtime.services import Services
from runtime.turn import run_turn
from runtime.types import TurnResult
from runtime.whatsapp.outbound import send_reply

if TYPE_CHECKING:
    from runtime.queue import WorkQueue


def run_whatsapp_turn(services: Services, conversation_id: str, scheduled_at: datetime) -> TurnResult | None:
    """The scheduled turn (``WorkQueue.schedule_turn``): answer the conversation's pending messages once the
    newest is ``whatsapp_debounce_s`` old.

    Every stored message schedules this job after the debounce, marked with the time it was scheduled.
    A job that finds a message newer than its mark steps aside (that message's job follows); the job of
    the newest message waits out the rest of the debounce. A burst is answered at the latest
    ``whatsapp_debounce_max_s`` after its first message, however long the customer keeps typing.
    """
    s = services.settings
    with services.session() as session:
        pending = store.pending_inbound(session, conversation_id)
        if not pending:
            return None
        newest = max(m.created_at for m in pending)
        oldest = min(m.created_at for m in pending)
    now = utcnow()
    overdue = (now - oldest).total_seconds() >= s.whatsapp_debounce_max_s
    if not overdue:
        if newest > scheduled_at:
            return None
        wait = s.whatsapp_debounce_s - (now - newest).total_seconds()
        if wait > 0:
            services.queue.schedule_turn(conversation_id, wait)
            return None
    return answer_conversation(services, conversation_id)


def answer_conversation(services: Services, conversation_id: str) -> TurnResult | None:
    """Run the conversation's turn now and send its reply (what a queue that cannot wait does at once)."""
    result = run_turn(services, conversation_id)
    if result is not None and result.message_id is not None:
        send_reply(services, result.message_id)
    return result


def start_turns(queue: WorkQueue, conversation_ids: Iterable[str], debounce_s: float) -> None:
    """Schedule the turns of the conversations a webhook post gave new messages, each after the debounce."""
    for conversation_id in conversation_ids:
        queue.schedule_turn(conversation_id, debounce_s)
