"""Recovery (runtime.recovery): owed work found in the database and queued again -- a turn whose process died
(its lease expired), messages no turn answered, a reply logged but never sent, an ingestion job whose worker died
-- with exactly one reply per burst however many sweeps run. Real database (SQLite and PostgreSQL), the local
Graph API stand-in counting sends, the time set through ``services.clock``."""
from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from kb import registry
from ingest.pipeline import run_job
from kb.models import Document, IngestJob, KnowledgeBase
from kb.vectorstore import ChromaVectorStore
from runtime import store
from runtime.models import Conversation, Message
from runtime.recovery import owed_work, recover
from runtime.whatsapp.graph import GraphClient
from runtime.whatsapp.models import WhatsAppSender
from runtime.whatsapp.standin import GraphStandIn
from runtime.whatsapp.turns import turn_lease_s
from tests.conftest import _postgres_database, make_services

PHONE_ID, CUSTOMER = "106540352242922", "5511987654321"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now



def whatsapp_conversation(services, clock) -> str:
    """A WhatsApp sender of a new assistant and its conversation with ``CUSTOMER``, the window open; its id."""
    with services.session() as session:
        a = registry.create_assistant(session, name="loja", embedding_model="all-minilm-l6-v2", chunk_size=128,
                                      chunk_overlap=16)
        session.add(WhatsAppSender(id="snd1", assistant_id=a.id, phone_number_id=PHONE_ID,
                                   access_token="token-xyz", app_secret="app-secret-rec", verify_token="v"))
        conv = store.find_or_create_conversation(session, assistant_id=a.id, channel="whatsapp", sender=PHONE_ID,
                                                 customer_id=CUSTOMER)
        conv.last_inbound_at = clock.now
        session.commit()
        return conv.id

@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'atende.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def world(tmp_path, embedders, database):
    """``(services, graph, clock, conversation_id)``: a WhatsApp conversation on the inline queue, sending to the
    Graph API stand-in."""
    clock = Clock()
    with GraphStandIn() as graph:
        services = make_services(tmp_path / "home", embedders, database, whatsapp_graph_url=graph.base_url)
        services.whatsapp_graph = GraphClient(graph.base_url, timeout_s=2, attempts=1)
        services.clock = clock
        conv_id = whatsapp_conversation(services, clock)
        yield services, graph, clock, conv_id
        services.close()
        services.engine.dispose()


def inbound(services, conv_id: str, text: str, age_s: float) -> str:
    """A customer's message stored ``age_s`` seconds ago and left pending, as if its turn never ran."""
    with services.session() as session:
        msg = store.store_inbound(session, session.get(Conversation, conv_id), text)
        msg.created_at = services.clock() - timedelta(seconds=age_s)
        session.commit()
        return msg.id


def status_of(services, message_id: str) -> str:
    with services.session() as session:
        return session.get(Message, message_id).status


def test_a_turn_whose_process_died_is_run_again_once_its_lease_expires(world):
    services, graph, clock, conv_id = world
    msg_id = inbound(services, conv_id, "hello", age_s=600)
    lease_s = turn_lease_s(services, conv_id)
    with services.session() as session:  # what a process killed mid-turn leaves: its lease, the message pending
        session.execute(update(Conversation).where(Conversation.id == conv_id).values(
            turn_lease_until=clock.now + timedelta(seconds=lease_s), turn_lease_owner="dead-host:4242:0badf00d"))
        session.commit()

    assert owed_work(services).turns == []  # the lease is live: the turn may still be running
    assert recover(services).turns == [] and graph.sent == []

    clock.now += timedelta(seconds=lease_s + 1)
    assert recover(services).turns == [conv_id]
    assert len(graph.sent) == 1 and status_of(services, msg_id) == "answered"
    with services.session() as session:
        conv = session.get(Conversation, conv_id)
        assert conv.turn_lease_until is None and conv.turn_lease_owner is None  # given back
    assert len(recover(services)) == 0 and len(graph.sent) == 1


def test_pending_messages_without_a_turn_are_answered_by_the_sweep(world):
    services, graph, clock, conv_id = world
    s = services.settings
    young = inbound(services, conv_id, "hello", age_s=s.whatsapp_debounce_max_s)  # its turn may be waiting
    assert owed_work(services).turns == []
    clock.now += timedelta(seconds=s.recovery_margin_s + 1)
    assert recover(services).turns == [conv_id]
    assert len(graph.sent) == 1 and status_of(services, young) == "answered"
    assert recover(services).turns == [] and len(graph.sent) == 1


def test_a_conversation_with_the_ai_off_is_not_owed_a_turn(world):
    services, graph, clock, conv_id = world
    inbound(services, conv_id, "hello", age_s=600)
    with services.session() as session:
        session.get(Conversation, conv_id).handoff_state = "with_human"
        session.commit()
    assert owed_work(services).turns == []


def test_a_reply_logged_but_never_sent_is_sent_once(world):
    """The process died between logging the turn and handing its reply to the outbox."""
    from runtime.turn import run_turn

    services, graph, clock, conv_id = world
    inbound(services, conv_id, "hello", age_s=600)
    result = run_turn(services, conv_id)  # logged, then "killed" before send_reply
    assert result is not None and result.message_id and graph.sent == []
    # past the margin after the reply was logged (real time: the turn took its time on a loaded machine)
    clock.now = datetime.now(UTC) + timedelta(seconds=services.settings.recovery_margin_s + 1)
    assert recover(services).turns == [conv_id]
    assert len(graph.sent) == 1
    assert recover(services).turns == [] and len(graph.sent) == 1


def test_concurrent_sweeps_give_one_reply(world):
    services, graph, clock, conv_id = world
    msg_ids = [inbound(services, conv_id, "hello", age_s=600), inbound(services, conv_id, "hi", age_s=590)]
    barrier, errors = threading.Barrier(3), []

    def sweep() -> None:
        try:
            barrier.wait()
            recover(services)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(graph.sent) == 1  # one reply for the burst
    assert {status_of(services, m) for m in msg_ids} == {"answered"}


def test_a_turn_leased_by_another_live_process_is_left_to_it_on_sqlite(world):
    from runtime.whatsapp.turns import answer_conversation

    services, graph, clock, conv_id = world
    if services.engine.dialect.name == "postgresql":
        pytest.skip("on PostgreSQL the advisory lock serializes turns across processes; the lease is taken over")
    msg_id = inbound(services, conv_id, "hello", age_s=600)
    with services.session() as session:
        session.execute(update(Conversation).where(Conversation.id == conv_id).values(
            turn_lease_until=clock.now + timedelta(seconds=30), turn_lease_owner="other-host:1:live"))
        session.commit()
    assert answer_conversation(services, conv_id) is None  # the other process's turn answers it
    assert graph.sent == [] and status_of(services, msg_id) == "received"


def upload(services, name: str) -> str:
    with services.session() as session:
        a = registry.get_assistant(session, "loja")
        job = registry.register_upload(session, services.blobs, a.knowledge_base, name,
                                       f"Opening hours of {name}: 9 to 18.".encode(), 10**6).job
        session.commit()
        return job.id


def test_a_stuck_ingestion_job_past_its_lease_is_queued_again_and_a_live_one_left_alone(world):
    services, graph, clock, _ = world
    dead, live = upload(services, "dead.txt"), upload(services, "live.txt")
    with services.session() as session:  # both claimed; one worker died, the other is still at it
        for job_id, lease in ((dead, clock.now - timedelta(seconds=1)), (live, clock.now + timedelta(seconds=60))):
            session.execute(update(IngestJob).where(IngestJob.id == job_id).values(
                status="processing", started_at=clock.now - timedelta(seconds=120), lease_until=lease))
        session.commit()
    owed = recover(services)  # the inline queue runs the job again at once
    assert owed.jobs == [dead]
    with services.session() as session:
        jobs = {j.id: j for j in session.scalars(select(IngestJob))}
        assert jobs[dead].status == "ready" and jobs[dead].lease_until is not None
        assert jobs[live].status == "processing"
    assert recover(services).jobs == []


def test_an_ingestion_that_cannot_reach_the_vector_store_waits_for_it_and_is_retried(world):
    services, graph, clock, _ = world
    job_id = upload(services, "hours.txt")
    reachable = services.vectors
    with socket.socket() as s:  # a port nothing listens on once closed: a Chroma server that is down
        s.bind(("127.0.0.1", 0))
        services.vectors = ChromaVectorStore(url=f"http://127.0.0.1:{s.getsockname()[1]}")
    job = run_job(services, job_id)
    assert (job.status, job.error) == ("processing", None)  # not failed: it waits for the store
    assert 0 < (job.lease_until - datetime.now(UTC)).total_seconds() <= services.settings.recovery_margin_s
    with services.session() as session:
        doc = session.get(Document, job.document_id)
        assert doc.status == "processing" and [v.state for v in doc.versions] == ["writing"]  # unseen by search

    services.vectors = reachable  # the store is back; the sweep queues the job once its short lease is over
    assert owed_work(services).jobs == []
    clock.now = job.lease_until + timedelta(seconds=1)
    assert recover(services).jobs == [job_id]
    with services.session() as session:
        job = session.get(IngestJob, job_id)
        doc = session.get(Document, job.document_id)
        assert (job.status, doc.status, [v.state for v in doc.versions]) == ("ready", "ready", ["current"])
        collection = session.get(KnowledgeBase, doc.knowledge_base_id).collection
        assert services.vectors.count(collection) == job.chunks_total > 0


def test_a_job_claimed_before_leases_existed_counts_from_its_start(world):
    services, graph, clock, _ = world
    old = upload(services, "old.txt")
    limit = services.settings.ingest_timeout_s + services.settings.recovery_margin_s
    with services.session() as session:
        session.execute(update(IngestJob).where(IngestJob.id == old).values(
            status="processing", started_at=clock.now - timedelta(seconds=limit - 5), lease_until=None))
        session.commit()
    assert owed_work(services).jobs == []
    clock.now += timedelta(seconds=10)
    assert owed_work(services).jobs == [old]


def test_on_redis_two_workers_sweeping_at_once_give_one_reply(redis_services):
    """The periodic sweep task of two workers runs at once on the Redis customer queue: one reply."""
    import time

    from atende.jobs import HueyQueue, start_embedded_consumer

    services = redis_services
    clock = Clock()
    services.clock = clock
    with GraphStandIn() as graph:
        services.whatsapp_graph = GraphClient(graph.base_url, timeout_s=2, attempts=1)
        services.queue = queue = HueyQueue.from_settings(services)
        conv_id = whatsapp_conversation(services, clock)
        msg_id = inbound(services, conv_id, "hello", age_s=600)
        queue.recovery_sweep()  # as two workers' schedulers would enqueue it
        queue.recovery_sweep()
        consumer = start_embedded_consumer(queue.huey, 2)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (status_of(services, msg_id) != "answered"
                                                   or queue.huey.pending_count()):
                time.sleep(0.05)
        finally:
            consumer.stop(graceful=True)
        assert status_of(services, msg_id) == "answered"
        assert len(graph.sent) == 1
        services.close()
