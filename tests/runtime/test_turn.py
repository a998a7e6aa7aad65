"""The turn engine with a scripted model: grounding, context, fallback, tools, handoff, ordering, logging."""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from ingest.pipeline import run_job
from kb import registry
from runtime import store
from runtime.config import DEFAULT_FALLBACK, DEFAULT_HANDOFF, DEFAULT_UNAVAILABLE, merge_config
from runtime.handoff import hand_back
from runtime.models import CollectedData, Conversation, Message, MessageSource, OutboundEvent, ToolCallRecord, Turn
from runtime.prompt import ANSWER_NOW
from runtime.turn import retrieval_queries, run_turn
from runtime.types import ChatResponse, ToolCall, Usage
from tests.factories import add_assistant, chat

HOURS = ("Horário de funcionamento\n\nAtendemos de segunda a sexta, das 8h às 18h.\n\n"
         "Aos sábados abrimos das 9h às 13h. Aos domingos a loja fica fechada.")
DELIVERY = ("Entregas\n\nEntregamos em toda a cidade de Campinas em até 2 dias úteis. "
            "O frete é grátis para compras acima de R$ 150.")


@pytest.fixture
def shop(scripted_model):
    """An assistant with two small documents, answering with a scripted model."""
    services, model = scripted_model
    services.settings.llm_prices = {"scripted": {"input_per_1m": 1.0, "output_per_1m": 2.0}}
    aid = add_assistant(services, "loja", config={
        "system_prompt": "Você atende a Loja Exemplo. Cliente: {{customer_name}}.",
        "data_fields": [{"name": "cpf", "type": "cpf"}],
        "retrieval": {"top_k": 1, "min_score": 0.1},
        "grounded_fallback": False, "focused_answers": False,  # tested on their own below
    }, documents=[("horarios.txt", HOURS), ("entregas.txt", DELIVERY)])
    return services, model, aid


def system_prompt(request) -> str:
    return request.messages[0]["content"]


def turn_prompt(request) -> str:
    """The new message with the sources retrieved for it."""
    return request.messages[-1]["content"]


def test_reply_is_grounded_and_logged_with_sources_tokens_and_cost(shop):
    services, model, aid = shop
    model.enqueue(ChatResponse("Abrimos de segunda a sexta, das 8h às 18h.", usage=Usage(120, 14), model="scripted"))
    r = chat(services, aid, "Qual o horário de funcionamento?", variables={"customer_name": "Ana"})
    assert r.status == "answered" and r.reply.startswith("Abrimos")
    assert r.sources and r.sources[0].filename == "horarios.txt" and r.sources[0].rank == 1
    prompt = turn_prompt(model.requests[0])
    assert "Cliente: Ana." in system_prompt(model.requests[0])
    assert "[1] (horarios.txt" in prompt and "das 8h às 18h" in prompt and prompt.endswith("Qual o horário de funcionamento?")
    assert r.cost == pytest.approx((120 * 1.0 + 14 * 2.0) / 1e6)
    with services.session() as session:
        msgs = session.scalars(select(Message).where(Message.conversation_id == r.conversation_id).order_by(Message.created_at)).all()
        assert [(m.direction, m.status) for m in msgs] == [("inbound", "answered"), ("outbound", "answered")]
        reply = msgs[1]
        assert (reply.tokens_in, reply.tokens_out, reply.model) == (120, 14, "scripted") and reply.latency_ms is not None
        logged = session.scalars(select(MessageSource).where(MessageSource.message_id == reply.id)).all()
        assert logged[0].text in prompt  # the exact text the model saw
        assert logged[0].document_id and logged[0].version == 1 and logged[0].chunk_id
        conv = session.get(Conversation, r.conversation_id)
        assert conv.variables == {"customer_name": "Ana"} and conv.tokens_in == 120 and conv.cost == pytest.approx(r.cost)
        turn = session.get(Turn, msgs[0].turn_id)
        assert set(turn.timings) >= {"retrieval_ms", "prompt_ms", "llm_ms", "tools_ms", "total_ms"}


def test_follow_up_is_retrieved_in_the_conversation_context(shop):
    services, model, aid = shop
    model.enqueue("Abrimos de segunda a sexta, das 8h às 18h.", "Aos sábados, das 9h às 13h.")
    chat(services, aid, "Qual o horário de funcionamento da loja?")
    r = chat(services, aid, "e no sábado?")
    assert r.sources[0].filename == "horarios.txt"
    assert "sábados abrimos das 9h às 13h" in turn_prompt(model.requests[1])
    history = [m["content"] for m in model.requests[1].messages[1:-1]]
    assert history == ["Qual o horário de funcionamento da loja?", "Abrimos de segunda a sexta, das 8h às 18h."]
    assert retrieval_queries("e no sábado?", [("user", "Qual o horário?"), ("assistant", "8h")])[1] == "Qual o horário?\ne no sábado?"


def test_no_answer_becomes_the_fallback_message_in_the_customers_language(shop):
    services, model, aid = shop
    model.enqueue("NO_ANSWER", "NO_ANSWER", "NO_ANSWER", "NO_ANSWER")
    assert chat(services, aid, "Vocês vendem passagens aéreas para Lisboa?").reply == DEFAULT_FALLBACK["pt"]
    assert chat(services, aid, "¿Venden pasajes a Lisboa?", customer="es").reply == DEFAULT_FALLBACK["es"]
    r = chat(services, aid, "Do you sell plane tickets to Lisbon?", customer="en")
    assert r.status == "fallback" and r.reply == DEFAULT_FALLBACK["en"]
    # a message that tells nothing ("Lisboa?") takes the language of the customer's earlier ones; a second
    # fallback in a row hands off (handoff.after_fallbacks), in that language too
    assert chat(services, aid, "Lisboa?", customer="es").reply == DEFAULT_HANDOFF["es"]
    with services.session() as session:  # a configured message is sent as written
        a = registry.get_assistant(session, aid)
        a.config = merge_config(a.config, {"fallback_message": "Não sei responder isso."})
        session.commit()
    model.enqueue("NO_ANSWER")
    assert chat(services, aid, "Do you sell plane tickets to Lisbon?", customer="en2").reply == "Não sei responder isso."


def test_an_answer_with_nothing_found_and_no_tool_run_is_a_fallback(shop):
    services, model, aid = shop
    with services.session() as session:  # nothing in the knowledge base is this close to any question
        a = registry.get_assistant(session, aid)
        a.config = merge_config(a.config, {"retrieval": {"min_score": 0.99}})
        session.commit()
    model.enqueue("Friedrich Ratzel was born in Vienna, Austria.")
    r = chat(services, aid, "Where was Friedrich Ratzel born?", customer="en")
    assert r.status == "fallback" and r.reply == DEFAULT_FALLBACK["en"] and r.sources == []
    with services.session() as session:
        assert "no source shown" in session.get(Turn, session.get(Message, r.message_id).turn_id).error


def test_a_confident_source_is_quoted_when_the_model_gives_no_answer(shop):
    services, model, aid = shop
    with services.session() as session:
        a = registry.get_assistant(session, aid)
        a.config = merge_config(a.config, {"grounded_fallback": True, "retrieval": {"top_k": 1}})
        session.commit()
    model.enqueue("NO_ANSWER", "NO_ANSWER")
    r = chat(services, aid, "Aos domingos a loja fica aberta?")
    assert r.status == "answered" and r.reply == "Segundo “horarios.txt”: Aos domingos a loja fica fechada."
    assert [s.filename for s in r.sources] == ["horarios.txt"]
    with services.session() as session:
        assert "the best source was quoted" in session.get(Turn, session.get(Message, r.message_id).turn_id).error
    # a question the documents do not cover still gets the fallback
    r = chat(services, aid, "Vocês vendem passagens aéreas para Lisboa?", customer="c2")
    assert r.status == "fallback" and r.reply == DEFAULT_FALLBACK["pt"]


def test_a_plain_question_is_first_put_to_the_model_with_only_its_sources(shop):
    services, model, aid = shop
    with services.session() as session:
        a = registry.get_assistant(session, aid)
        a.config = merge_config(a.config, {"focused_answers": True})
        session.commit()
    model.enqueue("Aos sábados abrimos das 9h às 13h.")
    r = chat(services, aid, "Qual o horário de funcionamento aos sábados?", variables={"customer_name": "Ana"})
    assert r.status == "answered" and r.reply == "Aos sábados abrimos das 9h às 13h."
    assert [s.filename for s in r.sources] == ["horarios.txt"]
    (request,) = model.requests  # one model call, without tools, with the assistant's prompt and the passage
    assert request.tools is None and system_prompt(request).startswith("Você atende a Loja Exemplo. Cliente: Ana.")
    assert "Aos sábados abrimos das 9h às 13h." in turn_prompt(request)
    assert turn_prompt(request).endswith("Question: Qual o horário de funcionamento aos sábados?")

    # an answer the sources do not hold (a number of its own, words of its own) or none at all goes on to the
    # whole prompt, with the tools
    for focused, customer in (("Aos sábados abrimos das 10h às 16h.", "c2"), ("Não, não abrimos feriados.", "c3"),
                              ("NO_ANSWER", "c4")):
        model.enqueue(focused, "Abrimos das 9h às 13h aos sábados.")
        r = chat(services, aid, "Abrem aos sábados?", customer=customer)
        assert r.reply == "Abrimos das 9h às 13h aos sábados.", focused
        assert model.requests[-2].tools is None and model.requests[-1].tools

    # a bare answer that only restates the question: the sentence closest to it is quoted, no second call
    model.enqueue("Sim, vocês abrem aos sábados.")
    r = chat(services, aid, "Vocês abrem aos sábados?", customer="c6")
    assert r.status == "answered" and r.reply == "Segundo “horarios.txt”: Aos sábados abrimos das 9h às 13h."
    assert model.requests[-1].tools is None and model.remaining == 0

    # a customer who asks to book gets the whole prompt at once (one asking for a person, no model at all)
    model.enqueue("Posso agendar para sábado às 10h.")
    calls = len(model.requests)
    chat(services, aid, "Quero agendar um horário no sábado", customer="c5")
    assert len(model.requests) == calls + 1 and "Customer message:" in turn_prompt(model.requests[-1])


def test_handoff_pauses_the_ai_until_resumed(shop):
    services, model, aid = shop
    r = chat(services, aid, "Quero falar com um humano")  # asked for a person: handed off without the model
    assert r.status == "handoff" and r.ai_enabled is False and r.reply == DEFAULT_HANDOFF["pt"]
    paused = chat(services, aid, "Alô? Tem alguém aí?")  # the script is empty: a model call would fail the test
    assert paused.status == "paused" and paused.reply is None and model.requests == []
    with services.session() as session:
        conv = session.get(Conversation, r.conversation_id)
        assert conv.handoff["reason"] == "the customer asked for a person"
        assert conv.handoff_state == "waiting_for_human"
    hand_back(services, r.conversation_id, actor="operator", reason="done")
    model.enqueue("Oi de novo! Como posso ajudar?")
    back = chat(services, aid, "Voltei")
    assert back.status == "answered" and back.ai_enabled
    history = [m["content"] for m in model.requests[-1].messages[1:-1]]
    assert "Alô? Tem alguém aí?" in history  # the human-handled message stays in the history
    # the settled handoff exchange does not: a small model shown it repeats the handoff
    assert "Quero falar com um humano" not in history and "Vou transferir você para um atendente." not in history


def test_invalid_cpf_goes_back_to_the_model_and_a_valid_one_is_stored(shop):
    services, model, aid = shop
    model.enqueue([ToolCall("call_0", "collect_data", {"field": "cpf", "value": "12345678900"})],
                  "Esse CPF parece inválido, pode conferir?")
    r = chat(services, aid, "Meu CPF é 12345678900")  # bare digits failing the check: left to the model
    assert r.function_calls[0]["error"] and "cpf" in r.function_calls[0]["error"].lower()
    tool_msg = model.requests[1].messages[-1]
    assert tool_msg["role"] == "tool" and r.function_calls[0]["error"] in tool_msg["content"]
    model.enqueue([ToolCall("call_0", "collect_data", {"field": "cpf", "value": "529.982.247-25"})], "Obrigado, CPF anotado.")
    chat(services, aid, "Desculpe, é 529.982.247-25")
    with services.session() as session:
        rows = session.scalars(select(CollectedData).where(CollectedData.conversation_id == r.conversation_id)).all()
        assert [(d.field, d.value, d.source) for d in rows] == [("cpf", "529.982.247-25", "ai")]
        calls = session.scalars(select(ToolCallRecord).order_by(ToolCallRecord.position)).all()
        assert [bool(c.error) for c in calls] == [True, False]


def test_a_cpf_the_customer_sends_is_checked_and_saved_before_the_model_answers(shop):
    services, model, aid = shop
    model.enqueue("Esse CPF não é válido, pode conferir?")
    r = chat(services, aid, "Meu CPF é 123.456.789-00, pode anotar?")
    assert r.status == "answered" and r.reply == "Esse CPF não é válido, pode conferir?" and len(model.requests) == 1
    [call] = r.function_calls  # run as if the model had called it, in round 0
    assert (call["name"], call["round"]) == ("collect_data", 0)
    assert call["arguments"] == {"field": "cpf", "value": "123.456.789-00"}
    assert "check digits" in call["error"] and call["result"] is None
    asked = model.requests[0]
    call_msg, tool_msg = asked.messages[-2:]  # the model sees the call and the refusal after the message
    assert call_msg["role"] == "assistant" and call_msg["tool_calls"][0]["function"]["name"] == "collect_data"
    assert tool_msg == {"role": "tool", "tool_call_id": call_msg["tool_calls"][0]["id"],
                        "content": f"Error: {call['error']}"}
    assert "collect_data" in [t["function"]["name"] for t in asked.tools]  # still offered for a value it finds

    # the corrected CPF is saved; the model calling collect_data again with it does not run it twice
    model.enqueue([ToolCall("call_0", "collect_data", {"field": "cpf", "value": "529.982.247-25"})], "CPF anotado.")
    r = chat(services, aid, "Desculpe, digitei errado: 529.982.247-25")
    assert r.reply == "CPF anotado." and model.requests[-1].messages[-1] == {"role": "system", "content": ANSWER_NOW}
    assert [(c["round"], c["result"], c["error"]) for c in r.function_calls] == [(0, "Saved cpf: 529.982.247-25", None)]
    with services.session() as session:
        rows = session.scalars(select(CollectedData).where(CollectedData.conversation_id == r.conversation_id)).all()
        assert [(d.field, d.value, d.source) for d in rows] == [("cpf", "529.982.247-25", "ai")]
        logged = session.scalars(select(ToolCallRecord).join(Message, ToolCallRecord.message_id == Message.id)
                                 .where(Message.conversation_id == r.conversation_id)
                                 .order_by(Message.created_at, ToolCallRecord.position)).all()
        assert [(c.name, c.round, c.arguments["value"], bool(c.error)) for c in logged] == [
            ("collect_data", 0, "123.456.789-00", True), ("collect_data", 0, "529.982.247-25", False)]


def repeat_tool_text(messages, tools):
    return messages[-1]["content"]


@pytest.mark.parametrize("answer", ["NO_ANSWER", repeat_tool_text])
def test_the_customer_is_told_what_became_of_their_data_when_the_model_does_not_say_it(shop, answer):
    services, model, aid = shop
    model.enqueue(answer)  # no source is about a CPF; or the tool's own text, written for the model
    r = chat(services, aid, "Oi, meu CPF é 529.982.247-25")
    assert r.status == "answered" and r.reply == "Anotado (cpf: 529.982.247-25)."
    model.enqueue("NO_ANSWER")
    r = chat(services, aid, "Corrigindo: 529.982.247-2")  # a digit short: not a CPF's shape, so not captured ...
    assert r.status == "fallback" and r.function_calls == []
    model.enqueue([ToolCall("call_0", "collect_data", {"field": "cpf", "value": "529.982.247-2"})], answer)
    r = chat(services, aid, "529.982.247-2")  # ... but when the model calls collect_data the refusal is told
    assert r.status == "answered" and r.reply == (
        "O cpf que você enviou (529.982.247-2) não é válido. Pode conferir e enviar de novo?")
    with services.session() as session:
        turn = session.get(Turn, session.get(Message, r.message_id).turn_id)
        assert "the collect_data result was told" in turn.error


def test_a_value_the_model_took_from_elsewhere_is_not_told_as_the_customers_data(shop):
    services, model, aid = shop  # seen on the demo: "Onde fica a clínica?" -> collect_data(nome=<the clinic's name>)
    model.enqueue([ToolCall("call_0", "collect_data", {"field": "cpf", "value": "529.982.247-25"})], "NO_ANSWER")
    r = chat(services, aid, "Onde fica a loja?")
    assert r.status == "fallback" and "Anotado" not in r.reply, r


def test_values_are_not_captured_from_the_assistants_text_nor_without_the_tool(shop):
    services, model, aid = shop
    model.enqueue("Anotei o CPF 529.982.247-25.", "Entregamos em até 2 dias úteis.")
    chat(services, aid, "Vocês entregam em Campinas?")
    r = chat(services, aid, "E qual o prazo?")  # the CPF is in the history, written by the assistant
    assert r.function_calls == [] and model.requests[-1].messages[-1]["role"] == "user"
    with services.session() as session:
        a = registry.get_assistant(session, aid)
        a.config = merge_config(a.config, {"tools": ["transfer_to_human"]})
        session.commit()
    model.enqueue("Obrigado.")
    r = chat(services, aid, "Meu CPF é 529.982.247-25", customer="c2")  # collect_data is not enabled
    assert r.function_calls == [] and model.requests[-1].messages[-1]["role"] == "user"


def test_tool_errors_and_unknown_tools_do_not_crash_the_turn(shop):
    services, model, aid = shop
    model.enqueue([ToolCall("call_0", "no_such_tool", {}), ToolCall("call_1", "list_available_slots", {"date": "ontem"})],
                  "Desculpe, não consegui consultar.")
    r = chat(services, aid, "Tem horário?")
    assert r.status == "answered" and [bool(c["error"]) for c in r.function_calls] == [True, True]


def test_tool_rounds_are_capped_and_a_repeated_call_forces_an_answer(shop):
    services, model, aid = shop
    with services.session() as session:
        a = registry.get_assistant(session, aid)
        a.config = merge_config(a.config, {"retrieval": {"mode": "as_tool", "top_k": 1, "min_score": 0.1}})
        session.commit()
    search = lambda q: [ToolCall("call_0", "search_knowledge_base", {"query": q})]  # noqa: E731
    model.enqueue(search("frete"), search("frete"), "O frete é grátis acima de R$ 150.")
    r = chat(services, aid, "Quanto custa o frete?")
    assert r.reply == "O frete é grátis acima de R$ 150." and len(r.function_calls) == 1
    assert model.requests[2].tools is None  # the repeated call was not run again; tools were withdrawn
    assert model.requests[2].messages[-1] == {"role": "system", "content": ANSWER_NOW}  # and the model told to answer
    with services.session() as session:
        a = registry.get_assistant(session, aid)
        a.config = merge_config(a.config, {"max_tool_rounds": 2})
        session.commit()
    model.enqueue(search("a"), search("b"), "Pronto.")
    r = chat(services, aid, "Pesquise duas vezes")
    assert len(r.function_calls) == 2 and model.requests[-1].tools is None and r.reply == "Pronto."


def test_model_failure_is_logged_and_reported(shop):
    services, model, aid = shop
    model.enqueue(lambda messages, tools: (_ for _ in ()).throw(RuntimeError("endpoint down")))
    r = chat(services, aid, "Tenho uma dúvida")
    assert (r.status, r.reply, r.sources) == ("error", DEFAULT_UNAVAILABLE["pt"], [])  # the customer is told
    with services.session() as session:
        turn = session.scalars(select(Turn).where(Turn.conversation_id == r.conversation_id)).one()
        assert "endpoint down" in turn.error
        conv = session.get(Conversation, r.conversation_id)  # flagged for a person, replies not paused
        assert "endpoint down" in conv.handoff["reason"] and conv.ai_enabled


def test_a_model_failure_notifies_the_team_and_says_the_configured_message(shop):
    services, model, aid = shop
    with services.session() as session:
        a = registry.get_assistant(session, aid)
        a.config = merge_config(a.config, {"handoff_url": "https://example.com/hook",
                                           "unavailable_message": "Voltamos já!"})
        session.commit()
    delivered: list[str] = []  # the events the turn hands over for delivery
    services.queue.deliver_events = delivered.extend
    model.enqueue(lambda messages, tools: (_ for _ in ()).throw(RuntimeError("endpoint down")))
    r = chat(services, aid, "Tenho uma dúvida")
    assert (r.status, r.reply) == ("error", "Voltamos já!") and len(delivered) == 1
    with services.session() as session:
        event = session.get(OutboundEvent, delivered[0])
        assert event.kind == "handoff" and event.payload["conversation_id"] == r.conversation_id
        assert event.payload["reason"].startswith("the assistant could not answer: RuntimeError: endpoint down")


def test_messages_of_one_conversation_are_processed_in_order_one_turn_at_a_time(shop):
    services, model, aid = shop
    active, overlaps, seen = [0], [], []

    def slow_reply(messages, tools):
        active[0] += 1
        overlaps.append(active[0])
        seen.append(messages[-1]["content"])
        time.sleep(0.3)
        active[0] -= 1
        return ChatResponse("ok")

    model.enqueue(*[slow_reply] * 3)
    results = []
    threads = [threading.Thread(target=lambda t=t: results.append(chat(services, aid, t))) for t in ("um", "dois", "três")]
    for th in threads:
        th.start()
        time.sleep(0.05)
    for th in threads:
        th.join()
    assert max(overlaps) == 1  # never two turns of one conversation at once
    assert "um" in seen[0]
    assert all(r.reply == "ok" for r in results)  # every message got the reply of the turn that covered it
    with services.session() as session:
        inbound = session.scalars(select(Message).where(Message.direction == "inbound")).all()
        assert all(m.status == "answered" and m.turn_id for m in inbound)


def test_conversations_are_found_by_channel_assistant_sender_and_customer(shop):
    services, model, aid = shop
    with services.session() as session:
        key = dict(assistant_id=aid, channel="whatsapp", sender="5511999990000", customer_id="5511988887777")
        a = store.find_or_create_conversation(session, **key)
        session.commit()
        assert store.find_or_create_conversation(session, **key).id == a.id
        assert store.find_or_create_conversation(session, **{**key, "sender": "other"}).id != a.id
        assert store.find_or_create_conversation(session, **{**key, "channel": "widget"}).id != a.id


def test_run_turn_without_pending_messages_does_nothing(shop):
    services, model, aid = shop
    model.enqueue("Pois não?")
    r = chat(services, aid, "Tenho uma dúvida")
    assert run_turn(services, r.conversation_id) is None


def test_a_tool_call_written_as_text_is_never_sent_to_the_customer(shop):
    services, model, aid = shop
    handoff = [ToolCall("call_0", "transfer_to_human", {"reason": "pediu um humano"})]
    written = '```json\n{"name": "transfer_to_human", "arguments": {"reason": "pediu um humano"}}\n```'
    model.enqueue("NO_ANSWER")  # the fallback offers a person, so the next turn is offered the handoff tool
    assert chat(services, aid, "Vocês vendem passagens aéreas?").status == "fallback"
    model.enqueue(handoff, handoff, written)  # repeats the call, then writes it as text once tools are withdrawn
    r = chat(services, aid, "Sim, por favor")
    assert r.status == "handoff" and r.reply == DEFAULT_HANDOFF["pt"] and "transfer_to_human" not in r.reply
    model.enqueue(written.replace("transfer_to_human", "list_available_slots"), "}")  # and nothing better when asked again
    with services.session() as session:
        session.get(Conversation, r.conversation_id).handoff_state = "ai"
        session.commit()
    r2 = chat(services, aid, "Tem horário amanhã?")
    assert r2.status == "fallback" and "list_available_slots" not in r2.reply
    for i, leftover in enumerate(("```", "}", " ** ")):  # what is left of a mangled call is not a reply either
        model.enqueue(leftover, leftover)  # rejected, and again when asked for plain text
        assert chat(services, aid, "Tem horário amanhã?", customer=f"other{i}").reply == DEFAULT_FALLBACK["pt"]


# --- nothing but a real answer reaches the customer ---------------------------------------------------


def _turn(services, conversation_id) -> Turn:
    with services.session() as session:
        return session.scalars(select(Turn).where(Turn.conversation_id == conversation_id)
                               .order_by(Turn.started_at.desc())).first()


def test_model_markup_is_retried_as_text_and_the_rejection_logged(shop):
    services, model, aid = shop
    model.enqueue("<tools></tools>", "Aos sábados abrimos das *9h às 13h*.")
    r = chat(services, aid, "Abrem no sábado?")
    assert r.status == "answered" and r.reply == "Aos sábados abrimos das *9h às 13h*."
    retry = model.requests[1]
    assert retry.tools is None and "could not be sent" in retry.messages[-1]["content"]
    # "Abrem no sábado?" could be Portuguese or Spanish: the retry names no language the customer did not show
    assert "in the customer's language" in retry.messages[-1]["content"]
    assert "model markup" in _turn(services, r.conversation_id).error


@pytest.mark.parametrize("bad", ["<tool_call>\n</tool_call>", "<|im_start|>assistant", '{"answer": "sim"}', "...",
                                 "Customer message:\nAbrem no sábado?"])
def test_a_reply_rejected_twice_is_a_fallback(shop, bad):
    services, model, aid = shop
    model.enqueue(bad, bad)
    r = chat(services, aid, "Abrem no sábado?")
    assert r.status == "fallback" and r.reply == DEFAULT_FALLBACK["pt"]
    assert _turn(services, r.conversation_id).error.startswith("reply rejected: ")


def test_a_reply_in_another_language_is_asked_again_in_the_customers(shop):
    services, model, aid = shop
    model.enqueue("We open on Saturdays from 9 am to 1 pm.", "Abrimos aos sábados das 9h às 13h.")
    r = chat(services, aid, "Vocês abrem aos sábados?")
    assert r.reply == "Abrimos aos sábados das 9h às 13h." and "Portuguese" in model.requests[1].messages[-1]["content"]


def test_a_bare_answer_is_asked_again_for_the_facts_of_the_sources(shop):
    services, model, aid = shop
    model.enqueue("Sim, vocês entregam em Campinas.", "Sim, em até 2 dias úteis, com frete grátis acima de R$ 150.")
    r = chat(services, aid, "Vocês entregam em Campinas?")
    assert (r.status, r.reply) == ("answered", "Sim, em até 2 dias úteis, com frete grátis acima de R$ 150.")
    assert "restatement of the customer's message" in model.requests[1].messages[-1]["content"]
    assert "restatement" in _turn(services, r.conversation_id).error


def test_a_bare_answer_still_goes_when_asking_again_brings_nothing_better(shop):
    services, model, aid = shop
    model.enqueue("Sim, entregamos em Campinas.", "NO_ANSWER")
    r = chat(services, aid, "Vocês entregam em Campinas?")
    assert (r.status, r.reply) == ("answered", "Sim, entregamos em Campinas.")


def test_an_echo_of_the_customers_words_is_never_sent(shop):
    services, model, aid = shop
    model.enqueue("Sim, estou com muita dor de dente.", "Você está com muita dor de dente.")
    r = chat(services, aid, "Estou com muita dor de dente, o que faço?")
    assert (r.status, r.reply) == ("fallback", DEFAULT_FALLBACK["pt"])
    assert "an echo of the customer's message" in _turn(services, r.conversation_id).error


def test_a_reply_saying_the_knowledge_base_has_no_answer_is_a_fallback(shop):
    services, model, aid = shop
    model.enqueue("Desculpe, não encontrei essa informação nas fontes.")
    r = chat(services, aid, "Vocês vendem bicicletas?")
    assert r.status == "fallback" and r.reply == DEFAULT_FALLBACK["pt"]


@pytest.mark.parametrize("text, expected", [("Oi, bom dia!", "Olá! Como posso ajudar você hoje?"),
                                            ("Hello World", "Hello! How can I help you today?"),
                                            ("¡Hola!", "¡Hola! ¿En qué puedo ayudarte hoy?"),
                                            ("muito obrigada!", "Por nada! Se precisar de mais alguma coisa, é só chamar.")])
def test_small_talk_gets_a_friendly_reply_without_the_model(shop, text, expected):
    services, model, aid = shop
    r = chat(services, aid, text)
    assert (r.status, r.reply, r.sources) == ("smalltalk", expected, []) and not model.requests


# --- approved answers ------------------------------------------------------------------------------


def _approve(services, aid, **kwargs) -> str:
    from runtime import approved

    with services.session() as session:
        row = approved.create_answer(session, registry.get_assistant(session, aid), approved_by="Rita", **kwargs)
        session.commit()
        return row.id


def test_a_paraphrase_of_an_approved_question_gets_the_approved_answer_without_the_model(shop):
    from runtime.approved import ApprovedAnswer

    services, model, aid = shop
    approved_id = _approve(services, aid, question="Vocês entregam em Campinas?",
                           answer="Sim! Entregamos em toda Campinas em até 2 dias úteis.")
    r = chat(services, aid, "vcs entregam em Campinas?")
    assert (r.status, r.reply) == ("answered", "Sim! Entregamos em toda Campinas em até 2 dias úteis.") and not model.requests
    assert [(s.chunk_id, s.section) for s in r.sources] == [(f"approved:{approved_id}", "Vocês entregam em Campinas?")]
    with services.session() as session:
        assert session.get(ApprovedAnswer, approved_id).hits == 1
        assert [s.chunk_id for s in session.get(Message, r.message_id).sources] == [f"approved:{approved_id}"]
    model.enqueue("Aos sábados abrimos das 9h às 13h.")  # a different question still goes to the model
    r2 = chat(services, aid, "Vocês abrem aos sábados?", customer="c2")
    assert r2.reply == "Aos sábados abrimos das 9h às 13h." and len(model.requests) == 1


def test_an_approved_answer_can_be_the_models_first_source_instead(shop):
    services, model, aid = shop
    with services.session() as session:
        a = registry.get_assistant(session, aid)
        a.config = merge_config(a.config, {"approved_answers": {"mode": "source"}})
        session.commit()
    approved_id = _approve(services, aid, question="Vocês entregam em Campinas?",
                           answer="Sim, em toda Campinas em até 2 dias úteis.")
    model.enqueue("Sim, entregamos em toda Campinas.")
    r = chat(services, aid, "vcs entregam em Campinas?")
    assert r.status == "answered" and r.sources[0].chunk_id == f"approved:{approved_id}" and r.sources[0].rank == 1
    assert "[1] (approved answer, Vocês entregam em Campinas?)\nSim, em toda Campinas" in turn_prompt(model.requests[0])


def test_an_approved_answer_is_flagged_and_not_sent_once_its_source_document_changes(shop):
    from kb.models import Document
    from runtime.approved import ApprovedAnswer

    services, model, aid = shop
    with services.session() as session:
        doc = session.scalars(select(Document).filter_by(filename="entregas.txt")).one()
        doc_id = doc.id
    approved_id = _approve(services, aid, question="Vocês entregam em Campinas?", answer="Sim, em até 2 dias úteis.",
                           sources=[{"document_id": doc_id, "filename": "entregas.txt"}])
    with services.session() as session:
        a = registry.get_assistant(session, aid)
        job = registry.register_upload(session, services.blobs, a.knowledge_base, "entregas.txt",
                                       (DELIVERY + " Agora também em Valinhos.").encode(), 10**6).job.id
        session.commit()
    assert run_job(services, job).status == "ready"
    with services.session() as session:
        row = session.get(ApprovedAnswer, approved_id)
        assert row.needs_review and "entregas.txt changed" in row.review_reason
    model.enqueue("Entregamos em Campinas e Valinhos.")
    assert chat(services, aid, "vcs entregam em Campinas?").reply == "Entregamos em Campinas e Valinhos."


def test_a_message_that_tells_no_language_holds_the_reply_to_none(shop):
    # "Saturday opening?" has no stopword nor letter of any language: the system prompt's (Portuguese) is only
    # the default, and the model's English reply to it is not asked again in Portuguese (115 of 4,375 replayed
    # turns were)
    services, model, aid = shop
    model.enqueue("We open on Saturdays from 9 am to 1 pm.")
    r = chat(services, aid, "Saturday opening?")
    assert (r.status, r.reply) == ("answered", "We open on Saturdays from 9 am to 1 pm.") and len(model.requests) == 1
