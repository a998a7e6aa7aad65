"""Outbound WhatsApp: the 24-hour window, replies rendered and split for WhatsApp, templates, and the
outbox: every WhatsApp message sent is a ``MessagePart`` of the message it belongs to, stored before it
is sent; the message keeps what was written and sums up its parts (``runtime.whatsapp.delivery.settle``).

The outbox (every send goes through it: AI and operator replies, ``send_reply``; templates, ``send_template``):

- A part is stored ``pending`` and due (``next_attempt_at``); only one part of a message is due at a time,
  the next one becomes due when the one before it was sent. A send first claims the part (one conditional
  UPDATE clears ``next_attempt_at``, counts the attempt and sets the send lease ``claimed_until``: ``send_lease_s``),
  so two workers or a sweep and a scheduled retry never send the same part twice; the outcome clears the lease.
- The send's outcome: ``sent`` (Meta's wamid stored); ``unknown`` (no answer after the request went out:
  Meta may have taken it, so it is never sent again, the status webhook settles it, found by the part id
  echoed as callback data); ``failed`` at once when the failure will not heal (HTTP 4xx other than 429 and
  Meta's rate limits: invalid recipient, bad token, closed window...); otherwise ``retrying``: the error is
  kept, ``next_attempt_at`` set after an exponentially growing delay with jitter
  (``Settings.whatsapp_retry_first_delay_s`` doubling up to ``whatsapp_retry_max_delay_s``), and the
  conversation's sends are scheduled then (``WorkQueue.schedule_send``).
- Retrying only resends what certainly was not sent: a connection that could not be made, or Meta's answer
  that it did not take the message (429, 5xx, a temporary or rate-limit error code) -- the same rule as the
  Graph client's own quick retries (``runtime.whatsapp.graph``), which already accepts that a 5xx answer
  means "not taken".
- A sender that dies mid-send (kill -9, a lost machine) leaves its part open and claimed; once its lease has
  expired the sweeps settle it (``settle_dead_claims``). Whether the request reached Meta cannot be known (the
  process may have died before the request, during it, or before recording the answer), so: the part becomes
  ``unknown`` and the message's next part goes out (as after a timeout); Meta's status webhook, found by the part
  id echoed as callback data, settles it if Meta took it; if no status comes within
  ``Settings.whatsapp_status_wait_s`` the part is ``retrying``, due at once, and sent again (within the retry
  period and the window, like any retry). Never lost silently; the one duplicate possible is a request Meta took
  whose status webhook comes later than that wait (our webhook endpoint down that long), or a live send slower
  than its lease and that wait together. Sending again at once would duplicate every send killed mid-request;
  never sending again (as after a timeout) would lose every reply whose sender died before its request. The
  re-sent part may reach the customer after the parts that followed it.
- Retries stop, and the part fails with the reason, once the message is ``whatsapp_retry_for_s`` old or, for
  a free-form message (not a template), once the customer's 24-hour window has closed: a retry is never due
  past either limit (the last one is put just before it).
- A conversation's messages go out in order: its sends stop at the first part that is not due (a newer
  message waits behind a retrying one, due no earlier than it); a new reply first retries the older ones.
- ``send_due`` sends every due part: at start-up and periodically (``atende.jobs``), so a retry whose
  scheduled job was lost (or an ``runtime.queue.InlineQueue``, which cannot wait) still happens.
- A template may be scheduled (``schedule_template``: a follow-up's reminder at the opening): its part is stored
  ``scheduled``, out of the conversation's order, and joins it as ``pending`` once its time has come (``send_due``
  releases it, then sends it); until then it can be cancelled (``cancel_scheduled``).
- A send that finally fails is logged at ERROR and flags the conversation for a person
  (``runtime.handoff.flag_for_human``, with the assistant's ``handoff`` event when it has a ``handoff_url``).
"""
from __future__ import annotations

import logging
import random
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from core.errors import Conflict, InvalidRequest, NotFound
from core.settings import Settings
from runtime.config import AssistantConfig
from runtime.events import emit
from runtime.handoff import flag_for_human, take_over
from kb.models import Assistant
from runtime.models import Conversation, Message, MessagePart
from runtime.services import Services
from runtime.whatsapp.delivery import settle
from runtime.whatsapp.graph import GraphClient, SendResult
from runtime.whatsapp.pricing import estimate
from runtime.whatsapp.models import WhatsAppSender, WhatsAppTemplate

log = logging.getLogger(__name__)

WINDOW = timedelta(hours=24)
OUTSIDE_WINDOW = 131047  # Meta's error code for a free-form send outside the window
OPEN = ("pending", "retrying")  # a part's statuses before it went out
SCHEDULED = "scheduled"  # a part waiting for its time (next_attempt_at) to join the outbox
LAST_TRY_MARGIN = timedelta(seconds=30)  # the last retry before a limit is this long before it
WAITING = "waiting for an earlier message to this customer to be sent"
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
    """Send a turn's (or an operator's) message to WhatsApp through the outbox: rendered and split under 4096
    characters, one stored part per WhatsApp message, then sent (after the conversation's older messages still
    retrying). The message's text and sources stay as written.

    Outside the window nothing is sent to Meta: the message is kept with status ``not_sent``. A message
    already sent (it has parts) is not sent again. Two callers at once (a turn sending its reply while another
    worker's turn finds it unsent, ``runtime.whatsapp.turns.unsent_replies``) store its parts once: the first
    holds the message's row until its parts are committed (``_lock_message``); the second then finds them.
    """
    from runtime.whatsapp.render import render_for_whatsapp
    from runtime.whatsapp.split import split_message

    with services.session() as session:
        _lock_message(session, reply_message_id)
        reply = session.get(Message, reply_message_id)
        if reply.parts:
            session.commit()  # ends the lock
            return reply
        conv = session.get(Conversation, reply.conversation_id)
        now = services.clock()
        if not window_open(conv, now):
            reply.status, reply.error_title = "not_sent", "outside the 24-hour window: only templates may be sent"
            session.commit()
            return reply
        texts, interactive = _with_options(session, reply, render_for_whatsapp, split_message)
        if not texts and interactive is None:
            reply.status, reply.error_title = "not_sent", "the reply is empty once rendered for WhatsApp"
            session.commit()
            return reply
        _add_parts(reply, texts, now, interactive, files=list((reply.payload or {}).get("files") or []))
        session.commit()  # stored before anything goes out
    _send_conversation(services, reply.conversation_id, force=True)
    return _reloaded(services, reply_message_id)


def send_due(services: Services, conversation_id: str | None = None) -> int:
    """Send every part whose attempt is due (of one conversation, or of all), each conversation's in order;
    returns how many sends were tried. The recovery sweep: run at start-up and periodically, and by the jobs
    ``WorkQueue.schedule_send`` schedules. Safe to run anywhere at any time (a part is claimed before it is sent)."""
    if conversation_id is not None:
        settle_dead_claims(services, conversation_id)
        _release_scheduled(services, conversation_id)
        return _send_conversation(services, conversation_id)
    return sum(_send_conversation(services, cid) for cid in due_conversations(services))


def due_conversations(services: Services) -> list[str]:
    """The conversations with a part due now (oldest due first), scheduled ones whose time has come included, and
    dead senders' parts settled first (``settle_dead_claims``)."""
    settle_dead_claims(services)
    _release_scheduled(services)
    with services.session() as session:
        rows = session.execute(
            select(Message.conversation_id, MessagePart.next_attempt_at)
            .join(Message, Message.id == MessagePart.message_id)
            .where(MessagePart.status.in_(OPEN), MessagePart.next_attempt_at <= services.clock())
            .order_by(MessagePart.next_attempt_at)).all()
    return list(dict.fromkeys(cid for cid, _ in rows))


def _release_scheduled(services: Services, conversation_id: str | None = None) -> None:
    """Scheduled parts whose time has come join the outbox (``pending``, due then)."""
    with services.session() as session:
        query = select(MessagePart).join(Message, Message.id == MessagePart.message_id).where(
            MessagePart.status == SCHEDULED, MessagePart.next_attempt_at <= services.clock())
        if conversation_id is not None:
            query = query.where(Message.conversation_id == conversation_id)
        parts = list(session.scalars(query))
        for part in parts:
            part.status = "pending"
        for message_id in {p.message_id for p in parts}:
            settle(session.get(Message, message_id))
        session.commit()


def send_lease_s(services: Services) -> float:
    """How long a send holds its part (``claimed_until``): every quick attempt of the Graph client at the send
    timeout, plus ``recovery_margin_s``. A live send that outlasts it (long Retry-After waits) is only marked
    ``unknown`` meanwhile: its own outcome, recorded within ``whatsapp_status_wait_s`` more, replaces that."""
    s = services.settings
    return graph_client(services).attempts * s.whatsapp_send_timeout_s + s.recovery_margin_s


def settle_dead_claims(services: Services, conversation_id: str | None = None) -> int:
    """The sends whose sender died (see the module docstring), of one conversation or of all: an open part past
    its send lease becomes ``unknown`` until ``whatsapp_status_wait_s`` from now (the message's next part due at
    once); an ``unknown`` part that waited that long with no status from Meta (no wamid learnt) becomes
    ``retrying``, due now. Each by one conditional UPDATE, so concurrent sweeps settle a part once; returns how
    many parts moved."""
    now = services.clock()
    wait = timedelta(seconds=services.settings.whatsapp_status_wait_s)
    dead = [MessagePart.status.in_(OPEN), MessagePart.next_attempt_at.is_(None), MessagePart.claimed_until <= now]
    unheard = [MessagePart.status == "unknown", MessagePart.channel_message_id.is_(None),
               MessagePart.next_attempt_at <= now]
    moved = 0
    with services.session() as session:
        for where, values in (
                (dead, {"status": "unknown", "claimed_until": None, "next_attempt_at": now + wait, "error_title":
                        "its sender stopped during the send: waiting for Meta's status before sending it again"}),
                (unheard, {"status": "retrying", "next_attempt_at": now, "error_title":
                           "no status from Meta after its sender stopped during the send: sent again"})):
            query = select(MessagePart.id)
            if conversation_id is not None:
                query = query.join(Message, Message.id == MessagePart.message_id).where(
                    Message.conversation_id == conversation_id)
            for part_id in list(session.scalars(query.where(*where))):
                if session.execute(update(MessagePart).where(MessagePart.id == part_id, *where).values(**values)
                                   .execution_options(synchronize_session=False)).rowcount != 1:
                    continue  # another sweep, a status webhook or the send's own outcome came first
                moved += 1
                part = session.get(MessagePart, part_id)
                session.refresh(part)
                msg = session.get(Message, part.message_id)
                if part.status == "unknown":
                    log.warning("WhatsApp message %s (part %d): its sender died during the send; sent again at %s "
                                "unless Meta's status says it was taken", msg.id, part.position,
                                part.next_attempt_at.isoformat())
                    _make_next_part_due(msg, part, now)
                else:
                    log.warning("WhatsApp message %s (part %d): no status from Meta; sent again", msg.id, part.position)
                conv = session.get(Conversation, msg.conversation_id)
                conv.cost += settle(msg)
                session.commit()
    return moved


def _make_next_part_due(msg: Message, part: MessagePart, now: datetime) -> None:
    """The message's part after ``part`` (which went out, or may have), if it waits, is due ``now``."""
    following = next((p for p in msg.parts if p.position > part.position and p.status in OPEN), None)
    if following is not None and following.next_attempt_at is None:
        following.next_attempt_at = now


def retry_delay_s(settings: Settings, attempts: int, rand=random.random) -> float:
    """The wait before the next send after ``attempts`` sends failed: ``whatsapp_retry_first_delay_s`` doubling
    with each attempt, capped at ``whatsapp_retry_max_delay_s``, drawn between half of it and all of it (jitter,
    so the sends an outage held back do not all come back at once)."""
    full = min(settings.whatsapp_retry_max_delay_s,
               settings.whatsapp_retry_first_delay_s * 2 ** (min(max(attempts, 1), 40) - 1))
    return full / 2 + rand() * full / 2


def _reloaded(services: Services, message_id: str) -> Message:
    with services.session() as session:
        msg = session.get(Message, message_id)
        msg.parts  # noqa: B018 (loaded for the caller, after the session closes)
        return msg


def _lock_message(session: Session, message_id: str) -> None:
    """Hold the message's row until the session commits, so that whether it has parts and the parts it gets are
    decided by one writer at a time: a no-op UPDATE, which takes the row's lock on PostgreSQL (a second writer
    waits for the first to commit, then reads its parts) and the database's write lock on SQLite (SELECT ... FOR
    UPDATE is no lock there). Without it two senders both found no parts and both inserted part 0 (a
    UniqueViolation on ``(message_id, position)``). Call it first in the session: SQLite takes the write lock then
    on a fresh snapshot."""
    locked = session.execute(update(Message).where(Message.id == message_id).values(status=Message.status)
                             .execution_options(synchronize_session=False)).rowcount
    if locked != 1:
        raise NotFound(f"message {message_id!r} not found")


def _add_parts(message: Message, texts: list[str], now: datetime, interactive: dict | None = None, *,
               files: list[dict] = ()) -> None:
    """The message's parts, stored ``pending``; the first is due ``now``, each next one once the one before is sent.
    ``files`` (from the knowledge base, ``send_file``) follow the text, each a part whose text is its caption or
    name; ``interactive`` (buttons or a list) is the last part, its body its text."""
    bodies: list[tuple[str, dict | None, dict | None]] = [(text, None, None) for text in texts]
    bodies += [(f.get("caption") or f["filename"], None, f) for f in files]
    if interactive is not None:
        bodies.append((interactive["body"]["text"], interactive, None))
    message.parts = [MessagePart(id=new_id(), position=i, text=text, interactive=payload, media=media,
                                 status="pending", channel_cost=0.0, created_at=now, attempts=0,
                                 next_attempt_at=now if i == 0 else None)
                     for i, (text, payload, media) in enumerate(bodies)]
    settle(message)


def _with_options(session: Session, reply: Message, render, split) -> tuple[list[str], dict | None]:
    """The reply's text messages and its interactive one, if it offers options (``runtime.whatsapp.interactive``)."""
    from runtime.options import options_of
    from runtime.whatsapp.interactive import render_choices

    options = options_of(session, reply.id)
    if not options:
        return split(render(reply.text)), None
    prompt = (reply.payload or {}).get("options_prompt") if isinstance(reply.payload, dict) else None
    rendered = render_choices(render(reply.text), options, prompt=render(prompt) if prompt else None)
    return [piece for text in rendered.texts for piece in split(text)], rendered.interactive


def _next_open_part(session: Session, conversation_id: str) -> MessagePart | None:
    """The conversation's first part waiting to be sent (due now or later), in message order."""
    return session.scalars(
        select(MessagePart).join(Message, Message.id == MessagePart.message_id)
        .where(Message.conversation_id == conversation_id, MessagePart.status.in_(OPEN),
               MessagePart.next_attempt_at.is_not(None))
        .order_by(Message.created_at, Message.id, MessagePart.position).limit(1)).first()


def _send_conversation(services: Services, conversation_id: str, *, force: bool = False) -> int:
    """Send the conversation's waiting parts in order, until one is not due (``force``: the first of them is
    tried even so: a new reply retries the older ones) or its send does not go through; returns the sends tried."""
    tried = 0
    while True:
        with services.session() as session:
            part = _next_open_part(session, conversation_id)
            if part is None or (not force and part.next_attempt_at > services.clock()):
                return tried
            part_id = part.id
        outcome = _attempt(services, part_id, force=force)
        if outcome.tried:
            tried += 1
        if outcome.status not in ("sent", "unknown", "failed"):
            return tried  # retrying, or taken by another worker: the rest wait behind it


@dataclass(frozen=True)
class _Outcome:
    status: str  # the part's status after the attempt, or "busy" (another worker has it, or not due)
    tried: bool


def _attempt(services: Services, part_id: str, *, force: bool = False) -> _Outcome:
    """One send of the part, if it is still waiting (and due, unless ``force``) and can be claimed."""
    with services.session() as session:
        now = services.clock()
        part = session.get(MessagePart, part_id)
        if part is None or part.status not in OPEN or part.next_attempt_at is None:
            return _Outcome("busy", False)
        if not force and part.next_attempt_at > now:
            return _Outcome("busy", False)
        msg = session.get(Message, part.message_id)
        conv = session.get(Conversation, msg.conversation_id)
        reason = _expired(services.settings, conv, msg, part, now)
        try:
            sender = sender_of(session, conv)
        except NotFound as exc:  # the number was removed since
            reason = reason or str(exc)
        if reason is not None:
            if _claim(session, part, now, lease_s=send_lease_s(services), force=True, count=False):
                _fail(services, session, conv, msg, part, part.error_code, reason, now)
                return _Outcome("failed", False)
            return _Outcome("busy", False)
        if not _claim(session, part, now, lease_s=send_lease_s(services), force=force):
            return _Outcome("busy", False)
        client = graph_client(services)
        if msg.kind == "template":
            template = msg.payload or {}
            result = client.send_template(sender, conv.customer_id, template["template"], template["language"],
                                          list(template.get("parameters") or []), callback_data=part.id)
        elif part.interactive:
            result = client.send_interactive(sender, conv.customer_id, part.interactive, callback_data=part.id)
        elif part.media:
            result = _send_file(services, client, sender, conv.customer_id, part)
        else:
            result = client.send_text(sender, conv.customer_id, part.text, callback_data=part.id)
        return _Outcome(_record(services, session, conv, msg, part, result, services.clock()), True)


def _send_file(services: Services, client, sender, to: str, part: MessagePart) -> SendResult:
    """Upload and send a knowledge-base file part; a file gone from the store fails for good."""
    media = part.media or {}
    try:
        data = services.blobs.get(media["sha256"])
    except (FileNotFoundError, KeyError):
        return SendResult("failed", None, None, f"the file {media.get('filename')!r} is no longer stored", 0, None)
    return client.send_file(sender, to, media["kind"], data, media["mime_type"], media["filename"],
                            caption=media.get("caption"), callback_data=part.id)


def _claim(session: Session, part: MessagePart, now: datetime, *, lease_s: float, force: bool,
           count: bool = True) -> bool:
    """Take the part for one send: clear its due time, hold it for ``lease_s`` (``claimed_until``) and count the
    attempt (unless not ``count``: it is taken to be failed), if nobody took it first."""
    due = [MessagePart.id == part.id, MessagePart.status.in_(OPEN), MessagePart.next_attempt_at.is_not(None)]
    if not force:
        due.append(MessagePart.next_attempt_at <= now)
    attempts = MessagePart.attempts + 1 if count else MessagePart.attempts
    claimed = session.execute(update(MessagePart).where(*due).values(
        attempts=attempts, next_attempt_at=None, claimed_until=now + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    session.refresh(part)
    return claimed == 1


def _limits(settings: Settings, conv: Conversation, msg: Message, part: MessagePart) -> list[tuple[datetime, str]]:
    """The times after which the part may no longer be sent, each with the reason."""
    limits = [(part.created_at + timedelta(seconds=settings.whatsapp_retry_for_s),
               f"not sent: the Graph API did not take it within {settings.whatsapp_retry_for_s / 3600:g} h")]
    if msg.kind != "template":
        last = conv.last_inbound_at
        closes = last + WINDOW if last is not None else part.created_at
        if conv.window_closed_at is not None and last is not None and conv.window_closed_at >= last:
            closes = min(closes, conv.window_closed_at)
        limits.append((closes, "not sent: the customer's 24-hour window closed before the Graph API took it"))
    return limits


def _expired(settings: Settings, conv: Conversation, msg: Message, part: MessagePart, now: datetime) -> str | None:
    """Why the part may no longer be sent (a limit passed), or None."""
    for limit, reason in sorted(_limits(settings, conv, msg, part)):
        if now >= limit:
            return _with_last_error(reason, part)
    return None


def _with_last_error(reason: str, part: MessagePart) -> str:
    return f"{reason} (last error: {part.error_title})" if part.error_title and part.error_title != WAITING else reason


def _record(services: Services, session: Session, conv: Conversation, msg: Message, part: MessagePart,
            result: SendResult, now: datetime) -> str:
    """Store the send's outcome (see the module docstring), which ends its lease; returns the part's status."""
    part.claimed_until = part.next_attempt_at = None  # a sweep may have taken a slow send for a dead one
    if result.status in ("accepted", "unknown"):
        if result.status == "accepted":
            part.status, part.channel_message_id, part.sent_at = "sent", result.wamid, now
            part.error_code, part.error_title = None, None
            if part.position == max(p.position for p in msg.parts):  # the whole message is out
                emit(session, conv, "reply.sent", {"message_id": msg.id, "kind": msg.kind, "text": msg.text,
                                                   "parts": len(msg.parts)})
        else:
            part.status, part.error_code, part.error_title = "unknown", result.error_code, result.error_title
        if part.billable is None and not part.pricing_category:  # priced as Meta takes it; its status confirms
            part.pricing_category, part.channel_cost = estimate(
                services.settings.whatsapp_prices, msg, conv.customer_id, window_open(conv, now))
        _make_next_part_due(msg, part, now)
        conv.cost += settle(msg)
        session.commit()
        return part.status
    if result.retryable:
        part.error_code, part.error_title = result.error_code, result.error_title
        due = _next_due(services.settings, conv, msg, part, now)
        if due is not None:
            part.status, part.next_attempt_at = "retrying", due
            _hold_later_parts(session, conv.id, msg, due)
            conv.cost += settle(msg)
            session.commit()
            log.warning("WhatsApp message %s (part %d) not sent, attempt %d: %s; retried at %s", msg.id,
                        part.position, part.attempts, result.error_title, due.isoformat())
            services.queue.schedule_send(conv.id, max((due - now).total_seconds(), 0.0))
            return "retrying"
        reason = _with_last_error(min(_limits(services.settings, conv, msg, part))[1], part)
        _fail(services, session, conv, msg, part, result.error_code, reason, now)
        return "failed"
    if result.error_code == OUTSIDE_WINDOW:
        conv.window_closed_at = now
    _fail(services, session, conv, msg, part, result.error_code, result.error_title, now)
    return "failed"


def _next_due(settings: Settings, conv: Conversation, msg: Message, part: MessagePart, now: datetime) -> datetime | None:
    """When to try the part again, or None when no try is left before its first limit (the last one is put
    ``LAST_TRY_MARGIN`` before that limit)."""
    due = now + timedelta(seconds=retry_delay_s(settings, part.attempts))
    limit = min(limit for limit, _ in _limits(settings, conv, msg, part))
    if due <= limit - LAST_TRY_MARGIN:
        return due
    if limit - now > 2 * LAST_TRY_MARGIN:
        return limit - LAST_TRY_MARGIN
    return None


def _hold_later_parts(session: Session, conversation_id: str, msg: Message, due: datetime) -> None:
    """Newer messages of the conversation waiting to go out wait behind ``msg`` (due no earlier than it)."""
    later = session.scalars(
        select(MessagePart).join(Message, Message.id == MessagePart.message_id)
        .where(Message.conversation_id == conversation_id, Message.id != msg.id, MessagePart.status.in_(OPEN),
               MessagePart.next_attempt_at.is_not(None), MessagePart.next_attempt_at < due,
               Message.created_at >= msg.created_at))
    for other in later:
        other.next_attempt_at = due
        if other.attempts == 0:
            other.error_title = WAITING
            other_msg = session.get(Message, other.message_id)
            settle(other_msg)


def _fail(services: Services, session: Session, conv: Conversation, msg: Message, part: MessagePart,
          code: int | None, reason: str | None, now: datetime) -> None:
    """The part failed for good: record the reason, flag the conversation for a person (and its handoff event)."""
    part.status, part.next_attempt_at, part.error_code, part.error_title = "failed", None, code, reason
    part.claimed_until = None
    if part.billable is None:  # never taken (or so Meta said): not charged
        part.channel_cost = 0.0
    conv.cost += settle(msg)
    log.error("WhatsApp message %s (part %d of conversation %s) failed after %d attempt(s): %s", msg.id,
              part.position, conv.id, part.attempts, reason)
    assistant = session.get(Assistant, conv.assistant_id)
    config = AssistantConfig.model_validate((assistant.config if assistant else None) or {})
    flagged = {"reason": f"a message could not be sent to the customer: {reason}"[:500], "callback_phone": None,
               "callback_time": None, "at": now.isoformat()}
    flag_for_human(session, conv, conv.assistant_id, config, flagged, pause=False)
    emit(session, conv, "delivery.failed", {"message_id": msg.id, "part": part.position, "error_code": code,
                                            "error": reason, "kind": msg.kind})
    session.commit()  # the events go out once committed (runtime.events)


def send_operator_message(services: Services, conversation_id: str, text: str) -> Message:
    """A human agent's message, under the same window rules as the AI's; the conversation is then
    ``with_human``: the AI does not answer until it is handed back (runtime.handoff)."""
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
        take_over(session, conv)  # the AI stops
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
    """Send an approved template (e.g. to re-open a conversation) through the outbox, like any message (a template
    is not bound to the 24-hour window, only to the retry period)."""
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
                      status="pending", payload={"template": name, "language": language, "parameters": parameters,
                                                 "category": template.category.lower()},
                      created_at=utcnow())
        _add_parts(msg, [text], services.clock())
        session.add(msg)
        session.commit()  # stored before anything goes out
    _send_conversation(services, msg.conversation_id, force=True)
    return _reloaded(services, msg.id)


def schedule_template(services: Services, session: Session, conv: Conversation, template: WhatsAppTemplate,
                      parameters: list[str], at: datetime) -> Message:
    """Store approved ``template`` for the conversation's customer, to be sent at ``at``: its part waits
    ``scheduled`` (out of the conversation's order: replies before then go out as usual), then joins the outbox
    (:func:`send_due`, at the job ``WorkQueue.schedule_send`` leaves for then or at the next sweep); the retry period
    counts from ``at``. The caller commits (the job scheduled here runs at ``at``)."""
    text = fill_template(template.body, parameters)
    msg = Message(id=new_id(), conversation_id=conv.id, direction="outbound", text=text, kind="template",
                  status=SCHEDULED, created_at=utcnow(),
                  payload={"template": template.name, "language": template.language, "parameters": parameters,
                           "category": template.category.lower()})
    msg.parts = [MessagePart(id=new_id(), position=0, text=text, status=SCHEDULED, channel_cost=0.0, created_at=at,
                             attempts=0, next_attempt_at=at)]
    session.add(msg)
    session.flush()
    services.queue.schedule_send(conv.id, max((at - services.clock()).total_seconds(), 0.0))
    return msg


def cancel_scheduled(session: Session, message_id: str, reason: str) -> bool:
    """Cancel a scheduled message not yet released to the outbox (its parts ``cancelled``, with ``reason``);
    whether it was. The caller commits."""
    msg = session.get(Message, message_id)
    parts = [p for p in (msg.parts if msg else []) if p.status == SCHEDULED]
    for part in parts:
        part.status, part.next_attempt_at, part.error_title = "cancelled", None, reason
    if parts:
        settle(msg)
    return bool(parts)
