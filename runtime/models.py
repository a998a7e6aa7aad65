"""Conversation log tables: conversations, messages (and the parts a channel sent of them), turns, tool calls,
cited sources, collected data, appointments and outbound events (handoff notifications)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.crypto import EncryptedText
from core.db import Base, UTCDateTime, new_id, utcnow
from kb.types import Source

CHANNELS = ("whatsapp", "widget", "test", "api")


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("channel", "assistant_id", "sender", "customer_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    assistant_id: Mapped[str] = mapped_column(ForeignKey("assistants.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(20))
    sender: Mapped[str] = mapped_column(String(100))  # business number, widget id, "api", "console"
    customer_id: Mapped[str] = mapped_column(String(200))  # the channel's stable id for the person
    # who answers: "ai" | "waiting_for_human" (handed off, no person has replied) | "with_human" (an operator has);
    # the AI answers only in "ai" (runtime.handoff); every change is a HandoffChange
    handoff_state: Mapped[str] = mapped_column(String(20), default="ai", server_default="ai")
    variables: Mapped[dict] = mapped_column(JSON, default=dict)
    handoff: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # reason, callback, at
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_inbound_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # set when Meta says the 24-hour window is closed (error 131047); a later inbound message re-opens it
    window_closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    # a running WhatsApp turn's lease (runtime.whatsapp.turns): until when its process (``turn_lease_owner``)
    # answers for it; past it, the process died and the recovery sweep (runtime.recovery) queues the turn again
    turn_lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    turn_lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)

    @hybrid_property
    def ai_enabled(self) -> bool:
        """Whether the AI answers the customer: the handoff state is ``ai`` (a column expression in queries)."""
        return self.handoff_state == "ai"


class HandoffChange(Base):
    """One change of a conversation's handoff state: from, to, who (``customer``, ``assistant``, ``operator``,
    ``system``), why and when."""

    __tablename__ = "handoff_changes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def as_dict(self) -> dict:
        """The change as the API and the exports give it."""
        return {"from": self.from_state, "to": self.to_state, "actor": self.actor, "reason": self.reason,
                "at": self.at.isoformat()}


class Turn(Base):
    """One run of the engine: covers one or more inbound messages and produces at most one reply."""

    __tablename__ = "turns"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20))  # answered | smalltalk | fallback | handoff | paused | error
    retrieval_query: Mapped[str | None] = mapped_column(Text, nullable=True)
    rounds: Mapped[int] = mapped_column(Integer, default=0)
    timings: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_conversation_created", "conversation_id", "created_at"),
        UniqueConstraint("conversation_id", "channel_message_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    direction: Mapped[str] = mapped_column(String(10))  # inbound | outbound
    text: Mapped[str] = mapped_column(Text)
    # inbound: received | answered | skipped | logged ; outbound: answered (not for a channel) | pending |
    # retrying (a send failed and will be tried again) | sent | delivered | read | played | failed | not_sent |
    # unknown (the send timed out; statuses settle it)
    status: Mapped[str] = mapped_column(String(20))
    channel_message_id: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(30), default="text")  # text, image, location, template, reaction...
    payload: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the channel's raw message, media ids...
    error_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_title: Mapped[str | None] = mapped_column(Text, nullable=True)
    billable: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    pricing_category: Mapped[str | None] = mapped_column(String(40), nullable=True)
    channel_cost: Mapped[float] = mapped_column(Float, default=0.0)
    turn_id: Mapped[str | None] = mapped_column(ForeignKey("turns.id", ondelete="SET NULL"), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)

    sources: Mapped[list[MessageSource]] = relationship(cascade="all, delete-orphan", order_by="MessageSource.rank")
    tool_calls: Mapped[list[ToolCallRecord]] = relationship(cascade="all, delete-orphan",
                                                            order_by="ToolCallRecord.position")
    parts: Mapped[list[MessagePart]] = relationship(cascade="all, delete-orphan", order_by="MessagePart.position")


class MessagePart(Base):
    """One message a channel actually sent of an outbound message: WhatsApp takes at most 4096 characters, so a
    long reply goes out in several. The message keeps what was written (the model's text, with its sources);
    each part keeps the text sent, the channel's id for it and its own delivery status, which the message's
    status, ``channel_message_id`` (the first part's), ``sent_at`` and channel cost sum up
    (``runtime.whatsapp.delivery.settle``)."""

    __tablename__ = "message_parts"
    __table_args__ = (UniqueConstraint("message_id", "position"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)  # the send's callback data
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)  # as sent: rendered for the channel
    # WhatsApp reply buttons or list (Meta's ``interactive`` object, runtime.whatsapp.interactive): sent instead of
    # a text message, ``text`` being its body; None for a text part
    interactive: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # a file from the knowledge base sent as a document or image (runtime.tools.builtin.send_file): {"kind",
    # "sha256", "mime_type", "filename", "caption"}; uploaded to Meta at each send (``text`` is its caption or name)
    media: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # pending | retrying | unknown | sent | delivered | read | played | failed (runtime.whatsapp.outbound: the outbox);
    # scheduled (waits for next_attempt_at to become pending) | cancelled (a scheduled one that was not sent)
    status: Mapped[str] = mapped_column(String(20))
    channel_message_id: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    # the last failure (retrying: the error to be retried; failed: the reason)
    error_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_title: Mapped[str | None] = mapped_column(Text, nullable=True)
    billable: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    pricing_category: Mapped[str | None] = mapped_column(String(40), nullable=True)
    channel_cost: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # sends tried (each a GraphClient.send, itself a few quick HTTP attempts)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # when the part may be sent (next): set while it waits for a send (pending) or a retry (retrying), or for
    # Meta's status after its sender died (unknown: sent again then), None while a send is under way or once over
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    # while a send is under way: until when its sender holds the part (the send lease); a part still pending or
    # retrying past it was left by a dead process (runtime.whatsapp.outbound.settle_dead_claims)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def as_dict(self) -> dict:
        keys = ("position", "text", "interactive", "status", "channel_message_id", "error_code", "error_title",
                "sent_at", "attempts", "next_attempt_at")
        return {k: getattr(self, k) for k in keys}


class ToolCallRecord(Base):
    __tablename__ = "tool_calls"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    round: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    arguments: Mapped[dict] = mapped_column(JSON, default=dict)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)

    def as_dict(self) -> dict:
        keys = ("name", "arguments", "result", "error", "round", "duration_ms")
        return {k: getattr(self, k) for k in keys}


class MessageSource(Base):
    """A knowledge-base passage a reply was grounded on, with the exact text the model saw: the logged fields
    (``kb.types.Source.LOGGED``) of a turn's :class:`kb.types.Source`."""

    __tablename__ = "message_sources"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    rank: Mapped[int] = mapped_column(Integer)
    chunk_id: Mapped[str] = mapped_column(String(64))
    document_id: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(500))
    page: Mapped[int | None] = mapped_column(Integer, nullable=True)
    section: Mapped[str] = mapped_column(Text, default="")
    score: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)

    def as_source(self) -> Source:
        """The source as the turn logged it (the fields a search adds are not kept: None)."""
        return Source(**{k: getattr(self, k) for k in Source.LOGGED})


class CollectedData(Base):
    __tablename__ = "collected_data"
    __table_args__ = (UniqueConstraint("conversation_id", "field"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    field: Mapped[str] = mapped_column(String(50))
    value: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(20), default="ai")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Appointment(Base):
    __tablename__ = "appointments"
    __table_args__ = (
        # no double booking: one live appointment per assistant and start time
        Index(
            "uq_appointments_slot", "assistant_id", "starts_at", unique=True,
            sqlite_where=text("status = 'booked'"), postgresql_where=text("status = 'booked'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    assistant_id: Mapped[str] = mapped_column(ForeignKey("assistants.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[str | None] = mapped_column(ForeignKey("conversations.id", ondelete="SET NULL"), nullable=True)
    kind: Mapped[str] = mapped_column(String(20), default="appointment")  # appointment | callback
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    name: Mapped[str] = mapped_column(String(200), default="")
    notes: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), default="booked")  # booked | cancelled
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OutboundEvent(Base):
    """An event POSTed to a URL: a subscription's (``subscription_id``, ``runtime.events``) or the assistant's
    ``handoff_url`` (no subscription), with its delivery state; each attempt is an :class:`EventAttempt`.
    A conversation's events reach one URL in the order they were made (``created_at``, then ``id``)."""

    __tablename__ = "outbound_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    conversation_id: Mapped[str | None] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(50))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # the subscription it goes to (an EventSubscription id; None: the assistant's handoff_url); no foreign key, so
    # the log of a deleted subscription's deliveries stays
    subscription_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    assistant_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    # when a pending event is tried next; while an attempt runs, until when it holds the event
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class EventSubscription(Base):
    """Where an assistant's events go (``runtime.events``): a URL, the event types it wants, and the secret its
    deliveries are signed with (encrypted at rest, shown once)."""

    __tablename__ = "event_subscriptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    assistant_id: Mapped[str] = mapped_column(ForeignKey("assistants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list] = mapped_column(JSON, default=list)  # event types (runtime.events.EVENT_TYPES)
    secret: Mapped[str] = mapped_column(EncryptedText)
    description: Mapped[str] = mapped_column(String(200), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EventAttempt(Base):
    """One delivery attempt of an outbound event: when, the receiver's HTTP status or the error, how long."""

    __tablename__ = "event_attempts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    event_id: Mapped[str] = mapped_column(ForeignKey("outbound_events.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)


class FollowUp(Base):
    """An operator task left by a handoff outside business hours (``runtime.followups``): call the customer back
    at ``due_at`` (the next opening) with the ``details`` collected (name, best_time, phone, notes). ``asking``
    is the detail being asked of the customer (None once collection is over); ``reminder_message_id`` the
    WhatsApp template scheduled for the opening, ``reminder_note`` what became of the reminder."""

    __tablename__ = "followups"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)  # None: no opening found
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    asking: Mapped[str | None] = mapped_column(String(20), nullable=True)
    status: Mapped[str] = mapped_column(String(10), default="open", index=True)  # open | done | cancelled | failed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))  # who handed off or scheduled: customer, assistant, operator...
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    reminder_message_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"), nullable=True)
    reminder_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # callback: a call back after a handoff out of hours (above); message: send ``text`` at ``due_at`` (a template
    # when the window is closed then); call: an operator task to call the customer at ``due_at``
    kind: Mapped[str] = mapped_column(String(20), default="callback", server_default="callback")
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    # a message follow-up's template for a closed window: {"name", "language", "parameters"}
    template: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # what a message follow-up sent (a Message id; no foreign key, added in place) and what became of it
    message_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)


class MessageFeedback(Base):
    """A rating of one AI reply: a reviewer's, the customer's WhatsApp reaction or the widget's thumbs
    (the vocabulary and the rules are in ``runtime.feedback``)."""

    __tablename__ = "message_feedback"
    __table_args__ = (
        # one customer reaction and one widget rating per reply (a new one replaces it); reviewers each add theirs
        Index(
            "uq_message_feedback_customer", "message_id", "source", unique=True,
            sqlite_where=text("source != 'reviewer'"), postgresql_where=text("source != 'reviewer'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(20))  # reviewer | customer_reaction | widget
    rating: Mapped[str] = mapped_column(String(10))  # good | bad | neutral
    reason: Mapped[str | None] = mapped_column(String(30), nullable=True)  # bad ratings: runtime.feedback.REASONS
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    emoji: Mapped[str | None] = mapped_column(String(64), nullable=True)  # customer reactions, as sent
    author: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReplyOption(Base):
    """A choice offered to the customer with an outbound message (``runtime.options``): rendered as a WhatsApp reply
    button or list row (``option_id`` is the button's or row's id, unique in the conversation), as a widget button,
    or as a numbered line. A tap (or the number, or the text, typed back) maps back to it; ``chosen_at`` is when."""

    __tablename__ = "reply_options"
    __table_args__ = (UniqueConstraint("conversation_id", "option_id", name="uq_reply_options_conversation_option"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # 1-based: the number a plain-text channel shows
    option_id: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(Text)  # the option in full (a button or row shows it cut to Meta's limits)
    value: Mapped[str | None] = mapped_column(Text, nullable=True)  # what it stands for, e.g. a slot's start time
    description: Mapped[str | None] = mapped_column(Text, nullable=True)  # a second line, where a channel has one
    chosen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Automation(Base):
    """A named trigger of an assistant's WhatsApp number (``runtime.automations``): another system (a CRM) posts a
    customer's number and variables with the automation's token (stored as its SHA-256) and the conversation is
    opened or continued: inside the 24-hour window by ``inside_window`` (message, ai or template), outside it by
    the template."""

    __tablename__ = "automations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    assistant_id: Mapped[str] = mapped_column(ForeignKey("assistants.id", ondelete="CASCADE"), index=True)
    sender_id: Mapped[str] = mapped_column(ForeignKey("whatsapp_senders.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    template_name: Mapped[str | None] = mapped_column(String(512), nullable=True)
    template_language: Mapped[str | None] = mapped_column(String(16), nullable=True)
    template_parameters: Mapped[list] = mapped_column(JSON, default=list)  # with {{variable}} placeholders
    inside_window: Mapped[str] = mapped_column(String(10), default="message")  # message | ai | template
    message: Mapped[str | None] = mapped_column(Text, nullable=True)  # with {{variable}} placeholders
    ai_instruction: Mapped[str | None] = mapped_column(Text, nullable=True)  # what the AI opens with
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AutomationRun(Base):
    """One trigger of an automation: who and with what (number, variables, idempotency key), what was done
    (``action``, the message sent) and how it ended (``status``: sent | failed | queued, ``error``)."""

    __tablename__ = "automation_runs"
    __table_args__ = (UniqueConstraint("automation_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    automation_id: Mapped[str] = mapped_column(ForeignKey("automations.id", ondelete="CASCADE"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))  # of the number and variables: a key reused differently
    customer_id: Mapped[str] = mapped_column(String(200))
    variables: Mapped[dict] = mapped_column(JSON, default=dict)
    triggered_by: Mapped[str] = mapped_column(String(200))
    conversation_id: Mapped[str | None] = mapped_column(ForeignKey("conversations.id", ondelete="SET NULL"), nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(20))  # template | message | ai
    message_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"), nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued | sent | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
