"""The work queue: background jobs through a real Redis queue (huey's RedisHuey) and a real consumer thread; the
interface, which the huey queue (SQLite or Redis) and the inline one implement."""
from __future__ import annotations

import inspect
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from atende.app import create_app
from atende.jobs import HueyQueue, start_embedded_consumer
from kb import registry
from kb.models import Document, IngestJob
from kb.search import search
from runtime.queue import InlineQueue, WorkQueue
from runtime.regression import _EventsKept
from tests.conftest import make_services

TEXT = (
    "Opening hours\n\n"
    "The bakery opens at seven in the morning and closes at two in the afternoon on Sundays. "
    "Fresh sourdough bread comes out of the oven at eight every day.\n"
)


def _upload(services, filename: str, data: bytes) -> tuple[str, str]:
    s = services.settings
    with services.session() as session:
        a = registry.create_assistant(session, name="bakery", embedding_model=s.embedding_model,
                                      chunk_size=s.chunk_size, chunk_overlap=s.chunk_overlap)
        up = registry.register_upload(session, services.blobs, a.knowledge_base, filename, data, s.max_upload_bytes)
        session.commit()
        return up.document.id, up.job.id


def _wait_for_document(services, document_id: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with services.session() as session:
            status = session.get(Document, document_id).status
        if status in ("ready", "failed"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"document {document_id} still {status} after {timeout}s")


def test_redis_queue_ingests_an_upload(redis_services):
    services = redis_services
    services.queue = queue = HueyQueue.from_settings(services)
    huey = queue.ingest_huey
    assert type(huey.storage).__name__ == "PriorityRedisStorage"
    doc_id, job_id = _upload(services, "hours.txt", TEXT.encode())
    services.queue.enqueue_job(job_id)
    assert huey.pending_count() == 1  # the job sits in Redis until a consumer takes it
    with services.session() as session:
        assert session.get(IngestJob, job_id).status == "queued"

    consumer = start_embedded_consumer(huey, 1)
    try:
        assert _wait_for_document(services, doc_id) == "ready"
    finally:
        consumer.stop(graceful=True)
    assert huey.pending_count() == 0

    with services.session() as session:
        job = session.get(IngestJob, job_id)
        doc = session.get(Document, doc_id)
        assert job.status == "ready" and job.error is None and job.chunks_total > 0
        assert doc.current_version == 1 and doc.versions[0].chunk_count == job.chunks_total
        kb = registry.get_assistant(session, "bakery").knowledge_base
        hits = search(services, session, kb, "when does the bakery close on sunday?")
    assert hits and hits[0].document_id == doc_id and hits[0].filename == "hours.txt"
    assert "two in the afternoon" in hits[0].text


@pytest.mark.parametrize("workers", [1, 2])
def test_a_job_enqueued_twice_runs_once(redis_services, workers):
    services = redis_services
    services.queue = queue = HueyQueue.from_settings(services)
    huey = queue.ingest_huey
    executions: list[tuple[str, datetime]] = []
    lock = threading.Lock()

    @huey.signal()
    def record(signal, task, *args, **kwargs):
        with lock:
            executions.append((signal, datetime.now(UTC)))

    doc_id, job_id = _upload(services, "hours.txt", TEXT.encode())
    services.queue.enqueue_job(job_id)
    services.queue.enqueue_job(job_id)
    assert huey.pending_count() == 2

    consumer = start_embedded_consumer(huey, workers)
    try:
        assert _wait_for_document(services, doc_id) == "ready"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(s == "complete" for s, _ in executions) < 2:
            time.sleep(0.05)
    finally:
        consumer.stop(graceful=True)
    signals = [s for s, _ in executions]
    assert signals.count("executing") == 2 and signals.count("complete") == 2, signals  # both deliveries ran
    assert "error" not in signals and huey.pending_count() == 0

    with services.session() as session:
        job = session.get(IngestJob, job_id)
        doc = session.get(Document, doc_id)
        assert job.status == "ready" and job.error is None
        assert [v.version for v in doc.versions] == [1] and doc.versions[0].state == "current"
        kb = registry.get_assistant(session, "bakery").knowledge_base
        stored = services.vectors.count(kb.collection)
        assert stored == services.vectors.count(kb.collection, doc.versions[0].key) == job.chunks_total > 0
        hits = search(services, session, kb, "when does the bakery close on sunday?", top_k=50)
        if workers == 1:
            # one worker runs the deliveries one after another: the job's single run finished before the second began
            second_start = [t for s, t in executions if s == "executing"][1]
            assert job.started_at <= job.finished_at < second_start
    assert len(hits) == stored and len({h.text for h in hits}) == len(hits)  # no duplicated chunks


# ------------------------------------------------------------------------------- the WorkQueue interface


def _methods(cls) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(getattr(cls, name)) for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize("implementation", [InlineQueue, HueyQueue, _EventsKept])
def test_each_queue_has_the_work_queue_methods_with_their_signatures(implementation):
    wanted = _methods(WorkQueue)
    assert set(wanted) == {"enqueue_job", "enqueue_webhook", "schedule_turn", "deliver_events", "schedule_send",
                           "enqueue_media", "schedule_followup",
                           "enqueue_sync"}
    have = _methods(implementation)
    assert {name: have.get(name) for name in wanted} == wanted


def test_services_start_with_the_inline_queue_and_the_app_puts_huey_there(sqlite_services):
    services = sqlite_services
    assert isinstance(services.queue, InlineQueue) and isinstance(services.queue, WorkQueue)
    create_app(services=services)
    assert isinstance(services.queue, HueyQueue) and isinstance(services.queue, WorkQueue)
    assert type(services.queue.huey.storage).__name__ == "SqliteStorage"


@pytest.fixture(params=["sqlite", "redis"])
def huey_services(request, tmp_path, embedders):
    """Services on the embedded (SQLite) huey and on the Redis one: the same HueyQueue, another storage."""
    if request.param == "sqlite":
        services = make_services(tmp_path / "home", embedders)
        yield services
        services.engine.dispose()
    else:
        yield request.getfixturevalue("redis_services")


def test_the_huey_queue_enqueues_each_kind_of_work(huey_services):
    services = huey_services
    services.queue = queue = HueyQueue.from_settings(services)
    expected = "PriorityRedisStorage" if services.settings.redis_url else "SqliteStorage"
    assert {type(h.storage).__name__ for h in (queue.huey, queue.ingest_huey)} == {expected}
    before = datetime.now(UTC).replace(tzinfo=None)  # huey's eta is naive UTC
    queue.enqueue_job("job-1")
    queue.enqueue_webhook("post-1")
    queue.schedule_turn("conversation-1", 30.0)
    queue.deliver_events(["event-1", "event-2"])
    pending = queue.huey.pending()  # nothing runs them: no consumer
    assert [(task.name, task.args[0]) for task in pending] == [
        ("whatsapp.process", "post-1"), ("whatsapp.turn", "conversation-1"), ("events.deliver", ["event-1", "event-2"])]
    assert [(task.name, task.args[0]) for task in queue.ingest_huey.pending()] == [("ingest.run_job", "job-1")]
    turn = pending[1]
    assert before + timedelta(seconds=30) <= turn.eta <= datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=30)
    assert before <= datetime.fromisoformat(turn.args[1]).replace(tzinfo=None) <= turn.eta  # when it was scheduled
    assert [task.eta for i, task in enumerate(pending) if i != 1] == [None, None]


def test_the_inline_queue_ingests_before_it_returns(sqlite_services):
    services = sqlite_services
    doc_id, job_id = _upload(services, "hours.txt", TEXT.encode())
    services.queue.enqueue_job(job_id)
    with services.session() as session:
        assert session.get(IngestJob, job_id).status == "ready"
        assert session.get(Document, doc_id).status == "ready"


@pytest.mark.parametrize("url, pool, overflow, workers, ingest, runs", [
    ("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", 8, 7, 16, 0, 7),  # the stalled bench worker: 15 for 33
    ("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", 16, 17, 16, 0, 16),  # 2 per turn thread + sweeps
    ("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", 16, 17, 16, 1, 15),
    ("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", 1, 1, 4, 0, 1),  # never none
    (None, 8, 8, 16, 0, 15),  # SQLite: one per thread (no advisory lock) + sweeps
    (None, 8, 9, 16, 0, 16),
])
def test_a_worker_runs_no_more_threads_than_its_pool_serves_and_says_so(tmp_path, caplog, url, pool, overflow, workers,
                                                                        ingest, runs):
    """Threads that each hold a connection while waiting for another stalled on a full pool for a minute at a time
    (seen in the scale bench: 16 threads on 15 connections); a worker runs what its pool can serve instead."""
    from atende.jobs import connections_needed, fit_to_pool
    from core.settings import Settings

    settings = Settings(home=tmp_path, database_url=url, db_pool_size=pool, db_max_overflow=overflow)
    with caplog.at_level("WARNING", logger="atende.jobs"):
        assert fit_to_pool(settings, workers, ingest) == runs
    assert ("ATENDE_DB_POOL_SIZE" in caplog.text) is (runs < workers)
    assert runs == 1 or connections_needed(settings, runs, ingest) <= pool + overflow


def test_customer_work_waiting_in_the_queue_goes_by_priority(huey_services):
    """Queued behind turns, a webhook post is taken first (its customer is marked read, its messages stored), then
    a send; turns after them, event delivery last; first in first out within a priority (SQLite and Redis)."""
    services = huey_services
    services.queue = queue = HueyQueue.from_settings(services)
    queue.deliver_events(["event-1"])
    queue._whatsapp_turn("conversation-1", "2026-01-01T00:00:00")
    queue._whatsapp_turn("conversation-2", "2026-01-01T00:00:00")
    queue.schedule_send("conversation-3", 0)
    queue.enqueue_webhook("post-1")
    taken = [queue.huey.dequeue() for _ in range(5)]
    assert [(t.name, t.args[0]) for t in taken] == [
        ("whatsapp.process", "post-1"), ("whatsapp.send", "conversation-3"), ("whatsapp.turn", "conversation-1"),
        ("whatsapp.turn", "conversation-2"), ("events.deliver", ["event-1"])]


def test_jobs_a_version_without_priorities_left_on_redis_are_taken_over_in_order(redis_services):
    """The queue was a Redis list before priorities (the same key, now a sorted set): its jobs move over, oldest
    first, when a process opens the queue."""
    from huey import RedisHuey

    from atende.jobs import CUSTOMER, make_huey, redis_queue_names

    settings = redis_services.settings
    old = RedisHuey(redis_queue_names(settings.redis_prefix)[CUSTOMER], url=settings.redis_url)

    @old.task(name="whatsapp.process")
    def process(post_id: str) -> None: ...

    for post_id in ("post-1", "post-2", "post-3"):
        process(post_id)
    conn, key = old.storage.conn, old.storage.queue_key
    assert conn.type(key) == b"list"
    oldest_first = list(reversed(conn.lrange(key, 0, -1)))
    assert [old.deserialize_task(m).args[0] for m in oldest_first] == ["post-1", "post-2", "post-3"]
    huey = make_huey(settings, CUSTOMER)
    assert conn.type(key) == b"zset"
    assert [huey.storage.dequeue() for _ in range(3)] == oldest_first and huey.storage.dequeue() is None
    old.storage.pool.disconnect()
