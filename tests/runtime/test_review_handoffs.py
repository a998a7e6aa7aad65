"""The waiting-for-a-human queue (runtime.review.queue) and the handoff metrics (runtime.review.handoff_metrics) on
one fixture of hand-written handoff logs with known answers: nine conversations, every reason, answered, abandoned
and open handoffs, on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.db import new_id
from runtime.handoff import BUSINESS_APP_REPLY, CLOSED, CUSTOMER_REQUEST, OPERATOR_REPLY, fallback_reason
from runtime.models import Conversation, HandoffChange, Message, Turn
from runtime.review.filters import ConversationFilters
from runtime.review.metrics import compute_metrics
from runtime.review.queue import handoff_queue
from tests.factories import add_assistant

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(seconds=6000)
IDLE = "no operator message for 60 minutes"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# per conversation: its final state and its log, oldest first: a change (from, to, actor, reason, second), an
# operator message ("op", second) or a customer message ("in", second, text)
FIXTURE = {
    "A": ("ai", [("ai", "waiting_for_human", "customer", CUSTOMER_REQUEST, 0), ("op", 60),
                 ("waiting_for_human", "with_human", "operator", OPERATOR_REPLY, 60),
                 ("with_human", "ai", "operator", "an operator handed it back", 600)]),
    "B": ("ai", [("ai", "waiting_for_human", "assistant", "the customer wants a refund", 0), ("op", 300),
                 ("waiting_for_human", "with_human", "operator", OPERATOR_REPLY, 300),
                 ("with_human", "ai", "system", IDLE, 4000),
                 ("ai", "waiting_for_human", "system", fallback_reason(2), 5000),
                 ("waiting_for_human", "ai", "operator", CLOSED, 5100)]),
    "C": ("with_human", [("ai", "waiting_for_human", "system", fallback_reason(2), 0), ("op", 900),
                         ("waiting_for_human", "with_human", "operator", OPERATOR_REPLY, 900),
                         ("in", 1200, "Ainda estou aqui"), ("in", 1300, "Alô?")]),
    "D": ("ai", [("op", 0), ("ai", "with_human", "operator", OPERATOR_REPLY, 0),
                 ("with_human", "ai", "operator", "an operator handed it back", 100)]),
    "E": ("with_human", [("in", -30, "Oi"), ("op", 0), ("ai", "with_human", "operator", BUSINESS_APP_REPLY, 0)]),
    # an operator message before the handoff answers nothing of it
    "F": ("ai", [("ai", "with_human", "operator", "an operator paused the AI", -200), ("op", -100),
                 ("with_human", "ai", "operator", "an operator handed it back", -50),
                 ("ai", "waiting_for_human", "customer", CUSTOMER_REQUEST, 0),
                 ("waiting_for_human", "ai", "system", IDLE, 3600)]),
    "G": ("waiting_for_human", [("in", -1, "Quero falar com um atendente"),
                                ("ai", "waiting_for_human", "customer", CUSTOMER_REQUEST, 0)]),
    "H": ("ai", []),  # two failed turns: flagged for a person, no state change
    "I": ("waiting_for_human", [("in", 999, "Can I talk to a person?"),
                                ("ai", "waiting_for_human", "customer", CUSTOMER_REQUEST, 1000)]),
}


@pytest.fixture
def seeded(services):
    aid = add_assistant(services, "loja")
    ids = {}
    with services.session() as s:
        for name, (state, log) in FIXTURE.items():
            conv = Conversation(id=new_id(), assistant_id=aid, channel="whatsapp", sender="phone-1", customer_id=name,
                                handoff_state=state, created_at=at(-3600))
            s.add(conv)
            s.flush()
            ids[name] = conv.id
            for item in log:
                if item[0] == "op":
                    s.add(Message(id=new_id(), conversation_id=conv.id, direction="outbound", kind="operator",
                                  status="sent", text="Oi, aqui é a Maria.", created_at=at(item[1])))
                elif item[0] == "in":
                    s.add(Message(id=new_id(), conversation_id=conv.id, direction="inbound", status="skipped",
                                  text=item[2], created_at=at(item[1])))
                else:
                    s.add(HandoffChange(id=new_id(), conversation_id=conv.id, from_state=item[0], to_state=item[1],
                                        actor=item[2], reason=item[3], at=at(item[4])))
        for second in (10, 20):
            s.add(Turn(id=new_id(), conversation_id=ids["H"], status="error", started_at=at(second)))
        s.commit()
    return ids


def test_handoff_metrics_match_the_fixture(services, seeded):
    with services.session() as s:
        figures = compute_metrics(s, ConversationFilters())["handoffs"]
    assert figures["by_reason"] == {"customer_request": 4, "model_transfer": 1, "fallback_streak": 2,
                                    "model_failure": 2, "operator_takeover": 2, "business_app": 1, "other": 0}
    assert figures["total"] == 12
    # answered waits: A 60 s, B 300 s, C 900 s (D and E were operators' own takeovers; F's reply came before)
    assert figures["first_reply"] == {"count": 3, "p50_s": 300.0, "p95_s": pytest.approx(840.0)}
    # ended waits: A, B (twice), F; of these B's second (closed) and F's (idle) had no operator message
    assert figures["abandoned"] == 2 and figures["abandoned_rate"] == 0.5
    assert figures["still_waiting"] == 2  # G and I; C was answered


def test_handoff_metrics_follow_the_filters(services, seeded):
    with services.session() as s:
        figures = compute_metrics(s, ConversationFilters.parse(customer="B"))["handoffs"]
    assert figures["total"] == 2 and figures["by_reason"]["model_transfer"] == 1
    assert figures["first_reply"]["count"] == 1 and figures["first_reply"]["p50_s"] == 300.0
    assert (figures["abandoned"], figures["abandoned_rate"], figures["still_waiting"]) == (1, 0.5, 0)


def test_the_queue_puts_the_longest_waiting_first(services, seeded):
    with services.session() as s:
        q = handoff_queue(s, NOW)
    waiting = [(i["customer_id"], i["waiting_s"], i["reason"], i["last_customer_message"]) for i in q["waiting"]]
    assert waiting == [("G", 6000.0, CUSTOMER_REQUEST, "Quero falar com um atendente"),
                       ("I", 5000.0, CUSTOMER_REQUEST, "Can I talk to a person?")]
    # C's customer wrote after the operator (waiting since 1200 s); E's operator wrote last
    with_human = [(i["customer_id"], i["waiting_s"], i["reason"], i["last_customer_message"],
                   i["last_operator_message_at"]) for i in q["with_human"]]
    assert with_human == [("C", 4800.0, fallback_reason(2), "Alô?", at(900)),
                          ("E", None, BUSINESS_APP_REPLY, "Oi", at(0))]
    assert q["with_human"][0]["entered_at"] == at(900) and q["with_human"][1]["entered_at"] == at(0)
    with services.session() as s:
        assert handoff_queue(s, NOW, channel="widget") == {"waiting": [], "with_human": []}
