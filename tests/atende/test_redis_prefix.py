"""Deployments sharing one Redis (``Settings.redis_prefix``, ``ATENDE_REDIS_PREFIX``): on the real test Redis, two
prefixes never see each other's jobs, and a deployment that sets none keeps the queue names it always had."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from atende.jobs import CUSTOMER, INGEST, HueyQueue, flush_redis_queues, make_huey, start_embedded_consumer
from core.settings import Settings
from kb.models import Document
from tests.atende.test_queue import TEXT, _upload, _wait_for_document
from tests.conftest import REDIS_URL, TEST_SECRETS, make_services, redis_client, unique_redis_prefix


@pytest.fixture
def two_deployments(tmp_path, embedders):
    """Two deployments (each its own SQLite data dir) on the one test Redis, each under a prefix of its own."""
    r = redis_client()
    prefixes = [unique_redis_prefix(), unique_redis_prefix()]
    deployments = []
    for name, prefix in zip(("a", "b"), prefixes, strict=True):
        services = make_services(tmp_path / name, embedders, redis_url=REDIS_URL, redis_prefix=prefix)
        services.queue = HueyQueue.from_settings(services)
        deployments.append(services)
    yield deployments, r
    for services in deployments:
        services.engine.dispose()
    for prefix in prefixes:
        flush_redis_queues(REDIS_URL, prefix)
    r.close()


def test_two_prefixes_on_one_redis_do_not_take_each_others_jobs(two_deployments):
    (a, b), r = two_deployments
    doc_a, job_a = _upload(a, "hours.txt", TEXT.encode())
    doc_b, job_b = _upload(b, "hours.txt", TEXT.encode())
    a.queue.enqueue_job(job_a)  # first in: a shared queue would hand it to b's consumer before b's own job
    b.queue.enqueue_job(job_b)
    a.queue.schedule_send("conversation-of-a", 3600)  # queued with its time (a consumer then holds it till then)
    assert [h.pending_count() for h in (a.queue.ingest_huey, b.queue.ingest_huey)] == [1, 1]
    assert [h.pending_count() for h in (a.queue.huey, b.queue.huey)] == [1, 0]
    keys = {k.decode() for k in r.keys("huey.*")}
    a_name, b_name = a.settings.redis_prefix, b.settings.redis_prefix
    assert {f"huey.redis.{a_name}ingest", f"huey.redis.{a_name}", f"huey.redis.{b_name}ingest"} <= keys

    consumer = start_embedded_consumer(b.queue.ingest_huey, 1)  # b's worker, alone on the shared Redis
    try:
        assert _wait_for_document(b, doc_b) == "ready"
    finally:
        consumer.stop(graceful=True)
    assert b.queue.ingest_huey.pending_count() == 0
    assert a.queue.ingest_huey.pending_count() == 1  # a's job was never b's to take
    with a.session() as session:
        assert session.get(Document, doc_a).status != "ready"

    consumer = start_embedded_consumer(a.queue.ingest_huey, 1)
    try:
        assert _wait_for_document(a, doc_a) == "ready"
    finally:
        consumer.stop(graceful=True)
    assert [h.pending_count() for h in (a.queue.huey, b.queue.huey)] == [1, 0]  # a's send stays a's

    b.queue.schedule_send("conversation-of-b", 3600)
    flush_redis_queues(REDIS_URL, a_name)  # emptying a's queues leaves b's alone
    assert [h.pending_count() for h in (a.queue.huey, b.queue.huey)] == [0, 1]


def test_without_a_prefix_the_queues_keep_the_names_they_always_had(tmp_path):
    settings = Settings(home=tmp_path, redis_url=REDIS_URL, **TEST_SECRETS)
    assert settings.redis_prefix == "atende"
    keys = {q: make_huey(settings, q).storage.queue_key for q in (CUSTOMER, INGEST)}
    assert keys == {CUSTOMER: "huey.redis.atende", INGEST: "huey.redis.atendeingest"}


@pytest.mark.parametrize("prefix", ["", "a.b", "a:b", "x" * 65, "stagingingest"])
def test_a_prefix_that_could_share_keys_with_another_is_refused(tmp_path, prefix):
    with pytest.raises(ValidationError, match="redis_prefix"):
        Settings(home=tmp_path, redis_url=REDIS_URL, redis_prefix=prefix, **TEST_SECRETS)


def test_the_prefix_is_read_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATENDE_REDIS_PREFIX", "staging")
    settings = Settings(home=tmp_path, redis_url=REDIS_URL, **TEST_SECRETS)
    assert make_huey(settings, CUSTOMER).storage.queue_key == "huey.redis.staging"
    assert make_huey(settings, INGEST).storage.queue_key == "huey.redis.stagingingest"
