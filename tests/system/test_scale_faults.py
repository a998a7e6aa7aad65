"""Faults on real processes (tests/system/conftest.py's stacks): a worker killed mid-turn (at its model call,
during its send, and after claiming a send but before its request), the Graph API down, Redis restarted, the Chroma
server restarted during an ingestion, PostgreSQL restarted under load. Each test prints how long recovery took
(``RECOVERY <what>: <seconds>``; run with ``-s`` to see it) and checks that every customer got exactly one reply
and the knowledge base is consistent. Recovery runs on the settings of conftest.py's ``FAST``."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
import redis
import sqlalchemy as sa

from kb.vectorstore import ChromaVectorStore
from runtime.whatsapp.standin import status_body
from tests.conftest import _postgres_database, requires_shared
from tests.system.conftest import REPLY, Stack
from tests.system.stack import (
    PostgresCluster,
    Processes,
    api_process,
    atende,
    free_port,
    redis_server,
    wait_api,
    wait_chroma,
    wait_until,
)
from tests.system.world import (
    customer_number,
    deliver,
    message_body,
    messages,
    new_assistant,
    post_webhook,
    replies_to,
    search,
    upload,
)

ANSWERED_ONCE = [("inbound", "answered"), ("outbound", "sent")]


def report(what: str, seconds: float) -> None:
    print(f"\nRECOVERY {what}: {seconds:.1f}s", flush=True)


def answered_once(stack: Stack, graph, customers: list[str], timeout: float = 90.0) -> None:
    """Every one of ``customers`` got the reply, once, and their message is marked answered and the reply sent."""
    for customer in customers:
        wait_until(lambda c=customer: messages(stack.engine, c) == ANSWERED_ONCE, timeout, f"{customer} answered")
        assert replies_to(graph, customer) == [REPLY]


@pytest.fixture
def held_model(chat_hold):
    """Completions of the chat-model stand-in wait while the test holds them (``release()``)."""
    held = chat_hold.with_name(chat_hold.name + ".held")
    held.unlink(missing_ok=True)
    chat_hold.touch()

    class Hold:
        def wait_held(self) -> None:
            wait_until(held.exists, 60, "a turn at its model call")

        def release(self) -> None:
            chat_hold.unlink(missing_ok=True)

    yield Hold()
    chat_hold.unlink(missing_ok=True)
    held.unlink(missing_ok=True)


def test_a_worker_killed_mid_turn_is_replaced_and_the_customer_gets_one_reply(scale_stack: Stack, graph,
                                                                              held_model):
    stack = scale_stack
    worker = stack.workers["customer"]
    # the turn's lease: its deadline (3 s) + the recovery margin (1 s)
    number = new_assistant(stack.apis[0], "kill", config={"turn_deadline_s": 3})
    customer = customer_number()
    deliver(stack.apis[0], number, message_body(number, customer, "When do you open on Saturdays?"))
    held_model.wait_held()  # the worker's turn called the model and waits for its answer
    assert messages(stack.engine, customer) == [("inbound", "received")]

    killed = time.monotonic()
    worker.kill(signal.SIGKILL)
    worker.proc.wait(10)
    held_model.release()
    worker.start()  # restarted at once, as a supervisor does
    answered_once(stack, graph, [customer])
    report("worker killed mid-turn, restarted (lease 4 s, sweep every 2 s)", time.monotonic() - killed)


def test_a_worker_killed_while_its_reply_is_with_the_graph_api_sends_nothing_twice(scale_stack: Stack, graph):
    """Killed after the model call, during the send: Meta took the reply but the worker never heard back. The
    restarted worker sends nothing again; Meta's status webhook (echoing the part id) settles the reply."""
    stack = scale_stack
    worker = stack.workers["customer"]
    number = new_assistant(stack.apis[0], "kill-send", config={"turn_deadline_s": 3})
    customer = customer_number()
    graph.delay_next(60)  # Meta takes the next send and answers a minute later: the worker is dead by then
    deliver(stack.apis[0], number, message_body(number, customer, "When do you open on Saturdays?"))
    [send] = wait_until(lambda: [r for r in list(graph.sent) if (r["json"] or {}).get("to") == customer], 60,
                        "the reply at the Graph API")
    killed = time.monotonic()
    worker.kill(signal.SIGKILL)
    worker.proc.wait(10)
    worker.start()
    assert messages(stack.engine, customer) == [("inbound", "answered"), ("outbound", "pending")]

    raw = json.dumps(status_body(number.phone_id, "wamid.TAKEN", customer, "sent",
                                 callback_data=send["json"]["biz_opaque_callback_data"])).encode()
    deliver(stack.apis[-1], number, raw)
    wait_until(lambda: messages(stack.engine, customer) == ANSWERED_ONCE, 60, "the reply settled by Meta's status")
    report("worker killed during the send, settled by the status webhook", time.monotonic() - killed)
    time.sleep(3)  # the restarted worker's sweeps (every 2 s) pass over it: nothing is sent again
    assert len(replies_to(graph, customer)) == 1 and messages(stack.engine, customer) == ANSWERED_ONCE


@contextlib.contextmanager
def graph_unreachable(graph):
    """The Graph API's address drops new connections (a full accept queue: the kernel ignores the SYNs, like a
    firewall dropping packets): a send hangs at its connect, before any byte of its request has left."""
    port = urlsplit(graph.base_url).port
    graph.stop()  # its open connections cut too
    blocker = socket.socket()
    try:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", port))
        blocker.listen(0)  # never accepts: room for one connection, the filler's
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            yield
    finally:
        blocker.close()
        graph.start()


def _claimed_parts(engine: sa.Engine, customer: str) -> int:
    """The customer's reply parts claimed by a send under way (``claimed_until`` set, still open)."""
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT count(*) FROM message_parts p JOIN messages m ON m.id = p.message_id JOIN conversations c "
            "ON c.id = m.conversation_id WHERE c.customer_id = :customer AND p.claimed_until IS NOT NULL "
            "AND p.status IN ('pending', 'retrying')"), {"customer": customer}).scalar_one()


def test_a_worker_killed_after_claiming_a_send_before_its_request_left_sends_it_once(scale_stack: Stack, graph):
    """Killed between the claim of the reply's part and its request (held at the connect): Meta never got it. The
    part's send lease expires, it waits ``unknown`` for a status that never comes, then it is sent, once."""
    stack = scale_stack
    worker = stack.workers["customer"]
    number = new_assistant(stack.apis[0], "kill-claim", config={"turn_deadline_s": 3})
    customer = customer_number()
    with graph_unreachable(graph):
        deliver(stack.apis[0], number, message_body(number, customer, "When do you open on Saturdays?"))
        wait_until(lambda: _claimed_parts(stack.engine, customer) == 1, 60, "the reply's part claimed for its send")
        killed = time.monotonic()
        worker.kill(signal.SIGKILL)  # while its connect hangs: no request has left
        worker.proc.wait(10)
    worker.start()
    assert replies_to(graph, customer) == []
    assert messages(stack.engine, customer) == [("inbound", "answered"), ("outbound", "pending")]
    answered_once(stack, graph, [customer])
    report("worker killed after claiming a send, before its request (lease 7 s, status wait 3 s, sweep every 2 s)",
           time.monotonic() - killed)
    time.sleep(3)  # the sweeps (every 2 s) pass over it: nothing is sent again
    assert len(replies_to(graph, customer)) == 1 and messages(stack.engine, customer) == ANSWERED_ONCE


@pytest.mark.parametrize("customers", [2])
def test_replies_wait_out_a_graph_api_outage_and_go_out_once(profile: Stack, graph, customers):
    stack = profile
    number = new_assistant(stack.apis[0], "outage")
    people = [customer_number() for _ in range(customers)]
    graph.stop()
    try:
        for i, customer in enumerate(people):
            deliver(stack.apis[i % len(stack.apis)], number, message_body(number, customer, "Are you open today?"))
        # every reply was tried, failed, and waits for its next attempt (retried with backoff, not failed)
        wait_until(lambda: all(_part_attempts(stack.engine, c) >= 2 for c in people), 60, "two attempts each")
        assert all(replies_to(graph, c) == [] for c in people)
        assert all(("outbound", "failed") not in messages(stack.engine, c) for c in people)
    finally:
        graph.start()
    up = time.monotonic()
    answered_once(stack, graph, people)
    report(f"Graph API back up, {customers} replies delivered ({stack.name})", time.monotonic() - up)


def _part_attempts(engine: sa.Engine, customer: str) -> int:
    """The send attempts of the customer's reply's first part (0 before there is one)."""
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT COALESCE(MAX(p.attempts), 0) FROM message_parts p JOIN messages m ON m.id = p.message_id "
            "JOIN conversations c ON c.id = m.conversation_id WHERE c.customer_id = :customer"),
            {"customer": customer}).scalar_one()


@pytest.fixture
def private_redis_stack(tmp_path, scale_stack: Stack):
    """An API process and a customer worker on a redis-server of this test's own (which it may restart) and a
    database of their own (so no other worker's sweep does their work); ``(stack, redis child, port)``."""
    processes = Processes(tmp_path)
    port = free_port()
    database = _postgres_database()
    database_url = next(database)
    engine = sa.create_engine(database_url)
    try:
        server = redis_server(processes, port)
        env = {**scale_stack.env, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "DATABASE_URL": database_url}
        api, url = api_process(processes, "api", {**env, "ATENDE_WORKERS": "0"})
        worker = atende(processes, "worker-customer", ["worker", "--queue", "customer"], env)
        wait_api(api, url)
        yield Stack("private-redis", [url], engine, env, processes, {"customer": worker}), server, port
    finally:
        processes.stop_all()
        engine.dispose()
        database.close()


def test_nothing_owed_is_forgotten_when_redis_restarts(private_redis_stack, graph, held_model):
    stack, server, port = private_redis_stack
    number = new_assistant(stack.apis[0], "redis")
    first, *queued = people = [customer_number() for _ in range(3)]
    deliver(stack.apis[0], number, message_body(number, first, "When do you open?"))
    held_model.wait_held()  # the worker's one thread is in this turn; the next posts wait in Redis
    for customer in queued:
        deliver(stack.apis[0], number, message_body(number, customer, "When do you open?"))
    assert _unprocessed_posts(stack.engine) == len(queued)  # stored, and queued in Redis only

    server.kill(signal.SIGKILL)  # Redis goes away with what it held (nothing on disk)
    server.proc.wait(10)
    late = customer_number()
    people.append(late)
    # a post arriving now is stored, and Meta would be told to try again (5xx), which it is not here
    assert post_webhook(stack.apis[0], number, message_body(number, late, "When do you open?")) != 200
    restarted = time.monotonic()
    server.start()
    wait_until(redis.Redis(port=port).ping, 30, "redis up")
    held_model.release()
    answered_once(stack, graph, people)
    report("Redis restarted empty, 4 conversations answered", time.monotonic() - restarted)


def _unprocessed_posts(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT COUNT(*) FROM whatsapp_webhook_posts WHERE NOT processed")).scalar_one()


@requires_shared
def test_an_ingestion_cut_by_a_chroma_restart_is_retried_and_the_knowledge_base_is_consistent(scale_stack: Stack):
    stack = scale_stack
    number = new_assistant(stack.apis[0], "chroma", chunk_size=96)  # small chunks: 3 batches to cut between
    cups = upload(stack.apis[0], number.assistant_id, "csv/stanley-cups.csv")
    wait_until(lambda: _job(stack.engine, cups)[0] == "ready", 180, "the first document ingested")
    doc = upload(stack.apis[0], number.assistant_id, "txt/norwich-city.txt")
    wait_until(lambda: _job(stack.engine, doc)[1] > 0, 180, "the first chunks written")

    stack.chroma.kill(signal.SIGKILL)
    stack.chroma.proc.wait(10)
    status, written, total = _job(stack.engine, doc)
    assert status == "processing" and written < total  # cut half-way
    # down until the worker met it: the job then waits for the store (a short lease), it is not failed
    wait_until(lambda: _job(stack.engine, doc)[0] != "processing" or _lease_left_s(stack.engine, doc) < 60, 120,
               "the ingestion meets the store down")
    assert _job(stack.engine, doc)[0] == "processing"
    stack.chroma.start()
    wait_chroma(stack.chroma, stack.chroma_port)
    up = time.monotonic()
    wait_until(lambda: _job(stack.engine, doc)[0] in ("ready", "failed"), 120, "the job finished")  # via queued
    report("Chroma restarted mid-ingestion, the job retried to ready", time.monotonic() - up)

    status, written, total = _job(stack.engine, doc)
    assert (status, written) == ("ready", total)
    with stack.engine.connect() as conn:
        kb_id, collection = conn.execute(sa.text("SELECT id, collection FROM knowledge_bases WHERE assistant_id = :a"),
                                         {"a": number.assistant_id}).one()
        versions = conn.execute(sa.text("SELECT document_id, version, state, chunk_count FROM document_versions "
                                        "WHERE knowledge_base_id = :kb"), {"kb": kb_id}).all()
    assert sorted((d, v, s) for d, v, s, _ in versions) == sorted([(cups, 1, "current"), (doc, 1, "current")])
    store = ChromaVectorStore(url=stack.env["CHROMA_URL"])
    for document_id, version, _, chunk_count in versions:  # each version's chunks once, nothing else
        assert store.count(collection, f"{document_id}:{version}") == chunk_count
    assert store.count(collection) == sum(v[3] for v in versions)
    hits = search(stack.apis[-1], number.assistant_id, "Iwan Roberts Norwich City")
    assert hits and hits[0]["document_id"] == doc


def _lease_left_s(engine: sa.Engine, document_id: str) -> float:
    """Seconds until the lease of the document's latest job expires."""
    with engine.connect() as conn:
        until = conn.execute(sa.text("SELECT lease_until FROM ingest_jobs WHERE document_id = :d "
                                     "ORDER BY created_at DESC LIMIT 1"), {"d": document_id}).scalar_one()
    until = until.replace(tzinfo=until.tzinfo or UTC)
    return (until - datetime.now(UTC)).total_seconds()


def _job(engine: sa.Engine, document_id: str) -> tuple[str, int, int]:
    """(status, chunks embedded, chunks in all) of the document's latest ingestion job."""
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT status, chunks_embedded, chunks_total FROM ingest_jobs "
                                   "WHERE document_id = :d ORDER BY created_at DESC LIMIT 1"), {"d": document_id}).one()
    return row[0], row[1] or 0, row[2] or 0


@pytest.fixture
def private_postgres_stack(tmp_path, scale_stack: Stack):
    """An API process and a customer worker on a PostgreSQL cluster and a redis-server of this test's own;
    ``(stack, cluster)``."""
    processes = Processes(tmp_path)
    try:
        cluster = PostgresCluster(free_port())
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    engine = sa.create_engine(cluster.url, pool_pre_ping=True)
    try:
        port = free_port()
        redis_server(processes, port)
        env = {**scale_stack.env, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "DATABASE_URL": cluster.url}
        api, url = api_process(processes, "api", {**env, "ATENDE_WORKERS": "0"})
        worker = atende(processes, "worker-customer", ["worker", "--queue", "customer"], env)
        wait_api(api, url)
        yield Stack("private-postgres", [url], engine, env, processes, {"customer": worker}), cluster
    finally:
        processes.stop_all()
        engine.dispose()
        cluster.close()


def test_no_inbound_message_is_lost_when_postgresql_restarts_under_load(private_postgres_stack, graph):
    stack, cluster = private_postgres_stack
    api = stack.apis[0]
    number = new_assistant(api, "postgres")
    people = [customer_number() for _ in range(16)]
    refused: list[int] = []

    def meta() -> None:  # one message per customer, each posted again until acknowledged, as Meta redelivers
        for customer in people:
            raw = message_body(number, customer, "When do you open?")
            while (status := post_webhook(api, number, raw)) != 200:
                refused.append(status)
                time.sleep(0.2)
            time.sleep(0.1)

    load = threading.Thread(target=meta, daemon=True)
    load.start()
    wait_until(lambda: sum(bool(messages(stack.engine, c)) for c in people) >= 3, 60, "the first messages stored")
    cluster.stop("immediate")  # a crash: no shutdown checkpoint, the server recovers at its next start
    wait_until(lambda: refused, 30, "a post refused while the database is down")
    cluster.start()
    up = time.monotonic()
    load.join(120)
    assert not load.is_alive()
    answered_once(stack, graph, people)
    report(f"PostgreSQL restarted under load, {len(people)} messages answered", time.monotonic() - up)
    assert all(500 <= status < 600 for status in refused), refused  # "try again later", never a lost 200
