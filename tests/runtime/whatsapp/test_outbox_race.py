"""Two writers of one reply's parts at once (runtime.whatsapp.outbound.send_reply), on real SQLite and PostgreSQL
with real threads: the reply is stored in parts once and each part sent once.

Seen under load on PostgreSQL: a turn's worker sent its reply while another worker's turn of the same conversation
found that reply logged but not yet in the outbox (``runtime.whatsapp.turns.unsent_replies``) and sent it too;
both found no parts and both inserted part 0, and one died on the unique ``(message_id, position)``. The tests
force that interleaving: each writer is held just before its INSERT of parts until the other one reaches its own
INSERT too. Where only one writer can get there (the fix: the first holds the message until its parts are
committed), the hold ends after ``RENDEZVOUS_S`` and the first goes on alone; the assertions do not depend on it.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, select

from core.db import new_id
from runtime.models import Message, MessagePart, Turn
from runtime.whatsapp.outbound import send_reply
from runtime.whatsapp.standin import GraphStandIn
from runtime.whatsapp.turns import answer_conversation
from tests.conftest import _postgres_database
from tests.factories import use_scripted_model
from tests.runtime.whatsapp.test_outbox import Clock, open_services, setup_conversation, texts

RENDEZVOUS_S = 2.0  # how long a writer at its INSERT waits for the other: only a lower bound on the test's time
# a reply of three WhatsApp messages (split under 4096 characters)
LONG_REPLY = "\n\n".join(f"Paragraph {i}: " + "we open at nine in the morning, Monday to Saturday. " * 30
                         for i in range(6))


def _sqlite_database(tmp_path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'atende.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def outbox(request, tmp_path, embedders):
    """``(services, graph, conversation_id)`` on SQLite and on PostgreSQL: a WhatsApp conversation whose customer
    wrote just now; the chat model a scripted one that was told nothing (no turn may call it here)."""
    urls = _sqlite_database(tmp_path) if request.param == "sqlite" else _postgres_database()
    url = next(urls)
    clock = Clock()
    try:
        with GraphStandIn() as graph:
            services = open_services(tmp_path / "home", embedders, url, graph, clock)
            use_scripted_model(services)
            try:
                yield services, graph, setup_conversation(services, clock.now)
            finally:
                services.close()
                services.engine.dispose()
    finally:
        urls.close()  # drops the PostgreSQL database


def logged_reply(services, conv_id: str, text: str) -> str:
    """A turn's reply as ``runtime.store.log_turn`` leaves it, before ``send_reply``: answered, no parts."""
    with services.session() as session:
        turn = Turn(id=new_id(), conversation_id=conv_id, status="answered", finished_at=datetime.now(UTC))
        msg = Message(id=new_id(), conversation_id=conv_id, direction="outbound", text=text, status="answered",
                      turn_id=turn.id, created_at=datetime.now(UTC))
        session.add(turn)
        session.flush()  # the turn first (the message refers to it)
        session.add(msg)
        session.commit()
        return msg.id


@contextmanager
def meeting_at_the_parts_insert(engine) -> Iterator[None]:
    """Each thread's first INSERT of message parts waits (up to ``RENDEZVOUS_S``) for another thread to reach
    its own, so two writers that both decided to add parts insert them at the same time."""
    barrier = threading.Barrier(2, timeout=RENDEZVOUS_S)
    met: set[int] = set()

    def hold(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO MESSAGE_PARTS") and threading.get_ident() not in met:
            met.add(threading.get_ident())
            with suppress(threading.BrokenBarrierError):  # the other writer never got this far
                barrier.wait()

    event.listen(engine, "before_cursor_execute", hold)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", hold)


def run_together(*calls: Callable[[], object]) -> list[BaseException]:
    """Run ``calls`` in threads started together; the exceptions they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], object]) -> None:
        start.wait()
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a writer is still running after 120 s"
    return errors


def assert_stored_and_sent_once(services, graph, msg_id: str) -> None:
    with services.session() as session:
        parts = list(session.scalars(select(MessagePart).where(MessagePart.message_id == msg_id)
                                     .order_by(MessagePart.position)))
        status = session.get(Message, msg_id).status
    assert [p.position for p in parts] == [0, 1, 2]
    assert [p.status for p in parts] == ["sent"] * 3 and status == "sent"
    assert texts(graph) == [p.text for p in parts]  # each part once, in order
    assert [r["json"]["biz_opaque_callback_data"] for r in graph.sent] == [p.id for p in parts]


@pytest.mark.parametrize("other", [
    pytest.param(lambda services, conv_id, msg_id: send_reply(services, msg_id), id="two-senders"),
    # the case seen: the worker whose turn logged the reply sends it (``answer_conversation``'s last step) while
    # another worker's turn of the conversation (a recovery re-run, the next message's job) starts by sending the
    # replies it finds logged but not in the outbox
    pytest.param(lambda services, conv_id, msg_id: answer_conversation(services, conv_id), id="another-turn"),
])
def test_two_writers_of_one_reply_store_its_parts_once(outbox, other):
    services, graph, conv_id = outbox
    msg_id = logged_reply(services, conv_id, LONG_REPLY)
    with meeting_at_the_parts_insert(services.engine):
        errors = run_together(lambda: send_reply(services, msg_id), lambda: other(services, conv_id, msg_id))
    assert errors == []
    assert_stored_and_sent_once(services, graph, msg_id)
