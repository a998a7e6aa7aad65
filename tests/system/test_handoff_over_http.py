"""Issue 20's handoff end to end over real HTTP, on the embedded profile's real ``atende serve`` (its own queue
worker threads; tests/system/conftest.py): Meta's signed webhooks posted to it, its sends reaching the Graph API
stand-in, its model calls reaching the chat-model stand-in process, and the operator signed in to the dashboard
with the login form, acting with the session cookie as the dashboard's page does. The customer asks for a person
(handed off before any model call) -> an operator replies, from the dashboard or from the WhatsApp Business app
(Meta's echo) -> the customer's next two messages get no reply -> the operator hands back from the dashboard ->
the AI answers again. Prints the flow's wall time and the handoff latency (webhook posted -> the customer's
handoff message at the Graph stand-in). The customer writes in English: the chat-model stand-in always answers in
English, and an answer in another language than the customer's is asked for again (a second model call)."""
from __future__ import annotations

import json
import time
import uuid

import pytest

from runtime.config import DEFAULT_AI_BACK, DEFAULT_HANDOFF
from runtime.whatsapp.standin import GraphStandIn, echo_body
from tests.system.conftest import REPLY, ChatModel, Stack
from tests.factories import wait_until
from tests.system.world import (
    customer_number,
    deliver,
    message_body,
    messages,
    new_assistant,
    replies_to,
    signed_in,
    turns,
    waiting_conversation,
)

OPERATOR_REPLY = "Hi, Maria here. How can I help?"


@pytest.mark.parametrize("replied_from", ["dashboard", "business_app"])
def test_a_person_asked_for_keeps_the_ai_quiet_until_handed_back(embedded_stack: Stack, graph: GraphStandIn,
                                                                 chat_model: ChatModel, replied_from: str):
    api, engine = embedded_stack.apis[0], embedded_stack.engine
    number, customer = new_assistant(api, "handoff"), customer_number()
    calls = chat_model.completions()

    started = time.monotonic()
    deliver(api, number, message_body(number, customer, "Can I talk to a human, please?"))
    wait_until(lambda: replies_to(graph, customer), 20, "the handoff message sent")
    (handoff_send,) = [r for r in list(graph.sent) if (r["json"] or {}).get("to") == customer]
    handoff_latency = handoff_send["at"] - started
    assert replies_to(graph, customer) == [DEFAULT_HANDOFF["en"]]
    assert chat_model.completions() == calls  # recognised before the model runs

    with signed_in(api) as dashboard:
        cid = waiting_conversation(dashboard, number, customer)
        page = dashboard.get(f"/dashboard/conversations/{cid}")
        assert page.status_code == 200 and 'id="ai-state" data-state="waiting_for_human"' in page.text
        assert 'id="operator-reply"' in page.text
        if replied_from == "dashboard":  # what the page's reply form posts
            r = dashboard.post(f"/api/conversations/{cid}/messages", json={"text": OPERATOR_REPLY})
            assert r.status_code == 201, r.text
            wait_until(lambda: len(replies_to(graph, customer)) == 2, 20, "the operator's reply sent")
            assert replies_to(graph, customer)[1] == OPERATOR_REPLY
        else:  # written in the WhatsApp Business app: Meta delivered it; we get its echo
            echo = echo_body(number.phone_id, f"+{customer}", f"wamid.{uuid.uuid4().hex}", OPERATOR_REPLY)
            deliver(api, number, json.dumps(echo).encode())
            wait_until(lambda: dashboard.get(f"/api/conversations/{cid}").json()["handoff_state"] == "with_human",
                       20, "the echo recorded")
        sent = len(replies_to(graph, customer))
        assert sent == (2 if replied_from == "dashboard" else 1)  # the app's message is not sent again by us
        conversation = dashboard.get(f"/api/conversations/{cid}").json()
        assert conversation["handoff_state"] == "with_human"
        assert [m["text"] for m in conversation["messages"] if m["kind"] == "operator"] == [OPERATOR_REPLY]
        assert conversation["handoff_changes"][-1]["actor"] == "operator"

        for n, text in enumerate(("I want to exchange a jacket", "It is order 123"), start=1):
            deliver(api, number, message_body(number, customer, text))
            wait_until(lambda n=n: turns(engine, cid) == ["handoff"] + ["paused"] * n, 20, f"paused turn {n}")
        assert [status for direction, status in messages(engine, customer) if direction == "inbound"][-2:] == \
            ["skipped", "skipped"]
        assert len(replies_to(graph, customer)) == sent and chat_model.completions() == calls

        page = dashboard.get(f"/dashboard/conversations/{cid}")
        assert 'data-state="with_human"' in page.text and 'id="hand-back"' in page.text
        r = dashboard.post(f"/api/conversations/{cid}/handback", json={"reason": "an operator handed it back"})
        assert r.status_code == 200 and r.json()["handoff_state"] == "ai", r.text
    wait_until(lambda: len(replies_to(graph, customer)) == sent + 1, 20, "the customer told the AI is back")
    assert replies_to(graph, customer)[-1] == DEFAULT_AI_BACK["en"]

    deliver(api, number, message_body(number, customer, "What time do you open on Saturdays?"))
    wait_until(lambda: len(replies_to(graph, customer)) == sent + 2, 20, "the AI's answer sent")
    flow = time.monotonic() - started
    assert replies_to(graph, customer)[-1] == REPLY and chat_model.completions() == calls + 1
    assert turns(engine, cid)[-1] == "answered"
    print(f"\nhandoff over HTTP, operator in the {replied_from}: flow {flow:.2f} s, "
          f"handoff latency {handoff_latency * 1000:.0f} ms (webhook posted -> handoff message at the Graph stand-in)")
