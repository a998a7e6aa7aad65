"""The background queues on huey: SQLite storage in the data dir by default, Redis when REDIS_URL is set.

There are two queues, each a huey instance with its own storage and its own consumers, so customer work never
waits behind a document being ingested:

- ``customer`` (huey "atende": ``queue.db``, or Redis queue "<prefix>"): WhatsApp webhook posts, WhatsApp turns
  and event delivery; ``Settings.workers`` threads;
- ``ingest`` (huey "atende.ingest": ``ingest-queue.db``, or Redis queue "<prefix>.ingest"): ingestion and
  re-embedding jobs, each document within ``Settings.ingest_timeout_s``; ``Settings.ingest_workers`` threads.

On Redis the queues are named by ``Settings.redis_prefix`` (``ATENDE_REDIS_PREFIX``, default "atende": the names
they always had), and huey's are the only keys atende writes there (its queue, schedule, results and counters,
each ``huey.<kind>.<name>``), so two deployments sharing one Redis with different prefixes never see each other's
jobs. Locks, rate limits, leases and the keyword index's changes live in the database, not in Redis.

``atende serve`` runs embedded consumers (worker threads in the API process); ``atende worker`` runs consumers of
either queue or both as separate processes (``run_workers``).
"""
from __future__ import annotations

import logging
import struct
import time
from collections.abc import Sequence
from datetime import datetime

from huey import PriorityRedisHuey, RedisHuey, SqliteHuey, crontab
from huey.api import Huey
from huey.consumer import Consumer, Scheduler
from redis import exceptions as redis_errors
from sqlalchemy import select, update

from core.db import utcnow
from core.settings import Settings
from ingest.pipeline import run_job
from ingest.website_sync import run_sync
from kb.websites import due_runs
from kb.models import IngestJob
from runtime.events import deliver_event
from runtime.events import queue_due as queue_due_events
from runtime.followups import queue_due as queue_due_followups
from runtime.followups import run_due
from runtime.handoff import return_idle
from runtime.models import Conversation
from runtime.recovery import owed_turns, recover
from runtime.retention import sweep
from runtime.services import Services
from runtime.whatsapp.inbound import process_post
from runtime.whatsapp.media import owed_media, process_media, queue_media, release_claims
from runtime.whatsapp.models import WebhookPost
from runtime.whatsapp.outbound import due_conversations, send_due
from runtime.whatsapp.presence import acknowledge_stored_post
from runtime.whatsapp.turns import LEASE_OWNER, run_whatsapp_turn, start_turns

log = logging.getLogger(__name__)

CUSTOMER, INGEST = "customer", "ingest"
QUEUES = (CUSTOMER, INGEST)
_HUEY_NAMES = {CUSTOMER: "atende", INGEST: "atende.ingest"}
_SQLITE_FILES = {CUSTOMER: "queue.db", INGEST: "ingest-queue.db"}
# the longest wait between polls of an idle queue (huey backs off up to it; Redis blocks instead of polling):
# a customer's message is picked up within half a second, not huey's default 10 s
_MAX_POLL_S = {CUSTOMER: 0.5, INGEST: 10.0}
# the customer queue's order when work waits (higher first, first in first out within a priority): a post is stored
# and its customer marked read before any turn runs, a reply goes out before the next turn starts, a file is fetched
# before the turn that waits for it; event delivery last
PRIORITY = {"whatsapp.process": 30, "whatsapp.send": 20, "media.process": 20, "followups.run": 20,
            "whatsapp.turn": 10}


def redis_queue_names(prefix: str) -> dict[str, str]:
    """The deployment's Redis queue names by queue: ``prefix`` and ``prefix.ingest`` (prefix "atende": the names
    the queues had before prefixes, so a deployment that sets none keeps its queued jobs)."""
    return {CUSTOMER: prefix, INGEST: f"{prefix}.ingest"}


def make_huey(settings: Settings, queue: str = CUSTOMER) -> Huey:
    """The huey of one of the deployment's queues (``CUSTOMER`` or ``INGEST``): on Redis when ``REDIS_URL`` is set
    (one Redis queue per name, under ``Settings.redis_prefix``), else on its own SQLite file in the data dir."""
    if settings.redis_url:
        huey = PriorityRedisHuey(redis_queue_names(settings.redis_prefix)[queue], url=settings.redis_url)
        _adopt_fifo_queue(huey)
        return huey
    return SqliteHuey(_HUEY_NAMES[queue], filename=str(settings.home / _SQLITE_FILES[queue]))


def _adopt_fifo_queue(huey: PriorityRedisHuey) -> None:
    """Move the jobs a version without priorities left in its Redis list (the same key, now a sorted set) into the
    priority queue, oldest first, in one transaction; nothing to do once it is a sorted set or empty."""
    conn, key = huey.storage.conn, huey.storage.queue_key
    with conn.pipeline() as pipe:
        try:
            pipe.watch(key)
            if pipe.type(key) not in (b"list", "list"):
                return
            jobs = list(reversed(pipe.lrange(key, 0, -1)))  # LPUSHed: the oldest is last
            # as huey's priority storage writes them: score -priority (0), member = 8-byte microsecond stamp + job,
            # so the oldest sorts first
            base = int(time.time() * 1e6)
            pipe.multi()
            pipe.delete(key)
            if jobs:
                pipe.zadd(key, {struct.pack(">Q", base + i) + job: 0 for i, job in enumerate(jobs)})
            pipe.execute()
        except redis_errors.WatchError:  # another process moved them first
            return
    log.info("moved %d queued jobs of %s into its priority queue", len(jobs), key)


def flush_redis_queues(url: str, prefix: str) -> None:
    """Empty the Redis queues of prefix ``prefix`` (what is queued and scheduled, results and counters): the keys of
    other prefixes on that Redis are left alone."""
    for name in redis_queue_names(prefix).values():
        huey = RedisHuey(name, url=url)
        huey.flush()
        huey.storage.pool.disconnect()


class HueyQueue:
    """The ``runtime.queue.WorkQueue`` on two hueys: ingestion jobs ("ingest.run_job") on ``ingest``; WhatsApp posts
    ("whatsapp.process"), customers' media downloads and transcriptions ("media.process"), turns ("whatsapp.turn"),
    send retries ("whatsapp.send"), follow-ups at their time ("followups.run") and event delivery and its retries
    ("events.deliver") on ``huey``, the customer queue, with the
    outbox sweep ("whatsapp.send_due", every minute) and the recovery sweep ("recovery.sweep", every minute:
    ``runtime.recovery.recover``, the idle hand-back, the due events and follow-ups), both run by the customer
    queue's consumers. Their consumers (the embedded ones,
    or ``atende worker`` processes) run them. Embedded (SQLite) and Redis differ only in the hueys' storage.

    The tasks run on ``services``; make this queue ``services.queue``, since the tasks queue their
    follow-up work (a post's turns, a turn put off by the debounce) there.
    """

    def __init__(self, huey: Huey, ingest: Huey, services: Services) -> None:
        self.huey, self.ingest_huey = huey, ingest
        self.hueys = {CUSTOMER: huey, INGEST: ingest}

        @ingest.task(name="ingest.run_job")
        def run_ingest_job(job_id: str) -> None:
            run_job(services, job_id)

        @huey.task(name="ingest.run_job")
        def forward_ingest_job(job_id: str) -> None:
            # a job queued on the customer queue by a version that had one queue: off to the ingest queue
            run_ingest_job(job_id)

        @ingest.task(name="website.sync")
        def website_sync(run_id: str) -> None:
            run_sync(services, run_id)

        @ingest.periodic_task(crontab(minute="*"), name="website.schedule")
        def website_schedule() -> None:
            # the website sources due for their scheduled sync (each claimed once across processes)
            with services.session() as session:
                run_ids = [run.id for run in due_runs(session, utcnow())]
            for run_id in run_ids:
                website_sync(run_id)

        @huey.task(name="events.deliver")
        def deliver_events(event_ids: list[str]) -> None:
            for event_id in event_ids:
                deliver_event(services, event_id)

        @huey.task(name="followups.run", priority=PRIORITY["followups.run"])
        def run_followup(followup_id: str) -> None:
            run_due(services, followup_id)

        @huey.task(name="whatsapp.process", retries=3, retry_delay=2, priority=PRIORITY["whatsapp.process"])
        def process_webhook(post_id: str) -> None:
            acknowledge_stored_post(services, post_id)  # read and typing first, on threads of their own
            conversations = process_post(services, post_id)
            queue_media(services, conversations)
            start_turns(services.queue, conversations, services.settings.whatsapp_debounce_s)

        @huey.task(name="media.process", priority=PRIORITY["media.process"])
        def media_process(media_id: str) -> None:
            process_media(services, media_id)

        @huey.task(name="whatsapp.turn", retries=2, retry_delay=2, priority=PRIORITY["whatsapp.turn"])
        def whatsapp_turn(conversation_id: str, scheduled_at: str) -> None:
            run_whatsapp_turn(services, conversation_id, datetime.fromisoformat(scheduled_at))

        @huey.task(name="whatsapp.send", priority=PRIORITY["whatsapp.send"])
        def whatsapp_send(conversation_id: str) -> None:
            send_due(services, conversation_id)

        @huey.periodic_task(crontab(minute="*"), name="whatsapp.send_due")
        def whatsapp_send_due() -> None:
            # the recovery sweep: retries whose scheduled job was lost (a flushed Redis, a deleted queue file)
            send_due(services)

        @huey.periodic_task(crontab(minute="*"), name="recovery.sweep")
        def recovery_sweep() -> None:
            # owed work no queued job will do: dead turns, unanswered messages, stuck jobs, lost posts; and
            # conversations a person left idle past the assistant's time go back to the AI
            recover(services)
            return_idle(services)
            queue_due_events(services)  # events whose retry job was lost, or made where no queue was told
            queue_due_followups(services)

        @huey.periodic_task(crontab(minute="*"), name="retention.sweep")
        def retention_sweep() -> None:
            # retention rules (runtime.retention): a bounded batch per run; what is left waits for the next
            sweep(services)

        self._run_ingest_job, self._deliver_events = run_ingest_job, deliver_events
        self.recovery_sweep = recovery_sweep
        self._process_webhook, self._whatsapp_turn = process_webhook, whatsapp_turn
        self._whatsapp_send, self.whatsapp_send_due = whatsapp_send, whatsapp_send_due
        self._media_process = media_process
        self._run_followup = run_followup
        self._website_sync, self.website_schedule = website_sync, website_schedule

    @classmethod
    def from_settings(cls, services: Services) -> HueyQueue:
        """The queue on the hueys ``services.settings`` picks (``make_huey``)."""
        settings = services.settings
        return cls(make_huey(settings, CUSTOMER), make_huey(settings, INGEST), services)

    def enqueue_job(self, job_id: str) -> None:
        self._run_ingest_job(job_id)

    def enqueue_webhook(self, post_id: str) -> None:
        self._process_webhook(post_id)

    def schedule_turn(self, conversation_id: str, delay_s: float) -> None:
        # the turn carries the time it was scheduled: a newer message's turn makes it step aside
        self._whatsapp_turn.schedule((conversation_id, utcnow().isoformat()), delay=delay_s)

    def deliver_events(self, event_ids: list[str], delay_s: float = 0.0) -> None:
        if delay_s > 0:
            self._deliver_events.schedule((event_ids,), delay=delay_s)
        else:
            self._deliver_events(event_ids)

    def schedule_followup(self, followup_id: str, delay_s: float) -> None:
        """"followups.run" on the customer queue in ``delay_s`` seconds (huey keeps the schedule in its storage)."""
        self._run_followup.schedule((followup_id,), delay=max(delay_s, 0.0))

    def enqueue_media(self, media_id: str, delay_s: float) -> None:
        """"media.process" on the customer queue (a customer waits for it), in ``delay_s`` seconds."""
        if delay_s > 0:
            self._media_process.schedule((media_id,), delay=delay_s)
        else:
            self._media_process(media_id)

    def schedule_send(self, conversation_id: str, delay_s: float) -> None:
        """"whatsapp.send" on the customer queue in ``delay_s`` seconds (huey keeps the schedule in its storage)."""
        self._whatsapp_send.schedule((conversation_id,), delay=delay_s)

    def enqueue_sync(self, run_id: str) -> None:
        """"website.sync" on the ingest queue."""
        self._website_sync(run_id)


class WorkerConsumer(Consumer):
    """A huey consumer whose scheduler queues the periodic tasks (the sweeps) every ``periodic_s`` seconds
    (``Settings.recovery_interval_s``) instead of huey's fixed minute; their crontab (every minute) matches
    any time, so they run at each of these checks."""

    def __init__(self, huey: Huey, *, periodic_s: float = 60.0, **kwargs) -> None:
        self._periodic_s = periodic_s  # read by _create_scheduler, which Consumer.__init__ calls
        super().__init__(huey, **kwargs)

    def _create_scheduler(self) -> Scheduler:
        scheduler: Scheduler = super()._create_scheduler()
        scheduler.periodic_task_seconds = self._periodic_s
        return scheduler


class EmbeddedConsumer(WorkerConsumer):
    """A huey consumer that runs inside another server: it leaves the signal handlers alone."""

    def _set_signal_handlers(self) -> None:
        pass


def start_embedded_consumer(huey: Huey, workers: int, max_delay: float = _MAX_POLL_S[CUSTOMER],
                            periodic: bool = False, periodic_s: float = 60.0) -> EmbeddedConsumer:
    """Start ``workers`` threads consuming ``huey`` in this process (and its scheduler), polling an idle queue at
    least every ``max_delay`` seconds, and running its periodic tasks every ``periodic_s`` seconds if
    ``periodic``; stop it with ``consumer.stop(graceful=True)``."""
    consumer = EmbeddedConsumer(huey, workers=workers, worker_type="thread", periodic=periodic, max_delay=max_delay,
                                periodic_s=periodic_s)
    consumer.start()
    return consumer


def connections_needed(settings: Settings, workers: int, ingest_workers: int) -> int:
    """The database connections ``workers`` customer-queue threads and ``ingest_workers`` ingest threads may hold
    at once: on PostgreSQL a turn holds its conversation's advisory lock on one connection while its session
    uses another, so two per customer thread; one per ingest thread; one for the periodic sweeps."""
    return _per_turn(settings) * workers + ingest_workers + 1


def _per_turn(settings: Settings) -> int:
    return 2 if settings.resolved_database_url.startswith("postgresql") else 1


def fit_to_pool(settings: Settings, workers: int, ingest_workers: int) -> int:
    """The customer-queue threads this process runs: ``workers``, or as many as its connection pool
    (``db_pool_size`` + ``db_max_overflow``) can serve beside ``ingest_workers`` (at least one), said at start-up.
    Threads that each hold one connection while they wait for another would stall on a full pool ("QueuePool limit
    reached" after a minute, the queue no longer draining): fewer threads keep the queue moving."""
    have = settings.db_pool_size + settings.db_max_overflow
    need = connections_needed(settings, workers, ingest_workers)
    if workers <= 0 or have >= need:
        return workers
    fitted = max(1, (have - ingest_workers - 1) // _per_turn(settings))
    log.warning("%d customer and %d ingest worker threads may hold %d database connections at once, but "
                "ATENDE_DB_POOL_SIZE + ATENDE_DB_MAX_OVERFLOW allow %d: running %d customer thread(s) instead; raise "
                "the pool (within the server's max_connections) to run more", workers, ingest_workers, need, have, fitted)
    return fitted


def start_embedded_consumers(queue: HueyQueue, settings: Settings) -> list[EmbeddedConsumer]:
    """The API process's consumers: ``settings.workers`` threads on the customer queue (with its periodic
    sweeps, every ``settings.recovery_interval_s``) and ``settings.ingest_workers`` on the ingest queue; none at
    all when ``workers`` is 0, none on a queue whose count is 0. A pool too small for them runs fewer
    (:func:`fit_to_pool`)."""
    if settings.workers <= 0:
        return []
    counts = {CUSTOMER: fit_to_pool(settings, settings.workers, settings.ingest_workers), INGEST: settings.ingest_workers}
    return [start_embedded_consumer(queue.hueys[name], n, _MAX_POLL_S[name], periodic=True,
                                    periodic_s=settings.recovery_interval_s)
            for name, n in counts.items() if n > 0]


def worker_consumers(queue: HueyQueue, queues: Sequence[str], workers: int, ingest_workers: int,
                     periodic_s: float = 60.0) -> list[WorkerConsumer]:
    """The consumers ``atende worker`` runs (not started): one per queue named in ``queues`` (``CUSTOMER``,
    ``INGEST``), ``workers`` threads on the customer queue and ``ingest_workers`` on the ingest one; the
    customer queue's sweeps every ``periodic_s`` seconds."""
    unknown = set(queues) - set(QUEUES)
    if unknown or not queues:
        raise ValueError(f"unknown queue(s) {sorted(unknown)}: choose among {', '.join(QUEUES)}")
    counts = {CUSTOMER: workers, INGEST: ingest_workers}
    consumers: list[WorkerConsumer] = []
    for name in (q for q in QUEUES if q in queues):
        kind = EmbeddedConsumer if consumers else WorkerConsumer  # only the foreground one sets signal handlers
        consumers.append(kind(queue.hueys[name], workers=counts[name], worker_type="thread",
                              max_delay=_MAX_POLL_S[name], periodic_s=periodic_s))
    return consumers


def run_workers(consumers: Sequence[Consumer]) -> None:
    """Run ``worker_consumers``' consumers until a signal stops them: the first runs in the foreground and owns
    the signal handlers (huey's: SIGINT graceful, SIGTERM at once, SIGHUP restart); the others run beside it and
    stop with it."""
    first, *others = consumers
    for consumer in others:
        consumer.start()
    try:
        first.run()
    finally:
        for consumer in others:
            consumer.stop(graceful=getattr(first, "_graceful", True))


def requeue_interrupted(services: Services, jobs: bool = True, posts: bool = True, sends: bool = True) -> int:
    """Re-enqueue jobs left queued or processing by a stopped process (chunk ids are deterministic,
    so re-running a half-written version simply overwrites it), unprocessed webhook posts and, with ``sends``,
    the sends the outbox has due (``runtime.whatsapp.outbound.send_due`` per conversation, at once), the customers'
    media files left unfetched or unread (their claims cleared first), and the turns
    owed (``runtime.recovery.owed_turns``, every turn lease of another process cleared first); through
    ``services.queue``, so on a ``HueyQueue`` the jobs go to the ingest queue and the rest to the customer one.
    Returns how many were queued. Call it only where nothing else runs that work: ``jobs=False`` leaves the jobs
    alone (another process consumes the ingest queue), ``posts=False`` the posts."""
    job_ids: list[str] = []
    if jobs:
        with services.session() as session:
            interrupted = list(session.scalars(select(IngestJob).where(IngestJob.status.in_(("queued", "processing")))))
            for job in interrupted:
                job.status = "queued"
            job_ids = [job.id for job in interrupted]
            session.commit()
    for job_id in job_ids:
        services.queue.enqueue_job(job_id)
    post_ids: list[str] = []
    if posts:
        with services.session() as session:  # webhook posts stored but not processed (crash, queue outage)
            post_ids = list(session.scalars(select(WebhookPost.id).where(WebhookPost.processed.is_(False))))
    for post_id in post_ids:
        services.queue.enqueue_webhook(post_id)
    conversation_ids = due_conversations(services) if sends else []
    for conversation_id in conversation_ids:
        services.queue.schedule_send(conversation_id, 0)
    with services.session() as session:  # the only worker: a turn lease of another process is a dead one's
        session.execute(update(Conversation).where(Conversation.turn_lease_owner != LEASE_OWNER)
                        .values(turn_lease_until=None, turn_lease_owner=None))
        session.commit()
    release_claims(services)  # the files a stopped process was fetching or reading: theirs to take again
    files = owed_media(services, services.clock(), margin_s=0)
    for media_id in files:
        services.queue.enqueue_media(media_id, 0)
    turns = owed_turns(services, services.clock())
    for conversation_id in turns:
        services.queue.schedule_turn(conversation_id, 0)
    return len(job_ids) + len(post_ids) + len(conversation_ids) + len(files) + len(turns)
