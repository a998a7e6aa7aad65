"""The background queue on huey (ingestion, WhatsApp posts and turns, event delivery): SQLite storage in the data
dir by default, Redis when REDIS_URL is set.

``atende serve`` runs an embedded consumer (worker threads in the API process); with Redis,
``atende worker`` runs consumers as separate processes.
"""
from __future__ import annotations

import logging
from datetime import datetime

from huey import RedisHuey, SqliteHuey
from huey.api import Huey
from huey.consumer import Consumer
from sqlalchemy import select

from core.db import utcnow
from core.settings import Settings
from ingest.pipeline import run_job
from kb.models import IngestJob
from runtime.events import deliver_event
from runtime.services import Services
from runtime.whatsapp.inbound import process_post
from runtime.whatsapp.models import WebhookPost
from runtime.whatsapp.turns import run_whatsapp_turn, start_turns

log = logging.getLogger(__name__)


def make_huey(settings: Settings) -> Huey:
    """The deployment's huey: on Redis when ``REDIS_URL`` is set, else on SQLite in the data dir."""
    if settings.redis_url:
        return RedisHuey("atende", url=settings.redis_url)
    return SqliteHuey("atende", filename=str(settings.home / "queue.db"))


class HueyQueue:
    """The ``runtime.queue.WorkQueue`` on huey: four tasks registered on ``huey``, run by its consumers (the
    embedded one, or ``atende worker`` processes). Embedded (SQLite) and Redis differ only in ``huey``'s storage.

    The tasks run on ``services``; make this queue ``services.queue``, since the tasks queue their
    follow-up work (a post's turns, a turn put off by the debounce) there.
    """

    def __init__(self, huey: Huey, services: Services) -> None:
        self.huey = huey

        @huey.task(name="ingest.run_job")
        def run_ingest_job(job_id: str) -> None:
            run_job(services, job_id)

        @huey.task(name="events.deliver")
        def deliver_events(event_ids: list[str]) -> None:
            for event_id in event_ids:
                deliver_event(services, event_id)

        @huey.task(name="whatsapp.process", retries=3, retry_delay=2)
        def process_webhook(post_id: str) -> None:
            start_turns(services.queue, process_post(services, post_id), services.settings.whatsapp_debounce_s)

        @huey.task(name="whatsapp.turn", retries=2, retry_delay=2)
        def whatsapp_turn(conversation_id: str, scheduled_at: str) -> None:
            run_whatsapp_turn(services, conversation_id, datetime.fromisoformat(scheduled_at))

        self._run_ingest_job, self._deliver_events = run_ingest_job, deliver_events
        self._process_webhook, self._whatsapp_turn = process_webhook, whatsapp_turn

    def enqueue_job(self, job_id: str) -> None:
        self._run_ingest_job(job_id)

    def enqueue_webhook(self, post_id: str) -> None:
        self._process_webhook(post_id)

    def schedule_turn(self, conversation_id: str, delay_s: float) -> None:
        # the turn carries the time it was scheduled: a newer message's turn makes it step aside
        self._whatsapp_turn.schedule((conversation_id, utcnow().isoformat()), delay=delay_s)

    def deliver_events(self, event_ids: list[str]) -> None:
        self._deliver_events(event_ids)


class EmbeddedConsumer(Consumer):
    """A huey consumer that runs inside another server: it leaves the signal handlers alone."""

    def _set_signal_handlers(self) -> None:
        pass


def start_embedded_consumer(huey: Huey, workers: int) -> EmbeddedConsumer:
    consumer = EmbeddedConsumer(huey, workers=workers, worker_type="thread", periodic=False)
    consumer.start()
    return consumer


def requeue_interrupted(services: Services) -> int:
    """Re-enqueue jobs left queued or processing by a stopped process (chunk ids are deterministic,
    so re-running a half-written version simply overwrites it), and unprocessed webhook posts."""
    with services.session() as session:
        jobs = list(session.scalars(select(IngestJob).where(IngestJob.status.in_(("queued", "processing")))))
        for job in jobs:
            job.status = "queued"
        session.commit()
    for job in jobs:
        services.queue.enqueue_job(job.id)
    with services.session() as session:  # webhook posts stored but not processed (crash, queue outage)
        posts = list(session.scalars(select(WebhookPost.id).where(WebhookPost.processed.is_(False))))
    for post_id in posts:
        services.queue.enqueue_webhook(post_id)
    return len(jobs) + len(posts)
