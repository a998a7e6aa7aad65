"""Debounced WhatsApp turns: a burst of messages is answered by one turn, whose reply is then sent."""
from __future__ import annotations

from atende.db import utcnow
from atende.services import Services
from runtime import store
from runtime.turn import run_turn
from runtime.types import TurnResult
from runtime.whatsapp.outbound import send_reply


def run_whatsapp_turn(services: Services, conversation_id: str) -> TurnResult | None:
    """Answer the conversation's pending messages once the newest is ``whatsapp_debounce_s`` old.

    Each inbound message schedules this job after the debounce; a job that finds a younger message
    steps aside for that message's job (or re-schedules itself when it runs early).
    """
    debounce = services.settings.whatsapp_debounce_s
    with services.session() as session:
        pending = store.pending_inbound(session, conversation_id)
        if not pending:
            return None
        age = (utcnow() - max(m.created_at for m in pending)).total_seconds()
    if services.schedule_turn is not None and age < debounce:
        services.schedule_turn(conversation_id, debounce - age)
        return None
    result = run_turn(services, conversation_id)
    if result is not None and result.message_id is not None:
        send_reply(services, result.message_id)
    return result
