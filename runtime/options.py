"""Choices offered to the customer with a reply, on every channel: what was offered, and which one the answer picks.

A turn offers choices through a tool (``offer_options``; ``list_available_slots`` offers its slots) or the
assistant's menu; they are stored with the reply (``ReplyOption``, ``store_options``), each with an id unique in the
conversation. Each channel shows them its way: WhatsApp as reply buttons or a list message
(``runtime.whatsapp.interactive``), the widget and the test console as buttons, any plain-text channel as a numbered
list (``numbered``). The customer's answer is mapped back by ``interpret``: a WhatsApp tap by the id it carries
(only an id offered in this conversation counts: another conversation's, or one never offered, is read as the
text it shows), a typed number of the last offer's list, or an option's text typed back (letter case, accents and
spacing aside). The turn then reads "The customer chose: <option>" with the option's value, if it has one.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from runtime.models import Message, ReplyOption

MAX_OPTIONS = 30  # offered at once (WhatsApp shows 10 natively, a numbered list the rest)
MAX_TITLE = 500
MAX_VALUE = 500
CHOSEN = "The customer chose: {title}"
PROMPTS = {"pt": "Escolha uma opção:", "es": "Elige una opción:", "en": "Choose an option:"}
_NUMBER = re.compile(r"^\s*(?:n[º°o]?\.?\s*|#\s*|opç[aã]o\s+|option\s+|opci[oó]n\s+)?(\d{1,2})\s*[.)\-]?\s*$",
                     re.IGNORECASE)
_TAP_KINDS = frozenset({"button_reply", "list_reply"})


@dataclass(frozen=True)
class Choice:
    """One option as offered: ``title`` (what the customer reads, in full), an optional ``description`` (a second
    line where the channel has one) and ``value`` (what it stands for, for the turn: e.g. a slot's start)."""

    title: str
    value: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Offered:
    """A stored option: its position (1-based, the number a plain-text list shows) and its id in the conversation."""

    option_id: str
    position: int
    title: str
    value: str | None
    description: str | None = None

    def to_dict(self) -> dict:
        return {"id": self.option_id, "position": self.position, "title": self.title, "value": self.value,
                "description": self.description}


def clean_choices(items: list) -> list[Choice]:
    """Choices from what a tool or a config gave (strings, ``Choice``s or ``{"title", "value", "description"}``
    dicts): blank ones dropped, whitespace collapsed, exact repeats dropped, at most ``MAX_OPTIONS``."""
    out: list[Choice] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, Choice):
            choice = item
        elif isinstance(item, dict):
            choice = Choice(str(item.get("title") or ""), _opt(item.get("value")), _opt(item.get("description")))
        else:
            choice = Choice(str(item))
        title = " ".join(choice.title.split())[:MAX_TITLE]
        if not title or fold(title) in seen:
            continue
        seen.add(fold(title))
        out.append(Choice(title, (choice.value or None) and choice.value[:MAX_VALUE],
                          (choice.description or None) and " ".join(choice.description.split())[:MAX_TITLE]))
    return out[:MAX_OPTIONS]


def _opt(value) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip()


def store_options(session: Session, message: Message, choices: list[Choice]) -> list[Offered]:
    """Store ``choices`` as offered with ``message`` (flushed, not committed); their ids are the message's id and
    the position, so unique in the conversation (and well within Meta's 200/256-character id limits)."""
    offered = []
    for position, choice in enumerate(choices, 1):
        option_id = f"opt.{message.id}.{position}"
        session.add(ReplyOption(id=new_id(), message_id=message.id, conversation_id=message.conversation_id,
                                position=position, option_id=option_id, title=choice.title, value=choice.value,
                                description=choice.description, created_at=utcnow()))
        offered.append(Offered(option_id, position, choice.title, choice.value, choice.description))
    session.flush()
    return offered


def options_of(session: Session, message_id: str) -> list[Offered]:
    """The options offered with a message, in order."""
    rows = session.scalars(select(ReplyOption).where(ReplyOption.message_id == message_id)
                           .order_by(ReplyOption.position))
    return [Offered(r.option_id, r.position, r.title, r.value, r.description) for r in rows]


def options_by_message(session: Session, conversation_id: str) -> dict[str, list[ReplyOption]]:
    """Every option offered in a conversation, by the message it came with, each message's in order."""
    rows = session.scalars(select(ReplyOption).where(ReplyOption.conversation_id == conversation_id)
                           .order_by(ReplyOption.message_id, ReplyOption.position))
    out: dict[str, list[ReplyOption]] = {}
    for row in rows:
        out.setdefault(row.message_id, []).append(row)
    return out


def numbered(text: str, options: list[Offered] | list[Choice]) -> str:
    """``text`` with the options as a numbered list under it: what a plain-text channel shows."""
    if not options:
        return text
    lines = [f"{i}. {o.title}" for i, o in enumerate(options, 1)]
    return "\n\n".join(filter(None, [text.rstrip(), "\n".join(lines)]))


def interpret(session: Session, message: Message) -> str:
    """The text the turn reads for an inbound ``message``: "The customer chose: ..." when it picks an option offered
    in its conversation (recorded as chosen), else its own text."""
    option = chosen_option(session, message)
    if option is None:
        return message.text
    if option.chosen_at is None:
        option.chosen_at = utcnow()
    said = CHOSEN.format(title=option.title)
    return f"{said} (value: {option.value})" if option.value else said


def chosen_option(session: Session, message: Message) -> ReplyOption | None:
    """The option ``message`` picks (see the module docstring), or None."""
    payload = message.payload or {}
    if message.kind in _TAP_KINDS:
        body = payload.get("interactive") if isinstance(payload.get("interactive"), dict) else {}
        reply = body.get(message.kind) if isinstance(body.get(message.kind), dict) else {}
        option_id = str(reply.get("id") or "")
        if not option_id:
            return None
        return session.scalar(select(ReplyOption).where(ReplyOption.conversation_id == message.conversation_id,
                                                        ReplyOption.option_id == option_id))
    last = _last_offer(session, message)
    if not last:
        return None
    text = message.text or ""
    if m := _NUMBER.match(text):
        number = int(m.group(1))
        return next((o for o in last if o.position == number), None)
    typed = fold(text)
    return next((o for o in last if fold(o.title) == typed), None) if typed else None


def _last_offer(session: Session, message: Message) -> list[ReplyOption]:
    """The options of the newest outbound message before ``message`` that offered any, if it is the newest outbound
    message at all (an offer followed by another reply is no longer what a bare number answers)."""
    newest = session.scalar(select(Message.id).where(
        Message.conversation_id == message.conversation_id, Message.direction == "outbound",
        Message.created_at <= message.created_at).order_by(Message.created_at.desc(), Message.id.desc()).limit(1))
    if newest is None:
        return []
    return list(session.scalars(select(ReplyOption).where(ReplyOption.message_id == newest)
                                .order_by(ReplyOption.position)))


def fold(text: str) -> str:
    """Case, accents, punctuation at the ends and inner spacing aside: how typed-back text is compared."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.split()).strip(" .!?;:,")
