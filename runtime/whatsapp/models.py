"""Tables of the WhatsApp channel: senders (business numbers), templates and received webhook posts."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, String, Text, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column

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
    access_token: Mapped[str] = mapped_column(Text)
    app_secret: Mapped[str] = mapped_column(Text)
    verify_token: Mapped[str] = mapped_column(Text)
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
