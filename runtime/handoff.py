"""Who answers a conversation: the AI, or a person.

A conversation's ``handoff_state`` is ``ai`` (the AI answers), ``waiting_for_human`` (handed off: the customer
asked for a person, the model called ``transfer_to_human``, or the AI fell back too often) or ``with_human`` (an
operator replied). The AI answers only in ``ai``: :func:`before_turn` is the rule every channel's turn goes through.
An operator's message moves it to ``with_human`` (:func:`take_over`): a reply from the dashboard or the API, or one
sent from the business's own WhatsApp Business app (its echo). It returns to ``ai`` when an operator hands it back
(:func:`hand_back`) or after the assistant's ``handoff.idle_return_minutes`` with no operator message
(:func:`before_turn` at the next inbound message, or the sweep :func:`return_idle`), the customer then told; or when
an operator closes it (:func:`close`), the customer told only the assistant's ``handoff.close_message``, if any.
Every change is a :class:`runtime.models.HandoffChange`; :func:`reason_category` sorts them for the metrics.

Outside the assistant's business hours a handoff also leaves a follow-up for the next opening, and the customer's
messages until then are callback details, not questions for the AI (``runtime.followups``).

Flagging also records the reason on the conversation (the dashboard's handoff column and filters), emits the
``handoff.requested`` event to the assistant's subscribers and, when the assistant has a ``handoff_url``, adds a
signed ``handoff`` event for the team's own system (``runtime.events``).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from kb.keyword import fold
from kb.models import Assistant
from runtime.config import AssistantConfig
from runtime.intent import wants_human
from runtime.events import add_handoff_event, emit
from runtime.models import Conversation, FollowUp, HandoffChange, Message, Turn
from runtime.services import Services

STATES = ("ai", "waiting_for_human", "with_human")
State = Literal["ai", "waiting_for_human", "with_human"]

# the reasons logged by the changes this module makes itself (reason_category reads them back)
CUSTOMER_REQUEST = "the customer asked for a person"
IMAGE_SENT = "the customer sent an image"
OPERATOR_REPLY = "an operator replied"
BUSINESS_APP_REPLY = "an operator replied from the WhatsApp Business app"
CLOSED = "an operator closed the conversation"
_FALLBACKS = re.compile(r"^\d+ fallback replies in a row$")

# handoffs by why they happened (runtime.review.handoff_metrics); model_failure is counted from error turns, which
# flag the conversation without leaving the AI
REASON_CATEGORIES = ("customer_request", "model_transfer", "fallback_streak", "model_failure", "operator_takeover",
                     "business_app", "other")


def set_state(session: Session, conversation: Conversation, to: State, *, actor: str, reason: str,
              at: datetime | None = None) -> HandoffChange | None:
    """Move ``conversation`` to state ``to`` and log the change (``actor``: customer, assistant, operator or
    system); None, and nothing logged, when it is already there. The caller commits."""
    if to not in STATES:
        raise ValueError(f"unknown handoff state {to!r}")
    if conversation.handoff_state == to:
        return None
    change = HandoffChange(id=new_id(), conversation_id=conversation.id, from_state=conversation.handoff_state,
                           to_state=to, actor=actor, reason=reason[:500], at=at or utcnow())
    conversation.handoff_state = to
    session.add(change)
    return change


def changes(session: Session, conversation_ids: list[str]) -> dict[str, list[HandoffChange]]:
    """The handoff changes of each conversation, oldest first."""
    out: dict[str, list[HandoffChange]] = {cid: [] for cid in conversation_ids}
    if conversation_ids:
        rows = session.scalars(select(HandoffChange).where(HandoffChange.conversation_id.in_(conversation_ids))
                               .order_by(HandoffChange.at, HandoffChange.id))
        for row in rows:
            out[row.conversation_id].append(row)
    return out


def flag_for_human(session: Session, conversation: Conversation, assistant_id: str, config: AssistantConfig,
                   handoff: dict, *, pause: bool, actor: str = "assistant") -> str | None:
    """Record ``handoff`` (reason, callback, ``at``) on ``conversation``; when ``pause``, move it to
    ``waiting_for_human`` (a conversation already with a person stays so), logged as done by ``actor``; add the
    event for ``config.handoff_url``. The event's id (to deliver once the caller commits), or None without a URL."""
    conversation.handoff = handoff
    if pause and conversation.handoff_state == "ai":
        set_state(session, conversation, "waiting_for_human", actor=actor, reason=str(handoff.get("reason") or ""))
    emit(session, conversation, "handoff.requested", {**handoff, "paused": pause, "actor": actor})
    if not config.handoff_url:
        return None
    payload = {"event": "handoff", "conversation_id": conversation.id, "assistant_id": assistant_id,
               "channel": conversation.channel, "customer_id": conversation.customer_id, **handoff}
    return add_handoff_event(session, conversation, config.handoff_url, payload)


def take_over(session: Session, conversation: Conversation, *, reason: str = OPERATOR_REPLY,
              at: datetime | None = None) -> HandoffChange | None:
    """An operator wrote to the customer: the conversation is ``with_human`` and the AI stays silent (the
    change logged as the operator's, with ``reason``). The caller commits."""
    return set_state(session, conversation, "with_human", actor="operator", reason=reason, at=at)


def fallback_reason(count: int) -> str:
    """The logged reason of a handoff after ``count`` fallback replies in a row."""
    return f"{count} fallback replies in a row"


def reason_category(change: HandoffChange) -> str:
    """Why a conversation left the AI, as one of :data:`REASON_CATEGORIES`: by who made the change (the
    customer asked; the model called ``transfer_to_human``; an operator wrote, from the app or not) and, for the
    system, by its reason (a fallback streak; anything else, e.g. a later rule, is ``other``)."""
    if change.actor == "customer":
        return "customer_request"
    if change.actor == "assistant":
        return "model_transfer"
    if change.actor == "operator":
        return "business_app" if change.reason == BUSINESS_APP_REPLY else "operator_takeover"
    if change.actor == "system" and _FALLBACKS.match(change.reason):
        return "fallback_streak"
    return "other"


def asks_for_person(config: AssistantConfig, texts: list[str]) -> bool:
    """Whether the customer's ``texts`` ask for a person: :func:`runtime.intent.wants_human`, or one of the
    assistant's ``handoff.request_phrases`` (case and accents aside, on word boundaries)."""
    if wants_human(texts):
        return True
    phrases = [fold(p).strip() for p in config.handoff.request_phrases if p.strip()]
    return any(re.search(rf"(?<!\w){re.escape(p)}(?!\w)", fold(text)) for p in phrases for text in texts)


def last_human_activity(session: Session, conversation: Conversation) -> datetime | None:
    """The latest of the last handoff change, the last operator message and the opening an open follow-up is due
    at (``runtime.followups``: out of hours nobody is idle): when a person last had, or will first have, a say."""
    changed = session.scalar(select(func.max(HandoffChange.at)).where(HandoffChange.conversation_id == conversation.id))
    wrote = session.scalar(select(func.max(Message.created_at)).where(
        Message.conversation_id == conversation.id, Message.kind == "operator"))
    due = session.scalar(select(func.max(FollowUp.due_at)).where(
        FollowUp.conversation_id == conversation.id, FollowUp.status == "open", FollowUp.kind == "callback"))
    return max(filter(None, (changed, wrote, due)), default=None)


def open_followup(session: Session, conversation_id: str) -> FollowUp | None:
    """The conversation's open callback follow-up (``runtime.followups``), if any."""
    return session.scalar(select(FollowUp).where(FollowUp.conversation_id == conversation_id, FollowUp.status == "open",
                                                 FollowUp.kind == "callback")
                          .order_by(FollowUp.created_at.desc()).limit(1))


def collecting_callback(session: Session, conversation: Conversation, now: datetime) -> bool:
    """Whether the customer's new messages are callback details (``runtime.followups.answer``): the conversation
    waits for a person and has an open follow-up not yet due (outside business hours, nobody is there to talk
    over)."""
    if conversation.handoff_state != "waiting_for_human":
        return False
    followup = open_followup(session, conversation.id)
    return followup is not None and (followup.due_at is None or followup.due_at > now)


def idle_expired(session: Session, conversation: Conversation, config: AssistantConfig, now: datetime) -> bool:
    """Whether a conversation away from the AI has had no operator message (nor change) for
    ``handoff.idle_return_minutes`` (0: never). One with neither (handed off before the state was logged) waits
    for an operator."""
    minutes = config.handoff.idle_return_minutes
    if conversation.handoff_state == "ai" or not minutes:
        return False
    last = last_human_activity(session, conversation)
    return last is not None and now - last >= timedelta(minutes=minutes)


def fallback_streak_reached(session: Session, conversation: Conversation, config: AssistantConfig) -> bool:
    """Whether a fallback now would be the ``handoff.after_fallbacks``-th in a row (small talk between does not
    break the row; a handoff change does)."""
    needed = config.handoff.after_fallbacks
    if needed <= 0:
        return False
    since = session.scalar(select(func.max(HandoffChange.at)).where(HandoffChange.conversation_id == conversation.id))
    query = select(Turn.status).where(Turn.conversation_id == conversation.id, Turn.status != "smalltalk")
    if since is not None:
        query = query.where(Turn.started_at > since)
    statuses = session.scalars(query.order_by(Turn.started_at.desc(), Turn.id.desc()).limit(needed - 1)).all()
    return len(statuses) == needed - 1 and all(s == "fallback" for s in statuses)


@dataclass
class Gate:
    """What a turn may do (:func:`before_turn`): ``answer`` (with ``notice`` told first when the AI just came
    back), ``paused`` (a person has the conversation: store, send nothing), ``callback`` (handed off outside
    business hours: the texts are callback details, ``runtime.followups.answer``; no model) or ``handoff`` (the
    customer asked for a person: hand off without the model; ``event_id`` to deliver)."""

    action: Literal["answer", "paused", "callback", "handoff"]
    notice: str | None = None
    event_id: str | None = None


def before_turn(session: Session, conversation: Conversation, assistant_id: str, config: AssistantConfig,
                texts: list[str], now: datetime | None = None, kinds: Sequence[str] = ()) -> Gate:
    """The one rule on whether the AI answers the customer's new ``texts`` (their pending messages, newest last).

    A conversation away from the AI past its idle time goes back to it (the customer is told); one handed off
    outside business hours is collecting callback details until the opening (``callback``); one still with or
    waiting for a person is ``paused``; a request for a person (:func:`asks_for_person`) hands off at once.
    Changes are not committed: the turn's log commits them."""
    now = now or utcnow()
    notice = None
    if idle_expired(session, conversation, config, now):
        set_state(session, conversation, "ai", actor="system", at=now,
                  reason=f"no operator message for {config.handoff.idle_return_minutes:g} minutes")
        notice = config.canned_reply("ai_back", list(reversed(texts)))
    if collecting_callback(session, conversation, now):
        return Gate("callback")
    if conversation.handoff_state != "ai":
        return Gate("paused")
    image = config.handoff.on_image and "image" in kinds  # ``kinds``: the pending messages' (handoff.on_image)
    if image or asks_for_person(config, texts):
        flagged = {"reason": IMAGE_SENT if image else CUSTOMER_REQUEST, "callback_phone": None,
                   "callback_time": None, "at": now.isoformat()}
        return Gate("handoff", event_id=flag_for_human(session, conversation, assistant_id, config, flagged,
                                                       pause=True, actor="customer"))
    return Gate("answer", notice=notice)


def hand_back(services: Services, conversation_id: str, *, actor: str, reason: str) -> Conversation:
    """Give the conversation back to the AI and tell the customer, in their language (the assistant's
    ``handoff.ai_back_message``); on WhatsApp the notice is sent. Nothing happens when the AI has it already."""
    return _return_to_ai(services, conversation_id, actor=actor, reason=reason,
                         notice=lambda config, texts: config.canned_reply("ai_back", texts))


def close(services: Services, conversation_id: str, *, actor: str = "operator", reason: str = CLOSED) -> Conversation:
    """An operator is done with the conversation: it returns to the AI, logged; the customer is told only the
    assistant's ``handoff.close_message`` when it has one. Nothing happens when the AI has it already."""
    return _return_to_ai(services, conversation_id, actor=actor, reason=reason,
                         notice=lambda config, texts: config.handoff.close_message)


def _return_to_ai(services: Services, conversation_id: str, *, actor: str, reason: str,
                  notice: Callable[[AssistantConfig, list[str]], str | None]) -> Conversation:
    """Move the conversation to ``ai`` (logged) and send the customer ``notice(config, their last texts)``
    unless it is None; on WhatsApp the notice goes out (outside the 24-hour window it is ``not_sent``)."""
    from runtime.store import get_conversation
    from runtime.whatsapp.outbound import send_reply

    with services.session() as session:
        conv = get_conversation(session, conversation_id)
        if conv.handoff_state == "ai":
            return conv
        # claimed by one conditional update: of two sweeps (or a sweep and an operator) only one tells the customer
        claimed = session.execute(update(Conversation).where(
            Conversation.id == conv.id, Conversation.handoff_state == conv.handoff_state).values(handoff_state="ai")
            .execution_options(synchronize_session=False))  # conv keeps its state for set_state's log
        if not claimed.rowcount:  # type: ignore[attr-defined]
            session.rollback()
            return get_conversation(session, conversation_id)
        assistant = session.get(Assistant, conv.assistant_id)
        config = AssistantConfig.model_validate((assistant.config if assistant else None) or {})
        set_state(session, conv, "ai", actor=actor, reason=reason)
        texts = list(session.scalars(select(Message.text).where(
            Message.conversation_id == conv.id, Message.direction == "inbound")
            .order_by(Message.created_at.desc()).limit(3)))
        text = notice(config, texts)
        message = None
        if text:
            message = Message(id=new_id(), conversation_id=conv.id, direction="outbound", kind="notice",
                              status="answered", text=text, created_at=utcnow())
            session.add(message)
        session.commit()
        if message is not None and conv.channel == "whatsapp":
            send_reply(services, message.id)
        session.refresh(conv)
        return conv


def return_idle(services: Services, now: datetime | None = None) -> list[str]:
    """The sweep: hand back to the AI every conversation away from it past its assistant's idle time (the
    customer told, :func:`hand_back`); the ids handed back."""
    now = now or utcnow()
    due = []
    with services.session() as session:
        rows = session.execute(select(Conversation, Assistant.config).join(Assistant, Assistant.id == Conversation.assistant_id)
                               .where(Conversation.handoff_state != "ai")).all()
        for conv, raw in rows:
            config = AssistantConfig.model_validate(raw or {})
            if idle_expired(session, conv, config, now):
                due.append((conv.id, config.handoff.idle_return_minutes))
    for conversation_id, minutes in due:
        hand_back(services, conversation_id, actor="system", reason=f"no operator message for {minutes:g} minutes")
    return [cid for cid, _ in due]
