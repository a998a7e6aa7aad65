"""The turn engine: pending inbound messages -> contextual retrieval -> prompt -> LLM <-> tools
(bounded rounds, per-turn deadline) -> reply, logged in one transaction.

Turns of one conversation never overlap: ``conversation_lock`` serializes them in this process and,
on PostgreSQL, across processes (advisory lock).
"""
from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import replace

from sqlalchemy import select

from core.db import utcnow
from kb import registry
from kb.keyword import fold
from kb.models import Assistant
from kb.search import search
from kb.types import Source
from runtime import approved, extractive, followups, handoff, options, store
from runtime.capture import capture_calls
from runtime.config import AssistantConfig, MenuConfig
from runtime.context_budget import ContextBudget, token_counter
from runtime.cost import usage_cost
from runtime.intent import HANDOFF_TOOL, SCHEDULING_TOOLS, wants_booking, wants_human
from runtime.llm import ChatModelError, text_tool_calls
from runtime.models import Conversation, Message, Turn
from runtime.pseudonyms import PseudonymousModel
from runtime.prompt import (ANSWER_NOW, build_messages, fill_variables, focused_messages, retry_instruction,
                            seen_sources)
from runtime.replies import (RESTATEMENT, data_reply, rejection, restatement, says_not_found, small_talk, small_talk_reply,
                             split_no_answer, still_sendable, supported, without_echo)
from runtime.services import Services
from runtime.tools.context import ToolContext
from runtime.tools.toolset import Toolset, build_toolset
from runtime.types import ChatMessage, ChatToolCall, Role, ToolCall, ToolRun, TurnResult, Usage

log = logging.getLogger(__name__)
INTENT_CONTEXT = 3  # the customer's newest messages that can show they want to book or a person
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@contextmanager
def conversation_lock(services: Services, conversation_id: str):
    """Hold the conversation's lock for the duration of a turn."""
    with _locks_guard:
        lock = _locks.setdefault(conversation_id, threading.Lock())
    with lock:
        if services.engine.dialect.name != "postgresql":
            yield
            return
        key = zlib.crc32(conversation_id.encode())
        with services.engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_lock(%s)", (key,))
            try:
                yield
            finally:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (key,))
                conn.commit()


def handle_message(
    services: Services, *, assistant_ref: str, channel: str, sender: str, customer_id: str, text: str,
    variables: dict | None = None, channel_message_id: str | None = None,
) -> TurnResult:
    """Store an inbound message at once, then run the conversation's turn and return what answered it."""
    with services.session() as session:
        assistant = registry.get_assistant(session, assistant_ref)
        conv = store.find_or_create_conversation(
            session, assistant_id=assistant.id, channel=channel, sender=sender, customer_id=customer_id, variables=variables
        )
        msg = store.store_inbound(session, conv, text, channel_message_id=channel_message_id)
        conv_id, msg_id = conv.id, msg.id
    result = run_turn(services, conv_id)
    with services.session() as session:
        own = result is not None and result.message_id is not None and \
            session.get(Message, result.message_id).turn_id == session.get(Message, msg_id).turn_id
        return result if own else result_for_message(session, msg_id)


def run_turn(services: Services, conversation_id: str) -> TurnResult | None:
    """Answer every pending inbound message of the conversation in one turn (None if none is pending)."""
    with conversation_lock(services, conversation_id), services.session() as session:
        conv = store.get_conversation(session, conversation_id)
        pending = store.pending_inbound(session, conv.id)
        if not pending:
            return None
        started_at, t0 = utcnow(), time.perf_counter()
        assistant = session.get(Assistant, conv.assistant_id)
        config = AssistantConfig.model_validate(assistant.config or {})
        gate = handoff.before_turn(session, conv, assistant.id, config, [m.text for m in pending], services.clock(),
                                   kinds=[m.kind for m in pending])
        if gate.action == "paused":  # a person has the conversation: stored, nothing sent
            result = TurnResult(conv.id, None, "paused", ai_enabled=False, timings={"total_ms": 0})
            store.log_turn(session, conv, pending, result, tool_results=[], retrieval_query=None, rounds=0,
                           model="", started_at=started_at)
            return result
        if gate.action == "callback":  # handed off out of hours: the texts are callback details, no model
            reply, runs = followups.answer(services, session, conv, assistant, config, [m.text for m in pending],
                                           services.clock())
            result = TurnResult(conv.id, reply, "callback", function_calls=[r.logged() for r in runs], ai_enabled=False)
            return _finish(services, session, conv, pending, result, {}, t0, started_at, model_name="",
                           tool_results=runs, queries=[], rounds=0, error=None, events=[])
        if gate.action == "handoff":  # the customer asked for a person: no model
            texts = [m.text for m in reversed(pending)]
            reply = followups.on_handoff(services, session, conv, config, reason="the customer asked for a person",
                                         actor="customer", texts=texts, now=services.clock())
            result = TurnResult(conv.id, reply or config.canned_reply("handoff", texts), "handoff", ai_enabled=False)
            return _finish(services, session, conv, pending, result, {}, t0, started_at, model_name="",
                           tool_results=[], queries=[], rounds=0, error=None,
                           events=[gate.event_id] if gate.event_id else [])
        return _answer(services, session, conv, assistant, pending, started_at, t0, config, gate.notice)


def _answer(services, session, conv: Conversation, assistant: Assistant, pending: list[Message], started_at, t0,
            config: AssistantConfig, notice: str | None) -> TurnResult:
    timings = {"retrieval_ms": 0.0, "prompt_ms": 0.0, "llm_ms": 0.0, "tools_ms": 0.0}
    history: list[tuple[Role, str]] = [("user" if m.direction == "inbound" else "assistant", m.text)
                                       for m in store.recent_history(session, conv.id, config.history_messages)]
    user_text = "\n".join(options.interpret(session, m) for m in pending)  # a tap: "The customer chose: ..."
    customer_texts = [user_text] + [text for role, text in reversed(history) if role == "user"]
    if menu := _menu_asked(config, user_text):  # the assistant's menu, on request: no model
        result = TurnResult(conv.id, menu.prompt or options.PROMPTS[config.language(customer_texts) or "en"], "answered",
                            ai_enabled=conv.ai_enabled, options=_menu_choices(menu))
        return _finish(services, session, conv, pending, result, timings, t0, started_at, model_name="",
                       tool_results=[], queries=[], rounds=0, error=None, events=[], notice=notice)
    if talk := small_talk(user_text):  # a greeting or thanks needs no sources and no model
        kind, language = talk
        result = TurnResult(conv.id, small_talk_reply(kind, language), "smalltalk", ai_enabled=conv.ai_enabled,
                            options=_menu_choices(config.menu) if _menu_at_start(config, history) else [])
        return _finish(services, session, conv, pending, result, timings, t0, started_at, model_name="",
                       tool_results=[], queries=[], rounds=0, error=None, events=[], notice=notice)
    # replies are held to the language the customer's own messages tell; the system prompt's is only the default
    # of what the runtime writes itself (quotes, canned replies): "Refund status?" tells none
    told = config.customer_language(customer_texts)
    language = told or config.language([])

    found = None
    if config.approved_answers.mode != "off":
        t = time.perf_counter()
        found = approved.match(services, session, assistant, user_text, config.approved_answers.threshold)
        timings["approved_ms"] = _ms(t)
        if found is not None:
            approved.record_hit(session, found.approved_id)
    if found is not None and config.approved_answers.mode == "reply":  # a reviewer's answer, as they approved it
        result = TurnResult(conv.id, found.answer, "answered", sources=[found.as_source()], ai_enabled=conv.ai_enabled)
        return _finish(services, session, conv, pending, result, timings, t0, started_at, model_name="",
                       tool_results=[], queries=[], rounds=0, error=None, events=[], notice=notice)

    t = time.perf_counter()
    hits: list[Source] = []
    queries: list[str] = []
    embedding_model = assistant.knowledge_base.embedding_model
    if config.retrieval.mode == "every_turn":
        queries = retrieval_queries(user_text, history)
        hits = retrieve(services, session, assistant, queries, config.retrieval.top_k,
                        config.retrieval.threshold(embedding_model))
    # nothing found in a knowledge base that has documents: a reply could only be the model's own knowledge
    searched_in_vain = config.retrieval.mode == "every_turn" and not hits and found is None and \
        registry.has_documents(session, assistant.knowledge_base)
    timings["retrieval_ms"] = _ms(t)

    t = time.perf_counter()
    sources = seen_sources(([found.as_source()] if found else []) + hits, user_text)
    toolset = build_toolset(config).without(_unasked_tools(config, history, customer_texts))
    messages = build_messages(config, conv.variables or {}, history, user_text, sources)
    budget = ContextBudget(messages, history=len(history), sources=sources, user_text=user_text)
    ctx = ToolContext(services=services, assistant=assistant, config=config, conversation_id=conv.id,
                      sources=list(hits), now=utcnow(), events=[], deadline=t0 + config.turn_deadline_s)
    timings["prompt_ms"] = _ms(t)

    session.commit()  # end the read transaction: no pooled connection is held while the model thinks
    usage, rounds, error, rejected = Usage(), 0, None, []
    tool_results: list[ToolRun] = []
    deadline = ctx.deadline
    reply, no_answer, executed, force_text, kept = "", False, set(), False, ""
    model_name = config.model or services.settings.llm_model
    # typed values the customer sent (a CPF, an e-mail) are saved as if the model had called collect_data,
    # in round 0: small models often answer them without the call
    captured = capture_calls(config, user_text) if "collect_data" in toolset else []
    if captured:
        timings["tools_ms"] += _run_tools(toolset, ctx, 0, "", captured, messages, tool_results)
        executed = _signatures(captured)
    try:
        model = services.chat_models.get(config.model)  # the embedded server may fail to start: an error turn
        model_name = model.name
        if config.mask_personal_data:  # the model sees placeholders; its reply and tool arguments the real values
            model = PseudonymousModel(model)
        counter = token_counter(model, services.settings.llm_context)
        if not captured and _plain_question(config, embedding_model, found, hits, customer_texts):
            t = time.perf_counter()
            focused = extractive.focus(services.embedders.get(embedding_model), user_text, budget.sources)
            reply, look_usage = _focused_look(model, config, conv.variables or {}, focused, budget.sources,
                                              user_text, language, told, deadline)
            timings["llm_ms"] += _ms(t)
            usage, rounds = usage + look_usage, rounds + 1
        answered = bool(reply)  # by the focused look: the whole prompt is not needed
        while not answered:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                error = f"turn deadline of {config.turn_deadline_s:g}s exceeded"
                break
            offer = toolset.schemas() if toolset.names and rounds < config.max_tool_rounds and not force_text else None
            t = time.perf_counter()
            budget.fit(counter, offer, max_tokens=config.max_tokens, timeout=remaining)  # trims ``messages``
            resp = model.complete(messages, offer, temperature=config.temperature, max_tokens=config.max_tokens,
                                  timeout=remaining)
            timings["llm_ms"] += _ms(t)
            usage, rounds = usage + resp.usage, rounds + 1
            if not (offer and resp.tool_calls):
                reply, no_answer = _clean(resp.content, set(toolset.names))
                if any(reply == run.result.content for run in tool_results):  # a tool's text is for the model
                    reply, no_answer = "", True
                reply = without_echo(reply, user_text)
                problem = None if no_answer else rejection(
                    reply, instructions=messages[0]["content"], customer_text=user_text, language=told)
                if not (problem or no_answer or tool_results) and budget.sources:  # it had facts to tell
                    problem = restatement(reply, user_text)
                if problem and not rejected and not _handed_off(tool_results):  # once more, as text, told why
                    rejected.append(problem)
                    kept = reply if still_sendable(problem) else ""
                    force_text = True
                    messages.append(ChatMessage(role="system", content=retry_instruction(problem, told)))
                    continue
                if problem:
                    rejected.append(problem)
                    if not still_sendable(problem):
                        reply = ""
                break
            signatures = _signatures(resp.tool_calls)
            if signatures <= executed:
                # small models repeat a call they already made instead of answering: make them answer
                force_text = True
                messages.append(ChatMessage(role="system", content=ANSWER_NOW))
                continue
            executed |= signatures
            timings["tools_ms"] += _run_tools(toolset, ctx, rounds, resp.content, resp.tool_calls, messages,
                                              tool_results)
    except Exception as exc:  # the model endpoint failed: log the turn, tell the caller
        log.exception("turn of conversation %s failed", conv.id)
        error = str(exc) if isinstance(exc, ChatModelError) else f"{type(exc).__name__}: {exc}"

    session.refresh(conv)
    if conv.handoff_state == "with_human":  # an operator replied while the model thought: the AI says nothing
        result = TurnResult(conv.id, None, "paused", ai_enabled=False, usage=usage,
                            cost=usage_cost(services.settings.llm_prices, model_name, usage))
        return _finish(services, session, conv, pending, result, timings, t0, started_at, model_name=model_name,
                       tool_results=tool_results, queries=queries, rounds=rounds, events=ctx.events,
                       error=f"an operator replied during the turn; not sent: {reply[:200]!r}")
    handed_off = _handed_off(tool_results)
    if kept and (no_answer or not reply or says_not_found(reply)):  # asking again brought nothing better
        reply, no_answer = kept, False
    no_answer = no_answer or not reply or says_not_found(reply)
    if not no_answer and searched_in_vain and not (ctx.sources or tool_results):  # and no tool ran either
        no_answer = True
        rejected.append("an answer with no source shown and no tool run (not from the knowledge base)")
    if no_answer and not handed_off and not error:  # noqa: SIM102 (the walrus below reads better on its own)
        # no source is about a CPF, so small models answer NO_ANSWER: tell what became of the customer's data
        if told := data_reply(_checked_data(config, tool_results, user_text), language):
            reply, no_answer = told, False
            rejected.append("the model gave no answer: the collect_data result was told")
    if no_answer and not handed_off and not error and config.grounded_fallback and budget.sources:  # noqa: SIM102
        if grounded := _grounded_reply(services, embedding_model, found, hits, user_text, language):
            reply, no_answer = grounded, False
            rejected.append("the model gave no answer: " + ("the approved answer was sent" if found else
                                                            "the best source was quoted"))
    if error and not reply:  # the customer is told, and a person asked to follow up
        status, reply = "error", config.canned_reply("unavailable", customer_texts)
        flagged = {"reason": f"the assistant could not answer: {error}"[:500], "callback_phone": None,
                   "callback_time": None, "at": utcnow().isoformat()}
        if event_id := handoff.flag_for_human(session, conv, assistant.id, config, flagged, pause=False):
            ctx.events.append(event_id)
    elif handed_off:  # outside business hours the customer is told when a person answers, not "shortly"
        closed = followups.on_handoff(services, session, conv, config, actor="assistant", texts=customer_texts,
                                      reason=str((conv.handoff or {}).get("reason") or "transfer_to_human"),
                                      now=services.clock())
        status, reply = "handoff", closed or reply or config.canned_reply("handoff", customer_texts)
    elif no_answer and handoff.fallback_streak_reached(session, conv, config):  # the AI keeps failing: a person
        flagged = {"reason": handoff.fallback_reason(config.handoff.after_fallbacks), "callback_phone": None,
                   "callback_time": None, "at": utcnow().isoformat()}
        if event_id := handoff.flag_for_human(session, conv, assistant.id, config, flagged, pause=True, actor="system"):
            ctx.events.append(event_id)
        closed = followups.on_handoff(services, session, conv, config, reason=flagged["reason"], actor="system",
                                      texts=customer_texts, now=services.clock())
        status, reply = "handoff", closed or config.canned_reply("handoff", customer_texts)
    elif no_answer:
        status, reply = "fallback", config.canned_reply("fallback", customer_texts)
    else:
        status = "answered"
    # passages found by the search tool were shown whole, numbered after the automatic ones
    all_sources = budget.sources + [replace(h, rank=len(sources) + i) for i, h in enumerate(ctx.sources[len(hits):], 1)]
    result = TurnResult(
        conversation_id=conv.id, reply=reply, status=status, sources=[] if status == "error" else all_sources,
        function_calls=[run.logged() for run in tool_results],
        ai_enabled=conv.ai_enabled, usage=usage, cost=usage_cost(services.settings.llm_prices, model_name, usage),
        error=error if status == "error" else None,
    )
    if status == "answered":
        result.files = list(ctx.files)
    if status == "answered" and ctx.options:  # offered by a tool (offer_options, list_available_slots)
        result.options, result.options_prompt = ctx.options, ctx.options_prompt
    elif status in ("answered", "fallback") and _menu_at_start(config, history):
        result.options = _menu_choices(config.menu)
    note = "; ".join(filter(None, (error or ("reply rejected: " + "; ".join(rejected) if rejected else None),
                                   budget.note))) or None
    return _finish(services, session, conv, pending, result, timings, t0, started_at, model_name=model_name,
                   tool_results=tool_results, queries=queries, rounds=rounds, error=note, events=ctx.events,
                   notice=notice)


def _menu_asked(config: AssistantConfig, user_text: str) -> MenuConfig | None:
    """The assistant's menu when the customer sent one of its keywords alone."""
    menu = config.menu
    if menu is None or not user_text.strip():
        return None
    return menu if options.fold(user_text) in {options.fold(k) for k in menu.keywords} else None


def _menu_at_start(config: AssistantConfig, history: list) -> bool:
    """Whether the menu goes with this reply: the conversation's first, for a menu offered at the start."""
    return config.menu is not None and config.menu.at_start and not history


def _menu_choices(menu: MenuConfig | None) -> list[options.Choice]:
    return [options.Choice(o.title, o.value, o.description) for o in menu.options] if menu else []


def _plain_question(config: AssistantConfig, embedding_model: str, found: approved.ApprovedMatch | None,
                    hits: list[Source], customer_texts: list[str]) -> bool:
    """Whether the turn may first be answered by a focused look at its sources (:func:`_focused_look`): the
    assistant allows it, no approved answer was found, the best source is a confident match for the embedding
    model, and the customer asks for no person and no booking (those need the tools)."""
    recent = customer_texts[:INTENT_CONTEXT]
    return (config.focused_answers and found is None and bool(hits)
            and extractive.confident_passage(embedding_model, hits[0].score)
            and not wants_human(recent) and not wants_booking(recent))


def _focused_look(model, config: AssistantConfig, variables: dict, focused: extractive.Focus, sources: list[Source],
                  user_text: str, language: str | None, told: str | None, deadline: float) -> tuple[str, Usage]:
    """Ask the model to answer from the ``focused`` sentences of the shown ``sources`` alone
    (:func:`runtime.extractive.focus`), without tools (:func:`runtime.prompt.focused_messages`); its reply, or "" when
    it gives none, or one that may not be sent (:func:`runtime.replies.rejection`) or that the sources do not support
    (:func:`runtime.replies.supported`): the turn then goes on with the whole prompt and the tools. A bare answer
    that only restates the question ("Sim, você pode parcelar o pagamento.") says the model found the answer among
    the sentences without telling it: the closest sentence is quoted instead (:func:`runtime.extractive.quote`).
    A failure of the model here leaves the turn to the whole prompt too. ``told``: the language the customer's
    messages tell (the reply is held to it), ``language``: that or the default, for a quote."""
    messages = focused_messages(fill_variables(config.system_prompt, variables), focused.sources, user_text)
    try:
        resp = model.complete(messages, None, temperature=config.temperature, max_tokens=config.max_tokens,
                              timeout=deadline - time.perf_counter())
    except Exception as exc:  # noqa: BLE001 - the whole prompt still runs
        log.warning("focused look failed: %s", exc)
        return "", Usage()
    reply, no_answer = _clean(resp.content, set())
    reply = without_echo(reply, user_text)
    if no_answer or says_not_found(reply) or rejection(
            reply, instructions=messages[0]["content"], customer_text=user_text, language=told) is not None:
        return "", resp.usage
    if supported(reply, [s.text for s in sources], user_text):
        return reply, resp.usage
    if focused.best and restatement(reply, user_text) == RESTATEMENT:
        sentence, source = focused.best
        return extractive.quote(sentence, source.filename, language), resp.usage
    return "", resp.usage


def _grounded_reply(services: Services, embedding_model: str, found: approved.ApprovedMatch | None, hits: list[Source],
                    question: str, language: str | None) -> str | None:
    """What to send when the model gave no answer: the approved answer it was shown, else the best
    sentence of a confidently matching passage quoted with its document, else None."""
    if found is not None:
        return found.answer
    if not hits:
        return None
    return extractive.grounded_quote(services.embedders.get(embedding_model), embedding_model, question, hits[0],
                                     language)


def _unasked_tools(config: AssistantConfig, history: list[tuple[Role, str]], customer_texts: list[str]) -> set[str]:
    """Tools the customer has not asked for, withheld from the model (small models call whatever they are
    shown): booking without a wish to book; the handoff unless they ask for a person or the last reply was
    the fallback (which may offer one)."""
    recent = customer_texts[:INTENT_CONTEXT]
    withheld = set() if wants_booking(recent) else set(SCHEDULING_TOOLS)
    last_reply = next((text for role, text in reversed(history) if role == "assistant"), None)
    if not wants_human(recent) and last_reply != config.canned_reply("fallback", customer_texts):
        withheld.add(HANDOFF_TOOL)
    return withheld


def _handed_off(tool_results: list[ToolRun]) -> bool:
    return any(run.name == "transfer_to_human" and not run.result.error for run in tool_results)


def _checked_data(config: AssistantConfig, tool_results: list[ToolRun], customer_text: str) -> list[tuple[str, str, bool]]:
    """``(field, value, saved)`` of the turn's collect_data calls on the assistant's fields whose value the customer
    wrote in ``customer_text`` (letters and digits in order, accents and case aside; a value the model took from
    elsewhere, such as the business's own name in a source, is not the customer's data), the last per field."""
    fields, checked, written = {f.name for f in config.data_fields}, {}, _alnum(customer_text)
    for run in tool_results:
        args = run.arguments
        if run.name == "collect_data" and isinstance(args, dict) and args.get("field") in fields:
            value = str(args.get("value", ""))
            if _alnum(value) and _alnum(value) in written:
                checked[args["field"]] = (args["field"], value, run.result.error is None)
    return list(checked.values())


def _alnum(text: str) -> str:
    return "".join(c for c in fold(text) if c.isalnum())


def _clean(content: str, tool_names: set[str]) -> tuple[str, bool]:
    """The model's final text without tool calls written as text (tools were withdrawn) and without
    the NO_ANSWER signal; and whether it gave that signal."""
    return split_no_answer(text_tool_calls(content.strip(), tool_names)[0])


def _finish(services, session, conv, pending, result: TurnResult, timings: dict, t0: float, started_at, *,
            model_name: str, tool_results: list[ToolRun], queries: list[str], rounds: int, error: str | None,
            events: list, notice: str | None = None) -> TurnResult:
    """Log the turn (``error``: why it failed or what was rejected on the way) and deliver its events;
    ``notice`` (the AI is back after a person had the conversation) goes before the reply."""
    if notice:
        result.reply = f"{notice}\n\n{result.reply}" if result.reply else notice
    result.ai_enabled = conv.ai_enabled
    timings["total_ms"] = _ms(t0)
    result.timings = {k: round(v, 1) for k, v in timings.items()}
    t = time.perf_counter()
    store.log_turn(session, conv, pending, result, tool_results=tool_results, retrieval_query=" || ".join(queries) or None,
                   rounds=rounds, model=model_name, started_at=started_at, error=error)
    result.timings["log_ms"] = round(_ms(t), 1)
    if events:
        services.queue.deliver_events(events)
    return result


def retrieval_queries(user_text: str, history: list[tuple[Role, str]]) -> list[str]:
    """The message itself, plus the message in the context of the customer's previous one, so a
    follow-up such as "e no sábado?" finds what the conversation is about."""
    previous = [text for role, text in history if role == "user"]
    return [user_text] + ([f"{previous[-1]}\n{user_text}"] if previous else [])


def retrieve(services: Services, session, assistant: Assistant, queries: list[str], top_k: int,
             min_score: float) -> list[Source]:
    """Best ``top_k`` hits over all queries (a chunk keeps its best fused rank score), at or above ``min_score``."""
    best: dict[str, Source] = {}
    for q in queries:
        for hit in search(services, session, assistant.knowledge_base, q, top_k):
            if hit.score >= min_score and (hit.chunk_id not in best or hit.fusion > best[hit.chunk_id].fusion):
                best[hit.chunk_id] = hit
    return sorted(best.values(), key=lambda h: (-h.fusion, -h.score))[:top_k]


def result_for_message(session, message_id: str) -> TurnResult:
    """Rebuild the TurnResult that covered an inbound message (it may have been answered by a turn
    that another request ran, when messages arrive together)."""
    msg = session.get(Message, message_id)
    conv = session.get(Conversation, msg.conversation_id)
    turn = session.get(Turn, msg.turn_id) if msg.turn_id else None
    reply = session.scalar(select(Message).where(Message.turn_id == msg.turn_id, Message.direction == "outbound")) if turn else None
    if reply is None:
        return TurnResult(conv.id, None, turn.status if turn else "pending", ai_enabled=conv.ai_enabled,
                          timings=turn.timings if turn else {}, error=turn.error if turn else None)
    return TurnResult(
        conversation_id=conv.id, reply=reply.text, status=turn.status, ai_enabled=conv.ai_enabled,
        sources=[s.as_source() for s in reply.sources],
        function_calls=[c.as_dict() for c in reply.tool_calls],
        usage=Usage(reply.tokens_in, reply.tokens_out), cost=reply.cost, timings=turn.timings, message_id=reply.id,
        options=[o.to_dict() for o in options.options_of(session, reply.id)],
    )


def _run_tools(toolset: Toolset, ctx: ToolContext, rnd: int, content: str, calls: list[ToolCall],
               messages: list[ChatMessage], tool_results: list[ToolRun]) -> float:
    """Run ``calls`` of round ``rnd``, adding them and their results to ``messages`` and ``tool_results``;
    the milliseconds spent."""
    t = time.perf_counter()
    messages.append(_assistant_tool_message(content, calls))
    for call in calls:
        res = toolset.run(ctx, call)
        tool_results.append(ToolRun(rnd, call, res))
        messages.append(ChatMessage(role="tool", tool_call_id=call.id, content=res.content))
    return _ms(t)


def _signatures(calls: list[ToolCall]) -> set[tuple[str, str]]:
    """What tells calls apart: a call with the signature of one already run is a repeat."""
    return {(c.name, json.dumps(c.arguments, sort_keys=True)) for c in calls}


def _assistant_tool_message(content: str, calls: list[ToolCall]) -> ChatMessage:
    return ChatMessage(role="assistant", content=content or "", tool_calls=[
        ChatToolCall(id=c.id, type="function",
                     function={"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)})
        for c in calls])


def _ms(t: float) -> float:
    return (time.perf_counter() - t) * 1000
