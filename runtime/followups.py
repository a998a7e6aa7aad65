"""Handoffs outside business hours: the customer is told when a person will answer, callback details are
collected, and an operator task (a :class:`runtime.models.FollowUp`) is left for the next opening.

- :func:`on_handoff` runs wherever a conversation is handed off (the customer asked for a person, the model's
  ``transfer_to_human``, the fallback streak). Outside the assistant's ``handoff.business_hours`` it opens the
  conversation's follow-up, due at the next opening (an open one is reused), and returns what to tell the
  customer: when a person will answer, in their language and the assistant's time zone, and the first question.
- While the conversation waits for a person and its follow-up is open and not yet due, the customer's messages
  are its callback details (:func:`answer`), never a question for the AI (``runtime.handoff.before_turn``'s
  ``callback`` gate): the
  name, the best time and the phone are asked one after the other and saved with ``collect_data`` (validated,
  stored as the conversation's collected data, logged as the turn's tool calls); a phone number written in any
  answer is taken at once. Once all are in, the customer is thanked and later messages become notes, unanswered.
- On WhatsApp, when the customer's 24-hour window will have closed by the opening, an approved template
  (``business_hours.reminder_template``) is scheduled for the opening (``runtime.whatsapp.outbound
  .schedule_template``), re-planned as the customer writes (new details, a window moved on); without one, or
  when none is needed, the follow-up's ``reminder_note`` says why.
- An operator closes the follow-up (:func:`close`); a reminder not yet sent is then cancelled.
"""
from __future__ import annotations

import re
from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from core.errors import Conflict, InvalidRequest, NotFound
from kb.models import Assistant
from runtime.business_hours import describe_opening, is_open, next_opening
from runtime.capture import find_values
from runtime.config import AssistantConfig, BusinessHours, DataField
from runtime.handoff import open_followup
from runtime.models import Conversation, FollowUp, Message
from runtime.prompt import fill_variables
from runtime.services import Services
from runtime.tools.builtin import collect_data
from runtime.tools.context import ToolContext
from runtime.tools.schema import function_tool
from runtime.tools.toolset import Toolset
from runtime.types import ToolCall, ToolRun
from runtime.whatsapp.models import WhatsAppTemplate
from runtime.whatsapp.outbound import (WINDOW, cancel_scheduled, schedule_template, send_due, send_reply, sender_of,
                                       window_open)

ASKED = ("name", "best_time", "phone")  # the callback details, in the order they are asked
FIELDS = {"name": DataField(name="callback_name", type="text", description="name to ask for on the call back"),
          "best_time": DataField(name="callback_time", type="text", description="best time to call back"),
          "phone": DataField(name="callback_phone", type="phone", description="phone to call back")}
QUESTIONS = {"name": "ask_name", "best_time": "ask_best_time", "phone": "ask_phone"}
PHONE_TRIES = 2  # unreadable phone numbers before the answer is kept as a note and the questions end
_SEPARATORS = " \t\n,;:.-–—/"


def out_of_hours(config: AssistantConfig, now: datetime) -> bool:
    """Whether ``now`` is outside the assistant's business hours (never, without them)."""
    return not is_open(config.handoff.business_hours, now)


def on_handoff(services: Services, session: Session, conv: Conversation, config: AssistantConfig, *, reason: str,
               actor: str, texts: list[str], now: datetime) -> str | None:
    """At a handoff (``actor``: customer, assistant or system): outside business hours, open the conversation's
    follow-up for the next opening (or move its open one there), plan its reminder, and return what the customer
    is told (when a person will answer, then the first question); None within business hours. ``texts``: the
    customer's messages, newest first. The caller commits (with the turn's log)."""
    if not out_of_hours(config, now):
        return None
    hours = _hours(config)
    followup = open_followup(session, conv.id)
    if followup is None:
        followup = FollowUp(id=new_id(), conversation_id=conv.id, reason=reason[:500], details={}, status="open",
                            created_at=now, created_by=actor)
        session.add(followup)
    followup.due_at = next_opening(hours, now)
    followup.asking = _next_question(followup.details)
    language = config.language(texts)
    _plan_reminder(services, session, conv, config, followup, language, now)
    opening = describe_opening(hours, followup.due_at, language, now)
    closed = hours.message("closed", language).replace("{opening}", opening)
    return f"{closed}\n\n{_question(config, followup, language, now)}"


def answer(services: Services, session: Session, conv: Conversation, assistant: Assistant, config: AssistantConfig,
           texts: list[str], now: datetime) -> tuple[str | None, list[ToolRun]]:
    """Take the customer's new ``texts`` (oldest first) as the answer to the follow-up's question: what to reply
    (the next question, or thanks once all are in; None after that: the texts become notes) and the
    ``collect_data`` runs that saved them."""
    followup = open_followup(session, conv.id)
    assert followup is not None  # before_turn found it, under the conversation's lock
    text = "\n".join(t.strip() for t in texts if t.strip())
    details = dict(followup.details or {})
    earlier = session.scalars(select(Message.text).where(  # a name or a phone tells no language: the conversation does
        Message.conversation_id == conv.id, Message.direction == "inbound").order_by(Message.created_at.desc()).limit(8))
    language = config.language([*reversed(texts), *earlier])
    if followup.asking is None:
        details["notes"] = [*details.get("notes", []), text]
        followup.details = details
        _plan_reminder(services, session, conv, config, followup, language, now)  # the window moved on
        return None, []
    session.commit()  # collect_data writes in its own session: hold no transaction meanwhile (SQLite)
    ctx = ToolContext(services=services, assistant=assistant, conversation_id=conv.id, now=now,
                      config=config.model_copy(update={"data_fields": [*config.data_fields, *FIELDS.values()]}))
    runs: list[ToolRun] = []
    asked, reply_kind = followup.asking, None
    phones = [value for kind, value in find_values(text) if kind == "phone"]
    if len(phones) == 1 and (asked == "phone" or "phone" not in details):
        _save(ctx, runs, details, "phone", phones[0])
        text = text.replace(phones[0], " ")
    rest = text.strip(_SEPARATORS)
    if asked in ("name", "best_time") and rest:
        _save(ctx, runs, details, asked, re.sub(r"\s+", " ", rest))
    elif asked == "phone" and "phone" not in details and rest and not _save(ctx, runs, details, "phone", rest):
        details["phone_tries"] = details.get("phone_tries", 0) + 1
        if details["phone_tries"] < PHONE_TRIES:
            reply_kind = "invalid_phone"
        else:  # kept as written for the operator; the customer is not asked forever
            details["notes"] = [*details.get("notes", []), rest]
            details["phone_unreadable"] = True
    followup.details = details
    followup.asking = _next_question(details)
    _plan_reminder(services, session, conv, config, followup, language, now)
    if reply_kind is not None:
        return _hours(config).message(reply_kind, language), runs
    return _question(config, followup, language, now), runs


def _save(ctx: ToolContext, runs: list[ToolRun], details: dict, key: str, value: str) -> bool:
    """Save one detail with ``collect_data`` (run, validated and stored like the model's calls); whether it was."""
    call = ToolCall(f"callback_{len(runs)}", "collect_data", {"field": FIELDS[key].name, "value": value[:500]})
    result = Toolset([function_tool(collect_data)]).run(ctx, call)
    runs.append(ToolRun(0, call, result))
    if result.error:
        return False
    details[key] = result.content.split(": ", 1)[1]  # "Saved field: normalized value"
    return True


def _next_question(details: dict) -> str | None:
    skipped = {"phone"} if details.get("phone_unreadable") else set()
    return next((key for key in ASKED if key not in details and key not in skipped), None)


def _hours(config: AssistantConfig) -> BusinessHours:
    """The assistant's business hours; the defaults' texts for a follow-up left open after they were removed."""
    return config.handoff.business_hours or BusinessHours()


def _question(config: AssistantConfig, followup: FollowUp, language: str | None, now: datetime) -> str:
    hours = _hours(config)
    if followup.asking is not None:
        return hours.message(QUESTIONS[followup.asking], language)
    return hours.message("done", language).replace("{opening}",
                                                   describe_opening(hours, followup.due_at, language, now))


def _plan_reminder(services: Services, session: Session, conv: Conversation, config: AssistantConfig,
                   followup: FollowUp, language: str | None, now: datetime) -> None:
    """(Re)plan the WhatsApp template reminder for the opening: needed when the customer's 24-hour window closes
    before it. A still-scheduled one is replaced (new details, a window moved by the customer's messages)."""
    if conv.channel != "whatsapp":
        return
    if followup.reminder_message_id and cancel_scheduled(session, followup.reminder_message_id, "re-planned"):
        session.delete(session.get(Message, followup.reminder_message_id))  # never sent: it was only a plan
        followup.reminder_message_id = None
    elif followup.reminder_message_id:  # released or sent already
        return
    hours = _hours(config)
    closes = (conv.last_inbound_at or now) + WINDOW
    if followup.due_at is None:
        followup.reminder_note = "no opening within a year: no reminder"
        return
    if closes > followup.due_at:
        followup.reminder_note = f"not needed: the customer's 24-hour window is open at the opening (until {closes:%Y-%m-%d %H:%M} UTC)"
        return
    if not hours.reminder_template:
        followup.reminder_note = (f"no reminder: the 24-hour window closes at {closes:%Y-%m-%d %H:%M} UTC, before the "
                                  "opening, and no handoff.business_hours.reminder_template is configured")
        return
    try:
        sender = sender_of(session, conv)
    except NotFound as exc:
        followup.reminder_note = f"no reminder: {exc}"
        return
    templates = list(session.scalars(select(WhatsAppTemplate).where(
        WhatsAppTemplate.sender_id == sender.id, WhatsAppTemplate.name == hours.reminder_template,
        WhatsAppTemplate.status == "APPROVED").order_by(WhatsAppTemplate.language)))
    template = next((t for t in templates if language and t.language.lower().startswith(language)),
                    templates[0] if templates else None)
    if template is None:
        followup.reminder_note = f"no reminder: no approved template {hours.reminder_template!r} for this number"
        return
    values = {"name": "", "best_time": "", "phone": "", **{k: str(v) for k, v in followup.details.items()},
              "opening": describe_opening(hours, followup.due_at, language, now)}
    parameters = [re.sub(r"\{(name|best_time|phone|opening)\}", lambda m: values[m.group(1)], p)
                  for p in hours.reminder_parameters]
    try:
        msg = schedule_template(services, session, conv, template, parameters, followup.due_at)
    except InvalidRequest as exc:
        followup.reminder_note = f"no reminder: template {template.name!r}: {exc}"
        return
    followup.reminder_message_id = msg.id
    followup.reminder_note = f"template {template.name!r} ({template.language}) scheduled for the opening"


def list_followups(session: Session, *, status: str | None = None, assistant_id: str | None = None,
                   conversation_id: str | None = None, assistant_ids: Collection[str] | None = None,
                   limit: int | None = None) -> list[FollowUp]:
    """Follow-ups, soonest due first (those without an opening last), optionally by status, assistant, conversation,
    the assistants a user sees (``assistant_ids``; None: all), at most ``limit``."""
    query = select(FollowUp).join(Conversation, Conversation.id == FollowUp.conversation_id)
    if status:
        query = query.where(FollowUp.status == status)
    if assistant_id:
        query = query.where(Conversation.assistant_id == assistant_id)
    if assistant_ids is not None:
        query = query.where(Conversation.assistant_id.in_(sorted(assistant_ids)))
    if conversation_id:
        query = query.where(FollowUp.conversation_id == conversation_id)
    query = query.order_by(FollowUp.due_at.is_(None), FollowUp.due_at, FollowUp.created_at, FollowUp.id)
    return list(session.scalars(query.limit(limit)))


def close(services: Services, followup_id: str, *, actor: str) -> FollowUp:
    """Mark the follow-up done by ``actor``; its reminder, if not sent yet, is cancelled. Raises NotFound, or
    Conflict when it is done already."""
    with services.session() as session:
        followup = session.get(FollowUp, followup_id)
        if followup is None:
            raise NotFound(f"follow-up {followup_id!r} not found")
        if followup.status == "done":
            raise Conflict(f"follow-up {followup_id!r} was done already, by {followup.closed_by}")
        followup.status, followup.closed_at, followup.closed_by = "done", utcnow(), actor[:100]
        followup.asking = None
        if followup.reminder_message_id and cancel_scheduled(session, followup.reminder_message_id,
                                                             f"cancelled: the follow-up was done by {actor}"):
            followup.reminder_note = f"cancelled: the follow-up was done before the opening, by {actor}"
        session.commit()
        session.refresh(followup)
        return followup


# --------------------------------------------------------------------------- scheduled follow-ups
#
# Besides the callbacks above, a follow-up can be scheduled (the model's ``schedule_followup`` tool, an operator
# through the API): ``message`` sends its text at ``due_at`` -- as a message when the customer's 24-hour window is
# open then, else as the follow-up's template (or the assistant's ``followup_template``), else it fails, said on it;
# ``call`` is an operator task to call the customer then. A message follow-up is run by the job the queue keeps for
# its time (``WorkQueue.schedule_followup``) or, failing that, by the sweep (:func:`queue_due`); it is claimed by
# one conditional UPDATE in the transaction that stores its message, so a restart loses none and runs none twice;
# the message then goes through the outbox (a message stored but not handed to it is handed again by the sweep).

KINDS = ("message", "call")
MAX_AHEAD = timedelta(days=90)
MAX_TEXT = 4096
MAX_OPEN = 20  # open message and call follow-ups of one conversation (each may be a paid template)
SWEEP_LIMIT = 500  # follow-ups queued by one sweep; the next sweep takes the rest


def schedule(services: Services, conversation_id: str, *, due_at: datetime, kind: str, text: str | None,
             created_by: str, template: dict | None = None) -> FollowUp:
    """Schedule a follow-up of the conversation at ``due_at`` (``kind``: message or call; ``text``: the message,
    or the operator's note for a call); queued for its time. Raises NotFound or InvalidRequest (saying why)."""
    now = services.clock()
    text = (text or "").strip()
    if kind not in KINDS:
        raise InvalidRequest(f"kind must be one of {list(KINDS)}, not {kind!r}")
    if due_at.tzinfo is None:
        raise InvalidRequest("the time needs a time zone (e.g. 2026-05-04T15:00:00-03:00)")
    if due_at <= now:
        raise InvalidRequest(f"{due_at.isoformat()} is in the past: a follow-up must be later than now "
                             f"({now.isoformat(timespec='minutes')})")
    if due_at > now + MAX_AHEAD:
        raise InvalidRequest(f"a follow-up can be at most {MAX_AHEAD.days} days ahead")
    if kind == "message" and not text:
        raise InvalidRequest("a message follow-up needs the text to send")
    if len(text) > MAX_TEXT:
        raise InvalidRequest(f"the text is longer than {MAX_TEXT} characters")
    with services.session() as session:
        if session.get(Conversation, conversation_id) is None:
            raise NotFound(f"conversation {conversation_id!r} not found")
        open_ = session.scalar(select(func.count()).select_from(FollowUp).where(
            FollowUp.conversation_id == conversation_id, FollowUp.status == "open", FollowUp.kind.in_(KINDS)))
        if open_ >= MAX_OPEN:
            raise InvalidRequest(f"the conversation already has {MAX_OPEN} follow-ups scheduled: cancel one first")
        followup = FollowUp(id=new_id(), conversation_id=conversation_id, reason=text[:500], details={},
                            status="open", kind=kind, text=text or None, template=template, due_at=due_at,
                            created_at=now, created_by=created_by[:100])
        session.add(followup)
        session.commit()
        session.refresh(followup)
    if kind == "message":
        services.queue.schedule_followup(followup.id, (due_at - now).total_seconds())
    return followup


def cancel(services: Services, followup_id: str, *, actor: str) -> FollowUp:
    """Cancel an open follow-up (a callback's template reminder not sent yet with it). Raises NotFound, or Conflict
    when it is no longer open (sent, done, cancelled)."""
    with services.session() as session:
        followup = session.get(FollowUp, followup_id)
        if followup is None:
            raise NotFound(f"follow-up {followup_id!r} not found")
        claimed = session.execute(update(FollowUp).where(FollowUp.id == followup_id, FollowUp.status == "open").values(
            status="cancelled", closed_at=utcnow(), closed_by=actor[:100], asking=None,
            result=f"cancelled by {actor}"[:500]).execution_options(synchronize_session=False)).rowcount  # type: ignore[attr-defined]
        if not claimed:
            session.rollback()
            raise Conflict(f"follow-up {followup_id!r} is {followup.status}, not open: it cannot be cancelled")
        if followup.reminder_message_id:
            cancel_scheduled(session, followup.reminder_message_id, f"cancelled: the follow-up was cancelled by {actor}")
        session.commit()
        session.refresh(followup)
        return followup


def run_due(services: Services, followup_id: str) -> FollowUp | None:
    """Send the message follow-up if its time has come and nobody sent it yet (see above); hand a message it stored
    before to the outbox if that did not happen. The follow-up, or None when it does not exist."""
    now = services.clock()
    with services.session() as session:
        followup = session.get(FollowUp, followup_id)
        if followup is None:
            return None
        if followup.status == "open" and followup.kind == "message" and followup.due_at and followup.due_at <= now:
            claimed = session.execute(update(FollowUp).where(
                FollowUp.id == followup_id, FollowUp.status == "open", FollowUp.due_at <= now).values(
                status="done", closed_at=now, closed_by="system").execution_options(
                synchronize_session=False)).rowcount  # type: ignore[attr-defined]
            if claimed:
                session.refresh(followup)
                _send(services, session, followup, now)
            session.commit()
        message_id = followup.message_id
    if message_id:
        _hand_to_outbox(services, message_id)
    return followup


def _send(services: Services, session: Session, followup: FollowUp, now: datetime) -> None:
    """Store what the claimed follow-up sends: its text inside the window (or on a channel without one), else its
    template; else mark it failed. The caller commits."""
    conv = session.get(Conversation, followup.conversation_id)
    variables = conv.variables or {}
    text = fill_variables(followup.text or "", variables)
    if conv.channel != "whatsapp" or window_open(conv, now):
        msg = Message(id=new_id(), conversation_id=conv.id, direction="outbound", text=text, kind="followup",
                      status="answered", created_at=now)
        session.add(msg)
        followup.message_id = msg.id
        followup.result = "sent as a message" + (" (the 24-hour window was open)" if conv.channel == "whatsapp" else "")
        return
    assistant = session.get(Assistant, conv.assistant_id)
    config = AssistantConfig.model_validate((assistant.config if assistant else None) or {})
    chosen = followup.template or (config.followup_template.model_dump() if config.followup_template else None)
    if not chosen:
        followup.status = "failed"
        followup.result = ("not sent: the customer's 24-hour window was closed and no template was given (set the "
                           "assistant's followup_template)")
        return
    try:
        template = _approved_template(session, conv, chosen["name"], chosen["language"])
        parameters = [_fill_parameter(p, text, variables) for p in chosen.get("parameters") or []]
        msg = schedule_template(services, session, conv, template, parameters, now)
    except (InvalidRequest, NotFound) as exc:
        followup.status, followup.result = "failed", f"not sent: template {chosen['name']!r}: {exc}"
        return
    followup.message_id = msg.id
    followup.result = f"sent as template {template.name!r} ({template.language}): the 24-hour window was closed"


def _fill_parameter(parameter: str, text: str, variables: dict) -> str:
    """A template parameter with ``{text}`` (the message, filled already) and its ``{{variables}}``, in one pass:
    what was put in is never filled again."""
    return "".join(text if part == "{text}" else fill_variables(part, variables)
                   for part in re.split(r"(\{text\})", parameter))


def _approved_template(session: Session, conv: Conversation, name: str, language: str) -> WhatsAppTemplate:
    sender = sender_of(session, conv)
    template = session.scalar(select(WhatsAppTemplate).where(
        WhatsAppTemplate.sender_id == sender.id, WhatsAppTemplate.name == name, WhatsAppTemplate.language == language))
    if template is None or template.status != "APPROVED":
        raise InvalidRequest(f"no approved template {name!r} ({language}) for this number")
    return template


def _hand_to_outbox(services: Services, message_id: str) -> None:
    """A follow-up's WhatsApp message into the outbox and sent (``send_reply``, once: a message with parts is not
    stored again; a template's scheduled part is released by ``send_due``)."""
    with services.session() as session:
        msg = session.get(Message, message_id)
        conv = session.get(Conversation, msg.conversation_id) if msg else None
        if msg is None or conv is None or conv.channel != "whatsapp":
            return
        kind, has_parts = msg.kind, bool(msg.parts)
    if kind == "template":
        send_due(services, conv.id)
    elif not has_parts:
        send_reply(services, message_id)


def queue_due(services: Services) -> int:
    """The sweep: queue the message follow-ups whose time has come (their job lost, or run where the queue could not
    wait) and those whose stored WhatsApp message never reached the outbox within the retry period (the other
    channels have none), at most ``SWEEP_LIMIT`` (the next sweep takes the rest); how many."""
    now = services.clock()
    since = now - timedelta(seconds=services.settings.whatsapp_retry_for_s)  # later, the outbox would not send it
    with services.session() as session:
        due = list(session.scalars(select(FollowUp.id).where(
            FollowUp.kind == "message", FollowUp.status == "open", FollowUp.due_at <= now)
            .order_by(FollowUp.due_at, FollowUp.id).limit(SWEEP_LIMIT)))
        unsent = list(session.scalars(select(FollowUp.id).join(Message, Message.id == FollowUp.message_id)
                                      .join(Conversation, Conversation.id == Message.conversation_id).where(
            FollowUp.kind == "message", FollowUp.status == "done", Message.kind == "followup",
            Message.status == "answered", Message.created_at >= since, Conversation.channel == "whatsapp",
            ~Message.parts.any()).order_by(Message.created_at, Message.id).limit(SWEEP_LIMIT - len(due))))
    for followup_id in [*due, *unsent]:
        services.queue.schedule_followup(followup_id, 0)
    return len(due) + len(unsent)
