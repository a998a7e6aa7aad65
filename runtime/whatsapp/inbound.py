"""Received webhooks: ``accept_post`` checks the signature and stores the body before it is
acknowledged; ``process_post`` (in the background) turns it into stored messages, delivery statuses
and template states, in one transaction per post.

Decisions:
- A post is stored once per body (SHA-256 of the signed bytes): a redelivered or replayed post answers
  with the stored one, which is processed at most once (and retried, if it failed).
- The signing app must own every number (``metadata.phone_number_id``) and, for template status changes,
  the business account (entry id, ``waba_id`` of one of its senders) a post names; otherwise 403.
- A template status moves only with an event at least as recent (Meta's entry time) as the one that set it.
- Redelivered messages are skipped by ``(conversation, wamid)``; the unique constraint settles races. A message
  with a media file gets its ``MessageMedia`` record beside it (``runtime.whatsapp.media.record_media``), so a
  redelivery never fetches the file twice.
- The 24-hour window (``last_inbound_at``) moves on every message the customer sent, reactions and
  unsupported types included (Meta counts any user-initiated message); not on system notices, edits,
  deletions or marketing-preference changes.
- A status applies to the part of an outbound message (``MessagePart``) Meta sent it for, found by its
  wamid or, when the send's answer was lost, by the part id echoed as callback data; it moves as
  ``runtime.whatsapp.delivery`` says (only forward), and the message is settled from its parts.
- A reaction is logged like any message and, when it targets an AI reply of the same conversation, also
  recorded as the customer's feedback on it (``runtime.feedback.record_reaction``), once: a redelivery
  is skipped before that.
- An echo of a message the business sent from its own WhatsApp Business app (``smb_message_echoes``) is an
  operator's message: stored (status ``sent``, no part: WhatsApp delivered it, the outbox never sends it) in the
  conversation with its recipient, which goes ``with_human`` (``runtime.handoff.take_over``) like after a
  dashboard reply; no turn is started, and the customer's window does not move. Stored once per
  ``(conversation, wamid)`` like inbound messages; an echo of a message we sent through the API (its wamid is
  one of our parts') is not stored again, and a status webhook for an echo's wamid finds no part and changes
  nothing.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from runtime.feedback import record_reaction
from runtime.handoff import BUSINESS_APP_REPLY, take_over
from runtime.models import Conversation, Message, MessagePart
from runtime.services import Services
from runtime.events import emit
from runtime.store import find_or_create_conversation, received_data
from runtime.whatsapp import pricing
from runtime.whatsapp.app_keys import AppKey
from runtime.whatsapp.delivery import advances, settle
from runtime.whatsapp.media import record_media
from runtime.whatsapp.models import WebhookPost, WhatsAppSender, WhatsAppTemplate
from runtime.whatsapp.webhook import (
    BusinessEcho, InboundMessage, MalformedBody, StatusUpdate, TemplateStatusUpdate, Unhandled, decode_body,
    parse_payload, phone_number_ids, template_waba_ids, verify_signature,
)

log = logging.getLogger(__name__)

OUTSIDE_WINDOW = 131047


class WebhookError(Exception):
    """A webhook post refused before anything is stored; ``status_code`` is the HTTP answer."""

    status_code = 400


class InvalidPayload(WebhookError):
    status_code = 400


class SignatureError(WebhookError):
    """Missing (401) or wrong (403) signature, or a number or business account the signing app does not own (403)."""

    def __init__(self, message: str, status_code: int = 403):
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class StoredPost:
    """A post as ``accept_post`` left it: its id, and whether this body was stored before."""

    id: str
    again: bool = False


def accept_post(services: Services, raw_body: bytes, signature: str | None) -> StoredPost:
    """Check a webhook body against every app's secret and store it, once: a body already stored returns the
    stored post. Raises WebhookError (nothing stored).

    The acknowledgement's cost is what Meta waits for: the apps' keys are the process's (``services.whatsapp_apps``,
    read again before a refusal), and the body is stored by one statement in a transaction of its own
    (``INSERT ... ON CONFLICT DO NOTHING RETURNING``), durable when it returns."""
    if not signature:
        raise SignatureError("missing X-Hub-Signature-256 header", status_code=401)
    keys, fresh = services.whatsapp_apps.kept(services.session)
    key = _signing_app(keys, raw_body, signature)
    if key is None and not fresh:
        keys, fresh = services.whatsapp_apps.fresh(services.session), True
        key = _signing_app(keys, raw_body, signature)
    if key is None:
        raise SignatureError("signature does not match any configured app")
    try:
        body = decode_body(raw_body)
    except MalformedBody as exc:
        raise InvalidPayload(str(exc)) from None
    if not fresh and _foreign(body, key):  # a sender added since the keys were read?
        key = _signing_app(services.whatsapp_apps.fresh(services.session), raw_body, signature) or key
    foreign = _foreign(body, key)
    if foreign:
        raise SignatureError(foreign)
    return _store(services, body, hashlib.sha256(raw_body).hexdigest())


def _signing_app(keys: tuple[AppKey, ...], raw_body: bytes, signature: str) -> AppKey | None:
    secret = verify_signature(raw_body, signature, [k.secret for k in keys])
    return next((k for k in keys if k.secret == secret), None)


def _foreign(body: dict, key: AppKey) -> str | None:
    """Why a post names a number, or a template's business account, that the signing app has no sender for."""
    numbers = phone_number_ids(body) - key.phone_number_ids
    if numbers:
        return f"the signing app does not own phone number id(s) {sorted(numbers)}"
    accounts = template_waba_ids(body) - key.waba_ids
    if accounts:
        return (f"the signing app has no sender in WhatsApp Business Account(s) {sorted(accounts)} "
                "(set waba_id on its senders to receive template status updates)")
    return None


def _store(services: Services, body: dict, digest: str) -> StoredPost:
    """Store the body once (its digest unique), through the intake's connections: one taken from a pool that
    does not ping it first (``Services.intake``), so a connection the server dropped (a restart) fails the
    statement; the pool then replaces them all and the post is stored on a new one. Should the first attempt
    have committed before its connection died, the second finds the body stored and returns that post."""
    try:
        return _insert(services.intake, body, digest)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.warning("whatsapp webhook: the database connection was lost (%s); storing the post again on a new one",
                    type(exc.orig).__name__)
        return _insert(services.intake, body, digest)


def _insert(engine: Engine, body: dict, digest: str) -> StoredPost:
    posts = WebhookPost.__table__
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    statement = (insert(posts).values(id=new_id(), received_at=utcnow(), body=body, body_sha256=digest, processed=False)
                 .on_conflict_do_nothing(index_elements=[posts.c.body_sha256]).returning(posts.c.id))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        post_id = connection.execute(statement).scalar()
        if post_id is not None:
            return StoredPost(post_id)
        post_id = connection.execute(select(posts.c.id).where(posts.c.body_sha256 == digest)).scalar_one()
    log.info("whatsapp webhook: post %s received again", post_id)
    return StoredPost(post_id, again=True)


@dataclass
class _Run:
    """What processing one post needs at hand."""

    session: Session
    senders: dict[str, WhatsAppSender]
    turn_conversations: list[str]
    prices: dict[str, float] = field(default_factory=dict)  # pricing category -> USD per billable message


def process_post(services: Services, post_id: str) -> list[str]:
    """Apply a stored post once; returns the conversations that got new messages to answer."""
    with services.session() as session:
        # claiming the post is the transaction's first write: a second worker waits here, then skips it
        claimed = session.execute(
            update(WebhookPost).where(WebhookPost.id == post_id, WebhookPost.processed.is_(False))
            .values(processed=True, error=None)
        ).rowcount
        if not claimed:
            session.rollback()
            return []
        post = session.get(WebhookPost, post_id)
        try:
            events = parse_payload(post.body, received_at=post.received_at)
            numbers = {e.phone_number_id for e in events
                       if isinstance(e, (InboundMessage, StatusUpdate, BusinessEcho))}
            senders = {s.phone_number_id: s for s in session.scalars(
                select(WhatsAppSender).where(WhatsAppSender.phone_number_id.in_(numbers)))} if numbers else {}
            run = _Run(session, senders, [], services.settings.whatsapp_prices)
            for event in events:
                _apply(run, event)
            session.commit()
        except Exception as exc:
            session.rollback()
            session.execute(update(WebhookPost).where(WebhookPost.id == post_id).values(error=f"{type(exc).__name__}: {exc}"))
            session.commit()
            raise
        return run.turn_conversations


def _apply(run: _Run, event) -> None:
    if isinstance(event, InboundMessage):
        _store_inbound(run, event)
    elif isinstance(event, StatusUpdate):
        _apply_status(run, event)
    elif isinstance(event, TemplateStatusUpdate):
        _apply_template_status(run.session, event)
    elif isinstance(event, BusinessEcho):
        _store_echo(run, event)
    elif isinstance(event, Unhandled):
        log.info("whatsapp webhook: %s not handled: %s", event.field, event.reason)


def _store_inbound(run: _Run, event: InboundMessage) -> None:
    sender = run.senders.get(event.phone_number_id)
    if sender is None:  # removed since the post was accepted
        log.warning("whatsapp webhook: message %s for unknown number %s dropped", event.wamid, event.phone_number_id)
        return
    session = run.session
    conv = find_or_create_conversation(session, assistant_id=sender.assistant_id, channel="whatsapp",
                                       sender=sender.phone_number_id, customer_id=event.customer_id)
    if _inbound_exists(session, conv.id, event.wamid):
        log.info("whatsapp webhook: message %s already stored", event.wamid)
        return
    turn_worthy = event.text_for_assistant is not None
    msg = Message(
        id=new_id(), conversation_id=conv.id, direction="inbound", text=event.text_for_assistant or event.description,
        status="received" if turn_worthy else "logged", channel_message_id=event.wamid, kind=event.kind,
        payload=event.payload, received_at=event.timestamp, created_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(msg)
    except IntegrityError:  # another worker stored the same redelivery first
        log.info("whatsapp webhook: message %s stored concurrently", event.wamid)
        return
    record_media(session, msg, event)  # its file is fetched once the post is committed (runtime.whatsapp.media)
    emit(session, conv, "message.received", received_data(msg))
    if event.reaction is not None:  # once per reaction: a redelivery returned above
        record_reaction(session, conv.id, event.reaction.message_id, event.reaction.emoji, at=event.timestamp)
    if event.opens_window:
        conv.last_inbound_at = max(conv.last_inbound_at or event.timestamp, event.timestamp)
    if turn_worthy and conv.id not in run.turn_conversations:
        run.turn_conversations.append(conv.id)


def _store_echo(run: _Run, event: BusinessEcho) -> None:
    sender = run.senders.get(event.phone_number_id)
    if sender is None:
        log.warning("whatsapp webhook: echo %s for unknown number %s dropped", event.wamid, event.phone_number_id)
        return
    session = run.session
    conv = find_or_create_conversation(session, assistant_id=sender.assistant_id, channel="whatsapp",
                                       sender=sender.phone_number_id, customer_id=event.customer_id)
    ours = session.scalar(select(MessagePart.id).join(Message, Message.id == MessagePart.message_id).where(
        Message.conversation_id == conv.id, MessagePart.channel_message_id == event.wamid))
    if ours is not None or _inbound_exists(session, conv.id, event.wamid):
        log.info("whatsapp webhook: echo %s already stored", event.wamid)
        return
    now = utcnow()
    msg = Message(id=new_id(), conversation_id=conv.id, direction="outbound", kind="operator", status="sent",
                  text=event.text, channel_message_id=event.wamid, sent_at=event.timestamp, created_at=now,
                  payload={"source": "whatsapp_business_app", "echo": event.payload})
    try:
        with session.begin_nested():
            session.add(msg)
    except IntegrityError:
        log.info("whatsapp webhook: echo %s stored concurrently", event.wamid)
        return
    take_over(session, conv, reason=BUSINESS_APP_REPLY, at=now)


def _inbound_exists(session: Session, conversation_id: str, wamid: str) -> bool:
    return session.scalar(select(Message.id).where(
        Message.conversation_id == conversation_id, Message.channel_message_id == wamid)) is not None


def _apply_status(run: _Run, event: StatusUpdate) -> None:
    # scoped to the signing app's number, so one app cannot touch another app's messages
    scope = (select(MessagePart, Message, Conversation)
             .join(Message, Message.id == MessagePart.message_id)
             .join(Conversation, Conversation.id == Message.conversation_id)
             .where(Message.direction == "outbound", Conversation.channel == "whatsapp",
                    Conversation.sender == event.phone_number_id))
    found = run.session.execute(scope.where(MessagePart.channel_message_id == event.wamid)).first()
    if found is None and event.callback_data:
        # a send whose answer we never got (timeout): Meta echoes our part id, the wamid is learnt here
        found = run.session.execute(scope.where(MessagePart.id == event.callback_data,
                                                MessagePart.channel_message_id.is_(None))).first()
        if found is not None:
            found[0].channel_message_id = event.wamid
    if found is None:
        log.info("whatsapp webhook: status %s for unknown message %s", event.status, event.wamid)
        return
    part, msg, conv = found
    if advances(part.status, event.status):
        part.status = event.status
    if event.status == "sent" and part.sent_at is None:
        part.sent_at = event.timestamp
    if event.error_code is not None and part.status == "failed":
        part.error_code, part.error_title = event.error_code, event.error_title
    if event.billable is not None:
        part.billable = event.billable
    if event.pricing_category:
        part.pricing_category = event.pricing_category
    if event.billable is not None or event.pricing_category:  # Meta's word replaces the estimate made at the send
        part.channel_cost = pricing.confirmed(run.prices, part.billable, part.pricing_category, conv.customer_id)
    elif part.status == "failed" and part.billable is None:  # not delivered: not charged
        part.channel_cost = 0.0
    conv.cost += settle(msg)  # Meta's pricing feeds the message's and the conversation's cost
    if event.error_code == OUTSIDE_WINDOW:
        conv.window_closed_at = max(conv.window_closed_at or event.timestamp, event.timestamp)


def _apply_template_status(session: Session, event: TemplateStatusUpdate) -> None:
    # only templates of the business account the event came from (accept_post checked the signing app has it):
    # template ids and names of other accounts are out of reach
    account = select(WhatsAppTemplate).join(WhatsAppSender, WhatsAppSender.id == WhatsAppTemplate.sender_id).where(
        WhatsAppSender.waba_id == event.waba_id)
    templates: list[WhatsAppTemplate] = []
    if event.waba_id and event.meta_template_id:
        templates = list(session.scalars(account.where(WhatsAppTemplate.meta_template_id == event.meta_template_id)))
    if event.waba_id and not templates and event.name and event.language:
        templates = list(session.scalars(account.where(
            WhatsAppTemplate.name == event.name, WhatsAppTemplate.language == event.language)))
    if not templates:
        log.info("whatsapp webhook: template %s (%s) status %s for no known template of account %r",
                 event.name, event.meta_template_id, event.event, event.waba_id)
    for template in templates:
        if template.status_at is not None and event.timestamp < template.status_at:
            log.info("whatsapp webhook: stale %s event for template %s ignored", event.event, template.id)
            continue
        template.status, template.status_at = event.event, event.timestamp
        if event.meta_template_id and not template.meta_template_id:
            template.meta_template_id = event.meta_template_id

