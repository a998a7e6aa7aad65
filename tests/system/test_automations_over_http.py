"""Issue 16 end to end over real HTTP, on a real ``atende serve`` (embedded profile: SQLite, its own queue worker
threads) whose sends reach the Graph API stand-in and whose model calls reach a rule-based chat-model stand-in (a
scripted model: tests/rule_model_standin.py), with a local event receiver that verifies every signature
(tests/event_receiver.py):

- a CRM triggers an automation with variables, by its own token: outside the 24-hour window it opens the
  conversation with the approved template, parameters from the variables; a repeated idempotency key does nothing;
  bad input gets a 4xx saying what is wrong; the customer's replies are answered by the AI with the variables in its
  prompt; a booking and a handoff (the customer asks for a person) reach the receiver, signed; the receiver goes
  down, events pile up, it comes back: every event is delivered once, in order per conversation;
- a follow-up scheduled by the model is sent once, at its time, although the server restarted before it was due.

Prints the figures (deliveries, attempts, time to drain; follow-up lateness)."""
from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from runtime.config import DEFAULT_HANDOFF
from runtime.whatsapp.standin import GraphStandIn
from tests.event_receiver import EventReceiver
from tests.factories import wait_until
from tests.rule_model_standin import RuleModelStandIn
from tests.system.conftest import FAST
from tests.system.stack import Child, Processes, admin_client, api_process, base_env, free_port, wait_api
from tests.system.world import customer_number, deliver, message_body, new_assistant

ZONE = ZoneInfo("America/Sao_Paulo")
PROMPT = "You are the assistant of Loja Azul. The customer is {{first_name}}; their order is {{order_id}}."
CONFIG = {"system_prompt": PROMPT,
          "tools": ["transfer_to_human", "schedule_appointment", "schedule_followup"],
          "scheduling": {"timezone": "America/Sao_Paulo", "slot_minutes": 30,
                         "availability": {d: [["08:00", "20:00"]] for d in range(7)}},
          "handoff": {"after_fallbacks": 0}}
TEMPLATE_BODY = "Hi {{1}}, your order {{2}} has shipped. Reply here with any question."
FOLLOWUP_IN_S = 40  # the model schedules the follow-up this far ahead: room for a restart


def _variables(messages: list[dict]) -> tuple[str, str]:
    found = re.search(r"The customer is (\w+); their order is ([\w-]+)", messages[0]["content"])
    return (found.group(1), found.group(2)) if found else ("", "")


def _slot() -> str:
    return (datetime.now(ZONE) + timedelta(days=1)).strftime("%Y-%m-%d 10:00")


def respond(messages: list[dict], tools: list[dict]) -> dict:
    """The scripted model: by the last message (a tool's result, or the customer's text)."""
    first, order = _variables(messages)
    last = messages[-1]
    if last["role"] == "tool":
        result = last["content"]
        if result.startswith("Not booked yet"):
            return {"content": f"Shall I book your visit for tomorrow at 10:00, {first}? Please confirm."}
        if result.startswith("Booked"):
            return {"content": f"Done, {first}: your visit is booked for tomorrow at 10:00."}
        if result.startswith("Follow-up scheduled"):
            return {"content": f"Sure {first}, I will write to you again shortly."}
        return {"content": f"Sorry {first}, that did not work: {result}"}
    text = last["content"].lower()
    if "book a visit" in text:
        return {"tool_calls": [("schedule_appointment", {"start": _slot(), "name": first})]}
    if "yes, please book" in text:
        return {"tool_calls": [("schedule_appointment", {"start": _slot(), "name": first, "confirmed": True})]}
    if "remind me" in text:
        at = (datetime.now(ZONE) + timedelta(seconds=FOLLOWUP_IN_S)).strftime("%Y-%m-%d %H:%M:%S")
        return {"tool_calls": [("schedule_followup", {"at": at, "message": f"Hi {first}, here is your reminder "
                                                                             f"about order {order}."})]}
    return {"content": f"Hello {first}! Your order {order} left our warehouse today and arrives in two days."}


@pytest.fixture(scope="module")
def graph() -> GraphStandIn:
    with GraphStandIn(port=free_port()) as standin:
        yield standin


@pytest.fixture(scope="module")
def model() -> RuleModelStandIn:
    with RuleModelStandIn(respond) as standin:
        yield standin


class Server:
    """One ``atende serve`` that a test may restart (same data directory, same port)."""

    def __init__(self, child: Child, url: str, engine: sa.Engine) -> None:
        self.child, self.url, self.engine = child, url, engine

    def restart(self) -> float:
        """Stop it (SIGTERM) and start it again; the seconds it was away."""
        started = time.monotonic()
        self.child.stop()
        self.child.start()
        wait_api(self.child, self.url)
        return time.monotonic() - started


@pytest.fixture(scope="module")
def server(tmp_path_factory, graph, model) -> Server:
    home = tmp_path_factory.mktemp("automations")
    processes = Processes(home)
    env = base_env(home / "data", **FAST, ATENDE_LLM_BASE_URL=model.url, WHATSAPP_GRAPH_URL=graph.base_url,
                   ATENDE_HTTP_TOOLS_ALLOW_PRIVATE="true",  # the event receiver listens on loopback
                   ATENDE_EVENTS_RETRY_FIRST_DELAY_S="0.5", ATENDE_EVENTS_RETRY_MAX_DELAY_S="1")
    engine = sa.create_engine(f"sqlite:///{home / 'data' / 'atende.db'}")
    try:
        child, url = api_process(processes, "api", env)
        wait_api(child, url)
        yield Server(child, url, engine)
    finally:
        processes.stop_all()
        engine.dispose()


def sends_to(graph: GraphStandIn, customer: str) -> list[dict]:
    return [r["json"] for r in list(graph.sent) if r["json"] and r["json"].get("to") == customer]


def texts_to(graph: GraphStandIn, customer: str) -> list[str]:
    return [s["text"]["body"] for s in sends_to(graph, customer) if s.get("type") == "text"]


def _setup(api: str, receiver: EventReceiver) -> tuple:
    """An assistant with its number, an approved template, an event subscription to ``receiver`` (its secret
    given to the receiver) and an automation; (number, automation, token)."""
    number = new_assistant(api, "automations", CONFIG)
    with admin_client(api) as admin:
        sender_id = next(s["id"] for s in admin.get("/api/whatsapp/senders").json()
                         if s["phone_number_id"] == number.phone_id)
        r = admin.post("/api/whatsapp/templates", json={
            "sender_id": sender_id, "name": "order_shipped", "language": "en", "category": "UTILITY",
            "body": TEMPLATE_BODY, "status": "APPROVED"})
        assert r.status_code == 201, r.text
        r = admin.post(f"/api/assistants/{number.assistant_id}/event-subscriptions",
                       json={"url": receiver.url, "events": ["*"], "description": "the CRM"})
        assert r.status_code == 201, r.text
        receiver.secret = r.json()["secret"]
        r = admin.post("/api/automations", json={
            "sender_id": sender_id, "name": "order-shipped", "template_name": "order_shipped",
            "template_language": "en", "template_parameters": ["{{first_name}}", "{{order_id}}"],
            "inside_window": "message", "message": "Hi {{first_name}}, order {{order_id}} has shipped."})
        assert r.status_code == 201, r.text
    return number, r.json(), r.json()["token"]


def trigger(api: str, automation: dict, token: str | None, body: dict, key: str | None = None):
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if key:
        headers["Idempotency-Key"] = key
    return httpx.post(f"{api}{automation['trigger_url']}", json=body, headers=headers, timeout=30, trust_env=False)


def conversation_of(engine: sa.Engine, customer: str) -> str:
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT id FROM conversations WHERE customer_id = :c"), {"c": customer})


def test_an_automation_opens_the_conversation_and_every_event_reaches_the_receiver_once_in_order(
        server: Server, graph: GraphStandIn, model: RuleModelStandIn):
    api = server.url
    receiver = EventReceiver(free_port()).start()
    try:
        number, automation, token = _setup(api, receiver)
        customer = customer_number()
        written = f"+{customer[:2]} {customer[2:4]} {customer[4:9]}-{customer[9:]}"  # as a CRM stores it
        run = {"to": written, "variables": {"first_name": "Ana", "order_id": "AZ-1042"}}

        # refused, with the reason, before anything happens
        assert trigger(api, automation, None, {**run, "idempotency_key": "k"}).status_code == 401
        assert trigger(api, automation, "atr_wrong", {**run, "idempotency_key": "k"}).status_code == 401
        r = trigger(api, automation, token, {**run, "to": "12", "idempotency_key": "k"})
        assert r.status_code == 422 and "unknown number format" in r.json()["detail"], r.text
        r = trigger(api, automation, token, {"to": written, "variables": {"first_name": "Ana"}, "idempotency_key": "k"})
        assert r.status_code == 422 and "order_id" in r.json()["detail"], r.text
        r = trigger(api, automation, token, run)
        assert r.status_code == 422 and "idempotency_key" in r.json()["detail"], r.text
        assert sends_to(graph, customer) == []

        started = time.monotonic()
        r = trigger(api, automation, token, run, key="crm-order-AZ-1042")
        assert r.status_code == 201, r.text
        first_run = r.json()
        assert (first_run["action"], first_run["status"], first_run["customer_id"]) == ("template", "sent", customer)
        again = trigger(api, automation, token, run, key="crm-order-AZ-1042")
        assert again.status_code == 200 and again.json()["id"] == first_run["id"]
        other = trigger(api, automation, token, {**run, "variables": {"first_name": "Bia", "order_id": "X"}},
                        key="crm-order-AZ-1042")
        assert other.status_code == 409, other.text
        (template_send,) = sends_to(graph, customer)  # once, whatever the repeats
        assert template_send["template"]["name"] == "order_shipped"
        assert [p["text"] for p in template_send["template"]["components"][0]["parameters"]] == ["Ana", "AZ-1042"]

        conversation_id = first_run["conversation_id"]
        with admin_client(api) as admin:
            shown = admin.get(f"/api/conversations/{conversation_id}").json()
            assert shown["variables"] == {"first_name": "Ana", "order_id": "AZ-1042"}
            runs = admin.get(f"/api/automations/{automation['id']}/runs").json()
            assert [(x["id"], x["status"], x["message_id"] is not None) for x in runs] == [(first_run["id"], "sent", True)]
            assert runs[0]["triggered_by"].startswith("automation token from 127.0.0.1")

        # the customer replies: the AI answers with the variables in its prompt; a booking; a handoff
        dialogue = [("Hi! Where is my order?", "Hello Ana! Your order AZ-1042 left our warehouse today"),
                    ("Can I book a visit to the shop tomorrow?", "Shall I book your visit for tomorrow at 10:00, Ana?"),
                    ("Yes, please book it.", "Done, Ana: your visit is booked for tomorrow at 10:00."),
                    ("The item arrived broken, I want to talk to a person.", DEFAULT_HANDOFF["en"])]
        for n, (said, answer) in enumerate(dialogue, start=1):
            deliver(api, number, message_body(number, customer, said))
            wait_until(lambda n=n: len(texts_to(graph, customer)) == n, 30, f"answer {n}")
            assert texts_to(graph, customer)[-1].startswith(answer)
        assert "Ana" in model.requests[-1]["messages"][0]["content"]
        assert "AZ-1042" in model.requests[-1]["messages"][0]["content"]  # {{order_id}} filled in the prompt
        wait_until(lambda: receiver.events(conversation_id, "handoff.requested"), 20, "the handoff at the receiver")
        (booked,) = receiver.events(conversation_id, "appointment.booked")
        (handoff,) = receiver.events(conversation_id, "handoff.requested")
        assert booked["data"]["name"] == "Ana" and booked["data"]["local_start"].startswith(_slot().replace(" ", "T"))
        assert handoff["data"]["reason"] == "the customer asked for a person" and handoff["data"]["actor"] == "customer"
        assert handoff["conversation"]["variables"]["order_id"] == "AZ-1042"
        flow_s = time.monotonic() - started

        # the receiver goes down; events pile up (retried); it comes back: each delivered once, in order
        receiver.stop()
        down_at = time.monotonic()
        second = customer_number()
        r = trigger(api, automation, token, {"to": second, "variables": {"first_name": "Caio", "order_id": "AZ-7"}},
                    key="crm-order-AZ-7")
        assert r.status_code == 201 and r.json()["action"] == "template", r.text
        deliver(api, number, message_body(number, second, "Hi! Where is my order?"))
        wait_until(lambda: len(texts_to(graph, second)) == 1, 30, "the second customer answered")
        deliver(api, number, message_body(number, customer, "Is anyone there?"))  # paused: a person has it
        with admin_client(api) as admin:
            # the first event of each conversation is retried (3 attempts at least); the later ones wait behind it
            def held_back() -> bool:
                pending = admin.get("/api/events", params={"status": "pending", "limit": 500}).json()
                retried = {e["conversation_id"] for e in pending if e["attempts"] >= 3}
                return len(retried) == 2 and sum(e["attempts"] == 0 for e in pending) >= 2

            wait_until(held_back, 30, "both conversations' events held back, their first retried")
            waiting = len(admin.get("/api/events", params={"status": "pending", "limit": 500}).json())
        receiver.start()
        down_s = time.monotonic() - down_at
        with admin_client(api) as admin:
            wait_until(lambda: not admin.get("/api/events", params={"status": "pending"}).json(), 30,
                       "every event delivered")
            drain_s = time.monotonic() - down_at - down_s
            made = admin.get("/api/events", params={"assistant_id": number.assistant_id, "limit": 500}).json()
            failed_attempts = sum(e["attempts"] - 1 for e in made)
            detail = admin.get(f"/api/events/{made[0]['id']}").json()
            assert len(detail["attempt_log"]) == detail["attempts"]
        assert receiver.rejected == [] and receiver.repeats == []
        assert {e["id"] for e in receiver.received} == {e["id"] for e in made}
        assert all(e["status"] == "delivered" for e in made)
        for cid in {e["conversation"]["id"] for e in receiver.received}:
            stamps = [e["created_at"] for e in receiver.events(cid)]
            assert stamps == sorted(stamps), f"conversation {cid}: out of order"
        kinds = {e["type"] for e in receiver.events(conversation_of(server.engine, second))}
        assert {"conversation.started", "automation.run_finished", "reply.sent", "message.received"} <= kinds
        print(f"\nautomation over HTTP: template to the stand-in, 3 AI answers and a handoff, booking and handoff "
              f"events at the receiver in {flow_s:.2f} s; receiver down {down_s:.1f} s with {waiting} events "
              f"pending; all {len(made)} events delivered once and in order {drain_s:.2f} s after it came back "
              f"({failed_attempts} failed attempts logged)")
    finally:
        receiver.stop()


def test_a_followup_scheduled_by_the_model_is_sent_once_at_its_time_across_a_restart(
        server: Server, graph: GraphStandIn, model: RuleModelStandIn):
    api = server.url
    number = new_assistant(api, "followups", CONFIG)
    customer = customer_number()
    deliver(api, number, message_body(number, customer, "Please remind me about my order later."))
    wait_until(lambda: texts_to(graph, customer), 30, "the answer")
    assert texts_to(graph, customer)[0].endswith("I will write to you again shortly.")
    conversation_id = conversation_of(server.engine, customer)
    with admin_client(api) as admin:
        (followup,) = admin.get("/api/followups", params={"conversation_id": conversation_id}).json()
    assert (followup["kind"], followup["status"], followup["created_by"]) == ("message", "open", "assistant")
    due = datetime.fromisoformat(followup["due_at"])
    away_s = server.restart()  # before it is due: the huey schedule and the follow-up are in the data directory
    assert datetime.now(due.tzinfo) < due, f"the restart took {away_s:.0f} s: the follow-up came due meanwhile"
    assert len(texts_to(graph, customer)) == 1
    wait_until(lambda: len(texts_to(graph, customer)) == 2, FOLLOWUP_IN_S + 30, "the follow-up sent")
    sent = next(r for r in reversed(list(graph.sent)) if r["json"] and r["json"].get("to") == customer)
    late_s = sent["wall"] - due.timestamp()
    assert "here is your reminder" in texts_to(graph, customer)[1]
    assert late_s >= 0
    time.sleep(5)  # two more sweeps (every 2 s) and the huey job: nothing is sent again
    assert len(texts_to(graph, customer)) == 2
    with admin_client(api) as admin:
        (followup,) = admin.get("/api/followups", params={"conversation_id": conversation_id}).json()
    assert (followup["status"], followup["message_id"] is not None) == ("done", True)
    assert followup["result"].startswith("sent as a message")
    print(f"\nfollow-up across a restart: server away {away_s:.1f} s, sent once, {late_s:.2f} s after its time")


def test_the_automation_routes_refuse_bad_input_with_a_clear_4xx(server: Server):
    api = server.url
    with admin_client(api) as admin:
        assert admin.post("/api/automations", json={"sender_id": uuid.uuid4().hex, "name": "x",
                                                    "message": "m"}).status_code == 404
        r = admin.post("/api/automations", json={"sender_id": "s", "name": "x", "inside_window": "sometimes"})
        assert r.status_code == 422
        assert admin.post("/api/automations", content=b"{" * 100_000,
                          headers={"Content-Type": "application/json"}).status_code in (413, 422)
        assert admin.get(f"/api/automations/{uuid.uuid4().hex}/runs").status_code == 404
        assert admin.post(f"/api/events/{uuid.uuid4().hex}/resend").status_code == 404
        r = admin.post("/api/assistants/none/event-subscriptions", json={"url": "file:///etc/passwd", "events": ["*"]})
        assert r.status_code in (404, 422)
