"""Delivery of outbound events (e.g. handoff notifications) to their webhook URLs, with retries.

Events are created inside a turn's transaction and delivered after it commits; each attempt's
outcome is written in its own short transaction so a slow webhook never holds a database lock.
"""
from __future__ import annotations

import logging
import time

from sqlalchemy import update

from core.db import utcnow
from runtime.http_tools import HttpToolError, post_json
from runtime.models import OutboundEvent
from runtime.services import Services

log = logging.getLogger(__name__)
TIMEOUT_S = 10.0


def deliver_event(services: Services, event_id: str, attempts: int = 3, backoff_s: float = 0.5) -> bool:
    """POST the event's payload to its URL, retrying with exponential backoff; True once delivered."""
    with services.session() as session:
        event = session.get(OutboundEvent, event_id)
        if event is None:
            raise LookupError(f"outbound event {event_id!r} not found")
        if event.status == "delivered":
            return True
        url, payload = event.url, event.payload
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            post_json(url, payload, services.settings, TIMEOUT_S)
        except HttpToolError as exc:
            _record(services, event_id, error=str(exc), final=attempt == attempts - 1)
            log.warning("event %s attempt %d failed: %s", event_id, attempt + 1, exc)
            continue
        _record(services, event_id, error=None, final=True)
        return True
    return False


def _record(services: Services, event_id: str, error: str | None, final: bool) -> None:
    if error is None:
        values = {"status": "delivered", "delivered_at": utcnow()}
    else:
        values = {"status": "failed" if final else "pending", "last_error": error[:1000]}
    with services.session() as session:
        session.execute(
            update(OutboundEvent).where(OutboundEvent.id == event_id).values(attempts=OutboundEvent.attempts + 1, **values)
        )
        session.commit()
