"""The accounts' tables: users, the assistants each may see, personal API tokens."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, UTCDateTime, new_id, utcnow


class User(Base):
    """A person: ``email`` (stored lower-case, unique) signs in with ``password_hash`` (argon2; null: no password
    yet, e.g. the bootstrap admin, whose credential is the admin token); ``role`` is one of ``roles.ROLES``;
    ``all_assistants`` (or the admin role) lets them see every assistant, else only those of ``grants``."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(20))
    all_assistants: Mapped[bool] = mapped_column(Boolean, default=False)
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    grants: Mapped[list[UserAssistant]] = relationship(cascade="all, delete-orphan", lazy="selectin")

    @property
    def assistant_ids(self) -> list[str]:
        return sorted(g.assistant_id for g in self.grants)


class UserAssistant(Base):
    """User ``user_id`` may see assistant ``assistant_id``."""

    __tablename__ = "user_assistants"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    assistant_id: Mapped[str] = mapped_column(ForeignKey("assistants.id", ondelete="CASCADE"), primary_key=True,
                                              index=True)


class ApiToken(Base):
    """A personal API token: only its SHA-256 is kept (``token_hash``); ``prefix`` (its first characters) tells it
    apart in a list. It stops working when revoked, expired, or its user is deactivated."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
