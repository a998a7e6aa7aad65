"""Read receipts and the typing indicator: what the customer sees while the assistant works on an answer.

Meta's call (Cloud API, "Mark messages as read" and "Typing indicators", 2025): ``POST /{version}/{phone number
id}/messages`` with ``{"messaging_product": "whatsapp", "status": "read", "message_id": <wamid>}`` marks the message
(and every earlier one of the chat) read; ``"typing_indicator": {"type": "text"}`` added to it shows "typing..."
until we reply or for 25 s, whichever comes first. There is no typing indicator without a read receipt.

Decisions:
- ``acknowledge_stored_post`` runs first when a worker takes a stored post (``whatsapp.process``, which the
  customer queue runs before turns and sends: ``atende.jobs`` priorities), and sends on threads of its own. Not in
  the webhook's request: there, a session and a Graph call per post took the API process's CPU from the
  acknowledgements (200 posts/s acknowledged at 40/s); and not behind the queue's turns (p50 1.9 s after the
  webhook with 10 customers at 10 posts/s, 8 consumer threads, a 2 s model, when the queue was first in first
  out). One per customer of the post: its newest message the customer wrote (reactions, system notices, echoes
  and statuses never get one) and not answered yet. Per sender: ``mark_read`` and ``show_typing``
  (typing only with ``mark_read``, as Meta has it), and typing only while the AI answers the conversation (a
  conversation a person has gets the receipt alone).
- ``TypingRenewer`` sends the indicator again every ``Settings.whatsapp_typing_renew_s`` (20 s: before Meta's 25 s
  run out) while a turn runs, and stops before the reply is sent: a renewal under way is waited for (at most
  ``whatsapp_presence_timeout_s``), so no indicator follows the reply.
- Best effort: one attempt of at most ``whatsapp_presence_timeout_s``, never retried; a failure is logged and
  changes nothing else (``GraphClient.mark_read``).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import select

from runtime.models import Conversation, Message
from runtime.services import Services
from runtime.whatsapp.models import WebhookPost, WhatsAppSender
from runtime.whatsapp.outbound import graph_client
from runtime.whatsapp.webhook import NOT_FROM_CUSTOMER, InboundMessage, parse_payload

log = logging.getLogger(__name__)
# receipts go out on a few threads of their own: never on the request's, never behind the queue's turns; a receipt
# takes one round trip to Meta (at most whatsapp_presence_timeout_s), so 8 threads carry hundreds per second
RECEIPT_THREADS = 8
STALE_AFTER_S = 5.0  # a receipt still queued after this long is dropped, not sent late
_pool: ThreadPoolExecutor | None = None
_inflight: dict[tuple[str, str], Future] = {}  # (number, customer) -> the receipt under way in this process
_inflight_guard = threading.Lock()


@dataclass(frozen=True)
class Receipt:
    """One read receipt to send: the customer's message ``wamid`` on the sender's number, with or without typing."""

    phone_number_id: str
    access_token: str
    graph_version: str
    wamid: str
    typing: bool


def receipt_for(services: Services, conversation_id: str, *, typing_only: bool = False) -> Receipt | None:
    """The receipt owed for the conversation's newest message waiting for an answer, or None (nothing waiting, not
    WhatsApp, the sender's options off; with ``typing_only``, None unless it shows typing)."""
    with services.session() as session:
        row = session.execute(
            select(Conversation, WhatsAppSender)
            .join(WhatsAppSender, WhatsAppSender.phone_number_id == Conversation.sender)
            .where(Conversation.id == conversation_id, Conversation.channel == "whatsapp")).first()
        if row is None:
            return None
        conv, sender = row
        if not sender.mark_read:
            return None
        wamid = session.scalar(
            select(Message.channel_message_id)
            .where(Message.conversation_id == conversation_id, Message.direction == "inbound",
                   Message.status == "received", Message.channel_message_id.is_not(None),
                   Message.kind.not_in(NOT_FROM_CUSTOMER))
            .order_by(Message.received_at.desc(), Message.created_at.desc()).limit(1))
        typing = bool(sender.show_typing and conv.handoff_state == "ai")
        if wamid is None or (typing_only and not typing):
            return None
        return Receipt(sender.phone_number_id, sender.access_token, sender.graph_version, wamid, typing)


def send_receipt(services: Services, receipt: Receipt) -> bool:
    """Send one receipt (one attempt, ``whatsapp_presence_timeout_s``); whether Meta took it. Never raises."""
    try:
        return graph_client(services).mark_read(receipt, receipt.wamid, typing=receipt.typing,
                                                timeout_s=services.settings.whatsapp_presence_timeout_s)
    except Exception:  # a receipt must never fail what follows it
        log.exception("WhatsApp read receipt for %s failed", receipt.wamid)
        return False


def acknowledge_stored_post(services: Services, post_id: str) -> int:
    """:func:`acknowledge_post` for a stored post a worker is about to process (none for one already processed:
    a redelivery); how many receipts were queued. Never raises."""
    try:
        with services.session() as session:
            post = session.get(WebhookPost, post_id)
            body = post.body if post is not None and not post.processed else None
    except Exception:
        log.exception("read receipts of webhook post %s not prepared", post_id)
        return 0
    return acknowledge_post(services, body) if isinstance(body, dict) else 0


def acknowledge_post(services: Services, body: dict) -> int:
    """Send, in the background (``_pool``), the read receipts a stored webhook post calls for: per customer of the
    post, its newest message the customer wrote (``text_for_assistant``, not a system notice) and we have not
    answered yet (a redelivery of an answered message gets none: typing would follow the reply); returns how many
    were queued. Never raises."""
    try:
        receipts = _receipts_of_post(services, body)
    except Exception:
        log.exception("read receipts of a webhook post not prepared")
        return 0
    for key, receipt in receipts.items():
        future = _executor().submit(_send_fresh, services, receipt, time.monotonic())
        with _inflight_guard:
            _inflight[key] = future
        future.add_done_callback(lambda f, key=key: _forget(key, f))
    return len(receipts)


def _receipts_of_post(services: Services, body: dict) -> dict[tuple[str, str], Receipt]:
    newest: dict[tuple[str, str], InboundMessage] = {}
    for event in parse_payload(body):
        if isinstance(event, InboundMessage) and event.text_for_assistant is not None and event.opens_window:
            key = (event.phone_number_id, event.customer_id)
            if key not in newest or event.timestamp >= newest[key].timestamp:
                newest[key] = event
    if not newest:
        return {}
    with services.session() as session:
        senders = {s.phone_number_id: s for s in session.scalars(select(WhatsAppSender).where(
            WhatsAppSender.phone_number_id.in_({k[0] for k in newest}), WhatsAppSender.mark_read.is_(True)))}
        answered = set(session.scalars(select(Message.channel_message_id).where(
            Message.direction == "inbound", Message.status != "received",
            Message.channel_message_id.in_([m.wamid for m in newest.values()]))))
        receipts = {}
        for (number, customer), message in newest.items():
            sender = senders.get(number)
            if sender is None or message.wamid in answered:
                continue
            state = session.scalar(select(Conversation.handoff_state).where(
                Conversation.channel == "whatsapp", Conversation.assistant_id == sender.assistant_id,
                Conversation.sender == number, Conversation.customer_id == customer))
            receipts[(number, customer)] = Receipt(number, sender.access_token, sender.graph_version, message.wamid,
                                                   bool(sender.show_typing and (state or "ai") == "ai"))
    return receipts


def _send_fresh(services: Services, receipt: Receipt, queued_at: float) -> bool:
    """Send a queued receipt unless it waited past ``STALE_AFTER_S`` (Meta down, a flood of posts): a late "typing"
    could show after the reply, and a backlog would only grow."""
    if time.monotonic() - queued_at > STALE_AFTER_S:
        log.warning("WhatsApp read receipt for %s dropped: queued for over %.0f s", receipt.wamid, STALE_AFTER_S)
        return False
    return send_receipt(services, receipt)


def wait_for_receipt(phone_number_id: str, customer_id: str, timeout_s: float) -> None:
    """Wait (at most ``timeout_s``) for this process's receipt under way to the customer, if any: a reply must not
    overtake its typing indicator."""
    with _inflight_guard:
        future = _inflight.get((phone_number_id, customer_id))
    if future is not None:
        with contextlib.suppress(Exception):  # late or failed: logged by send_receipt; the reply goes on
            future.result(timeout=timeout_s)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _inflight_guard:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=RECEIPT_THREADS, thread_name_prefix="whatsapp-receipt")
        return _pool


def _forget(key: tuple[str, str], future: Future) -> None:
    with _inflight_guard:
        if _inflight.get(key) is future:
            del _inflight[key]


class TypingRenewer:
    """Keeps the typing indicator of a conversation on while a turn runs (a context manager around the turn)."""

    def __init__(self, services: Services, conversation_id: str) -> None:
        self._services = services
        self._conversation_id = conversation_id
        self._every_s = services.settings.whatsapp_typing_renew_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0

    def __enter__(self) -> TypingRenewer:
        if self._every_s > 0:
            self._thread = threading.Thread(target=self._run, name=f"typing-{self._conversation_id}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        timeout_s = self._services.settings.whatsapp_presence_timeout_s + 1.0
        if self._thread is not None:  # a renewal under way ends before the reply goes out
            self._thread.join(timeout_s)
        with self._services.session() as session:
            conv = session.get(Conversation, self._conversation_id)
            key = (conv.sender, conv.customer_id) if conv is not None else None
        if key is not None:  # and so does the webhook's receipt, if still under way
            wait_for_receipt(*key, timeout_s=timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                receipt = receipt_for(self._services, self._conversation_id, typing_only=True)
            except Exception:
                log.exception("typing indicator of conversation %s not renewed", self._conversation_id)
                return
            if receipt is None or self._stop.is_set():
                return
            send_receipt(self._services, receipt)
            self.renewals += 1
