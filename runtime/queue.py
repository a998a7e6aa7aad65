"""The work queue: what the routes, the turn engine and the jobs hand to the background, as an interface.

``atende.jobs.HueyQueue`` is the deployment's queue (huey on SQLite in the data dir, or on Redis); this
module's ``InlineQueue`` runs the work at once in the caller's thread, and is what a ``Services`` holds until
the composition root gives it another (an app from ``api.app.build_app`` alone, the CLI, the tests).

Follow-up work (a webhook post's turns, a debounced turn put off again) goes through ``services.queue`` at the
time it is queued, not through the queue that ran the first step, so a queue replaced or wrapped later is the
one used.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ingest.pipeline import run_job
from ingest.website_sync import run_sync
from runtime.events import deliver_event
from runtime.followups import run_due
from runtime.whatsapp.inbound import process_post
from runtime.whatsapp.media import process_media, queue_media
from runtime.whatsapp.presence import acknowledge_stored_post
from runtime.whatsapp.turns import answer_conversation, start_turns

if TYPE_CHECKING:
    from runtime.services import Services

log = logging.getLogger(__name__)


@runtime_checkable
class WorkQueue(Protocol):
    """Where background work goes. Each call returns once the work is queued; the work's outcome is stored
    where the work stores it (the job, the webhook post, the turn, the event), never raised to the caller."""

    def enqueue_job(self, job_id: str) -> None:
        """Run ingestion job ``job_id`` (``ingest.pipeline.run_job``)."""

    def enqueue_webhook(self, post_id: str) -> None:
        """Process stored WhatsApp webhook post ``post_id`` and start the turns of the conversations it fed."""

    def schedule_turn(self, conversation_id: str, delay_s: float) -> None:
        """Answer the conversation's pending WhatsApp messages after ``delay_s`` seconds (the debounce)."""

    def deliver_events(self, event_ids: list[str], delay_s: float = 0.0) -> None:
        """After ``delay_s`` seconds, deliver outbound events to their URLs (``runtime.events.deliver_event``). The
        events keep their due time, so a lost job only waits for the next sweep."""

    def schedule_followup(self, followup_id: str, delay_s: float) -> None:
        """After ``delay_s`` seconds, run the follow-up whose time has come (``runtime.followups.run_due``). The
        follow-up keeps its due time, so a lost job only waits for the next sweep."""

    def enqueue_media(self, media_id: str, delay_s: float) -> None:
        """After ``delay_s`` seconds, take the next step of a customer's media file (``message_media`` id
        ``media_id``): download it, or read it (``runtime.whatsapp.media.process_media``)."""

    def schedule_send(self, conversation_id: str, delay_s: float) -> None:
        """After ``delay_s`` seconds, send the conversation's outbound WhatsApp messages then due (a retry,
        ``runtime.whatsapp.outbound.send_due``). The outbox keeps the due time, so a lost schedule only waits
        for the next sweep."""

    def enqueue_sync(self, run_id: str) -> None:
        """Run website sync run ``run_id`` (``ingest.website_sync.run_sync``)."""


class InlineQueue:
    """A ``WorkQueue`` that does the work at once, in the caller's thread, and logs a failure instead of raising
    it (as a worker would). It cannot wait: a turn scheduled with a delay is answered now, without the debounce;
    a send scheduled for later is left due in the outbox, for the next ``send_due`` (the recovery sweep)."""

    def __init__(self, services: Services) -> None:
        self._services = services

    def enqueue_job(self, job_id: str) -> None:
        try:
            run_job(self._services, job_id)
        except Exception:
            log.exception("ingestion job %s failed", job_id)

    def enqueue_webhook(self, post_id: str) -> None:
        acknowledge_stored_post(self._services, post_id)
        try:
            conversations = process_post(self._services, post_id)
        except Exception:  # the post keeps its error and stays unprocessed
            log.exception("whatsapp webhook post %s failed to process", post_id)
            return
        queue_media(self._services, conversations)  # done at once, before the turns
        start_turns(self._services.queue, conversations, self._services.settings.whatsapp_debounce_s)

    def schedule_turn(self, conversation_id: str, delay_s: float) -> None:
        try:
            answer_conversation(self._services, conversation_id)
        except Exception:
            log.exception("whatsapp turn of conversation %s failed", conversation_id)

    def deliver_events(self, event_ids: list[str], delay_s: float = 0.0) -> None:
        """The events now; a retry for later is left due on its event, for the next sweep."""
        if delay_s > 0:
            return
        for event_id in event_ids:
            try:
                deliver_event(self._services, event_id)
            except Exception:
                log.exception("delivery of event %s failed", event_id)

    def schedule_followup(self, followup_id: str, delay_s: float) -> None:
        """The follow-up now if it is due; one for later is left to the next sweep (``run_due``)."""
        if delay_s > 0:
            return
        try:
            run_due(self._services, followup_id)
        except Exception:
            log.exception("follow-up %s failed", followup_id)

    def enqueue_media(self, media_id: str, delay_s: float) -> None:
        """The file's step now (a retry at once: the attempts are few and bounded)."""
        try:
            process_media(self._services, media_id)
        except Exception:
            log.exception("whatsapp media %s failed to process", media_id)

    def schedule_send(self, conversation_id: str, delay_s: float) -> None:
        """Nothing: the sends stay due in the outbox, for the next ``runtime.whatsapp.outbound.send_due``."""
        log.debug("send retry of conversation %s in %.0fs left to the outbox sweep", conversation_id, delay_s)

    def enqueue_sync(self, run_id: str) -> None:
        try:
            run_sync(self._services, run_id)
        except Exception:
            log.exception("website sync run %s failed", run_id)
