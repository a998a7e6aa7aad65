"""Feedback on AI replies: reviewers' ratings, customers' WhatsApp reactions and the widget's thumbs, stored
as ``MessageFeedback`` rows. Functions here flush and never commit: the caller does, so a webhook post stays
one transaction.

Only AI replies can be rated: outbound messages written by a turn (``turn_id`` set); a reaction to any part
of a reply split for WhatsApp rates the reply. Operator messages, templates and the customer's own messages
cannot.

- source: ``reviewer`` (dashboard / admin API), ``customer_reaction`` (a WhatsApp reaction), ``widget``.
- rating: ``good`` or ``bad``; ``neutral`` only for reactions that say neither (😮, 😂, 🎉...).
- reason: only with a bad rating, one of ``REASONS``; a reviewer's bad rating must give one.
- One customer reaction and one widget rating per reply: a new one replaces it (a reaction delivered late,
  older than the stored one, changes nothing) and a removed reaction (empty emoji) deletes it. Reviewers
  each add their own rating; ``delete_feedback`` withdraws one.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Literal, get_args

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from core.errors import InvalidRequest, NotFound
from runtime.events import emit
from runtime.models import Conversation, Message, MessageFeedback, MessagePart

Source = Literal["reviewer", "customer_reaction", "widget"]
Rating = Literal["good", "bad", "neutral"]
Reason = Literal["wrong", "incomplete", "not_grounded", "wrong_language", "tone", "should_handoff", "other"]
SOURCES: tuple[str, ...] = get_args(Source)
RATINGS: tuple[str, ...] = get_args(Rating)
REASONS: dict[str, str] = {  # the order the dashboard lists them in
    "wrong": "factually wrong, or answers another question",
    "incomplete": "right as far as it goes, but leaves out part of the answer",
    "not_grounded": "says things the cited sources do not support",
    "wrong_language": "not in the customer's language",
    "tone": "rude, cold, too long or otherwise off in tone",
    "should_handoff": "should have passed the customer to a person",
    "other": "anything else (the comment says what)",
}
COMMENT_MAX = 1000
EMOJI_MAX = 64  # the column's size; a reaction is one emoji, a few code points even as a ZWJ sequence

GOOD_EMOJI = frozenset(("👍", "❤", "😍", "🙏", "👏", "😊", "🥰", "💯", "✅"))
BAD_EMOJI = frozenset(("👎", "😡", "😠", "😞", "😢", "🤬", "❌"))
# text/emoji presentation selectors and the five skin tones: 👍🏽 and ❤️ are 👍 and ❤
_MODIFIERS = {chr(0xFE0E), chr(0xFE0F), *map(chr, range(0x1F3FB, 0x1F400))}


def rating_for_emoji(emoji: str) -> Rating:
    """``good`` or ``bad`` for the emoji in ``GOOD_EMOJI`` / ``BAD_EMOJI`` (whatever their skin tone or
    presentation selector), ``neutral`` for any other."""
    base = "".join(ch for ch in emoji if ch not in _MODIFIERS).strip()
    return "good" if base in GOOD_EMOJI else "bad" if base in BAD_EMOJI else "neutral"


def is_ai_reply(message: Message) -> bool:
    """Whether the assistant wrote the message (a turn's reply), as opposed to an operator or the customer."""
    return message.direction == "outbound" and message.turn_id is not None


def rate_reply(
    session: Session, message_id: str, *, source: Source, rating: Rating, reason: str | None = None,
    comment: str | None = None, author: str | None = None,
) -> MessageFeedback:
    """Record a rating of the AI reply ``message_id``: a reviewer's is added, a widget rating replaces the
    reply's previous one. NotFound for an unknown message; InvalidRequest for a message that is not an AI
    reply or values outside the vocabulary (see the module docstring)."""
    message = session.get(Message, message_id)
    if message is None:
        raise NotFound(f"message {message_id!r} not found")
    if not is_ai_reply(message):
        raise InvalidRequest(f"message {message_id!r} is not an AI reply; only the assistant's replies can be rated")
    _check(source, rating, reason, comment)
    values = dict(rating=rating, reason=reason, comment=(comment or "").strip() or None,
                  author=(author or "").strip() or None, emoji=None)
    if source != "reviewer":
        return _told(session, message, _replace(session, message, source, values, utcnow()))
    row = MessageFeedback(id=new_id(), message_id=message.id, conversation_id=message.conversation_id, source=source,
                          created_at=utcnow(), **values)
    session.add(row)
    session.flush()
    return _told(session, message, row)


def _told(session: Session, message: Message, row: MessageFeedback) -> MessageFeedback:
    """Emit the ``feedback.given`` event of ``row`` (``runtime.events``); returns it."""
    conversation = session.get(Conversation, message.conversation_id)
    emit(session, conversation, "feedback.given", {
        "message_id": message.id, "source": row.source, "rating": row.rating, "reason": row.reason,
        "comment": row.comment, "emoji": row.emoji})
    return row


def _check(source: str, rating: str, reason: str | None, comment: str | None) -> None:
    if source not in SOURCES:
        raise InvalidRequest(f"unknown feedback source {source!r}; one of {SOURCES}")
    if rating not in RATINGS or (rating == "neutral" and source != "customer_reaction"):
        raise InvalidRequest(f"rating must be 'good' or 'bad', not {rating!r}")
    if reason is not None and reason not in REASONS:
        raise InvalidRequest(f"unknown reason {reason!r}; one of {list(REASONS)}")
    if reason is not None and rating != "bad":
        raise InvalidRequest("a reason goes with a bad rating only")
    if reason is None and rating == "bad" and source == "reviewer":
        raise InvalidRequest(f"a reviewer's bad rating needs a reason; one of {list(REASONS)}")
    if comment is not None and len(comment) > COMMENT_MAX:
        raise InvalidRequest(f"comment is longer than {COMMENT_MAX} characters")


def record_reaction(session: Session, conversation_id: str, reacted_to: str, emoji: str,
                    at: datetime) -> MessageFeedback | None:
    """The customer's WhatsApp reaction, sent at ``at``, to our message ``reacted_to`` (its wamid) in the
    conversation: stored as the reply's ``customer_reaction``, or, with an empty emoji (reaction removed),
    the stored one deleted. Returns the reply's reaction afterwards; None when there is none or the message
    is unknown or not an AI reply (then nothing is recorded)."""
    message = session.scalar(select(Message).join(MessagePart, MessagePart.message_id == Message.id).where(
        Message.conversation_id == conversation_id, Message.direction == "outbound",
        MessagePart.channel_message_id == reacted_to))
    if message is None or not is_ai_reply(message):
        return None
    emoji = emoji.strip()[:EMOJI_MAX]
    if emoji:
        values = dict(rating=rating_for_emoji(emoji), reason=None, comment=None, author=None, emoji=emoji)
        return _told(session, message, _replace(session, message, "customer_reaction", values, at))
    row = _current(session, message.id, "customer_reaction")
    if row is None or at < row.created_at:  # removing a newer reaction than this one says nothing
        return row
    session.delete(row)
    session.flush()
    return None


def _current(session: Session, message_id: str, source: str) -> MessageFeedback | None:
    return session.scalar(select(MessageFeedback).where(MessageFeedback.message_id == message_id,
                                                        MessageFeedback.source == source))


def _replace(session: Session, message: Message, source: str, values: dict, at: datetime) -> MessageFeedback:
    """The reply's one rating of this source, set to ``values`` unless the stored one is newer than ``at``."""
    row = _current(session, message.id, source)
    if row is None:
        row = MessageFeedback(id=new_id(), message_id=message.id, conversation_id=message.conversation_id,
                              source=source, created_at=at, **values)
        try:
            with session.begin_nested():
                session.add(row)
            return row
        except IntegrityError:  # a concurrent request stored one first (unique per message and source)
            row = _current(session, message.id, source)
    if at >= row.created_at:
        for key, value in values.items():
            setattr(row, key, value)
        row.created_at = at
        session.flush()
    return row


def list_feedback(session: Session, message_id: str) -> list[MessageFeedback]:
    """Every rating of a message, oldest first; NotFound for an unknown message."""
    if session.get(Message, message_id) is None:
        raise NotFound(f"message {message_id!r} not found")
    return feedback_by_message(session, [message_id]).get(message_id, [])


def feedback_by_message(session: Session, message_ids: list[str]) -> dict[str, list[MessageFeedback]]:
    """The ratings of several messages at once, by message id, each list oldest first."""
    found: dict[str, list[MessageFeedback]] = defaultdict(list)
    if message_ids:
        for row in session.scalars(select(MessageFeedback).where(MessageFeedback.message_id.in_(message_ids))
                                   .order_by(MessageFeedback.created_at, MessageFeedback.id)):
            found[row.message_id].append(row)
    return dict(found)


def delete_feedback(session: Session, feedback_id: str) -> None:
    """Withdraw one rating; NotFound if there is no such rating."""
    row = session.get(MessageFeedback, feedback_id)
    if row is None:
        raise NotFound(f"feedback {feedback_id!r} not found")
    session.delete(row)
    session.flush()
