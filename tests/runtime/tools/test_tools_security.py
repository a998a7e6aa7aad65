"""Tools under abuse: booking off by default, capped and confirmed by the customer; HTTP-tool URLs whose
identity comes from the conversation and whose model values cannot change the path; one wall-clock
deadline per call against servers that drip; the handoff webhook guarded and signed. Every server is a
real local one."""
from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from atende.demo import DEMO_CONFIG
from runtime.config import TOOL_NAMES, AssistantConfig, DataField, HttpTool, merge_config
from runtime.events import deliver_event
from runtime.http_tools import HttpToolError, call_http_tool
from runtime.models import Appointment, Conversation, OutboundEvent
from runtime.tools.context import ToolContext
from runtime.tools.toolset import build_toolset
from runtime.types import ToolCall
from tests.factories import add_assistant, chat
from tests.runtime.tools.test_tools import Env, local_server, ok, settings

SP = ZoneInfo("America/Sao_Paulo")
BOOKING = [*AssistantConfig().tools, "list_available_slots", "schedule_appointment"]


@pytest.fixture
def env(services) -> Env:
    return Env(services)


# --------------------------------------------------------------------------- booking


def test_booking_tools_are_off_unless_enabled():
    assert not {"list_available_slots", "schedule_appointment"} & set(AssistantConfig().tools)
    assert "schedule_appointment" not in build_toolset(AssistantConfig())
    assert "schedule_appointment" in build_toolset(AssistantConfig(tools=list(TOOL_NAMES)))
    assert AssistantConfig().scheduling.max_bookings_per_conversation == 1
    demo = AssistantConfig.model_validate(merge_config({}, DEMO_CONFIG))  # the sample clinic books, on purpose
    assert {"list_available_slots", "schedule_appointment"} <= set(demo.tools)


def _next_monday() -> str:
    today = datetime.now(SP).date()
    return (today + timedelta(days=(7 - today.weekday()) % 7 or 7)).isoformat()


@pytest.fixture
def clinic(scripted_model):
    """An assistant that books, answering with a scripted model through the real turn engine."""
    services, model = scripted_model
    aid = add_assistant(services, "clinica", config={"tools": BOOKING, "grounded_fallback": False})
    return services, model, aid


def _chat(services, aid, text):
    return chat(services, aid, text, "v_1", channel="widget", sender="w")


def _schedule(call_id: str, start: str, **extra) -> ToolCall:
    return ToolCall(call_id, "schedule_appointment", {"start": start, "name": "Ana Souza", **extra})


def _appointments(services) -> list[Appointment]:
    with services.session() as session:
        return session.scalars(select(Appointment)).all()


def test_a_model_booking_on_its_own_books_nothing(clinic):
    services, model, aid = clinic
    monday = _next_monday()
    six = [_schedule(f"c{i}", f"{monday} {9 + i // 2}:{30 * (i % 2):02d}", confirmed=True) for i in range(6)]
    model.enqueue(six, "Posso reservar esses horários para você?")
    r = _chat(services, aid, "Quero agendar uma consulta na segunda")
    assert len(r.function_calls) == 6
    assert all(c["error"] is None and c["result"].startswith("Not booked yet.") for c in r.function_calls)
    assert _appointments(services) == []


def test_booking_needs_the_customers_answer_then_stops_at_the_cap(clinic):
    services, model, aid = clinic
    monday = _next_monday()
    tuesday = (datetime.fromisoformat(monday) + timedelta(days=1)).date().isoformat()
    # the proposal, and the model "confirming" it in the same turn: nothing is booked
    model.enqueue([_schedule("c0", f"{monday} 10:00")], [_schedule("c1", f"{monday} 10:00", confirmed=True)],
                  "Posso confirmar sua consulta na segunda às 10h, Ana?")
    r = _chat(services, aid, "Quero agendar uma consulta na segunda às 10h, sou Ana Souza")
    assert [c["result"].split(" Ask")[0] for c in r.function_calls] == ["Not booked yet."] * 2
    assert f"appointment for Ana Souza on {monday} at 10:00" in r.function_calls[0]["result"]
    assert _appointments(services) == []
    # the customer's yes: the same booking, confirmed, is made
    model.enqueue([_schedule("c2", f"{monday} 10:00", confirmed=True)], "Pronto, consulta marcada para segunda às 10h.")
    r = _chat(services, aid, "Sim, pode confirmar")
    assert r.function_calls[0]["result"].startswith(f"Booked appointment for Ana Souza on {monday} at 10:00")
    (booked,) = _appointments(services)
    assert booked.conversation_id == r.conversation_id
    # one conversation cannot go on filling the calendar
    model.enqueue([_schedule("c3", f"{tuesday} 10:00")], "Para outra consulta, a recepção vai ajudar você.")
    r = _chat(services, aid, "Quero agendar outra consulta na terça às 10h")
    assert "already has 1 booked appointment" in r.function_calls[0]["error"]
    assert len(_appointments(services)) == 1


def _propose(env: Env, config: AssistantConfig, start: str):
    arguments = {"start": start, "name": "Ana"}
    result = env.run(config, "schedule_appointment", **arguments)
    assert result.content.startswith("Not booked yet."), result
    return arguments, result


def test_only_an_answer_to_the_last_reply_confirms_its_exact_slot(env):
    config = AssistantConfig(tools=BOOKING)

    def confirm(start: str):
        return env.run(config, "schedule_appointment", start=start, name="Ana", confirmed=True)

    env.log_turn("quero agendar", [_propose(env, config, "2025-05-19 10:00")])
    assert confirm("2025-05-19 10:00").content.startswith("Not booked yet.")  # the customer has not answered
    env.log_turn("sim", [(dict(start="2025-05-19 10:30", name="Ana"), confirm("2025-05-19 10:30"))])
    env.log_turn("e que horas abre?")  # a reply without the proposal came after it
    env.log_turn("ok, pode marcar")
    assert confirm("2025-05-19 10:30").content.startswith("Not booked yet.")
    env.log_turn("quero agendar", [_propose(env, config, "2025-05-19 11:00")], status="fallback")  # not shown
    env.log_turn("sim")
    assert confirm("2025-05-19 11:00").content.startswith("Not booked yet.")
    env.log_turn("quero agendar", [_propose(env, config, "2025-05-19 11:00")])
    env.log_turn("sim")
    assert confirm("2025-05-19 11:30").content.startswith("Not booked yet.")  # another time than proposed
    assert _appointments(env.services) == []


# --------------------------------------------------------------------------- HTTP tools: what fills the URL


def _whatsapp_conversation(env: Env, variables: dict) -> None:
    with env.services.session() as s:
        conv = s.get(Conversation, env.conversation_id)
        conv.channel, conv.variables = "whatsapp", variables
        s.commit()


ORDERS = dict(
    name="customer_orders", description="The customer's orders",
    parameters={"type": "object", "properties": {"cpf": {"type": "string"}, "phone": {"type": "string"},
                                                 "status": {"type": "string"}}, "required": ["cpf", "phone"]},
)


def test_identity_placeholders_are_filled_by_the_runtime_never_the_model(env, tmp_path):
    env.services.settings = settings(tmp_path)
    with local_server(ok({"orders": []})) as (url, requests):
        tool = HttpTool(url=f"{url}/api/{{{{variables.store}}}}/customers/{{{{customer.phone}}}}/cpf/{{{{data.cpf}}}}/orders",
                        **ORDERS)
        config = AssistantConfig(tools=["collect_data"], data_fields=[DataField(name="cpf", type="cpf")], http_tools=[tool])
        schema = build_toolset(config).schemas()[1]["function"]["parameters"]
        assert schema == {"type": "object", "properties": {"status": {"type": "string"}}, "required": []}
        # the model cannot name somebody else's CPF
        forged = env.run(config, "customer_orders", cpf="529.982.247-25", status="open")
        assert "unknown argument(s) cpf" in forged.error
        _whatsapp_conversation(env, {"store": "loja 1/2"})
        early = env.run(config, "customer_orders", status="open")
        assert "ask for it and save it with collect_data" in early.error
        assert env.run(config, "collect_data", field="cpf", value="52998224725").error is None
        split = env.run(config, "customer_orders", status="open")
        assert "cannot go in the URL" in split.error  # not even a variable may add a path segment
        _whatsapp_conversation(env, {"store": "loja 1"})
        result = env.run(config, "customer_orders", status="open")
    assert result.error is None and json.loads(result.content) == {"orders": []}
    (request,) = requests
    assert request["path"] == "/api/loja%201/customers/%2B5511987654321/cpf/529.982.247-25/orders?status=open"


def test_an_identity_the_conversation_lacks_is_a_clear_error(env, tmp_path):
    env.services.settings = settings(tmp_path)
    with local_server(ok({})) as (url, requests):
        tool = HttpTool(name="by_phone", description="d", url=f"{url}/c/{{{{customer.phone}}}}")
        by_id = HttpTool(name="by_id", description="d", url=f"{url}/v/{{{{customer.id}}}}/{{{{variables.account}}}}")
        config = AssistantConfig(tools=[], http_tools=[tool, by_id])
        no_phone = env.run(config, "by_phone")  # a widget or API conversation has no verified phone
        no_variable = env.run(config, "by_id")
    assert "which this conversation does not have" in no_phone.error
    assert "the variable account, which this conversation was not started with" in no_variable.error
    assert requests == []


def test_bound_placeholders_are_checked_when_configured():
    with pytest.raises(ValueError, match=r"unknown placeholder \{\{customer.email\}\}"):
        HttpTool(name="t", description="d", url="https://x.example/{{customer.email}}")
    with pytest.raises(ValueError, match="must name a data field with a validated type"):
        AssistantConfig(data_fields=[DataField(name="nome")],
                        http_tools=[HttpTool(name="t", description="d", url="https://x.example/{{data.nome}}")])
    with pytest.raises(ValueError, match="must name a data field"):
        AssistantConfig(http_tools=[HttpTool(name="t", description="d", url="https://x.example/{{data.cpf}}")])
    with pytest.raises(ValueError, match="filled by the runtime .* and by the model"):
        AssistantConfig(http_tools=[HttpTool(name="t", description="d", url="https://x.example/{{customer.phone}}/{phone}")])


@pytest.mark.parametrize("value", ["..", ".", "../orders", "a/b", "a\\b", ""])
def test_a_model_value_cannot_change_the_path(tmp_path, value):
    with local_server(ok({"all": "orders"})) as (url, requests):
        tool = HttpTool(name="t", description="d", url=f"{url}/api/customers/{{cpf}}/orders", credential="shop")
        creds = settings(tmp_path, http_tool_credentials={"shop": {"header": "X-Api-Key", "value": "s3cret"}})
        with pytest.raises(HttpToolError, match="cannot go in the URL"):
            call_http_tool(tool, {"cpf": value}, creds)
    assert requests == []  # /api/orders was never asked for, with or without the credential


def test_model_values_are_encoded_in_path_and_query(tmp_path):
    with local_server(ok({})) as (url, requests):
        tool = HttpTool(name="t", description="d", url=f"{url}/search/{{term}}")
        call_http_tool(tool, {"term": "...%2e%2e?x#", "q": "a&b=c/d #x"}, settings(tmp_path))
    (request,) = requests
    path, query = request["path"].split("?", 1)
    assert path == "/search/...%252e%252e%3Fx%23"
    assert parse_qs(query) == {"q": ["a&b=c/d #x"]}


# --------------------------------------------------------------------------- one deadline per call


@contextmanager
def dripping_server(prefix: bytes, drip: bytes, suffix: bytes = b"", interval: float = 0.02):
    """A raw TCP server that answers one request with ``prefix``, then ``drip`` a byte at a time, then
    ``suffix``; ``stats`` says how many drip bytes went out and whether the answer was finished."""
    stats = {"sent": 0, "finished": False, "connections": 0}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    stop = threading.Event()

    def serve():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        stats["connections"] += 1
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                conn.sendall(prefix)
                for byte in drip:
                    if stop.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    stats["sent"] += 1
                    time.sleep(interval)
                conn.sendall(suffix)
                stats["finished"] = True
            except OSError:  # the client hung up
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", stats
    finally:
        listener.close()
        thread.join(30)
        stop.set()


HEADER_DRIP = (b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a" * 300, b"\r\nContent-Length: 2\r\n\r\nok")
BODY_DRIP = (b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n", b"a" * 300)


@pytest.mark.parametrize("answer", [HEADER_DRIP, BODY_DRIP], ids=["headers", "body"])
def test_a_dripping_server_is_cut_at_the_deadline(tmp_path, answer):
    with dripping_server(*answer) as (url, stats):
        tool = HttpTool(name="t", description="d", url=f"{url}/slow", timeout_s=0.5)
        with pytest.raises(HttpToolError, match=r"^the service did not answer within 0.5 seconds$"):
            call_http_tool(tool, {}, settings(tmp_path))
    # each byte came well within httpx's per-read timeout: only a deadline over the whole call stops it
    assert stats["connections"] == 1 and not stats["finished"] and stats["sent"] < len(answer[1])


def test_the_turns_remaining_time_bounds_the_call(env, tmp_path):
    env.services.settings = settings(tmp_path)
    with dripping_server(*HEADER_DRIP) as (url, stats):
        tool = HttpTool(name="slow", description="d", url=f"{url}/slow", timeout_s=60)
        config = AssistantConfig(tools=[], http_tools=[tool])
        result = env.run(config, "slow", env.ctx(config, deadline=time.perf_counter() + 0.3))
        assert result.error.startswith("the service did not answer within 0.")
        assert not stats["finished"]
        late = env.run(config, "slow", env.ctx(config, deadline=time.perf_counter() - 1))
    assert late.error == "no time is left in this turn to call the service"
    assert stats["connections"] == 1  # the late call never connected


def test_a_tool_context_has_a_deadline_by_default(env):
    ctx = env.ctx(AssistantConfig(turn_deadline_s=30))
    assert isinstance(ctx, ToolContext) and 29 < ctx.remaining_s() <= 30


# --------------------------------------------------------------------------- the handoff webhook


def _handoff(env: Env, url: str) -> str:
    config = AssistantConfig(handoff_url=url)
    ctx = env.ctx(config)
    assert env.run(config, "transfer_to_human", ctx, reason="quer falar com alguém").error is None
    return ctx.events[0]


def test_handoff_url_gets_the_address_guard(env):
    with local_server(ok({})) as (url, requests):
        event_id = _handoff(env, f"{url}/hooks/handoff")
        assert deliver_event(env.services, event_id) is False
    assert requests == []
    with env.services.session() as s:
        event = s.get(OutboundEvent, event_id)
    assert event.status == "failed" and "refused: 127.0.0.1 is a loopback address" in event.last_error
    elsewhere = _handoff(env, "file:///etc/passwd")
    assert deliver_event(env.services, elsewhere) is False
    with env.services.session() as s:
        assert s.get(OutboundEvent, elsewhere).last_error == "only http:// and https:// URLs with a host are allowed"


def verify_webhook(secret: str, headers: dict, body: bytes, now: float, tolerance_s: float = 300) -> bool:
    """The receiver's check, as README documents it."""
    timestamp = headers["X-Atende-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Atende-Signature"]) and abs(now - int(timestamp)) <= tolerance_s


def test_handoff_webhook_is_signed(env):
    env.services.settings.http_tools_allow_private = True  # the receiver runs on loopback
    secret = env.services.settings.webhook_secret
    assert secret  # generated into the data directory when unset (core/secret_store.py)
    with local_server(lambda n, req: (204, {}, b"")) as (url, requests):
        event_id = _handoff(env, f"{url}/hooks/handoff")
        assert deliver_event(env.services, event_id) is True
    (request,) = requests
    body, headers = request["body"], request["headers"]
    assert verify_webhook(secret, headers, body, time.time())
    assert json.loads(body)["reason"] == "quer falar com alguém"
    assert not verify_webhook("another-secret-of-some-length", headers, body, time.time())
    assert not verify_webhook(secret, headers, body.replace("alguém".encode(), b"ninguem"), time.time())
    assert not verify_webhook(secret, headers, body, time.time() + 3600)  # an old request replayed
