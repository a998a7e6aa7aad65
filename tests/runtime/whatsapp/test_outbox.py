"""The WhatsApp outbox (runtime.whatsapp.outbound): every send stored before it goes out, retried with backoff
while Meta's rules allow, never sent twice, failed with the reason; sent to the local Graph API stand-in (the real
GraphClient over HTTP), with the time set through ``services.clock`` instead of waiting."""
from __future__ import annotations

import json
import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import build_app
from atende.jobs import HueyQueue, requeue_interrupted
from core.db import new_id
from kb import registry
from runtime.models import Conversation, Message, MessagePart
from runtime.queue import InlineQueue
from runtime.store import find_or_create_conversation
from runtime.whatsapp.graph import GraphClient
from runtime.whatsapp.inbound import accept_post, process_post
from runtime.whatsapp.models import WhatsAppSender, WhatsAppTemplate
from runtime.whatsapp.outbound import (LAST_TRY_MARGIN, WAITING, _claim, due_conversations, retry_delay_s, send_due,
                                       send_lease_s, send_reply, send_template, settle_dead_claims)
from runtime.whatsapp.standin import GraphStandIn, sign, status_body
from tests.conftest import ADMIN_TOKEN, _postgres_database, make_services

PHONE_ID, CUSTOMER = "106540352242922", "5511987654321"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def open_services(home, embedders, url: str, graph: GraphStandIn, clock: Clock, **settings):
    """Services on ``url`` sending to ``graph`` with one HTTP attempt per send (no quick in-client retries)."""
    services = make_services(home, embedders, url, whatsapp_graph_url=graph.base_url, **settings)
    services.whatsapp_graph = GraphClient(graph.base_url, timeout_s=2, attempts=1)
    services.clock = clock
    return services


@pytest.fixture(params=["sqlite"])
def database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'atende.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def outbox(tmp_path, embedders, database):
    """``(services, graph, clock, conversation_id)``: a WhatsApp conversation whose customer wrote just now."""
    clock = Clock()
    with GraphStandIn() as graph:
        services = open_services(tmp_path / "home", embedders, database, graph, clock)
        conv_id = setup_conversation(services, clock.now)
        yield services, graph, clock, conv_id
        services.close()
        services.engine.dispose()


def setup_conversation(services, last_inbound_at: datetime) -> str:
    with services.session() as session:
        a = registry.create_assistant(session, name="loja", embedding_model="all-minilm-l6-v2", chunk_size=128,
                                      chunk_overlap=16)
        session.add(WhatsAppSender(id="snd1", assistant_id=a.id, phone_number_id=PHONE_ID, access_token="token-xyz",
                                   app_secret="app-secret-outbox", verify_token="v"))
        conv = find_or_create_conversation(session, assistant_id=a.id, channel="whatsapp", sender=PHONE_ID,
                                           customer_id=CUSTOMER)
        conv.last_inbound_at = last_inbound_at
        session.commit()
        return conv.id


def reply(services, conv_id: str, text: str) -> str:
    """An AI reply stored by a turn, then sent (``send_reply``); its id."""
    with services.session() as session:
        msg = Message(id=new_id(), conversation_id=conv_id, direction="outbound", text=text, status="answered",
                      created_at=datetime.now(UTC))
        session.add(msg)
        session.commit()
    send_reply(services, msg.id)
    return msg.id


def message(services, message_id: str) -> Message:
    with services.session() as session:
        msg = session.get(Message, message_id)
        msg.parts  # noqa: B018
        return msg


def due_at(services, message_id: str) -> datetime:
    (due,) = [p.next_attempt_at for p in message(services, message_id).parts if p.next_attempt_at is not None]
    return due


def texts(graph) -> list[str]:
    return [r["json"]["text"]["body"] if r["json"]["type"] == "text" else r["json"]["template"]["name"]
            for r in graph.sent]


# ------------------------------------------------------------------------------------------- retried until sent


@pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
def test_graph_down_for_several_attempts_then_up_delivers_exactly_once(outbox):
    services, graph, clock, conv_id = outbox
    graph.fail_next(status=503, times=3)
    msg_id = reply(services, conv_id, "Abrimos às 9h.")
    msg = message(services, msg_id)
    assert msg.status == "retrying" and msg.error_code == 131016 and "Service unavailable" in msg.error_title
    assert send_due(services) == 0 and len(graph.sent) == 1  # not due yet: nothing sent
    waits = []
    for _ in range(3):
        due = due_at(services, msg_id)
        waits.append((due - clock.now).total_seconds())
        clock.now = due
        assert send_due(services) == 1
    msg = message(services, msg_id)
    assert msg.status == "sent" and msg.channel_message_id.startswith("wamid.") and msg.error_title is None
    assert [p.attempts for p in msg.parts] == [4] and msg.parts[0].next_attempt_at is None
    first = services.settings.whatsapp_retry_first_delay_s
    for i, wait in enumerate(waits):  # doubling, with jitter: between half and all of the full delay
        assert first * 2 ** i / 2 <= wait <= first * 2 ** i
    assert texts(graph) == ["Abrimos às 9h."] * 4
    assert {r["json"]["biz_opaque_callback_data"] for r in graph.sent} == {msg.parts[0].id}
    clock.now += timedelta(hours=5)
    assert send_due(services) == 0 and len(graph.sent) == 4  # delivered once, never again


def test_a_long_reply_resumes_at_the_part_that_failed(outbox):
    services, graph, clock, conv_id = outbox
    graph.delay_next(0)  # the first part goes through ...
    graph.fail_next(status=502)  # ... the second meets an outage
    msg_id = reply(services, conv_id, "Parágrafo. " + "texto " * 800)
    parts = message(services, msg_id).parts
    n = len(parts)
    assert n >= 2 and [p.status for p in parts] == ["sent", "retrying"] + ["pending"] * (n - 2)
    assert message(services, msg_id).status == "retrying"
    assert [p.next_attempt_at is not None for p in parts] == [False, True] + [False] * (n - 2)  # one part due
    clock.now = parts[1].next_attempt_at
    assert send_due(services) == n - 1
    msg = message(services, msg_id)
    assert [p.status for p in msg.parts] == ["sent"] * n and msg.status == "sent"
    assert [r["json"]["biz_opaque_callback_data"] for r in graph.sent] == [p.id for p in parts[:2]] + [
        p.id for p in parts[1:]]


@pytest.mark.parametrize("status, code", [(429, None), (400, 130429), (400, 131056)])
def test_rate_limits_are_retried(outbox, status, code):
    services, graph, clock, conv_id = outbox
    graph.fail_next(status=status, error_code=code, message="Rate limit hit")
    msg_id = reply(services, conv_id, "Olá")
    assert message(services, msg_id).status == "retrying"
    clock.now = due_at(services, msg_id)
    assert send_due(services) == 1 and message(services, msg_id).status == "sent" and len(graph.sent) == 2


def test_a_connection_refused_is_retried(tmp_path, embedders):
    clock = Clock()
    with GraphStandIn() as graph:
        services = open_services(tmp_path / "home", embedders, f"sqlite:///{tmp_path / 'a.db'}", graph, clock)
        conv_id = setup_conversation(services, clock.now)
        services.whatsapp_graph = GraphClient("http://127.0.0.1:9", timeout_s=1, attempts=1)  # nothing listens
        msg_id = reply(services, conv_id, "Olá")
        msg = message(services, msg_id)
        assert msg.status == "retrying" and "could not connect" in msg.error_title
        services.whatsapp_graph = GraphClient(graph.base_url, timeout_s=2, attempts=1)  # Meta is back
        clock.now = due_at(services, msg_id)
        assert send_due(services) == 1 and message(services, msg_id).status == "sent" and len(graph.sent) == 1
        services.engine.dispose()


# ------------------------------------------------------------------------------------------- failed with a reason


def test_an_invalid_recipient_fails_at_once_with_the_reason(outbox):
    services, graph, clock, conv_id = outbox
    graph.fail_next(status=400, error_code=131030, message="Recipient phone number not in allowed list",
                    details="Add recipient phone number to recipient list and try again.")
    msg_id = reply(services, conv_id, "Olá")
    msg = message(services, msg_id)
    assert msg.status == "failed" and msg.error_code == 131030 and "not in allowed list" in msg.error_title
    assert msg.parts[0].attempts == 1 and msg.parts[0].next_attempt_at is None
    clock.now += timedelta(minutes=30)
    assert send_due(services) == 0 and len(graph.sent) == 1
    with services.session() as session:  # the alert: the conversation is flagged for a person
        assert "not in allowed list" in session.get(Conversation, conv_id).handoff["reason"]


def test_the_window_closing_during_the_outage_fails_the_reply_with_that_reason(tmp_path, embedders):
    clock = Clock()
    with GraphStandIn() as graph:
        services = open_services(tmp_path / "home", embedders, f"sqlite:///{tmp_path / 'a.db'}", graph, clock)
        window_end = clock.now + timedelta(minutes=20)
        conv_id = setup_conversation(services, window_end - timedelta(hours=24))
        graph.fail_next(status=500, times=1000)  # down for good
        msg_id = reply(services, conv_id, "Olá")
        while message(services, msg_id).status == "retrying":
            due = due_at(services, msg_id)
            assert due <= window_end - LAST_TRY_MARGIN  # never due past the window
            clock.now = due
            assert send_due(services) == 1
        msg = message(services, msg_id)
        assert msg.status == "failed" and "24-hour window closed" in msg.error_title
        assert "Something went wrong" in msg.error_title  # the last error, kept in the reason
        tried = len(graph.sent)
        assert tried == msg.parts[0].attempts >= 3
        clock.now = window_end + timedelta(hours=1)
        assert send_due(services) == 0 and len(graph.sent) == tried
        services.close()
        services.engine.dispose()


def test_a_retry_found_due_after_the_window_closed_is_not_sent(outbox):
    services, graph, clock, conv_id = outbox
    with services.session() as session:
        session.get(Conversation, conv_id).last_inbound_at = clock.now - timedelta(hours=23)
        session.commit()
    graph.fail_next(status=503)
    msg_id = reply(services, conv_id, "Olá")
    clock.now += timedelta(hours=2)  # the process was down all that time
    assert send_due(services) == 0 and len(graph.sent) == 1
    msg = message(services, msg_id)
    assert msg.status == "failed" and "24-hour window closed" in msg.error_title
    assert msg.parts[0].attempts == 1  # no send tried after the window


def test_retries_stop_after_the_retry_period(tmp_path, embedders):
    clock = Clock()
    with GraphStandIn() as graph:
        services = open_services(tmp_path / "home", embedders, f"sqlite:///{tmp_path / 'a.db'}", graph, clock,
                                 whatsapp_retry_for_s=900)
        conv_id = setup_conversation(services, clock.now)
        graph.fail_next(status=503, times=1000)
        msg_id = reply(services, conv_id, "Olá")
        while message(services, msg_id).status == "retrying":
            clock.now = due_at(services, msg_id)
            send_due(services)
        msg = message(services, msg_id)
        assert msg.status == "failed" and "within 0.25 h" in msg.error_title
        assert clock.now - msg.parts[0].created_at < timedelta(seconds=900)
        services.close()
        services.engine.dispose()


# ------------------------------------------------------------------------------------------- never duplicated


def test_a_send_that_timed_out_is_unknown_and_never_retried(outbox):
    services, graph, clock, conv_id = outbox
    services.whatsapp_graph = GraphClient(graph.base_url, timeout_s=0.3, attempts=1)
    graph.delay_next(1.0)
    msg_id = reply(services, conv_id, "Olá")
    msg = message(services, msg_id)
    assert msg.status == "unknown" and msg.parts[0].next_attempt_at is None
    clock.now += timedelta(hours=1)
    assert send_due(services) == 0 and len(graph.sent) == 1


def test_a_part_claimed_by_another_worker_is_not_sent_again(outbox):
    services, graph, clock, conv_id = outbox
    graph.fail_next(status=503)
    msg_id = reply(services, conv_id, "Olá")
    clock.now = due_at(services, msg_id)
    with services.session() as session:  # another worker took it (and may have died mid-send)
        part = session.scalars(select(MessagePart).where(MessagePart.message_id == msg_id)).one()
        assert _claim(session, part, clock.now, lease_s=60, force=False)
        assert not _claim(session, part, clock.now, lease_s=60, force=True)  # a part is claimed once
    assert send_due(services) == 0 and len(graph.sent) == 1


def claimed_by_a_dying_worker(services, graph, clock, conv_id) -> tuple[str, str]:
    """A reply whose first send failed (503), then claimed for its retry by a worker that died before sending:
    ``(message id, part id)``; the clock is at the claim."""
    graph.fail_next(status=503)
    msg_id = reply(services, conv_id, "Abrimos às 9h.")
    clock.now = due_at(services, msg_id)
    with services.session() as session:
        part = session.scalars(select(MessagePart).where(MessagePart.message_id == msg_id)).one()
        assert _claim(session, part, clock.now, lease_s=send_lease_s(services), force=False)
        return msg_id, part.id


def part_of(services, msg_id: str) -> MessagePart:
    (part,) = message(services, msg_id).parts
    return part


@pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
def test_a_send_whose_worker_died_is_unknown_then_sent_again_once_if_meta_never_reports_it(outbox):
    services, graph, clock, conv_id = outbox
    msg_id, part_id = claimed_by_a_dying_worker(services, graph, clock, conv_id)
    lease, wait = send_lease_s(services), services.settings.whatsapp_status_wait_s
    assert part_of(services, msg_id).claimed_until == clock.now + timedelta(seconds=lease)
    clock.now += timedelta(seconds=lease - 1)  # the sender may still be sending: left alone
    assert send_due(services) == 0 and settle_dead_claims(services) == 0
    assert part_of(services, msg_id).status == "retrying" and part_of(services, msg_id).next_attempt_at is None

    clock.now += timedelta(seconds=1)  # its lease expired: it may have reached Meta, so it is not sent yet
    assert send_due(services) == 0 and len(graph.sent) == 1
    part = part_of(services, msg_id)
    assert (part.status, part.claimed_until) == ("unknown", None) and message(services, msg_id).status == "unknown"
    assert part.next_attempt_at == clock.now + timedelta(seconds=wait) and "sender stopped" in part.error_title
    assert settle_dead_claims(services) == 0  # settled once, however many sweeps

    clock.now += timedelta(seconds=wait - 1)
    assert send_due(services) == 0 and len(graph.sent) == 1
    clock.now += timedelta(seconds=1)  # no status from Meta: it never got it, sent again
    assert send_due(services) == 1
    part = part_of(services, msg_id)
    assert part.status == "sent" and part.channel_message_id.startswith("wamid.") and part.claimed_until is None
    assert part.attempts == 3 and message(services, msg_id).status == "sent"
    assert [r["json"]["biz_opaque_callback_data"] for r in graph.sent] == [part_id, part_id]
    assert texts(graph) == ["Abrimos às 9h."] * 2  # the failed first try (503), then the one delivered
    clock.now += timedelta(hours=1)
    assert send_due(services) == 0 and len(graph.sent) == 2


@pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
def test_a_send_whose_worker_died_after_meta_took_it_is_settled_by_the_status_and_not_sent_again(outbox):
    services, graph, clock, conv_id = outbox
    msg_id, part_id = claimed_by_a_dying_worker(services, graph, clock, conv_id)
    clock.now += timedelta(seconds=send_lease_s(services))
    assert send_due(services) == 0 and part_of(services, msg_id).status == "unknown"
    # Meta took the request before the worker died: its status echoes the part id
    raw = json.dumps(status_body(PHONE_ID, "wamid.TAKEN", CUSTOMER, "sent", callback_data=part_id)).encode()
    process_post(services, accept_post(services, raw, sign("app-secret-outbox", raw)).id)
    clock.now += timedelta(seconds=services.settings.whatsapp_status_wait_s + 1)
    assert send_due(services) == 0 and settle_dead_claims(services) == 0 and len(graph.sent) == 1
    part = part_of(services, msg_id)
    assert (part.status, part.channel_message_id) == ("sent", "wamid.TAKEN")
    assert message(services, msg_id).status == "sent"


def test_a_live_send_that_outlasts_its_lease_records_its_own_outcome(outbox):
    """A sweep takes a slow live send for a dead one (``unknown``): its answer, when it comes, is what counts."""
    services, graph, clock, conv_id = outbox
    graph.delay_next(1.5)  # Meta answers late (under the client's 2 s timeout)
    moved: list[int] = []

    def sweep_once_the_request_is_with_meta():
        wait_for = datetime.now(UTC) + timedelta(seconds=10)
        while not graph.sent and datetime.now(UTC) < wait_for:
            threading.Event().wait(0.01)
        clock.now += timedelta(seconds=send_lease_s(services) + 1)
        moved.append(settle_dead_claims(services))

    sweeper = threading.Thread(target=sweep_once_the_request_is_with_meta)
    sweeper.start()
    msg_id = reply(services, conv_id, "Olá")
    sweeper.join()
    assert moved == [1]  # the sweep found the claim expired while the request was with Meta
    part = part_of(services, msg_id)
    assert part.status == "sent" and part.channel_message_id.startswith("wamid.") and part.claimed_until is None
    clock.now += timedelta(hours=1)
    assert send_due(services) == 0 and len(graph.sent) == 1


# ------------------------------------------------------------------------------------------- order, templates


def test_a_newer_reply_waits_behind_a_retrying_one_and_both_go_in_order(outbox):
    services, graph, clock, conv_id = outbox
    graph.fail_next(status=503, times=2)
    first = reply(services, conv_id, "primeira")
    second = reply(services, conv_id, "segunda")  # tries the first again (still down); the second waits
    assert texts(graph) == ["primeira", "primeira"]
    waiting = message(services, second)
    assert waiting.status == "pending" and waiting.error_title == WAITING
    assert due_at(services, second) == due_at(services, first)
    clock.now = due_at(services, first)
    assert due_conversations(services) == [conv_id]
    assert send_due(services) == 2
    assert texts(graph) == ["primeira", "primeira", "primeira", "segunda"]
    assert message(services, first).status == message(services, second).status == "sent"
    assert message(services, second).error_title is None


def test_a_new_reply_retries_the_older_one_first(outbox):
    services, graph, clock, conv_id = outbox
    graph.fail_next(status=503)
    first = reply(services, conv_id, "primeira")
    second = reply(services, conv_id, "segunda")  # Meta is back: the older one goes first, then this one
    assert texts(graph) == ["primeira", "primeira", "segunda"]
    assert message(services, first).status == message(services, second).status == "sent"


def test_a_template_is_retried_even_outside_the_window(outbox):
    services, graph, clock, conv_id = outbox
    with services.session() as session:
        session.get(Conversation, conv_id).last_inbound_at = clock.now - timedelta(days=3)
        session.add(WhatsAppTemplate(sender_id="snd1", name="retomar", language="pt_BR", category="UTILITY",
                                     status="APPROVED", body="Olá {{1}}, podemos ajudar?"))
        session.commit()
    graph.fail_next(status=500)
    msg = send_template(services, sender_id="snd1", customer_id=CUSTOMER, name="retomar", language="pt_BR",
                        parameters=["Ana"])
    assert msg.status == "retrying"
    clock.now = due_at(services, msg.id)
    assert send_due(services) == 1 and message(services, msg.id).status == "sent"
    assert [r["json"]["type"] for r in graph.sent] == ["template", "template"]
    assert graph.sent[-1]["json"]["template"]["components"][0]["parameters"] == [{"type": "text", "text": "Ana"}]


# ------------------------------------------------------------------------------------------- restart and queues


def test_the_sweep_sends_due_entries_after_a_restart(tmp_path, embedders):
    clock = Clock()
    url = f"sqlite:///{tmp_path / 'atende.db'}"
    with GraphStandIn() as graph:
        services = open_services(tmp_path / "home", embedders, url, graph, clock)
        conv_id = setup_conversation(services, clock.now)
        graph.fail_next(status=503)
        msg_id = reply(services, conv_id, "Olá")
        services.close()
        services.engine.dispose()  # the process stops

        clock.now += timedelta(minutes=5)
        restarted = open_services(tmp_path / "home", embedders, url, graph, clock)
        scheduled: list[tuple[str, float]] = []

        class Recorded(InlineQueue):
            def schedule_send(self, conversation_id: str, delay_s: float) -> None:
                scheduled.append((conversation_id, delay_s))

        restarted.queue = Recorded(restarted)
        assert requeue_interrupted(restarted) == 1 and scheduled == [(conv_id, 0)]  # at start-up, through the queue
        assert send_due(restarted, conv_id) == 1
        assert message(restarted, msg_id).status == "sent" and len(graph.sent) == 2
        assert send_due(restarted) == 0 and len(graph.sent) == 2
        restarted.close()
        restarted.engine.dispose()


def test_the_huey_queue_schedules_the_retry_on_the_customer_queue(tmp_path, embedders):
    clock = Clock()
    with GraphStandIn() as graph:
        services = open_services(tmp_path / "home", embedders, f"sqlite:///{tmp_path / 'a.db'}", graph, clock)
        services.queue = queue = HueyQueue.from_settings(services)
        assert "whatsapp.send_due" in {t.name for t in queue.huey._registry.periodic_tasks}
        conv_id = setup_conversation(services, clock.now)
        graph.fail_next(status=503)
        before = datetime.now(UTC).replace(tzinfo=None)  # huey's eta is naive UTC
        msg_id = reply(services, conv_id, "Olá")
        delay = (due_at(services, msg_id) - clock.now).total_seconds()
        (task,) = queue.huey.pending()  # the consumer holds it until its eta
        assert task.name == "whatsapp.send" and task.args == (conv_id,)
        assert before + timedelta(seconds=delay - 1) <= task.eta <= datetime.now(UTC).replace(tzinfo=None) + timedelta(
            seconds=delay)
        assert queue.ingest_huey.scheduled() == [] and queue.ingest_huey.pending() == []
        clock.now = due_at(services, msg_id)
        task.execute()  # what the consumer runs when it is due
        assert message(services, msg_id).status == "sent"
        queue.whatsapp_send_due.call_local()  # the periodic sweep: nothing left
        assert len(graph.sent) == 2
        services.close()
        services.engine.dispose()


# ------------------------------------------------------------------------------------------- visible


def test_the_conversation_api_and_metrics_show_the_retry(outbox):
    services, graph, clock, conv_id = outbox
    graph.fail_next(status=503)
    msg_id = reply(services, conv_id, "Olá")
    with TestClient(build_app(services, "test")) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        (out,) = [m for m in client.get(f"/api/conversations/{conv_id}").json()["messages"] if m["id"] == msg_id]
        assert out["status"] == "retrying" and out["send_attempts"] == 1
        assert out["error_code"] == 131016 and "Service unavailable" in out["error_title"]
        assert datetime.fromisoformat(out["next_attempt_at"]) == due_at(services, msg_id)
        metrics = client.get("/api/metrics").json()
        assert (metrics["retrying_sends"], metrics["delivery_failures"]) == (1, 0)
        client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
        page = client.get(f"/dashboard/conversations/{conv_id}")
        assert page.status_code == 200 and "next try" in page.text


def test_the_retry_delay_doubles_up_to_the_cap_with_jitter(sqlite_services):
    settings = sqlite_services.settings
    assert settings.whatsapp_retry_for_s == 6 * 3600 and settings.whatsapp_retry_max_delay_s == 600
    rand = random.Random(1).random
    for attempts in range(1, 60):
        full = min(600.0, settings.whatsapp_retry_first_delay_s * 2 ** (attempts - 1))
        assert full / 2 <= retry_delay_s(settings, attempts, rand) <= full
    assert retry_delay_s(settings, 1, lambda: 0.0) == settings.whatsapp_retry_first_delay_s / 2
    assert retry_delay_s(settings, 1000, lambda: 1.0) == 600.0
