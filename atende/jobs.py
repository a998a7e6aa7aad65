"""Background jobs (ingestion, event delivery) on huey: SQLite storage in the data dir by default, Redis when REDIS_URL is set.

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
from ingest.pipeline import run_job
from kb.models import IngestJob
from runtime.services import Services
from runtime.whatsapp.models import WebhookPost

log = logging.getLogger(__name__)


def make_huey(services: Services) -> Huey:
    """The queue for this deployment, with the ingest task registered on it."""
    settings = services.settings
    if settings.redis_url:
        huey = RedisHuey("atende", url=settings.redis_url)
    else:
        huey = SqliteHuey("atende", filename=str(settings.home / "queue.db"))

    @huey.task(name="ingest.run_job")
    def run_ingest_job(job_id: str) -> None:
        run_job(services, job_id)

    @huey.task(name="events.deliver")
    def deliver_events(event_ids: list[str]) -> None:
        from runtime.events import deliver_event

        for event_id in event_ids:
            deliver_event(services, event_id)

    @huey.task(name="whatsapp.process", retries=3, retry_delay=2)
    def process_webhook(post_id: str) -> None:
        from runtime.whatsapp.inbound import process_post
        from runtime.whatsapp.turns import start_turns

        start_turns(services, process_post(services, post_id))

    @huey.task(name="whatsapp.turn", retries=2, retry_delay=2)
    def whatsapp_turn(conversation_id: str, scheduled_at: str) -> None:
        from runtime.whatsapp.turns import run_whatsapp_turn

        run_whatsapp_turn(services, conversation_id, datetime.fromisoformat(scheduled_at))

    services.enqueue = run_ingest_job
    services.deliver_events = deliver_events
    services.enqueue_webhook = process_webhook
    services.schedule_turn = lambda conversation_id, delay: whatsapp_turn.schedule(
        (conversation_id, utcnow().isoformat()), delay=delay)
    return huey


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
        services.enqueue(job.id)
    with services.session() as session:  # webhook posts stored but not processed (crash, queue outage)
        posts = list(session.scalars(select(WebhookPost.id).where(WebhookPost.processed.is_(False))))
    for post_id in posts:
        services.enqueue_webhook(post_id)
    return len(jobs) + len(posts)
