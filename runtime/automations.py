"""Automations: conversations started from outside. Another system (a CRM, a shop) triggers a named automation of
an assistant's WhatsApp number with the customer's number, variables and an idempotency key, authenticated by the
automation's own token (only its SHA-256 is stored), so it needs no admin token.

A run (:func:`trigger`) opens or continues the customer's conversation with the variables merged into the
conversation's (the "context passed in": they fill ``{{variable}}`` in the prompt, in the automation's message
and template parameters, and go with every event), then:

- inside the customer's 24-hour window, by the automation's ``inside_window``: ``message`` sends its message,
  ``ai`` has the AI open the conversation (a turn queued on a note saying who started it and why), ``template``
  sends the template;
- outside it, the approved template, its parameters filled from the variables; with no template the run is
  refused (nothing can reach the customer).

Everything that can be checked is checked before anything is stored, and refused with a message saying what is
wrong (``InvalidRequest``: an unreadable number, a variable a parameter or the message names and the request does
not give; ``Conflict``: a closed window without a template, a template not approved). A run is stored once per
idempotency key: the same key again returns the stored run and does nothing (``Conflict`` if its number or
variables differ). Each run ends with the ``automation.run_finished`` event (``runtime.events``).
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from core.errors import Conflict, InvalidRequest, NotFound
from runtime.config import DataField
from runtime.events import emit
from runtime.models import Automation, AutomationRun, Conversation, Message
from runtime.services import Services
from runtime.store import find_or_create_conversation
from runtime.validators import InvalidValue, validate_value
from runtime.whatsapp.models import WhatsAppSender, WhatsAppTemplate
from runtime.whatsapp.outbound import fill_template, send_reply, send_template, window_open

ACTIONS = ("message", "ai", "template")
SENT = ("sent", "delivered", "read", "played")
TOKEN_PREFIX = "atr_"
VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,49}$")
MAX_VARIABLES, MAX_VALUE_CHARS = 50, 1000
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
EDITABLE = ("name", "template_name", "template_language", "template_parameters", "inside_window", "message",
            "ai_instruction", "enabled")
REQUIRED = ("name", "template_parameters", "inside_window", "enabled")  # the others may be cleared with null


def token_hash(token: str) -> str:
    """How a token is stored and looked up: its SHA-256, hex (a token is random: no salt is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def create(session: Session, *, sender_id: str, name: str, **fields) -> tuple[Automation, str]:
    """A new automation of the WhatsApp number ``sender_id`` (and so of its assistant) and its token, shown this once.
    ``fields``: those of :data:`EDITABLE` (``inside_window`` by default: the message if given, else the template,
    else the AI). Raises NotFound or InvalidRequest. The caller commits."""
    sender = session.get(WhatsAppSender, sender_id)
    if sender is None:
        raise NotFound(f"WhatsApp sender {sender_id!r} not found")
    token = _new_token()
    fields = {k: v for k, v in fields.items() if v is not None}
    # inside the window, by default: the message if there is one, else the template, else the AI
    default = "message" if fields.get("message") else "template" if fields.get("template_name") else "ai"
    automation = Automation(id=new_id(), assistant_id=sender.assistant_id, sender_id=sender.id, name=name,
                            token_hash=token_hash(token), template_parameters=[], inside_window=default,
                            enabled=True, created_at=utcnow(), updated_at=utcnow())
    change(automation, fields)
    session.add(automation)
    return automation, token


def change(automation: Automation, changes: dict) -> Automation:
    """Apply ``changes`` (keys of :data:`EDITABLE`) and check the result; raises InvalidRequest. The caller commits."""
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise InvalidRequest(f"unknown fields {unknown}; editable: {list(EDITABLE)}")
    cleared = sorted(k for k, v in changes.items() if v is None and k in REQUIRED)
    if cleared:
        raise InvalidRequest(f"{', '.join(cleared)} cannot be null")
    for key, value in changes.items():
        setattr(automation, key, value)
    _check(automation)
    return automation


def _check(automation: Automation) -> None:
    if automation.inside_window not in ACTIONS:
        raise InvalidRequest(f"inside_window must be one of {list(ACTIONS)}, not {automation.inside_window!r}")
    if bool(automation.template_name) != bool(automation.template_language):
        raise InvalidRequest("a template needs both template_name and template_language")
    if automation.inside_window == "message" and not (automation.message or "").strip():
        raise InvalidRequest("inside_window 'message' needs the message to send")
    if automation.inside_window == "template" and not automation.template_name:
        raise InvalidRequest("inside_window 'template' needs template_name and template_language")


def rotate_token(automation: Automation) -> str:
    """A new token for the automation (the old one stops working once the caller commits); shown this once."""
    token = _new_token()
    automation.token_hash = token_hash(token)
    return token


def authenticate(session: Session, automation_id: str, token: str) -> Automation | None:
    """The automation ``token`` belongs to, if it is ``automation_id``'s (compared in constant time), else None."""
    automation = session.get(Automation, automation_id)
    if automation is None or not token:
        return None
    return automation if secrets.compare_digest(automation.token_hash, token_hash(token)) else None


def customer_number(raw: str) -> str:
    """The customer's WhatsApp id (international number, digits only) from a number as written; InvalidRequest
    saying what is wrong with it otherwise (numbers without a country code are read as Brazilian)."""
    try:
        return validate_value(DataField(name="phone", type="phone"), raw or "").lstrip("+")
    except InvalidValue as exc:
        raise InvalidRequest(f"to: unknown number format {str(raw)[:40]!r}: {exc.reason}") from None


def check_variables(variables: dict) -> dict[str, str]:
    """The variables as text; InvalidRequest for a bad name, too many, or too long a value."""
    if len(variables) > MAX_VARIABLES:
        raise InvalidRequest(f"variables: at most {MAX_VARIABLES}")
    out = {}
    for name, value in variables.items():
        if not VARIABLE.match(str(name)):
            raise InvalidRequest(f"variables: {str(name)[:60]!r} is not a variable name (letters, digits, _)")
        if isinstance(value, (dict, list)):
            raise InvalidRequest(f"variables: {name} must be text, a number or a boolean")
        text = "" if value is None else str(value)
        if len(text) > MAX_VALUE_CHARS:
            raise InvalidRequest(f"variables: {name} is longer than {MAX_VALUE_CHARS} characters")
        out[str(name)] = text
    return out


def fill(text: str, variables: dict[str, str], where: str) -> str:
    """``text`` with every ``{{name}}`` replaced by its variable; InvalidRequest naming those missing."""
    missing = sorted({n for n in _PLACEHOLDER.findall(text) if not variables.get(n)})
    if missing:
        raise InvalidRequest(f"{where} needs the variable(s) {', '.join(missing)}, not given")
    return _PLACEHOLDER.sub(lambda m: variables[m.group(1)], text)


@dataclass
class Plan:
    """What a run will do, decided before anything is stored."""

    action: str  # template | message | ai
    text: str | None = None  # the message (action message)
    parameters: list[str] | None = None  # the template's (action template)


def plan(session: Session, automation: Automation, conversation: Conversation | None, variables: dict[str, str],
         now) -> Plan:
    """Decide the run's action by the customer's window and check its inputs (see the module docstring)."""
    open_window = conversation is not None and window_open(conversation, now)
    action = automation.inside_window if open_window else "template"
    if action == "template":
        if not automation.template_name:
            raise Conflict("the customer's 24-hour window is closed and this automation has no template: only an "
                           "approved template can start the conversation")
        template = session.scalar(select(WhatsAppTemplate).where(
            WhatsAppTemplate.sender_id == automation.sender_id, WhatsAppTemplate.name == automation.template_name,
            WhatsAppTemplate.language == automation.template_language))
        if template is None or template.status != "APPROVED":
            state = "not found" if template is None else template.status
            raise Conflict(f"template {automation.template_name!r} ({automation.template_language}) is {state}: only "
                           "approved templates can be sent")
        parameters = [fill(p, variables, f"template parameter {{{{{i}}}}}")
                      for i, p in enumerate(automation.template_parameters or [], start=1)]
        fill_template(template.body, parameters)  # every {{n}} of the template has its parameter
        return Plan("template", parameters=parameters)
    if action == "message":
        return Plan("message", text=fill(automation.message or "", variables, "the message"))
    return Plan("ai")


def request_hash(customer_id: str, variables: dict[str, str]) -> str:
    """Of what a run was asked: a reused idempotency key with another request is refused."""
    return hashlib.sha256(json.dumps([customer_id, variables], sort_keys=True).encode()).hexdigest()


def trigger(services: Services, automation: Automation, *, to: str, variables: dict, idempotency_key: str,
            triggered_by: str) -> tuple[AutomationRun, bool]:
    """Run ``automation`` for the customer ``to`` (see the module docstring); (the run, whether it is new: False for
    a repeated idempotency key). Raises InvalidRequest or Conflict before anything is stored."""
    if not automation.enabled:
        raise Conflict(f"automation {automation.name!r} is disabled")
    customer_id, variables = customer_number(to), check_variables(variables)
    key = (idempotency_key or "").strip()
    if not key or len(key) > 200:
        raise InvalidRequest("idempotency_key: 1 to 200 characters")
    digest = request_hash(customer_id, variables)
    with services.session() as session:
        earlier = _existing(session, automation.id, key, digest)
        if earlier is not None:
            return earlier, False
        sender = session.get(WhatsAppSender, automation.sender_id)
        conversation = session.scalar(select(Conversation).where(
            Conversation.assistant_id == sender.assistant_id, Conversation.channel == "whatsapp",
            Conversation.sender == sender.phone_number_id, Conversation.customer_id == customer_id))
        decided = plan(session, automation, conversation, variables, services.clock())
        conversation = find_or_create_conversation(session, assistant_id=sender.assistant_id, channel="whatsapp",
                                                   sender=sender.phone_number_id, customer_id=customer_id,
                                                   variables=variables)
        run = AutomationRun(id=new_id(), automation_id=automation.id, idempotency_key=key, request_hash=digest,
                            customer_id=customer_id, variables=variables, triggered_by=triggered_by[:200],
                            conversation_id=conversation.id, action=decided.action, status="queued",
                            created_at=utcnow())
        session.add(run)
        try:
            session.commit()
        except IntegrityError:  # the same key, at the same time: the other request has it
            session.rollback()
            earlier = _existing(session, automation.id, key, digest)
            if earlier is None:
                raise
            return earlier, False
        sender_id, conversation_id = sender.id, conversation.id
    _act(services, automation, run.id, decided, sender_id, customer_id, conversation_id)
    with services.session() as session:
        return session.get(AutomationRun, run.id), True


def _existing(session: Session, automation_id: str, key: str, digest: str) -> AutomationRun | None:
    run = session.scalar(select(AutomationRun).where(AutomationRun.automation_id == automation_id,
                                                     AutomationRun.idempotency_key == key))
    if run is not None and run.request_hash != digest:
        raise Conflict(f"idempotency_key {key!r} was used for another request (another number or variables)")
    return run


def _act(services: Services, automation: Automation, run_id: str, decided: Plan, sender_id: str, customer_id: str,
         conversation_id: str) -> None:
    """Do what was planned and record how it went; the ``automation.run_finished`` event goes out with it."""
    message_id, error = None, None
    try:
        if decided.action == "template":
            message_id = send_template(services, sender_id=sender_id, customer_id=customer_id,
                                       name=automation.template_name or "", language=automation.template_language or "",
                                       parameters=decided.parameters or []).id
        elif decided.action == "message":
            message_id = _send_message(services, conversation_id, decided.text or "")
        else:
            _open_with_ai(services, automation, conversation_id)
    except (InvalidRequest, Conflict, NotFound) as exc:  # e.g. the template changed in between
        error = str(exc)
    with services.session() as session:
        run = session.get(AutomationRun, run_id)
        message = session.get(Message, message_id) if message_id else None
        run.message_id = message_id
        if error is not None or (message is not None and message.status in ("failed", "not_sent")):
            run.status, run.error = "failed", error or message.error_title or message.status
        else:  # a message Meta has not taken yet is in the outbox, retried there
            run.status = "sent" if message is not None and message.status in SENT else "queued"
        run.finished_at = utcnow()
        conversation = session.get(Conversation, conversation_id)
        emit(session, conversation, "automation.run_finished", {
            "automation_id": automation.id, "automation": automation.name, "run_id": run.id, "action": run.action,
            "status": run.status, "error": run.error, "message_id": message_id,
            "message_status": message.status if message else None, "idempotency_key": run.idempotency_key})
        session.commit()


def _send_message(services: Services, conversation_id: str, text: str) -> str:
    """The automation's message, through the outbox like any reply; its id."""
    with services.session() as session:
        message = Message(id=new_id(), conversation_id=conversation_id, direction="outbound", text=text,
                          kind="automation", status="answered", created_at=utcnow())
        session.add(message)
        session.commit()
    send_reply(services, message.id)
    return message.id


def _open_with_ai(services: Services, automation: Automation, conversation_id: str) -> None:
    """A note for the AI saying who started the conversation and why (a pending inbound message of kind
    ``automation``: the window does not move), then a turn queued to answer it."""
    note = f"[The conversation was started by the automation {automation.name!r}"
    if automation.ai_instruction:
        note += f": {automation.ai_instruction}"
    note += ". Write the first message to the customer.]"
    with services.session() as session:
        session.add(Message(id=new_id(), conversation_id=conversation_id, direction="inbound", text=note,
                            kind="automation", status="received", created_at=utcnow(), received_at=utcnow()))
        session.commit()
    services.queue.schedule_turn(conversation_id, 0)


def list_runs(session: Session, automation_id: str, limit: int = 100) -> list[AutomationRun]:
    """The automation's runs, newest first."""
    if session.get(Automation, automation_id) is None:
        raise NotFound(f"automation {automation_id!r} not found")
    return list(session.scalars(select(AutomationRun).where(AutomationRun.automation_id == automation_id)
                                .order_by(AutomationRun.created_at.desc()).limit(limit)))
