"""Personal API tokens: ``Authorization: Bearer <token>`` acts as the token's user, with their role.

A token is ``atk_`` and 32 random bytes (URL-safe base64), shown once when made; only its SHA-256 is stored (a
random 256-bit secret needs no slow hash: nothing can be guessed from the digest). ``last_used_at`` is written at
most once a minute per token, so a script's burst of calls costs reads only.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import utcnow
from core.errors import NotFound
from runtime.accounts.models import ApiToken, User

PREFIX = "atk_"
MAX_LENGTH = 100  # ours are 47 characters; anything much longer is not worth hashing
LAST_USED_EVERY = timedelta(minutes=1)


def token_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def issue_token(db: Session, user: User, name: str, expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """Make a token for ``user`` (committed); returns its row and its value, the only copy there will be."""
    value = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name.strip() or "token", token_hash=token_hash(value),
                   prefix=value[:len(PREFIX) + 6], expires_at=expires_at)
    db.add(row)
    db.commit()
    return row, value


def user_of_token(db: Session, value: str, now: datetime | None = None) -> User | None:
    """The active user of a valid token (not revoked, not expired), noting the use; else None."""
    if not value.startswith(PREFIX) or len(value) > MAX_LENGTH:
        return None
    now = now or utcnow()
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash(value)))
    if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    user = db.get(User, row.user_id)
    if user is None or not user.active:
        return None
    if row.last_used_at is None or row.last_used_at <= now - LAST_USED_EVERY:
        row.last_used_at = now
        db.commit()
    return user


def list_tokens(db: Session, user_id: str) -> list[ApiToken]:
    """A user's tokens, newest first (revoked ones too, marked)."""
    return list(db.scalars(select(ApiToken).where(ApiToken.user_id == user_id)
                           .order_by(ApiToken.created_at.desc(), ApiToken.id)))


def revoke_token(db: Session, user_id: str, token_id: str) -> ApiToken:
    """Revoke one of ``user_id``'s tokens (committed); revoking twice keeps the first time."""
    row = db.get(ApiToken, token_id)
    if row is None or row.user_id != user_id:
        raise NotFound(f"token {token_id!r} not found")
    row.revoked_at = row.revoked_at or utcnow()
    db.commit()
    return row
