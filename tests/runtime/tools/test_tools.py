"""Tools: schemas from signatures, argument checking, the built-in tools on real databases, event
delivery and HTTP tools against local servers, and the SSRF guard (which must refuse before connecting)."""
from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Literal

import httpx
import pytest
from sqlalchemy import select

from core.db import utcnow
from core.settings import Settings
from ingest.pipeline import run_job
from kb import registry
from kb.models import Assistant
from kb.types import Source
from runtime import store
from runtime.config import TOOL_NAMES, AssistantConfig, DataField, HttpTool, RetrievalConfig, Scheduling
from runtime.events import deliver_event
from runtime.http_tools import HttpToolError, call_http_tool
from runtime.models import Appointment, CollectedData, Conversation, EventAttempt, OutboundEvent, ToolCallRecord
from runtime.tools.context import ToolContext, ToolError
from runtime.tools.http_tool import http_tool
from runtime.tools.schema import function_tool
from runtime.tools.toolset import Toolset, build_toolset
from runtime.types import ToolCall, ToolResult, ToolRun, TurnResult
from tests.runtime.test_scheduling import new_assistant, new_conversation

NOW = datetime(2025, 5, 16, 12, 0, tzinfo=UTC)  # Friday; Monday 2025-05-19 is bookable
KB_TEXT = (
    "Opening hours\n\n"
    "The Lisbon shop opens at 9am and closes at 6pm from Monday to Friday. "
    "On Saturdays it opens at 10am and closes at 2pm. It is closed on Sundays.\n\n"
    "Returns policy\n\n"
    "Unused products can be returned within thirty days in their original box. "
    "Refunds are paid to the original card within fourteen days of receiving the return."
)


# --------------------------------------------------------------------------- helpers


@contextmanager
def local_server(respond):
    """A stdlib HTTP server on 127.0.0.1; ``respond(n, request)`` -> (status, headers, body bytes)."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            request = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                       "body": self.rfile.read(length) if length else b""}
            requests.append(request)
            status, headers, body = respond(len(requests), request)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                self.wfile.write(body)

        do_GET = do_POST = _handle

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", requests
    finally:
        server.shutdown()
        server.server_close()


def ok(body, status=200, content_type="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return lambda n, req: (status, {"Content-Type": content_type}, data)


def settings(tmp_path, allow_private=True, **kw) -> Settings:
    return Settings(home=tmp_path, http_tools_allow_private=allow_private, **kw)


def call(tool: str, /, **arguments) -> ToolCall:
    return ToolCall(id=f"call_{tool}", name=tool, arguments=arguments)


class Env:
    """A real assistant with one conversation, and tool contexts for it."""

    def __init__(self, services):
        self.services = services
        self.assistant_id = new_assistant(services)
        self.conversation_id = new_conversation(services, self.assistant_id, customer="5511987654321")

    def ctx(self, config: AssistantConfig | None = None, **kw) -> ToolContext:
        with self.services.session() as s:
            assistant = s.get(Assistant, self.assistant_id)
        return ToolContext(self.services, assistant, config or AssistantConfig(), self.conversation_id, now=NOW, **kw)

    def run(self, config: AssistantConfig, tool: str, ctx: ToolContext | None = None, /, **arguments):
        ctx = ctx or self.ctx(config)
        return build_toolset(config).run(ctx, call(tool, **arguments))

    def log_turn(self, customer_text: str, calls: list = (), status: str = "answered") -> None:
        """A turn as the engine logs it: the customer's message, then the reply with the tool calls made
        (``(arguments, ToolResult)`` pairs)."""
        with self.services.session() as s:
            conv = s.get(Conversation, self.conversation_id)
            inbound = store.store_inbound(s, conv, customer_text)
            result = TurnResult(self.conversation_id, "reply", status)
            runs = [ToolRun(1, ToolCall(res.call_id, res.name, args), res) for args, res in calls]
            store.log_turn(s, conv, [inbound], result, tool_results=runs,
                           retrieval_query=None, rounds=1, model="scripted", started_at=utcnow())

    def book(self, config: AssistantConfig, **arguments):
        """schedule_appointment as the customer confirms it: proposed in one turn, confirmed in the next."""
        proposal = self.run(config, "schedule_appointment", **arguments)
        assert proposal.error is None and proposal.content.startswith("Not booked yet."), proposal
        self.log_turn("quero agendar", [(arguments, proposal)])
        with self.services.session() as s:
            store.store_inbound(s, s.get(Conversation, self.conversation_id), "sim, pode marcar")
        return self.run(config, "schedule_appointment", **arguments, confirmed=True)


@pytest.fixture
def env(services) -> Env:
    return Env(services)


@pytest.fixture
def sqlite_env(sqlite_services) -> Env:
    return Env(sqlite_services)


# --------------------------------------------------------------------------- schemas and checking


def sample(
    ctx,
    text: Annotated[str, "some text"],
    count: Annotated[int, "how many"],
    ratio: float,
    flag: bool,
    mode: Annotated[Literal["fast", "slow"], "speed"],
    tags: Annotated[list[str], "labels"],
    note: Annotated[str | None, "optional note"] = None,
    level: int = 1,
) -> str:
    """Do a sample thing.

    Longer explanation that must not reach the schema.
    """
    return json.dumps({"text": text, "count": count, "ratio": ratio, "flag": flag, "mode": mode, "tags": tags,
                       "note": note, "level": level})


def test_schema_from_signature():
    assert function_tool(sample).schema() == {
        "type": "function",
        "function": {
            "name": "sample",
            "description": "Do a sample thing.",
            "parameters": {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "description": "some text"},
                    "count": {"type": "integer", "description": "how many"},
                    "ratio": {"type": "number"},
                    "flag": {"type": "boolean"},
                    "mode": {"type": "string", "enum": ["fast", "slow"], "description": "speed"},
                    "tags": {"type": "array", "items": {"type": "string"}, "description": "labels"},
                    "note": {"type": "string", "description": "optional note"},
                    "level": {"type": "integer"},
                },
                "required": ["text", "count", "ratio", "flag", "mode", "tags"],
            },
        },
    }


def test_unsupported_annotation_is_refused_at_definition():
    def bad(ctx, when: dict) -> str:
        """x"""

    with pytest.raises(TypeError, match="unsupported"):
        function_tool(bad)


def test_builtin_schemas_are_compact():
    config = AssistantConfig(data_fields=[DataField(name="cpf", type="cpf"), DataField(name="plan", type="enum", options=["Basic", "Pro"])],
                             retrieval=RetrievalConfig(mode="as_tool"), tools=list(TOOL_NAMES))
    toolset = build_toolset(config)
    assert toolset.names == ["search_knowledge_base", "transfer_to_human", "collect_data", "list_available_slots",
                             "schedule_appointment", "offer_options", "send_file", "schedule_followup"]
    every_turn = build_toolset(config.model_copy(update={"retrieval": RetrievalConfig()}))
    assert "search_knowledge_base" not in every_turn  # the engine already searched this turn
    schemas = {s["function"]["name"]: s["function"] for s in toolset.schemas()}
    assert schemas["collect_data"]["parameters"]["properties"]["field"]["enum"] == ["cpf", "plan"]
    assert "plan (one of Basic/Pro)" in schemas["collect_data"]["description"]
    assert schemas["schedule_appointment"]["parameters"]["required"] == ["start", "name"]
    assert schemas["transfer_to_human"]["parameters"]["required"] == ["reason"]
    assert schemas["offer_options"]["parameters"]["properties"]["options"]["type"] == "array"
    assert schemas["send_file"]["parameters"]["required"] == ["filename"]
    assert schemas["schedule_followup"]["parameters"]["required"] == ["at", "message"]
    compact = toolset.without({"offer_options", "send_file", "schedule_followup"})
    assert len(json.dumps(compact.schemas())) < 2200  # every token costs prompt time
    assert len(json.dumps(schemas["schedule_followup"])) < 500
    assert len(json.dumps(schemas["offer_options"])) < 450


def test_toolset_follows_config():
    assert build_toolset(AssistantConfig(tools=["transfer_to_human"])).names == ["transfer_to_human"]
    # booking writes to the calendar: an assistant enables it, the default does not
    assert build_toolset(AssistantConfig(data_fields=[DataField(name="cpf", type="cpf")])).names == [
        "transfer_to_human", "collect_data"]
    assert "collect_data" not in build_toolset(AssistantConfig())  # no fields configured: nothing to collect
    order = HttpTool(name="order_status", description="Order status", url="https://example.com/{order}")
    assert build_toolset(AssistantConfig(tools=[], http_tools=[order])).names == ["order_status"]
    clash = HttpTool(name="transfer_to_human", description="clash", url="https://example.com/")
    with pytest.raises(ValueError, match="differ from the built-in tools"):
        AssistantConfig(http_tools=[order, clash])
    with pytest.raises(ValueError, match="must be unique"):
        AssistantConfig(http_tools=[order, order])


def test_run_checks_arguments():
    toolset, ctx = Toolset([function_tool(sample)]), None
    good = {"text": "hi", "count": 2, "ratio": 0.5, "flag": True, "mode": "fast", "tags": ["a"]}
    result = toolset.run(ctx, call("sample", **good))
    assert result.error is None and json.loads(result.content)["level"] == 1
    assert result.call_id == "call_sample" and result.name == "sample" and result.duration_ms >= 0
    # lossless conversions small models need
    loose = good | {"text": 12, "count": "3", "ratio": 1, "note": None}
    assert json.loads(toolset.run(ctx, call("sample", **loose)).content) == good | {
        "text": "12", "count": 3, "ratio": 1.0, "note": None, "level": 1}
    cases = [
        ({k: v for k, v in good.items() if k != "count"}, "missing required argument(s): count"),
        (good | {"colour": "red"}, "unknown argument(s) colour"),
        (good | {"count": "many"}, "count: Input should be a valid integer"),
        (good | {"count": 2.5}, "count: Input should be a valid integer"),
        (good | {"flag": "yes"}, "flag: Input should be a valid boolean"),
        (good | {"mode": "medium"}, "mode: Input should be 'fast' or 'slow'"),
        (good | {"tags": "a"}, "tags: Input should be a valid list"),
        (good | {"text": ["a"]}, "text: Input should be a valid string"),
    ]
    for arguments, message in cases:
        result = toolset.run(ctx, ToolCall("c1", "sample", arguments))
        assert result.error and message in result.error, (arguments, result)
        assert result.content.startswith("Error: ")
    assert "unknown tool 'nope'" in toolset.run(ctx, call("nope")).error
    assert "JSON object" in toolset.run(ctx, ToolCall("c2", "sample", ["x"])).error
    assert toolset.run(ctx, ToolCall("c3", "sample", json.dumps(good))).error is None  # raw JSON text


def test_run_reports_every_problem_at_once():
    """One message names all that is wrong with a call, so one retry can fix it."""
    toolset = Toolset([function_tool(sample)])
    result = toolset.run(None, call("sample", text="hi", count="x", colour="red"))
    assert result.error == (
        "unknown argument(s) colour (parameters are: text, count, ratio, flag, mode, tags, note, level); "
        "missing required argument(s): ratio, flag, mode, tags; "
        "count: Input should be a valid integer, unable to parse string as an integer")
    good = {"text": "hi", "count": 2, "ratio": 0.5, "flag": True, "mode": "fast", "tags": ["a"]}
    # a null optional argument means "not given", even where the parameter takes no null
    assert json.loads(toolset.run(None, call("sample", **good, level=None)).content)["level"] == 1


def test_exceptions_become_error_results():
    def explode(ctx, what: str) -> str:
        """Fail."""
        raise RuntimeError(f"boom: {what}")

    result = Toolset([function_tool(explode)]).run(None, call("explode", what="x"))
    assert result.error == "RuntimeError: boom: x"
    assert "failed unexpectedly" in result.content and "boom" not in result.content
    assert result.duration_ms >= 0


def test_a_tool_run_is_logged_as_the_log_reads_it_back(sqlite_env):
    ok = ToolRun(2, call("collect_data", field="cpf", value="1"), ToolResult("call_collect_data", "collect_data",
                                                                            "Saved cpf: 1", duration_ms=7))
    failed = ToolRun(0, call("explode"), ToolResult("call_explode", "explode", "Error: boom", error="boom"))
    assert ok.logged() == {"name": "collect_data", "arguments": {"field": "cpf", "value": "1"},
                           "result": "Saved cpf: 1", "error": None, "round": 2, "duration_ms": 7}
    assert failed.logged()["result"] is None and failed.logged()["error"] == "boom"  # the error text is the model's

    with sqlite_env.services.session() as s:
        conv = s.get(Conversation, sqlite_env.conversation_id)
        result = TurnResult(conv.id, "reply", "answered", function_calls=[ok.logged(), failed.logged()])
        store.log_turn(s, conv, [store.store_inbound(s, conv, "oi")], result, tool_results=[ok, failed],
                       retrieval_query=None, rounds=2, model="scripted", started_at=utcnow())
        logged = s.scalars(select(ToolCallRecord).order_by(ToolCallRecord.position)).all()
        # the same JSON, keys in the same order, for a turn just run as for one read back from the log
        assert json.dumps([c.as_dict() for c in logged]) == json.dumps(result.function_calls)


# --------------------------------------------------------------------------- built-in tools


def test_search_knowledge_base(env):
    empty = env.run(AssistantConfig(retrieval=RetrievalConfig(mode="as_tool")), "search_knowledge_base", query="opening hours")
    assert (empty.error, empty.content) == (None, "No relevant passages found in the knowledge base.")
    with env.services.session() as s:
        kb = registry.get_assistant(s, env.assistant_id).knowledge_base
        up = registry.register_upload(s, env.services.blobs, kb, "shop.txt", KB_TEXT.encode(), env.services.settings.max_upload_bytes)
        s.commit()
    assert run_job(env.services, up.job.id).status == "ready"
    config = AssistantConfig(retrieval=RetrievalConfig(mode="as_tool", top_k=2, min_score=0.1))
    earlier = Source(rank=1, chunk_id="x" * 32, score=0.9, text="earlier", document_id="d", version=1, filename="a.pdf")
    ctx = env.ctx(config, sources=[earlier])
    toolset = build_toolset(config)
    result = toolset.run(ctx, call("search_knowledge_base", query="When does the shop open on Saturday?"))
    assert result.error is None, result
    assert result.content.startswith("[2] shop.txt")  # numbering continues after the turn's sources
    assert "10am" in result.content
    assert [s.rank for s in ctx.sources] == list(range(1, len(ctx.sources) + 1))
    assert ctx.sources[0] is earlier and ctx.sources[1].filename == "shop.txt"
    count = len(ctx.sources)
    again = toolset.run(ctx, call("search_knowledge_base", query="When does the shop open on Saturday?"))
    assert again.content == result.content and len(ctx.sources) == count  # de-duplicated by chunk id
    strict = AssistantConfig(retrieval=RetrievalConfig(mode="as_tool", min_score=0.99))
    none = env.run(strict, "search_knowledge_base", query="What is the capital of Mongolia?")
    assert none.error is None and "No relevant passages" in none.content


def test_transfer_to_human_pauses_ai_and_creates_event(env):
    config = AssistantConfig(handoff_url="http://127.0.0.1:9/hooks/handoff")
    ctx = env.ctx(config)
    result = env.run(config, "transfer_to_human", ctx, reason="wants a refund", callback_phone="(11) 98765-4321",
                     callback_time="tomorrow morning")
    assert result.error is None and "paused" in result.content and "+5511987654321" in result.content
    with env.services.session() as s:
        conv = s.get(Conversation, env.conversation_id)
        assert conv.ai_enabled is False
        assert conv.handoff == {"reason": "wants a refund", "callback_phone": "+5511987654321",
                                "callback_time": "tomorrow morning", "at": NOW.isoformat()}
        (event,) = s.scalars(select(OutboundEvent)).all()
    assert ctx.events == [event.id]
    # handed to the (inline) queue as the tool committed: the address guard refused loopback at once
    assert (event.kind, event.url, event.status, event.attempts) == ("handoff", config.handoff_url, "failed", 1)
    assert "loopback" in event.last_error
    assert event.payload == {
        "event": "handoff", "conversation_id": env.conversation_id, "assistant_id": env.assistant_id,
        "channel": "test", "customer_id": "5511987654321", "reason": "wants a refund",
        "callback_phone": "+5511987654321", "callback_time": "tomorrow morning", "at": NOW.isoformat(),
    }


def test_transfer_without_handoff_url_creates_no_event(env):
    ctx = env.ctx()
    result = env.run(AssistantConfig(), "transfer_to_human", ctx, reason="angry", callback_phone="call me maybe")
    assert result.error is None and ctx.events == []
    with env.services.session() as s:
        assert s.get(Conversation, env.conversation_id).handoff["callback_phone"] == "call me maybe"  # kept as given
        assert s.scalars(select(OutboundEvent)).all() == []


def test_transfer_for_a_missing_conversation_is_an_error_result(env):
    ctx = env.ctx()
    ctx.conversation_id = "missing"
    result = build_toolset(AssistantConfig()).run(ctx, call("transfer_to_human", reason="x"))
    assert result.error == "this conversation no longer exists"


def test_collect_data_validates_and_upserts(env):
    config = AssistantConfig(data_fields=[DataField(name="cpf", type="cpf"), DataField(name="email", type="email")])
    bad = env.run(config, "collect_data", field="cpf", value="111.111.111-11")
    assert bad.error and "repeated digit" in bad.error and "Ask the customer again" in bad.content
    wrong = env.run(config, "collect_data", field="cpf", value="529.982.247-24")
    assert "check digits" in wrong.error
    unknown = env.run(config, "collect_data", field="birthday", value="1990-01-01")
    assert unknown.error == "unknown field 'birthday'; known fields: cpf, email"
    assert env.run(config, "collect_data", field="cpf", value="52998224725").content == "Saved cpf: 529.982.247-25"
    assert env.run(config, "collect_data", field="cpf", value="11222333000181").error  # a CNPJ is no CPF
    env.run(config, "collect_data", field="email", value="Ana@Example.COM")
    env.run(config, "collect_data", field="email", value="ana@EXAMPLE.org")  # corrected by the customer
    with env.services.session() as s:
        rows = {r.field: (r.value, r.source)
                for r in s.scalars(select(CollectedData).where(CollectedData.conversation_id == env.conversation_id))}
    assert rows == {"cpf": ("529.982.247-25", "ai"), "email": ("ana@example.org", "ai")}


def test_list_and_schedule(env):
    config = AssistantConfig(tools=list(TOOL_NAMES))
    listed = env.run(config, "list_available_slots", date="2025-05-19")
    assert listed.error is None
    assert listed.content.startswith("Free times on 2025-05-19 (Monday, America/Sao_Paulo): 09:00, 09:30")
    booked = env.book(config, start="2025-05-19 09:30", name="Ana Souza", notes="first visit")
    assert booked.error is None and "Booked appointment for Ana Souza on 2025-05-19 at 09:30" in booked.content
    config = config.model_copy(update={"scheduling": Scheduling(max_bookings_per_conversation=5)})
    with env.services.session() as s:
        (appt,) = s.scalars(select(Appointment)).all()
    assert appt.starts_at == datetime(2025, 5, 19, 12, 30, tzinfo=UTC) and appt.conversation_id == env.conversation_id
    assert "09:30" not in env.run(config, "list_available_slots", date="19/05/2025").content
    taken = env.run(config, "schedule_appointment", start="2025-05-19 09:30", name="Bia", kind="callback", confirmed=True)
    assert taken.error.startswith("2025-05-19 09:30 is already taken") and "Free times that day: 09:00, 10:00" in taken.error
    weekend = env.run(config, "list_available_slots", date="2025-05-18")
    assert weekend.content == "2025-05-18 (Sunday): closed. Next free time: 2025-05-19 09:00."
    past = env.run(config, "list_available_slots", date="2025-05-01")
    assert "in the past" in past.content
    assert "outside opening hours" in env.run(config, "schedule_appointment", start="2025-05-18 10:00", name="Ana").error
    assert "local time like" in env.run(config, "schedule_appointment", start="monday 10am", name="Ana").error
    assert "real date" in env.run(config, "list_available_slots", date="2025-02-30").error
    assert "kind: Input should be 'appointment' or" in env.run(config, "schedule_appointment", start="2025-05-19 10:00",
                                                                name="A", kind="visit").error


# --------------------------------------------------------------------------- event delivery


def test_deliver_event_retries_until_delivered(sqlite_env):
    """Each delivery is one attempt, logged; a failure leaves the event pending with its next attempt after a
    growing delay (and a job for then); the third attempt goes through and nothing is sent after."""
    env = sqlite_env
    env.services.settings.http_tools_allow_private = True  # the receiver runs on loopback
    with local_server(lambda n, req: (500, {}, b"busy") if n <= 2 else (204, {}, b"")) as (url, requests):
        config = AssistantConfig(handoff_url=f"{url}/hooks/handoff")
        ctx = env.ctx(config)
        env.run(config, "transfer_to_human", ctx, reason="wants a human")  # attempt 1, as the tool committed
        delays = []
        with env.services.session() as s:
            event = s.get(OutboundEvent, ctx.events[0])
            delays.append((event.next_attempt_at - event.created_at).total_seconds())
        assert deliver_event(env.services, ctx.events[0]) is False  # attempt 2: 500 again
        with env.services.session() as s:
            event = s.get(OutboundEvent, ctx.events[0])
            delays.append((event.next_attempt_at - event.created_at).total_seconds())
        assert (event.status, event.attempts) == ("pending", 2) and delays[1] > delays[0] + 5  # 5 s, then 10 s
        assert deliver_event(env.services, ctx.events[0]) is True
    assert len(requests) == 3
    assert requests[-1]["path"] == "/hooks/handoff" and requests[-1]["headers"]["Content-Type"] == "application/json"
    assert requests[-1]["headers"]["X-Atende-Event-Id"] == ctx.events[0]
    assert json.loads(requests[-1]["body"])["reason"] == "wants a human"
    with env.services.session() as s:
        event = s.get(OutboundEvent, ctx.events[0])
        attempts = s.scalars(select(EventAttempt).where(EventAttempt.event_id == event.id).order_by(EventAttempt.at))
        assert [a.status_code for a in attempts] == [500, 500, 204]
    assert (event.status, event.attempts, event.next_attempt_at) == ("delivered", 3, None)
    assert event.delivered_at is not None and "HTTP 500" in event.last_error
    assert deliver_event(env.services, ctx.events[0]) is True  # already delivered: nothing sent
    assert len(requests) == 3


def test_deliver_event_gives_up_after_its_retry_period(env):
    env.services.settings.http_tools_allow_private = True
    env.services.settings.events_retry_for_s = 12  # the delays: 5 s, 10 s, then 20 s would pass it
    with local_server(lambda n, req: (503, {}, b"down")) as (url, requests):
        config = AssistantConfig(handoff_url=f"{url}/hook")
        ctx = env.ctx(config)
        env.run(config, "transfer_to_human", ctx, reason="x")
        assert deliver_event(env.services, ctx.events[0]) is False
        assert deliver_event(env.services, ctx.events[0]) is False
        assert deliver_event(env.services, ctx.events[0]) is False  # failed: not tried again
    assert len(requests) == 3
    with env.services.session() as s:
        event = s.get(OutboundEvent, ctx.events[0])
    assert (event.status, event.attempts, event.delivered_at, event.next_attempt_at) == ("failed", 3, None, None)
    assert event.last_error == "HTTP 503: down"


def test_deliver_event_to_nowhere(sqlite_env):
    env = sqlite_env
    env.services.settings.http_tools_allow_private = True
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = AssistantConfig(handoff_url=f"http://127.0.0.1:{port}/hook")
    ctx = env.ctx(config)
    env.run(config, "transfer_to_human", ctx, reason="x")
    assert deliver_event(env.services, ctx.events[0]) is False
    with env.services.session() as s:
        event = s.get(OutboundEvent, ctx.events[0])
    assert event.status == "pending" and "ConnectError" in event.last_error  # retried later


# --------------------------------------------------------------------------- HTTP tools


ORDER_TOOL = dict(
    name="order_status", description="Look up an order",
    parameters={"type": "object", "properties": {"order": {"type": "string"}, "verbose": {"type": "boolean"}},
                "required": ["order"]},
    credential="shop",
)


def test_http_tool_end_to_end(sqlite_env, tmp_path):
    env = sqlite_env
    with local_server(ok({"order": "A/1", "status": "shipped"})) as (url, requests):
        tool = HttpTool(url=f"{url}/orders/{{order}}", **ORDER_TOOL)
        config = AssistantConfig(tools=[], http_tools=[tool])
        env.services.settings = settings(tmp_path, http_tool_credentials={"shop": {"header": "X-Api-Key", "value": "s3cret"}})
        assert build_toolset(config).schemas()[0]["function"]["parameters"] == ORDER_TOOL["parameters"]
        result = env.run(config, "order_status", order="A-1 ç&?#", verbose=True)
        assert result.error is None and json.loads(result.content) == {"order": "A/1", "status": "shipped"}
        missing = env.run(config, "order_status", verbose=True)
        wrong = env.run(config, "order_status", order="1", verbose="very")
    assert missing.error == "missing required argument(s): order" and "verbose: Input should be a valid boolean" in wrong.error
    (req,) = requests
    assert req["method"] == "GET" and req["path"] == "/orders/A-1%20%C3%A7%26%3F%23?verbose=true"
    assert req["headers"]["X-Api-Key"] == "s3cret"


def test_http_tool_parameters_may_have_any_name():
    """An admin's parameter names reach the service as written, even those pydantic keeps for itself."""
    schema = {"type": "object", "required": ["_id"], "properties": {
        "model_config": {"type": "string"}, "_id": {"type": "integer"}, "flags": {"type": "array", "items": {"type": "boolean"}}}}
    tool = http_tool(HttpTool(name="t", description="d", url="https://example.com/", parameters=schema))
    assert tool.check({"model_config": 7, "_id": "3", "flags": [True]}) == {"model_config": "7", "_id": 3, "flags": [True]}
    with pytest.raises(ToolError, match=r"flags.1: Input should be a valid boolean"):
        tool.check({"_id": 3, "flags": [True, "yes"]})


def test_http_tool_post_sends_json(tmp_path):
    with local_server(ok(b"created", 201, "text/plain")) as (url, requests):
        tool = HttpTool(name="create_ticket", description="d", url=f"{url}/t/{{team}}", method="POST")
        assert call_http_tool(tool, {"team": "sales", "subject": "hi", "n": 2}, settings(tmp_path)) == "created"
    assert requests[0]["method"] == "POST" and requests[0]["path"] == "/t/sales"
    assert json.loads(requests[0]["body"]) == {"subject": "hi", "n": 2}


def test_http_tool_truncates_long_responses(tmp_path):
    body = ("é" * 2000).encode()  # 4000 bytes, two per character
    with local_server(ok(body, content_type="text/plain; charset=utf-8")) as (url, _):
        tool = HttpTool(name="big", description="d", url=url, max_response_bytes=1001)
        text = call_http_tool(tool, {}, settings(tmp_path))
    content, note = text.split("\n")
    assert content == "é" * 500  # the character cut in half is dropped, not mangled
    assert note == "[truncated: the response was longer than 1001 bytes]"


@pytest.mark.parametrize("respond, timeout_s, message", [
    (lambda n, req: (404, {}, b"no such order"), 10, "the service answered HTTP 404: no such order"),
    (lambda n, req: (302, {"Location": "http://169.254.169.254/"}, b""), 10,
     "the service answered with a redirect (HTTP 302) to http://169.254.169.254/; redirects are not followed"),
    (lambda n, req: (time.sleep(1.5), (200, {}, b"late"))[1], 0.5, "the service did not answer within 0.5 seconds"),
])
def test_http_tool_errors(tmp_path, respond, timeout_s, message):
    # a deadline only where it is the point: a loaded machine may take longer than 0.5 s to answer a redirect
    with local_server(respond) as (url, requests):
        tool = HttpTool(name="t", description="d", url=f"{url}/x", timeout_s=timeout_s)
        with pytest.raises(HttpToolError) as info:
            call_http_tool(tool, {}, settings(tmp_path))
    assert str(info.value) == message
    assert len(requests) == 1  # the redirect was not followed


def test_http_tool_configuration_errors(tmp_path):
    tool = HttpTool(name="t", description="d", url="http://127.0.0.1:9/{id}", credential="missing")
    with pytest.raises(HttpToolError, match=r"missing argument\(s\) for the URL: id"):
        call_http_tool(tool, {}, settings(tmp_path))
    with pytest.raises(HttpToolError, match="credential 'missing' is not configured"):
        call_http_tool(tool, {"id": 1}, settings(tmp_path))
    with pytest.raises(HttpToolError, match="only http:// and https://"):
        call_http_tool(HttpTool(name="t", description="d", url="file:///etc/passwd"), {}, settings(tmp_path))


@pytest.fixture
def no_connections(monkeypatch):
    """Fail the test if anything gets as far as opening a connection."""

    async def refuse(self, request):
        raise AssertionError(f"a connection was attempted to {request.url}")

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", refuse)


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1:{port}", "loopback"),
    ("localhost:{port}", "loopback"),
    ("[::1]:{port}", "loopback"),
    ("10.1.2.3", "private"),
    ("192.168.0.10", "private"),
    ("172.16.5.4", "private"),
    ("169.254.169.254", "link-local"),
    ("[fe80::1]", "link-local"),
    ("[fd00::1]", "private"),
    ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("100.64.0.1", "non-public"),
    ("[::ffff:127.0.0.1]", "loopback"),
    ("[::ffff:10.0.0.1]", "private"),
])
def test_ssrf_guard_refuses_before_connecting(tmp_path, address, kind, no_connections):
    with local_server(ok({"secret": True})) as (url, requests):
        port = url.rsplit(":", 1)[1]
        tool = HttpTool(name="t", description="d", url=f"http://{address.format(port=port)}/latest/meta-data")
        with pytest.raises(HttpToolError, match=rf"refused: .* is a {kind} address"):
            call_http_tool(tool, {}, settings(tmp_path, allow_private=False))
    assert requests == []


def test_ssrf_guard_checks_every_address_and_pins_the_checked_one(tmp_path, monkeypatch):
    answers = {"api.example.com": ["93.184.215.14"], "rebind.example.com": ["93.184.215.14", "10.0.0.7"]}

    def fake_getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            raise socket.gaierror("unknown")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    sent = []

    async def fake_send(self, request):  # stands in for the network: nothing leaves this machine
        sent.append(request)
        return httpx.Response(200, content=b'{"ok": true}')

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", fake_send)
    strict = settings(tmp_path, allow_private=False)
    tool = HttpTool(name="t", description="d", url="https://api.example.com:8443/v1/{id}")
    assert call_http_tool(tool, {"id": "7", "q": "x"}, strict) == '{"ok": true}'
    (request,) = sent
    assert str(request.url) == "https://93.184.215.14:8443/v1/7?q=x"  # connects to the address it checked
    assert request.headers["Host"] == "api.example.com:8443"
    assert request.extensions["sni_hostname"] == "api.example.com"  # TLS still verifies the host name
    with pytest.raises(HttpToolError, match=r"refused: rebind.example.com is a private address \(10.0.0.7\)"):
        call_http_tool(HttpTool(name="t", description="d", url="https://rebind.example.com/"), {}, strict)
    with pytest.raises(HttpToolError, match="could not resolve the host name 'nowhere.invalid'"):
        call_http_tool(HttpTool(name="t", description="d", url="https://nowhere.invalid/"), {}, strict)
    assert len(sent) == 1
