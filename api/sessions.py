"""Dashboard sessions, kept server-side so that signing out, a password change or changing a secret ends them.

The browser holds a random value (32 bytes); the ``admin_sessions`` table keeps only its HMAC under a key
derived from the session secret and the admin token, with the user it signed in, where from and a public
``ref`` (what a user sees and revokes in their list; it opens nothing). A copy of the table opens no session,
and changing either secret leaves every stored session unreachable (its row goes when it expires). Signing out
deletes the row, so a copied cookie stops working at once.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from core import signing
from core.db import Base, UTCDateTime, new_id, utcnow
from core.errors import NotFound
from core.settings import Settings
from runtime.accounts.models import User

SESSION_TTL_S = 12 * 3600
MAX_COOKIE_LENGTH = 100  # ours are 43 characters; anything much longer is not worth hashing


class AdminSession(Base):
    """A signed-in dashboard browser of user ``user_id``; ``id`` is the keyed hash of its cookie value."""

    __tablename__ = "admin_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    ref: Mapped[str] = mapped_column(String(32), unique=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    client: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(200), default="")


def _session_id(settings: Settings, value: str) -> str:
    key = hashlib.sha256(f"dashboard-session\0{settings.session_secret}\0{settings.admin_token}".encode()).digest()
    return signing.sign(key, value).hex()


def open_session(db: Session, settings: Settings, user_id: str, client: str = "", user_agent: str = "",
                 now: datetime | None = None) -> str:
    """Store a new session of ``user_id`` valid for ``SESSION_TTL_S`` seconds; returns the cookie value (its only
    copy). Expired sessions are deleted on the way."""
    now = now or utcnow()
    value = secrets.token_urlsafe(32)
    db.execute(delete(AdminSession).where(AdminSession.expires_at <= now))
    db.add(AdminSession(id=_session_id(settings, value), user_id=user_id, created_at=now,
                        expires_at=now + timedelta(seconds=SESSION_TTL_S), client=client[:64],
                        user_agent=user_agent[:200]))
    db.commit()
    return value


def find_session(db: Session, settings: Settings, value: str | None, now: datetime | None = None) -> AdminSession | None:
    """The unexpired session of this cookie value, opened with the same secrets; else None."""
    if not value or len(value) > MAX_COOKIE_LENGTH:
        return None
    row = db.get(AdminSession, _session_id(settings, value))
    return row if row is not None and row.expires_at > (now or utcnow()) else None


def session_is_open(db: Session, settings: Settings, value: str | None, now: datetime | None = None) -> bool:
    """True for the cookie value of an unexpired session opened with the same secrets."""
    return find_session(db, settings, value, now) is not None


def close_session(db: Session, settings: Settings, value: str | None) -> None:
    """End the session of this cookie value (nothing happens for an unknown one)."""
    if value and len(value) <= MAX_COOKIE_LENGTH:
        db.execute(delete(AdminSession).where(AdminSession.id == _session_id(settings, value)))
        db.commit()


def list_sessions(db: Session, user_id: str, now: datetime | None = None) -> list[AdminSession]:
    """The user's open sessions, newest first."""
    return list(db.scalars(select(AdminSession).where(AdminSession.user_id == user_id,
                                                      AdminSession.expires_at > (now or utcnow()))
                           .order_by(AdminSession.created_at.desc(), AdminSession.ref)))


def revoke_session(db: Session, user_id: str, ref: str) -> None:
    """End the user's session ``ref`` (``NotFound`` if they have none so named)."""
    if db.execute(delete(AdminSession).where(AdminSession.user_id == user_id, AdminSession.ref == ref)).rowcount == 0:
        raise NotFound(f"session {ref!r} not found")
    db.commit()


def end_user_sessions(db: Session, user_id: str, keep: str | None = None) -> int:
    """End every session of the user but ``keep`` (a ref); not committed. Returns how many ended."""
    query = delete(AdminSession).where(AdminSession.user_id == user_id)
    if keep:
        query = query.where(AdminSession.ref != keep)
    return db.execute(query).rowcount
