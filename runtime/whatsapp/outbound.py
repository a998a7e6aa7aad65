"""Outbound WhatsApp: the 24-hour window, replies rendered and split for WhatsApp, templates, and the
send bookkeeping: every WhatsApp message sent is a ``MessagePart`` of the message it belongs to, stored
before it is sent (accepted / failed / unknown afterwards); the message keeps what was written."""
from __future__ import annotations

import re
import threading
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from core.errors import Conflict, InvalidRequest, NotFound
from runtime.models import Conversation, Message, MessagePart
from runtime.services import Services
from runtime.whatsapp.delivery import settle
from runtime.whatsapp.graph import GraphClient
from runtime.whatsapp.models import WhatsAppSender, WhatsAppTemplate

WINDOW = timedelta(hours=24)
OUTSIDE_WINDOW = 131047  # Meta's error code for a free-form send outside the window
_PARAM = re.compile(r"\{\{\s*(\d+)\s*\}\}")
_graph_lock = threading.Lock()  # one client per process, however many threads send at once


def window_open(conv: Conversation, now: datetime) -> bool:
    """Free-form messages may be sent while the customer's last message is under 24 h old and Meta has
    not said otherwise since then."""
    last = conv.last_inbound_at
    if last is None or now - last >= WINDOW:
        return False
    return conv.window_closed_at is None or conv.window_closed_at < last


def graph_client(services: Services) -> GraphClient:
    """The process's one Graph API client, built at the first send (from the settings then) and shared by every
    send after it, so its connections to Meta are kept and reused. One client serves every business number: the
    access token goes with each request, the sender's as read from the database at that send (a changed token
    takes effect at once). ``Services.close`` closes it, on shutdown."""
    with _graph_lock:
        if services.whatsapp_graph is None:
            s = services.settings
            services.whatsapp_graph = GraphClient(s.whatsapp_graph_url, timeout_s=s.whatsapp_send_timeout_s)
        return services.whatsapp_graph


def sender_of(session: Session, conv: Conversation) -> WhatsAppSender:
    sender = session.scalar(select(WhatsAppSender).where(WhatsAppSender.phone_number_id == conv.sender))
    if sender is None:
        raise NotFound(f"no WhatsApp sender {conv.sender!r} is configured")
    return sender


def send_reply(services: Services, reply_message_id: str) -> Message:
    """Send a turn's (or an operator's) message to WhatsApp: rendered and split under 4096 characters, one
    stored part per WhatsApp message. The message's text and sources stay as written.

    Outside the window nothing is sent to Meta: the message is kept with status ``not_sent``. A message
    already sent (it has parts) is not sent again.
    """
    from runtime.whatsapp.render import render_for_whatsapp
    from runtime.whatsapp.split import split_message

    with services.session() as session:
        reply = session.get(Message, reply_message_id)
        if reply.parts:
            return reply
        conv = session.get(Conversation, reply.conversation_id)
        if not window_open(conv, services.clock()):
            reply.status, reply.error_title = "not_sent", "outside the 24-hour window: only templates may be sent"
            session.commit()
            return reply
        texts = split_message(render_for_whatsapp(reply.text))
        if not texts:
            reply.status, reply.error_title = "not_sent", "the reply is empty once rendered for WhatsApp"
            session.commit()
            return reply
        _add_parts(reply, texts)
        session.commit()  # stored before anything goes out
        sender, to = sender_of(session, conv), conv.customer_id
        client = graph_client(services)
        for part in reply.parts:
            result = client.send_text(sender, to, part.text, callback_data=part.id)
            _record(session, conv, reply, part, result, services.clock())
            if part.status == "failed":
                break  # the rest would fail the same way; they stay pending for review
        return reply


def _add_parts(message: Message, texts: list[str]) -> None:
    now = utcnow()
    message.parts = [MessagePart(id=new_id(), position=i, text=text, status="pending", channel_cost=0.0, created_at=now)
                     for i, text in enumerate(texts)]
    settle(message)


def _record(session: Session, conv: Conversation, message: Message, part: MessagePart, result, now: datetime) -> None:
    if result.status == "accepted":
        part.status, part.channel_message_id, part.sent_at = "sent", result.wamid, now
    else:
        part.status, part.error_code, part.error_title = result.status, result.error_code, result.error_title
        if result.error_code == OUTSIDE_WINDOW:
            conv.window_closed_at = now
    conv.cost += settle(message)
    session.commit()


def send_operator_message(services: Services, conversation_id: str, text: str) -> Message:
    """A human agent's message, under the same window rules as the AI's."""
    text = (text or "").strip()
    if not text:
        raise InvalidRequest("text must not be empty")
    with services.session() as session:
        conv = session.get(Conversation, conversation_id)
        if conv is None:
            raise NotFound(f"conversation {conversation_id!r} not found")
        msg = Message(id=new_id(), conversation_id=conv.id, direction="outbound", text=text, kind="operator",
                      status="answered", created_at=utcnow())
        if conv.channel == "whatsapp" and not window_open(conv, services.clock()):
            raise Conflict("the 24-hour window is closed: send an approved template instead")
        session.add(msg)
        session.commit()
        if conv.channel == "whatsapp":
            send_reply(services, msg.id)
        session.refresh(msg)
        return msg


def fill_template(body: str, parameters: list[str]) -> str:
    """The template's text with ``{{n}}`` replaced; every parameter it names must be given."""
    needed = {int(n) for n in _PARAM.findall(body)}
    if needed and max(needed) > len(parameters):
        raise InvalidRequest(f"the template needs {max(needed)} parameter(s); {len(parameters)} given")
    return _PARAM.sub(lambda m: parameters[int(m.group(1)) - 1], body)


def send_template(services: Services, *, sender_id: str, customer_id: str, name: str, language: str,
                  parameters: list[str]) -> Message:
    """Send an approved template (e.g. to re-open a conversation); recorded like any message."""
    with services.session() as session:
        sender = session.get(WhatsAppSender, sender_id)
        if sender is None:
            raise NotFound(f"WhatsApp sender {sender_id!r} not found")
        template = session.scalar(select(WhatsAppTemplate).where(
            WhatsAppTemplate.sender_id == sender.id, WhatsAppTemplate.name == name, WhatsAppTemplate.language == language))
        if template is None:
            raise NotFound(f"template {name!r} ({language}) not found")
        if template.status != "APPROVED":
            raise Conflict(f"template {name!r} is {template.status}: only approved templates can be sent")
        text = fill_template(template.body, parameters)
        from runtime.store import find_or_create_conversation

        conv = find_or_create_conversation(session, assistant_id=sender.assistant_id, channel="whatsapp",
                                           sender=sender.phone_number_id, customer_id=customer_id)
        msg = Message(id=new_id(), conversation_id=conv.id, direction="outbound", text=text, kind="template",
                      status="pending", payload={"template": name, "language": language, "parameters": parameters},
                      created_at=utcnow())
        _add_parts(msg, [text])
        session.add(msg)
        session.commit()
        part = msg.parts[0]
        result = graph_client(services).send_template(sender, customer_id, name, language, parameters,
                                                      callback_data=part.id)
        _record(session, conv, msg, part, result, services.clock())
        session.refresh(msg)
        return msg
