"""Automations (runtime.automations) on SQLite and PostgreSQL, sending to the Graph API stand-in (the real client
over HTTP) and telling a local event receiver: what a run does by the customer's window, what it refuses before
storing anything, and that an idempotency key runs once, even when two requests race."""
from __future__ import annotations

import re
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core.errors import Conflict, InvalidRequest
from kb import registry
from runtime import automations
from runtime.config import merge_config
from runtime.models import Automation, AutomationRun, Conversation, EventSubscription, Message
from runtime.whatsapp.graph import GraphClient
from runtime.whatsapp.models import WhatsAppSender, WhatsAppTemplate
from runtime.whatsapp.standin import GraphStandIn
from tests.conftest import make_services
from tests.event_receiver import EventReceiver
from tests.factories import use_scripted_model
from tests.system.stack import free_port

PHONE_ID, CUSTOMER = "106540352242999", "5511987654321"
ORDER = re.compile(r"order (AZ-\d+)")
RUN = {"to": "+55 (11) 98765-4321", "variables": {"first_name": "Ana", "order_id": "AZ-1"}}


class World:
    def __init__(self, services, graph: GraphStandIn, receiver: EventReceiver, assistant_id: str) -> None:
        self.services, self.graph, self.receiver, self.assistant_id = services, graph, receiver, assistant_id

    def automation(self, **fields) -> Automation:
        with self.services.session() as session:
            automation, _ = automations.create(session, sender_id="snd1", name="shipped", **fields)
            session.commit()
            return automation

    def trigger(self, automation: Automation, key: str = "k1", **run):
        return automations.trigger(self.services, automation, idempotency_key=key, triggered_by="test",
                                   **{**RUN, **run})

    def sends(self) -> list[dict]:
        return [r["json"] for r in list(self.graph.sent) if r["json"] and r["json"].get("to") == CUSTOMER]

    def customer_wrote(self, ago: timedelta) -> str:
        """The customer's conversation, their last message ``ago``."""
        from runtime.store import find_or_create_conversation

        with self.services.session() as session:
            conv = find_or_create_conversation(session, assistant_id=self.assistant_id, channel="whatsapp",
                                               sender=PHONE_ID, customer_id=CUSTOMER)
            conv.last_inbound_at = self.services.clock() - ago
            session.commit()
            return conv.id


@pytest.fixture
def world(tmp_path, embedders, database_url):
    with GraphStandIn() as graph:
        receiver = EventReceiver(free_port()).start()
        services = make_services(tmp_path / "home", embedders, database_url, whatsapp_graph_url=graph.base_url,
                                 http_tools_allow_private=True)
        services.whatsapp_graph = GraphClient(graph.base_url, timeout_s=2, attempts=1)
        with services.session() as session:
            a = registry.create_assistant(session, name="loja", embedding_model="all-minilm-l6-v2", chunk_size=128,
                                          chunk_overlap=16)
            a.config = merge_config({}, {"system_prompt": "Help {{first_name}} with order {{order_id}}."})
            session.add(WhatsAppSender(id="snd1", assistant_id=a.id, phone_number_id=PHONE_ID, access_token="t",
                                       app_secret="app-secret-automations", verify_token="v"))
            session.add(WhatsAppTemplate(id="tpl1", sender_id="snd1", name="order_shipped", language="en",
                                         category="UTILITY", status="APPROVED", body="Hi {{1}}, order {{2}} shipped."))
            receiver.secret = "the-subscription-secret-of-the-tests"
            session.add(EventSubscription(id="sub1", assistant_id=a.id, url=receiver.url, events=["*"],
                                          secret=receiver.secret, description="", enabled=True))
            session.commit()
            aid = a.id
        try:
            yield World(services, graph, receiver, aid)
        finally:
            receiver.stop()
            services.close()
            services.engine.dispose()


TEMPLATE = {"template_name": "order_shipped", "template_language": "en",
            "template_parameters": ["{{first_name}}", "{{order_id}}"]}


def test_outside_the_window_the_template_opens_the_conversation_with_the_variables(world):
    automation = world.automation(**TEMPLATE, message="Hi {{first_name}}")
    run, new = world.trigger(automation)
    assert new and (run.action, run.status, run.customer_id, run.error) == ("template", "sent", CUSTOMER, None)
    (send,) = world.sends()
    assert send["template"]["name"] == "order_shipped"
    assert [p["text"] for p in send["template"]["components"][0]["parameters"]] == ["Ana", "AZ-1"]
    with world.services.session() as session:
        conv = session.get(Conversation, run.conversation_id)
        message = session.get(Message, run.message_id)
    assert conv.variables == {"first_name": "Ana", "order_id": "AZ-1"}  # the context passed in
    assert (message.kind, message.text) == ("template", "Hi Ana, order AZ-1 shipped.")
    kinds = [e["type"] for e in world.receiver.events(run.conversation_id)]
    assert kinds == ["conversation.started", "reply.sent", "automation.run_finished"]
    finished = world.receiver.events(run.conversation_id, "automation.run_finished")[0]
    assert finished["data"]["status"] == "sent" and finished["conversation"]["variables"]["order_id"] == "AZ-1"


def test_inside_the_window_the_message_is_sent(world):
    world.customer_wrote(timedelta(hours=2))
    automation = world.automation(**TEMPLATE, inside_window="message",
                                  message="Hi {{first_name}}, order {{order_id}} is on its way.")
    run, _ = world.trigger(automation)
    assert (run.action, run.status) == ("message", "sent")
    assert [s["text"]["body"] for s in world.sends()] == ["Hi Ana, order AZ-1 is on its way."]


def test_inside_the_window_the_ai_can_open_the_conversation(world):
    world.customer_wrote(timedelta(minutes=5))
    model = use_scripted_model(world.services)
    model.enqueue(lambda messages, tools: "Hello! Order " + ORDER.search(messages[0]["content"])[1] + " has shipped.")
    automation = world.automation(inside_window="ai", ai_instruction="tell them their order shipped")
    run, _ = world.trigger(automation)
    assert (run.action, run.status, run.message_id) == ("ai", "queued", None)
    prompt = model.requests[0].messages
    assert "Help Ana with order AZ-1." in prompt[0]["content"]  # {{variables}} filled in the system prompt
    assert "started by the automation 'shipped': tell them their order shipped" in prompt[-1]["content"]
    assert [s["text"]["body"] for s in world.sends()] == ["Hello! Order AZ-1 has shipped."]


@pytest.mark.parametrize("fields, run, error, message", [
    ({"message": "Hi"}, {}, Conflict, "window is closed and this automation has no template"),
    (TEMPLATE, {"variables": {"first_name": "Ana"}}, InvalidRequest, ("template parameter {{2}} needs the variable(s) "
                                                                     "order_id")),
    (TEMPLATE, {"to": "12"}, InvalidRequest, "unknown number format '12'"),
    (TEMPLATE, {"variables": {"bad name": "x"}}, InvalidRequest, "is not a variable name"),
    ({**TEMPLATE, "template_name": "nope"}, {}, Conflict, "'nope' (en) is not found"),
    ({**TEMPLATE, "template_parameters": ["{{first_name}}"]}, {}, InvalidRequest, "needs 2 parameter(s); 1 given"),
])
def test_bad_input_is_refused_saying_why_before_anything_is_stored(world, fields, run, error, message):
    automation = world.automation(**fields)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{")):
        world.trigger(automation, **run)
    with world.services.session() as session:
        assert session.scalar(select(func.count()).select_from(AutomationRun)) == 0
        assert session.scalar(select(func.count()).select_from(Conversation)) == 0
    assert world.sends() == []


def test_an_idempotency_key_runs_once_even_when_two_requests_race(world):
    automation = world.automation(**TEMPLATE)
    results, barrier = [], threading.Barrier(2)

    def call():
        barrier.wait()
        results.append(world.trigger(automation, key="crm-1"))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(new for _, new in results) == [False, True]
    assert len({run.id for run, _ in results}) == 1 and len(world.sends()) == 1
    again, new = world.trigger(automation, key="crm-1")
    assert not new and again.id == results[0][0].id and len(world.sends()) == 1
    with pytest.raises(Conflict, match="was used for another request"):
        world.trigger(automation, key="crm-1", variables={"first_name": "Bia", "order_id": "AZ-1"})


def test_tokens_are_stored_hashed_and_rotate(world):
    with world.services.session() as session:
        automation, token = automations.create(session, sender_id="snd1", name="t", message="Hi")
        session.commit()
        assert token.startswith("atr_") and token not in automation.token_hash
        assert automations.authenticate(session, automation.id, token).id == automation.id
        assert automations.authenticate(session, automation.id, token + "x") is None
        new = automations.rotate_token(automation)
        session.commit()
        assert automations.authenticate(session, automation.id, token) is None
        assert automations.authenticate(session, automation.id, new).id == automation.id


@pytest.mark.parametrize("fields, message", [
    ({"inside_window": "message", "template_name": "a", "template_language": "en"}, "needs the message"),
    ({"inside_window": "template", "message": "x"}, "needs template_name"),
    ({"template_name": "a", "message": "x"}, "both template_name and template_language"),
    ({"inside_window": "maybe", "message": "x"}, "inside_window must be one of"),
])
def test_an_inconsistent_automation_is_refused(world, fields, message):
    with world.services.session() as session, pytest.raises(InvalidRequest, match=message):
        automations.create(session, sender_id="snd1", name="x", **fields)
