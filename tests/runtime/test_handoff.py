"""Who answers a conversation (runtime.handoff): requests for a person and repeated fallbacks hand off without
the model, an operator's reply keeps the AI quiet, idle conversations come back to the AI (at the next message or
by the sweep) and the customer is told; every change is logged."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from core.db import utcnow
from runtime.config import DEFAULT_AI_BACK, DEFAULT_FALLBACK, DEFAULT_HANDOFF, AssistantConfig
from runtime.handoff import asks_for_person, changes, return_idle
from runtime.models import Conversation, Message
from runtime.whatsapp.outbound import send_operator_message
from tests.factories import add_assistant, chat


def state_log(services, conversation_id: str) -> list[tuple[str, str, str, str]]:
    with services.session() as session:
        return [(c.from_state, c.to_state, c.actor, c.reason) for c in changes(session, [conversation_id])[conversation_id]]


def test_requests_for_a_person_in_three_languages_and_the_assistants_own_phrases():
    config = AssistantConfig.model_validate({"handoff": {"request_phrases": ["Quero o dono"]}})
    for text in ("Quero falar com um atendente", "¿Puedo hablar con una persona?", "Can I talk to a person?",
                 "QUERO O DONO agora"):
        assert asks_for_person(config, [text]), text
    for text in ("Que horas abrem?", "quero o donut", "Do you deliver?"):
        assert not asks_for_person(config, [text]), text


def test_an_assistants_phrase_hands_off_without_the_model(scripted_model):
    services, model = scripted_model
    aid = add_assistant(services, "loja", config={"handoff": {"request_phrases": ["quero o dono"]}})
    r = chat(services, aid, "Quero o dono da loja")
    assert r.status == "handoff" and r.reply == DEFAULT_HANDOFF["pt"] and model.requests == []
    assert state_log(services, r.conversation_id) == [("ai", "waiting_for_human", "customer",
                                                       "the customer asked for a person")]
    assert chat(services, aid, "Olá?").status == "paused"  # even small talk gets no reply


def test_fallbacks_in_a_row_hand_off(scripted_model):
    services, model = scripted_model
    aid = add_assistant(services, "loja", config={"handoff": {"after_fallbacks": 3}})
    model.enqueue("NO_ANSWER", "NO_ANSWER", "NO_ANSWER")
    replies = [chat(services, aid, text) for text in ("Vocês vendem passagens?", "E seguro viagem?", "E hotel?")]
    assert [r.status for r in replies] == ["fallback", "fallback", "handoff"]
    assert replies[-1].reply == DEFAULT_HANDOFF["pt"] and replies[-1].ai_enabled is False
    cid = replies[0].conversation_id
    assert state_log(services, cid) == [("ai", "waiting_for_human", "system", "3 fallback replies in a row")]
    with services.session() as session:
        assert session.get(Conversation, cid).handoff["reason"] == "3 fallback replies in a row"

    off = add_assistant(services, "sem-limite", config={"handoff": {"after_fallbacks": 0}})
    model.enqueue("NO_ANSWER", "NO_ANSWER", "NO_ANSWER")
    replies = [chat(services, off, text) for text in ("Vocês vendem passagens?", "E seguro viagem?", "E hotel?")]
    assert [r.reply for r in replies] == [DEFAULT_FALLBACK["pt"]] * 3


def test_an_operator_replying_while_the_model_thinks_has_the_last_word(scripted_model):
    services, model = scripted_model
    aid = add_assistant(services, "loja")
    first = chat(services, aid, "Olá")  # small talk, no model: the conversation exists

    def operator_steps_in(messages, tools):
        send_operator_message(services, first.conversation_id, "Oi, aqui é a Maria, já vejo isso.")
        return "Abrimos às 8h."
    model.enqueue(operator_steps_in)
    r = chat(services, aid, "Que horas abrem?")
    assert r.status == "paused" and r.reply is None and len(model.requests) == 1
    with services.session() as session:
        texts = [m.text for m in session.scalars(select(Message).where(Message.direction == "outbound")
                                                 .order_by(Message.created_at))]
    assert "Abrimos às 8h." not in texts and texts[-1] == "Oi, aqui é a Maria, já vejo isso."


def test_an_idle_conversation_goes_back_to_the_ai_at_the_next_message(scripted_model):
    services, model = scripted_model
    aid = add_assistant(services, "loja", config={"handoff": {"idle_return_minutes": 30}})
    cid = chat(services, aid, "Quero falar com um atendente").conversation_id
    send_operator_message(services, cid, "Oi, sou a Maria.")
    assert chat(services, aid, "Que horas abrem?").status == "paused"
    services.clock = lambda: utcnow() + timedelta(minutes=29)
    assert chat(services, aid, "Alô?").status == "paused"
    services.clock = lambda: utcnow() + timedelta(minutes=31)
    model.enqueue("Abrimos às 8h.")
    back = chat(services, aid, "Que horas abrem?")
    assert back.status == "answered" and back.reply == f"{DEFAULT_AI_BACK['pt']}\n\nAbrimos às 8h."
    assert state_log(services, cid)[-1] == ("with_human", "ai", "system", "no operator message for 30 minutes")


def test_the_sweep_hands_back_idle_conversations_and_tells_the_customer(scripted_model):
    services, model = scripted_model
    aid = add_assistant(services, "shop", config={"handoff": {"idle_return_minutes": 30}})
    never = add_assistant(services, "never", config={"handoff": {"idle_return_minutes": 0}})
    cid = chat(services, aid, "I want to talk to a real person").conversation_id
    kept = chat(services, never, "I want to talk to a real person").conversation_id
    assert return_idle(services) == []
    assert return_idle(services, utcnow() + timedelta(minutes=31)) == [cid]
    with services.session() as session:
        assert session.get(Conversation, cid).handoff_state == "ai"
        assert session.get(Conversation, kept).handoff_state == "waiting_for_human"
        notice = session.scalars(select(Message).where(Message.conversation_id == cid, Message.kind == "notice")).one()
        assert notice.text == DEFAULT_AI_BACK["en"] and notice.direction == "outbound"
    assert state_log(services, cid)[-1][:3] == ("waiting_for_human", "ai", "system")


def test_a_hand_back_racing_another_tells_the_customer_once(scripted_model, monkeypatch):
    """Two sweeps (or a sweep and an operator) that both read the conversation as away from the AI: the one that
    loses the conditional update sends no second notice and logs no second change."""
    import threading

    import runtime.store
    from runtime.handoff import hand_back

    services, _ = scripted_model
    aid = add_assistant(services, "race", config={"handoff": {"idle_return_minutes": 30}})
    cid = chat(services, aid, "I want to talk to a real person").conversation_id
    real_get = runtime.store.get_conversation
    raced = []

    def get_then_lose_the_race(session, conversation_id):
        conv = real_get(session, conversation_id)
        if not raced:  # the other hand-back runs to its end between this read and this one's update
            raced.append(True)
            other = threading.Thread(target=hand_back, args=(services, cid), kwargs={"actor": "system", "reason": "idle"})
            other.start()
            other.join()
        return conv

    monkeypatch.setattr(runtime.store, "get_conversation", get_then_lose_the_race)
    assert hand_back(services, cid, actor="operator", reason="back").handoff_state == "ai"
    with services.session() as session:
        notices = session.scalars(select(Message).where(Message.conversation_id == cid, Message.kind == "notice")).all()
    assert raced and len(notices) == 1
    assert [row[1] for row in state_log(services, cid)].count("ai") == 1


def test_closing_returns_to_the_ai_and_tells_the_customer_only_what_is_configured(scripted_model):
    from runtime.handoff import CLOSED, close

    services, model = scripted_model
    quiet = add_assistant(services, "quiet")
    told = add_assistant(services, "told", config={"handoff": {"close_message": "Atendimento encerrado. Obrigado!"}})
    for aid, notices in ((quiet, []), (told, ["Atendimento encerrado. Obrigado!"])):
        cid = chat(services, aid, "Quero falar com um atendente").conversation_id
        send_operator_message(services, cid, "Oi, sou a Maria. Resolvido!")
        assert close(services, cid).handoff_state == "ai"
        assert close(services, cid).handoff_state == "ai"  # closing again changes nothing
        assert state_log(services, cid)[-1] == ("with_human", "ai", "operator", CLOSED)
        assert [row[1] for row in state_log(services, cid)].count("ai") == 1
        with services.session() as session:
            assert list(session.scalars(select(Message.text).where(Message.conversation_id == cid,
                                                                   Message.kind == "notice"))) == notices
        model.enqueue("Abrimos às 8h.")
        assert chat(services, aid, "Que horas abrem?").reply == "Abrimos às 8h."  # no "AI is back" notice either
