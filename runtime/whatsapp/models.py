"""Tables of the WhatsApp channel: senders (business numbers), templates, received webhook posts and the media
customers send."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column

from core.crypto import EncryptedText
from core.db import Base, UTCDateTime, new_id, utcnow


class WhatsAppSender(Base):
    """A business phone number of a Meta app, bound to one assistant. Secrets are never returned."""

    __tablename__ = "whatsapp_senders"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    assistant_id: Mapped[str] = mapped_column(ForeignKey("assistants.id", ondelete="CASCADE"), index=True)
    phone_number_id: Mapped[str] = mapped_column(String(64), unique=True)
    display_phone_number: Mapped[str] = mapped_column(String(32), default="")
    waba_id: Mapped[str] = mapped_column(String(64), default="")
    graph_version: Mapped[str] = mapped_column(String(16), default="v21.0")
    # encrypted at rest (core.crypto); read decrypted
    access_token: Mapped[str] = mapped_column(EncryptedText)
    app_secret: Mapped[str] = mapped_column(EncryptedText)
    verify_token: Mapped[str] = mapped_column(EncryptedText)
    # read receipts and the typing indicator (runtime.whatsapp.presence); Meta shows typing only with a read receipt
    mark_read: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    show_typing: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WhatsAppTemplate(Base):
    """An approved-or-not message template; only APPROVED ones are ever sent."""

    __tablename__ = "whatsapp_templates"
    __table_args__ = (UniqueConstraint("sender_id", "name", "language"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    sender_id: Mapped[str] = mapped_column(ForeignKey("whatsapp_senders.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(512))
    language: Mapped[str] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(32))  # MARKETING | UTILITY | AUTHENTICATION
    status: Mapped[str] = mapped_column(String(32), default="PENDING")  # APPROVED | PENDING | REJECTED | PAUSED | DISABLED
    meta_template_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    body: Mapped[str] = mapped_column(Text)  # with {{1}}, {{2}} ... parameters
    buttons: Mapped[list] = mapped_column(JSON, default=list)
    # Meta's time of the status event last applied: an older event arriving late is ignored
    status_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class WebhookPost(Base):
    """A signed webhook body as received, stored before it is acknowledged; once per body (``body_sha256``)."""

    __tablename__ = "whatsapp_webhook_posts"
    __table_args__ = (Index("uq_whatsapp_webhook_posts_body_sha256", "body_sha256", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    body: Mapped[dict] = mapped_column(JSON)
    body_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # of the raw bytes Meta signed
    processed: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # when a retention rule emptied the body (runtime.retention); the hash stays, so a redelivery is still known
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class MessageMedia(Base):
    """The media file of an inbound message (image, audio, voice note, video, document, sticker): Meta's media id,
    what the download found (``status``: pending -> stored | failed | rejected | too_large), the file in the blob
    store by its sha256, and for audio the transcript (``runtime.whatsapp.media``). One per message."""

    __tablename__ = "message_media"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), unique=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # image | audio | voice | video | document | sticker
    media_id: Mapped[str] = mapped_column(String(200))  # Meta's; its download URL expires, so it is asked anew
    mime_type: Mapped[str | None] = mapped_column(String(200), nullable=True)  # as Meta declared it
    file_name: Mapped[str | None] = mapped_column(String(500), nullable=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # bytes stored
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the blob store's key
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # a worker downloading it holds it until then; past it (the worker died) the recovery sweep queues it again
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stored_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # the text read from it: a voice note's transcript, a document's parsed text (capped)
    transcript_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    transcript_language: Mapped[str | None] = mapped_column(String(16), nullable=True)
    transcript_engine: Mapped[str | None] = mapped_column(String(200), nullable=True)
    transcribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    transcript_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    transcript_attempts: Mapped[int] = mapped_column(Integer, default=0)
