"""Handoffs outside business hours (runtime.followups) on SQLite and PostgreSQL: the model's transfer_to_human and
the fallback streak leave a follow-up for the next opening like a request for a person does; a phone number in any
answer is taken at once; the conversation is not handed back to the AI for idleness before the opening."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from runtime.config import DEFAULT_CALLBACK
from runtime.followups import list_followups
from runtime.handoff import hand_back, return_idle
from runtime.models import FollowUp
from runtime.types import ToolCall
from tests.factories import add_assistant, chat

SUNDAY = datetime(2026, 12, 6, 15, 0, tzinfo=UTC)  # closed all day; open Monday 09:00 in Sao Paulo (12:00 UTC)
MONDAY_OPENING = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
HOURS = {"timezone": "America/Sao_Paulo", "weekly": {d: [["09:00", "18:00"]] for d in range(5)}}
OPENING_EN = "tomorrow at 09:00 (Sao Paulo time)"


def followup(services, conversation_id: str) -> FollowUp:
    with services.session() as session:
        return session.scalars(select(FollowUp).where(FollowUp.conversation_id == conversation_id)).one()


def test_the_models_transfer_outside_hours_tells_when_and_asks_for_callback_details(scripted_model):
    services, model = scripted_model
    services.clock = lambda: SUNDAY
    aid = add_assistant(services, "shop", config={"handoff": {"business_hours": HOURS}})
    model.enqueue("NO_ANSWER")  # the fallback offers a person, so the next turn is offered the handoff tool
    assert chat(services, aid, "Do you sell plane tickets?").status == "fallback"
    model.enqueue([ToolCall("call_0", "transfer_to_human", {"reason": "wants plane tickets"})],
                  "A person will reply shortly.")
    r = chat(services, aid, "Yes please, I would like that")
    closed = DEFAULT_CALLBACK["closed"]["en"].replace("{opening}", OPENING_EN)
    assert r.status == "handoff" and r.reply == f"{closed}\n\n{DEFAULT_CALLBACK['ask_name']['en']}"
    f = followup(services, r.conversation_id)
    assert (f.created_by, f.reason, f.due_at, f.asking) == ("assistant", "wants plane tickets", MONDAY_OPENING, "name")
    assert f.reminder_note is None  # not WhatsApp: no 24-hour window, no reminder
    # a phone number written with the name is taken at once: the phone is not asked for
    named = chat(services, aid, "John Smith, +1 (212) 555-0123")
    assert named.status == "callback" and named.reply == DEFAULT_CALLBACK["ask_best_time"]["en"]
    assert [c["name"] for c in named.function_calls] == ["collect_data", "collect_data"]
    done = chat(services, aid, "Mornings")
    assert done.reply == DEFAULT_CALLBACK["done"]["en"].replace("{opening}", OPENING_EN)
    assert followup(services, r.conversation_id).details == {"name": "John Smith", "phone": "+12125550123",
                                                            "best_time": "Mornings"}
    assert len(model.requests) == 3  # the fallback, the transfer and its reply; none for the callback details
    # handed back, the AI is not shown the callback exchange (a small model would ask for the name again)
    hand_back(services, r.conversation_id, actor="operator", reason="called back")
    model.enqueue("We sell bus tickets.")
    assert chat(services, aid, "And bus tickets?").reply.endswith("We sell bus tickets.")
    prompt = "\n".join(str(m["content"]) for m in model.requests[-1].messages)
    assert "John Smith" not in prompt and "Mornings" not in prompt and "Do you sell plane tickets?" in prompt


def test_the_fallback_streak_outside_hours_leaves_a_follow_up(scripted_model):
    services, model = scripted_model
    services.clock = lambda: SUNDAY
    aid = add_assistant(services, "loja", config={"handoff": {"after_fallbacks": 2, "business_hours": {
        **HOURS, "messages": {"ask_name": "Seu nome, por favor?"}}}})
    model.enqueue("NO_ANSWER", "NO_ANSWER")
    replies = [chat(services, aid, text) for text in ("Vocês vendem passagens?", "E seguro viagem?")]
    assert [r.status for r in replies] == ["fallback", "handoff"]
    assert replies[1].reply.endswith("amanhã às 09:00 (horário de Sao Paulo).\n\nSeu nome, por favor?")
    f = followup(services, replies[0].conversation_id)
    assert (f.created_by, f.reason) == ("system", "2 fallback replies in a row")
    with services.session() as session:
        assert [x.id for x in list_followups(session, status="open", assistant_id=aid)] == [f.id]
        assert list_followups(session, status="done") == []
        assert [x.id for x in list_followups(session, assistant_ids={aid})] == [f.id]  # a user who sees it
        assert list_followups(session, assistant_ids={"another"}) == list_followups(session, assistant_ids=set()) == []


def test_no_idle_hand_back_before_the_opening(scripted_model):
    services, model = scripted_model
    services.clock = lambda: SUNDAY
    aid = add_assistant(services, "loja", config={"handoff": {"idle_return_minutes": 30, "business_hours": HOURS}})
    cid = chat(services, aid, "Quero falar com um atendente").conversation_id
    services.clock = lambda: SUNDAY + timedelta(hours=3)
    assert return_idle(services, services.clock()) == []
    assert chat(services, aid, "Ana").status == "callback"  # still collecting, not handed back
    assert return_idle(services, MONDAY_OPENING + timedelta(minutes=29)) == []
    assert return_idle(services, MONDAY_OPENING + timedelta(minutes=30)) == [cid]  # nobody took it after opening
    assert followup(services, cid).status == "open"  # the task stays for the operators
    assert model.requests == []
