"""Dashboard sessions, kept server-side so that signing out or changing a secret ends them.

The browser holds a random value (32 bytes); the ``admin_sessions`` table keeps only its HMAC under a key
derived from the session secret and the admin token. A copy of the table opens no session, and changing
either secret leaves every stored session unreachable (its row goes when it expires). Signing out deletes
the row, so a copied cookie stops working at once.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import String, delete
from sqlalchemy.orm import Mapped, Session, mapped_column

from core import signing
from core.db import Base, UTCDateTime, utcnow
from core.settings import Settings

SESSION_TTL_S = 12 * 3600
MAX_COOKIE_LENGTH = 100  # ours are 43 characters; anything much longer is not worth hashing


class AdminSession(Base):
    """A signed-in dashboard browser; ``id`` is the keyed hash of its cookie value."""

    __tablename__ = "admin_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


def _session_id(settings: Settings, value: str) -> str:
    key = hashlib.sha256(f"dashboard-session\0{settings.session_secret}\0{settings.admin_token}".encode()).digest()
    return signing.sign(key, value).hex()


def open_session(db: Session, settings: Settings, now: datetime | None = None) -> str:
    """Store a new session valid for ``SESSION_TTL_S`` seconds; returns the cookie value (its only copy).
    Expired sessions are deleted on the way."""
    now = now or utcnow()
    value = secrets.token_urlsafe(32)
    db.execute(delete(AdminSession).where(AdminSession.expires_at <= now))
    db.add(AdminSession(id=_session_id(settings, value), created_at=now,
                        expires_at=now + timedelta(seconds=SESSION_TTL_S)))
    db.commit()
    return value


def session_is_open(db: Session, settings: Settings, value: str | None, now: datetime | None = None) -> bool:
    """True for the cookie value of an unexpired session opened with the same secrets."""
    if not value or len(value) > MAX_COOKIE_LENGTH:
        return False
    row = db.get(AdminSession, _session_id(settings, value))
    return row is not None and row.expires_at > (now or utcnow())


def close_session(db: Session, settings: Settings, value: str | None) -> None:
    """End the session of this cookie value (nothing happens for an unknown one)."""
    if value and len(value) <= MAX_COOKIE_LENGTH:
        db.execute(delete(AdminSession).where(AdminSession.id == _session_id(settings, value)))
        db.commit()
