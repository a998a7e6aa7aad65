"""Customer work never waits behind ingestion, and ingestion has a time limit per document (atende/jobs.py,
ingest/pipeline.py Deadline): real app, real huey consumers on SQLite and on the loopback Redis, real ingestion of
real files; only Meta's Graph API is a local stand-in."""
from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from atende import cli
from atende.app import create_app
from atende.jobs import (
    CUSTOMER,
    INGEST,
    EmbeddedConsumer,
    HueyQueue,
    flush_redis_queues,
    make_huey,
    requeue_interrupted,
    start_embedded_consumer,
    start_embedded_consumers,
    worker_consumers,
)
from ingest.errors import IngestTimeLimitExceeded, ParseLimitExceeded
from ingest.pipeline import Deadline
from ingest.sandbox import ParseLimits
from kb import registry
from kb.embedders import EmbedderRegistry
from kb.models import Document, IngestJob
from kb.search import search
from runtime.models import Message
from runtime.whatsapp.models import WebhookPost
from runtime.whatsapp.standin import GraphStandIn, sign
from tests.conftest import (ADMIN_TOKEN, REDIS_URL, make_services, redis_client, requires_shared, shared_doc,
                            unique_redis_prefix)
from tests.factories import use_scripted_model
from tests.ingest.test_parse_limits import parse_children
from tests.factories import wait_until

SECRET, PHONE_ID, CUSTOMER_NUMBER = "app-secret-queues", "106540352242955", "5511912345678"
HOURS_V1 = ("Opening hours\n\nThe bakery opens at seven in the morning and closes at two in the afternoon on "
            "Sundays. Fresh sourdough bread comes out of the oven at eight every day.\n")


class GatedEmbedder:
    """The real embedder, whose ``embed_documents`` (ingestion's embedding step) can be held at a gate or slowed;
    queries (the turns' retrieval) pass straight through."""

    def __init__(self, real) -> None:
        self._real = real
        self.entered = threading.Event()  # an ingestion reached its embedding step
        self.release = threading.Event()
        self.release.set()
        self.sleep_s = 0.0  # the next embed_documents call first sleeps this long (once)
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._real, name)

    def embed_documents(self, texts, batch_size: int = 32):
        self.calls += 1
        self.entered.set()
        assert self.release.wait(timeout=300), "the test never released the ingestion"
        if self.sleep_s:
            time.sleep(self.sleep_s)
            self.sleep_s = 0.0
        return self._real.embed_documents(texts, batch_size=batch_size)


def gate_embeddings(services, embedders: EmbedderRegistry) -> GatedEmbedder:
    """Make ``services`` embed through a ``GatedEmbedder`` (in a registry of their own: the shared one stays)."""
    gated = GatedEmbedder(embedders.get(services.settings.embedding_model))
    services.embedders = EmbedderRegistry()
    services.embedders.put(gated)
    return gated




def text_payload(wamid: str, text: str) -> dict:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_ID},
             "contacts": [{"profile": {"name": "Ana"}, "wa_id": CUSTOMER_NUMBER}],
             "messages": [{"from": CUSTOMER_NUMBER, "id": wamid, "timestamp": str(int(time.time())), "type": "text",
                           "text": {"body": text}}]}
    return {"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [{"value": value, "field": "messages"}]}]}


def document_status(services, document_id: str) -> tuple[str, str | None]:
    with services.session() as session:
        doc = session.get(Document, document_id)
        job = session.scalars(select(IngestJob).where(IngestJob.document_id == document_id)
                              .order_by(IngestJob.created_at.desc())).first()
        return doc.status, job.status if job else None


# ------------------------------------------------------------------ a message is answered while a document ingests


@pytest.fixture(params=["sqlite", "redis"])
def profile(request, tmp_path, embedders):
    """(client, services, model, graph, gate): the real app with its embedded consumers on the embedded SQLite
    queues or on the loopback Redis, a WhatsApp sender, and ingestion's embedding step behind a gate."""
    extra = {}
    if request.param == "redis":
        redis_client().close()  # reachable (or skipped)
        extra = {"redis_url": REDIS_URL, "redis_prefix": unique_redis_prefix()}
    with GraphStandIn() as graph:
        services = make_services(tmp_path / "home", embedders, whatsapp_graph_url=graph.base_url,
                                 whatsapp_debounce_s=0.2, workers=1, ingest_workers=1, **extra)
        model = use_scripted_model(services)
        gate = gate_embeddings(services, embedders)
        try:
            with TestClient(create_app(services=services)) as client:
                client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
                client.post("/api/assistants", json={"name": "loja"}).raise_for_status()
                client.post("/api/whatsapp/senders", json={
                    "assistant_id": "loja", "phone_number_id": PHONE_ID, "display_phone_number": "15550001111",
                    "access_token": "token-xyz", "app_secret": SECRET, "verify_token": "verify-me"}).raise_for_status()
                expected = "PriorityRedisStorage" if extra else "SqliteStorage"
                assert {type(h.storage).__name__ for h in services.queue.hueys.values()} == {expected}
                yield client, services, model, graph, gate
                gate.release.set()  # never leave a worker at the gate
        finally:
            gate.release.set()
            services.engine.dispose()
            if extra:
                flush_redis_queues(REDIS_URL, extra["redis_prefix"])


@requires_shared
def test_a_whatsapp_message_is_answered_while_a_document_ingests(profile):
    client, services, model, graph, gate = profile
    gate.release.clear()
    r = client.post("/api/assistants/loja/documents",
                    files={"file": ("norwich-city.txt", shared_doc("txt/norwich-city.txt").read_bytes())})
    assert r.status_code == 202, r.text
    doc_id = r.json()["id"]
    assert gate.entered.wait(timeout=120), "the ingestion never reached its embedding step"
    assert document_status(services, doc_id) == ("processing", "processing")  # the ingest worker is held there

    model.enqueue("Abrimos às 9h.")
    raw = json.dumps(text_payload("wamid.during-ingest", "Que horas vocês abrem amanhã?")).encode()
    r = client.post("/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": sign(SECRET, raw),
                                                               "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    sent = wait_until(lambda: graph.sent, what="a reply sent to the customer")
    assert sent[0]["json"]["to"] == CUSTOMER_NUMBER and sent[0]["json"]["text"]["body"]

    def reply_status() -> str:  # the stand-in has the request a moment before the sender records Meta's answer
        with services.session() as session:
            return session.scalars(select(Message).where(Message.direction == "outbound")).one().status

    wait_until(lambda: reply_status() == "sent", 30, "the reply recorded as sent")
    with services.session() as session:
        assert session.scalars(select(WebhookPost)).one().processed
    # answered while the ingestion was still held at its embedding step
    assert document_status(services, doc_id) == ("processing", "processing")

    gate.release.set()
    assert wait_until(lambda: document_status(services, doc_id)[0] in ("ready", "failed"), timeout=300,
                    what="the document ingested") and document_status(services, doc_id) == ("ready", "ready")
    hits = client.post("/api/assistants/loja/search", json={"query": "Norwich City football club"}).json()["results"]
    assert hits and hits[0]["document_id"] == doc_id


# ------------------------------------------------------------------------------------ the time limit per document


def _upload(services, assistant, filename: str, data: bytes) -> tuple[str, str]:
    s = services.settings
    with services.session() as session:
        up = registry.register_upload(session, services.blobs, registry.get_assistant(session, assistant).knowledge_base,
                                      filename, data, s.max_upload_bytes)
        session.commit()
        return up.document.id, up.job.id


def _wait_for_job(services, job_id: str, timeout: float = 300.0) -> IngestJob:
    def done():
        with services.session() as session:
            job = session.get(IngestJob, job_id)
            return job if job.status in ("ready", "failed") else None
    return wait_until(done, timeout=timeout, what=f"job {job_id} finished")


@requires_shared
def test_a_document_over_the_time_limit_fails_and_the_worker_goes_on(sqlite_services, embedders):
    services = sqlite_services
    gate = gate_embeddings(services, embedders)
    services.queue = queue = HueyQueue.from_settings(services)
    s = services.settings
    with services.session() as session:
        registry.create_assistant(session, name="city", embedding_model=s.embedding_model, chunk_size=s.chunk_size,
                                  chunk_overlap=s.chunk_overlap)
        session.commit()
    consumer = start_embedded_consumer(queue.ingest_huey, 1)  # one ingest worker, as by default
    try:
        doc_id, job_id = _upload(services, "city", "guide.md", HOURS_V1.encode())
        queue.enqueue_job(job_id)  # version 1, within the default limit (it also warms the parsers)
        v1 = _wait_for_job(services, job_id)
        assert v1.status == "ready", v1.error

        s.ingest_timeout_s = 5.0  # read by each job
        gate.sleep_s = s.ingest_timeout_s  # the first embedding batch of version 2 outlasts the whole limit
        # a real document that parses in well under a second (norwich-city.txt would need ~5 s)
        _, job_id = _upload(services, "city", "guide.md", shared_doc("md/the-art-of-command-line-README-pt.md").read_bytes())
        queue.enqueue_job(job_id)
        _, next_job_id = _upload(services, "city", "hours-2.txt", HOURS_V1.replace("seven", "six").encode())
        queue.enqueue_job(next_job_id)  # queued behind it on the same (single) ingest worker

        v2 = _wait_for_job(services, job_id)
        assert v2.status == "failed"
        assert v2.error == "ingesting this document took longer than the limit of 5 s (ATENDE_INGEST_TIMEOUT_S)"
        assert v2.chunks_embedded > 0  # it failed half-written: after its first batch was in the vector store
        with services.session() as session:  # searched at once: the half-written version was never visible
            kb = registry.get_assistant(session, "city").knowledge_base
            hits = search(services, session, kb, "linha de comando", top_k=50)
        assert hits and {(h.document_id, h.version) for h in hits if h.document_id == doc_id} == {(doc_id, 1)}

        nxt = _wait_for_job(services, next_job_id)  # the worker went on with the next job
        assert nxt.status == "ready" and nxt.error is None and nxt.chunks_total > 0
        with services.session() as session:
            doc = session.get(Document, doc_id)
            assert (doc.status, doc.error, doc.current_version) == ("failed", v2.error, 1)
            versions = {v.version: v for v in doc.versions}
            assert versions[1].state == "current" and versions[2].state != "current"
            # the half-written version's chunks were purged (before the worker took the next job)
            assert services.vectors.count(kb.collection, versions[2].key) == 0
            assert services.vectors.count(kb.collection, versions[1].key) == v1.chunks_total
            assert services.vectors.count(kb.collection) == v1.chunks_total + nxt.chunks_total
    finally:
        consumer.stop(graceful=True)


@requires_shared
def test_the_time_limit_kills_a_parse_that_outlasts_it(sqlite_services):
    """The 872-page DOCX parses in ~30 s; a document limit of 1 s stops its parse child at the deadline."""
    services = sqlite_services
    services.settings.ingest_timeout_s = 1.0  # the parse limit (ATENDE_PARSE_TIMEOUT_S) stays 300 s
    s = services.settings
    with services.session() as session:
        registry.create_assistant(session, name="handbook", embedding_model=s.embedding_model,
                                  chunk_size=s.chunk_size, chunk_overlap=s.chunk_overlap)
        session.commit()
    _, job_id = _upload(services, "handbook", "handbook.docx", shared_doc("docx/handbook-872p.docx").read_bytes())
    services.queue.enqueue_job(job_id)  # the inline queue: the same run_job, in this thread
    with services.session() as session:
        job = session.get(IngestJob, job_id)
        assert job.status == "failed" and job.chunks_total == 0
        assert job.error == "ingesting this document took longer than the limit of 1 s (ATENDE_INGEST_TIMEOUT_S)"
    assert parse_children() == []


class SteppedClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_deadline_cuts_the_parse_limit_and_names_its_setting():
    clock = SteppedClock()
    deadline = Deadline(30.0, clock=clock)
    limits = ParseLimits(timeout_s=300.0, memory_mb=2048, max_inflated_mb=256, max_compression_ratio=100)
    assert deadline.parse_limits(limits) == ParseLimits(30.0, 2048, 256, 100)
    clock.now += 25.0
    assert deadline.parse_limits(limits).timeout_s == pytest.approx(5.0)
    assert deadline.parse_limits(ParseLimits(2.0, 2048, 256, 100)).timeout_s == 2.0  # the shorter one wins
    deadline.check()
    clock.now += 5.0
    with pytest.raises(IngestTimeLimitExceeded, match=r"^ingesting this document took longer than the limit of 30 s "
                                                      r"\(ATENDE_INGEST_TIMEOUT_S\)$"):
        deadline.check()
    with pytest.raises(IngestTimeLimitExceeded):
        deadline.parse_limits(limits)  # no parse starts once the time is up
    assert not issubclass(IngestTimeLimitExceeded, ParseLimitExceeded)
    assert Deadline(2.5, "re-embedding a.pdf", clock=clock).message.startswith("re-embedding a.pdf took longer than")


# ------------------------------------------------------------------------------------- `atende worker --queue`


def test_worker_queue_selection(sqlite_services, monkeypatch):
    services = sqlite_services
    queue = HueyQueue.from_settings(services)
    both = worker_consumers(queue, ("customer", "ingest"), 3, 2)
    assert [(c.huey, c.workers, type(c).__name__) for c in both] == [
        (queue.huey, 3, "WorkerConsumer"), (queue.ingest_huey, 2, "EmbeddedConsumer")]
    [ingest_only] = worker_consumers(queue, (INGEST,), 3, 2)
    assert (ingest_only.huey, ingest_only.workers, type(ingest_only).__name__) == (queue.ingest_huey, 2, "WorkerConsumer")
    [customer_only] = worker_consumers(queue, (CUSTOMER,), 4, 2)
    assert (customer_only.huey, customer_only.workers) == (queue.huey, 4)
    with pytest.raises(ValueError, match="unknown queue"):
        worker_consumers(queue, ("turns",), 1, 1)
    # the sweeps (periodic tasks) every ATENDE_RECOVERY_INTERVAL_S instead of huey's minute
    assert [c._create_scheduler().periodic_task_seconds for c in both] == [60, 60]
    assert [c._create_scheduler().periodic_task_seconds
            for c in worker_consumers(queue, ("customer", "ingest"), 1, 1, periodic_s=2)] == [2, 2]

    # the command line: --queue picks the hueys, --workers / --ingest-workers their threads
    services.settings.recovery_interval_s = 5  # ATENDE_RECOVERY_INTERVAL_S, passed to the consumers
    monkeypatch.setattr(cli, "_services", lambda args: services)
    ran: list[list] = []
    monkeypatch.setattr("atende.jobs.run_workers", lambda consumers: ran.append(consumers))
    for argv in (["worker"], ["worker", "--queue", "ingest", "--ingest-workers", "3"],
                 ["worker", "--queue", "customer", "--workers", "5"]):
        args = cli.build_parser().parse_args(argv)
        assert args.func(args) == 0
    assert [[(c.huey.name, c.workers, c._periodic_s) for c in consumers] for consumers in ran] == [
        [("atende", 1, 5), ("atende.ingest", 1, 5)], [("atende.ingest", 3, 5)], [("atende", 5, 5)]]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["worker", "--queue", "turns"])


def test_embedded_consumers_follow_the_worker_settings(sqlite_services):
    services = sqlite_services
    queue = HueyQueue.from_settings(services)
    s = services.settings
    cases = {(1, 1): [(queue.huey, 1), (queue.ingest_huey, 1)], (4, 2): [(queue.huey, 4), (queue.ingest_huey, 2)],
             (2, 0): [(queue.huey, 2)], (0, 3): []}  # workers=0: no embedded consumer at all
    for (workers, ingest_workers), expected in cases.items():
        consumers = start_embedded_consumers(queue, s.model_copy(update={"workers": workers,
                                                                        "ingest_workers": ingest_workers}))
        try:
            assert all(isinstance(c, EmbeddedConsumer) for c in consumers)
            assert [(c.huey, c.workers) for c in consumers] == expected
        finally:
            for c in consumers:
                c.stop(graceful=True)


# ----------------------------------------------------------------------------------------------------- requeue


@pytest.fixture(params=["sqlite", "redis"])
def queue_services(request, tmp_path, embedders):
    if request.param == "sqlite":
        services = make_services(tmp_path / "home", embedders)
        yield services
        services.engine.dispose()
    else:
        yield request.getfixturevalue("redis_services")


def _interrupted_work(services) -> tuple[list[str], str]:
    """Two jobs a stopped process left (one queued, one processing), one finished, and an unprocessed post."""
    s = services.settings
    with services.session() as session:
        a = registry.create_assistant(session, name="bakery", embedding_model=s.embedding_model,
                                      chunk_size=s.chunk_size, chunk_overlap=s.chunk_overlap)
        jobs = [registry.register_upload(session, services.blobs, a.knowledge_base, f"hours-{i}.txt",
                                         HOURS_V1.replace("seven", str(i)).encode(), s.max_upload_bytes).job
                for i in range(3)]
        jobs[1].status, jobs[2].status = "processing", "ready"
        post = WebhookPost(body=text_payload("wamid.requeued", "Oi"), body_sha256="0" * 64)
        session.add_all([post, WebhookPost(body={}, body_sha256="1" * 64, processed=True)])
        session.commit()
        return [j.id for j in jobs], post.id


def test_requeue_sends_jobs_to_the_ingest_queue_and_posts_to_the_customer_queue(queue_services):
    services = queue_services
    services.queue = queue = HueyQueue.from_settings(services)
    job_ids, post_id = _interrupted_work(services)
    assert requeue_interrupted(services) == 3
    assert sorted((t.name, t.args[0]) for t in queue.ingest_huey.pending()) == sorted(
        ("ingest.run_job", j) for j in job_ids[:2])
    assert [(t.name, t.args[0]) for t in queue.huey.pending()] == [("whatsapp.process", post_id)]
    with services.session() as session:
        assert [session.get(IngestJob, j).status for j in job_ids] == ["queued", "queued", "ready"]

    queue.ingest_huey.flush()
    queue.huey.flush()
    assert requeue_interrupted(services, jobs=False) == 1  # another process consumes the ingest queue
    assert queue.ingest_huey.pending_count() == 0 and queue.huey.pending_count() == 1


def test_the_embedded_app_requeues_interrupted_work_at_start_to_its_own_workers(sqlite_services):
    services = sqlite_services
    job_ids, post_id = _interrupted_work(services)
    with TestClient(create_app(services=services)):
        for job_id in job_ids[:2]:
            assert _wait_for_job(services, job_id).status == "ready"

        def processed():
            with services.session() as session:
                return session.get(WebhookPost, post_id).processed
        wait_until(processed, what="the interrupted post processed")


def test_a_job_on_the_customer_queue_from_before_the_split_is_forwarded_to_the_ingest_queue(sqlite_services):
    services = sqlite_services
    services.queue = queue = HueyQueue.from_settings(services)
    job_ids, _ = _interrupted_work(services)
    legacy = make_huey(services.settings, CUSTOMER)  # the one queue of the version before: the same storage

    def run_ingest_job(job_id: str) -> None:
        raise AssertionError("never run here")

    run_ingest_job.__module__ = "atende.jobs"  # huey names a task's messages by module and name
    legacy.task(name="ingest.run_job")(run_ingest_job)(job_ids[0])
    assert [(t.name, t.args[0]) for t in queue.huey.pending()] == [("ingest.run_job", job_ids[0])]
    [consumer] = start_embedded_consumers(queue, services.settings.model_copy(update={"ingest_workers": 0}))
    try:
        wait_until(lambda: queue.ingest_huey.pending_count() == 1, what="the job forwarded")
    finally:
        consumer.stop(graceful=True)
    assert [(t.name, t.args[0]) for t in queue.ingest_huey.pending()] == [("ingest.run_job", job_ids[0])]
    assert queue.huey.pending_count() == 0
