"""Background jobs through a real Redis queue (huey's RedisHuey) and a real consumer thread."""
from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

import pytest

from atende.jobs import make_huey, start_embedded_consumer
from kb import registry
from kb.models import Document, IngestJob
from kb.search import search
from tests.conftest import REDIS_URL, make_services

TEXT = (
    "Opening hours\n\n"
    "The bakery opens at seven in the morning and closes at two in the afternoon on Sundays. "
    "Fresh sourdough bread comes out of the oven at eight every day.\n"
)


def _redis():
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    return client


@pytest.fixture
def redis_services(tmp_path, embedders):
    r = _redis()
    r.flushdb()
    services = make_services(tmp_path / "home", embedders, redis_url=REDIS_URL)
    yield services
    services.engine.dispose()
    r.flushdb()
    r.close()


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
    huey = make_huey(services)
    assert type(huey.storage).__name__ == "RedisStorage"
    doc_id, job_id = _upload(services, "hours.txt", TEXT.encode())
    services.enqueue(job_id)
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
    huey = make_huey(services)
    executions: list[tuple[str, datetime]] = []
    lock = threading.Lock()

    @huey.signal()
    def record(signal, task, *args, **kwargs):
        with lock:
            executions.append((signal, datetime.now(UTC)))

    doc_id, job_id = _upload(services, "hours.txt", TEXT.encode())
    services.enqueue(job_id)
    services.enqueue(job_id)
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
