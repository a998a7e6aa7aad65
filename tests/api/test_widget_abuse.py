"""The widget under abuse: rate limits that hold under real concurrency (threads, processes, SQLite and
PostgreSQL), limits a visitor cannot reset by minting new sessions, client addresses from trusted proxies
only, the global cap on widget turns (503 + Retry-After), turns that never hold a request thread, a turn
lost with its process resumed, and a small run of the widget load benchmark against a real uvicorn server."""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from atende.app import create_app
from atende.migrate import migrate
from core.db import make_engine
from runtime.models import Message
from runtime.ratelimit import Limit, RateCounter, RateLimiter
from tests.conftest import ADMIN_TOKEN, REPO, make_services
from tests.factories import use_scripted_model
from tests.api.test_widget import add_assistant, ask, new_token, poll, send

NOON = datetime(2026, 12, 1, 12, 0, 5, tzinfo=UTC)  # 5 s into a minute's (and an hour's) window
REPLY = "Abrimos às 8h, de segunda a sexta."


# --------------------------------------------------------------------------- the limiter itself


def _hammer(url: str, limit: int, threads: int, barrier, results) -> None:
    """``threads`` threads hit one key at the same moment (a barrier shared with other processes)."""
    engine = make_engine(url)
    limiter = RateLimiter(engine)

    def one(_):
        barrier.wait(30)
        return limiter.hit(Limit("test:shared", limit, 3600))

    with ThreadPoolExecutor(threads) as pool:
        waits = list(pool.map(one, range(threads)))
    engine.dispose()
    results.put(waits)


def test_exactly_the_limit_passes_under_concurrent_threads_and_processes(services):
    """Two processes of 12 threads each hit one key with a limit of 7 at the same moment: exactly 7 pass."""
    url = services.engine.url.render_as_string(hide_password=False)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(24), ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(url, 7, 12, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    waits = [w for _ in procs for w in results.get(timeout=120)]
    for p in procs:
        p.join(30)
    assert len(waits) == 24 and waits.count(0) == 7
    assert all(1 <= w <= 3600 for w in waits if w)
    with services.session() as session:
        assert session.scalar(select(RateCounter.hits).where(RateCounter.key == "test:shared")) == 24


def test_windows_roll_over_and_ended_windows_are_swept(sqlite_services):
    now = [1_800_000_000.0 + 59]  # the last second of a minute's window
    limiter = RateLimiter(sqlite_services.engine, clock=lambda: now[0])
    limit = Limit("test:window", 2, 60)
    assert [limiter.hit(limit) for _ in range(3)] == [0, 0, 1]  # refused until the window ends, 1 s away
    now[0] += 1  # a new window
    assert limiter.hit(limit) == 0
    assert limiter.check(Limit("test:a", 1, 60), limit, Limit("test:b", 1, 60)) == 0
    assert limiter.check(Limit("test:a", 1, 60), limit, Limit("test:b", 1, 60)) == 60  # refused by the first
    with sqlite_services.session() as session:
        hits = dict(session.execute(select(RateCounter.key, RateCounter.hits).where(RateCounter.window_start == 1_800_000_060)).all())
    assert hits == {"test:window": 2, "test:a": 2, "test:b": 1}  # a refusal stops the rest from counting
    now[0] += 120  # both windows over; the next hit sweeps them
    limiter.hit(Limit("test:later", 5, 60))
    with sqlite_services.session() as session:
        assert session.scalars(select(RateCounter.key)).all() == ["test:later"]


def test_rate_limits_table_goes_up_and_down_and_matches_the_model(database_url):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext

    from atende.migrate import MIGRATIONS_DIR
    from core.db import Base

    engine = make_engine(database_url)
    migrate(engine)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if "rate_limits" in str(d)] == []
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0009")
    assert "rate_limits" not in sa.inspect(engine).get_table_names()
    migrate(engine)
    assert "rate_limits" in sa.inspect(engine).get_table_names()
    engine.dispose()


# --------------------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(services):
    """uvicorn serving the real app on loopback, its own proxy handling off as ``atende serve`` runs it
    (the app believes X-Forwarded-For from ``trusted_proxies`` only); yields the base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(services=services), host="127.0.0.1", port=port,
                                           log_level="warning", proxy_headers=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def server(tmp_path, embedders):
    """The real app on uvicorn with a scripted model, its clock at NOON; yields (client, services, model)."""
    services = make_services(tmp_path / "home", embedders, secret_key="widget-abuse-secret",
                             widget_turn_workers=2, widget_max_turns=8)
    model = use_scripted_model(services)
    services.clock = lambda: NOON
    with serve(services) as base, httpx.Client(base_url=base, trust_env=False, timeout=30) as client:
        yield client, services, model
    services.engine.dispose()


def from_ip(ip: str) -> dict:
    return {"headers": {"X-Forwarded-For": ip}}


def test_concurrent_messages_never_pass_the_visitor_limit(server):
    """The bug found: 4 messages at once under a limit of 1 a minute ran 3 turns. Now exactly one is taken."""
    client, services, model = server
    add_assistant(services, "loja", widget={"rate_limit_per_minute": 1})
    token = new_token(client, "loja")
    model.enqueue(REPLY)
    barrier = threading.Barrier(4)

    def one(i):
        barrier.wait(30)
        return send(client, "loja", token, f"Que horas vocês abrem? ({i})")

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(4)))
    assert sorted(r.status_code for r in answers) == [202, 429, 429, 429]
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in answers if r.status_code == 429)
    [accepted] = [r for r in answers if r.status_code == 202]
    assert poll(client, "loja", token, accepted.json()["message_id"]).json()["reply"] == REPLY
    with services.session() as session:
        assert session.scalar(select(func.count()).select_from(Message).where(Message.direction == "inbound")) == 1
    assert len(model.requests) == 1


def test_new_sessions_do_not_reset_the_limits(server):
    """A client that mints visitors is bounded by its address and by the assistant, not per visitor."""
    client, services, model = server
    add_assistant(services, "loja", widget={"rate_limit_per_minute": 5, "ip_sessions_per_hour": 3,
                                            "ip_messages_per_minute": 2, "assistant_messages_per_minute": 3})
    minted = [client.post("/api/widget/loja/session", **from_ip("198.51.100.1")) for _ in range(4)]
    assert [r.status_code for r in minted] == [200, 200, 200, 429]
    assert 1 <= int(minted[-1].headers["retry-after"]) <= 3600
    tokens = [r.json()["token"] for r in minted[:3]] + [new_token(client, "loja")]  # another address may still
    model.enqueue(REPLY, REPLY, REPLY)
    # three fresh visitors, one address: the address's limit (2 a minute) binds, whatever the visitor
    statuses = [send(client, "loja", t, "Que horas vocês abrem?", **from_ip("198.51.100.1")).status_code for t in tokens[:3]]
    assert statuses == [202, 202, 429]
    # other addresses: the assistant's limit (3 a minute, all visitors) binds
    assert send(client, "loja", tokens[3], "Que horas vocês abrem?", **from_ip("198.51.100.2")).status_code == 202
    refused = send(client, "loja", tokens[2], "Que horas vocês abrem?", **from_ip("198.51.100.3"))
    assert refused.status_code == 429 and refused.headers["retry-after"] == "55"
    with services.session() as session:  # refused messages are not stored
        assert session.scalar(select(func.count()).select_from(Message).where(Message.direction == "inbound")) == 3


def test_forwarded_addresses_count_only_from_trusted_proxies(tmp_path, embedders):
    """X-Forwarded-For from a proxy not in ATENDE_TRUSTED_PROXIES is ignored: the connection's address counts."""
    services = make_services(tmp_path / "home", embedders, trusted_proxies="192.0.2.1")
    services.clock = lambda: NOON
    add_assistant(services, "loja", widget={"ip_sessions_per_hour": 2})
    with serve(services) as base, httpx.Client(base_url=base, trust_env=False, timeout=30) as client:
        statuses = [client.post("/api/widget/loja/session", **from_ip(f"198.51.100.{i}")).status_code for i in range(3)]
    assert statuses == [200, 200, 429]  # all from 127.0.0.1, whatever they claim
    services.engine.dispose()


def test_the_turn_cap_refuses_with_503_and_retry_after_and_never_hangs(server):
    """With every slot taken by turns in flight, a message is refused at once (not stored); once the turns
    end, messages are taken again. Meanwhile the WhatsApp webhook route is still answered."""
    client, services, model = server  # 2 workers, at most 8 turns in flight
    add_assistant(services, "loja", widget={"allowed_origins": ["https://shop.example"]})
    gate = threading.Event()
    model.enqueue(*[lambda messages, tools: (gate.wait(60), REPLY)[1]] * 8, REPLY)
    tokens = [new_token(client, "loja") for _ in range(9)]
    accepted = [send(client, "loja", t, "Que horas vocês abrem?") for t in tokens[:8]]
    assert [r.status_code for r in accepted] == [202] * 8
    busy = send(client, "loja", tokens[8], "Que horas vocês abrem?", headers={"Origin": "https://shop.example"})
    assert busy.status_code == 503 and 1 <= int(busy.headers["retry-after"]) <= 120
    assert busy.headers["access-control-allow-origin"] == "https://shop.example"  # the script can read it
    # request threads stay free: the webhook answers (401: unsigned) while 8 turns wait on the model
    assert client.post("/webhooks/whatsapp", json={"object": "whatsapp_business_account"}).status_code in (401, 403)
    pending = poll_once(client, tokens[0], accepted[0].json()["message_id"])
    assert pending["status"] == "pending"
    with services.session() as session:
        assert session.scalar(select(func.count()).select_from(Message).where(Message.direction == "inbound")) == 8
    gate.set()
    for token, r in zip(tokens, accepted, strict=False):
        assert poll(client, "loja", token, r.json()["message_id"]).json()["reply"] == REPLY
    assert ask(client, "loja", tokens[8], "Que horas vocês abrem?").json()["reply"] == REPLY


def poll_once(client, token: str, message_id: str) -> dict:
    r = client.post(f"/api/widget/loja/messages/{message_id}/reply", json={"token": token})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_same_message_sent_twice_is_stored_once(server):
    client, services, model = server
    add_assistant(services, "loja")
    token = new_token(client, "loja")
    model.enqueue(REPLY)
    body = {"token": token, "message": "Que horas vocês abrem?", "client_message_id": "m-0123456789abcdef"}
    first = client.post("/api/widget/loja/messages", json=body)
    again = client.post("/api/widget/loja/messages", json=body)  # e.g. the script retrying after a network error
    assert first.status_code == again.status_code == 202
    assert first.json()["message_id"] == again.json()["message_id"]
    assert poll(client, "loja", token, first.json()["message_id"]).json()["reply"] == REPLY
    with services.session() as session:
        assert session.scalar(select(func.count()).select_from(Message).where(Message.direction == "inbound")) == 1
    assert len(model.requests) == 1


# --------------------------------------------------------------------------- a process dying half-way


def _serve_process(home: Path, port: int, llm_url: str) -> subprocess.Popen:
    env = {**os.environ, "ATENDE_HOME": str(home), "ATENDE_LLM_BASE_URL": llm_url, "ATENDE_LLM_MODEL": "standin",
           "ATENDE_SECRET_KEY": "widget-abuse-secret", "ATENDE_ADMIN_TOKEN": ADMIN_TOKEN, "ATENDE_WORKERS": "0",
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "atende.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", trust_env=False, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "atende serve did not start"
        time.sleep(0.2)


def test_a_turn_lost_with_its_process_is_resumed_by_the_next_poll(tmp_path, embedders):
    """The server is killed (SIGKILL) while the model is answering a widget message; the restarted server
    answers it when the visitor's script next asks for the reply."""
    from benchmarks.widget_load import SlowLLMStandIn

    home = tmp_path / "home"
    services = make_services(home, embedders, secret_key="widget-abuse-secret")
    add_assistant(services, "loja")
    services.engine.dispose()
    stuck, quick = SlowLLMStandIn(600.0), SlowLLMStandIn(0.0)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        proc = _serve_process(home, port, stuck.base_url)
        with httpx.Client(base_url=base, trust_env=False, timeout=30) as client:
            token = new_token(client, "loja")
            message_id = send(client, "loja", token, "Que horas vocês abrem?").json()["message_id"]
            deadline = time.monotonic() + 60
            while stuck.stats()["in_flight"] == 0:  # the turn reached the model
                assert time.monotonic() < deadline
                time.sleep(0.1)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            proc = _serve_process(home, port, quick.base_url)
            answer = poll(client, "loja", token, message_id).json()
        assert answer["status"] == "answered" and answer["reply"] == "Atendemos de segunda a sexta, das 9h às 18h."
        assert quick.stats()["calls"] == 1
    finally:
        proc.kill()
        proc.wait(30)
        stuck.close()
        quick.close()


# --------------------------------------------------------------------------- the load benchmark, small


def test_widget_load_benchmark_small():
    """A few visitors against a pool of one worker and two slots: the webhook is acknowledged throughout,
    also while widget turns are in flight, and visitors over the cap get 503 with Retry-After, never a hang."""
    from benchmarks.widget_load import run_benchmark

    report = run_benchmark(visitors=6, baseline_s=1.5, load_s=5.0, webhook_rate=4.0, llm_delay_s=1.0,
                           whatsapp_workers=1, widget_turn_workers=1, widget_max_turns=2, timeout_s=20.0, quiet=True)
    assert set(report["webhook_statuses"]) == {200}, report["webhook_statuses"]
    assert report["webhook_ack_ms"]["baseline"]["n"] > 0 and report["webhook_ack_ms"]["under_widget_load"]["n"] > 0
    assert report["acked_while_widget_turns_in_flight"] > 0
    widget = report["widget"]
    assert widget["statuses"].get("message 202", 0) >= 2 and widget["statuses"].get("message 503", 0) >= 1
    assert widget["refusals_without_retry_after"] == 0
    assert not [k for k in widget["statuses"] if k.endswith(("-1", "-2"))], widget["statuses"]  # no hang, no reset
    assert widget["replies"] >= 2
