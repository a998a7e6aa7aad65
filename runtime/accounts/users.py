"""Users: created by an admin (API, dashboard or ``atende users add``), with a role and the assistants they see;
their password; signing in by e-mail and password; the bootstrap admin.

The bootstrap admin is the user the deployment's admin token (``ATENDE_ADMIN_TOKEN`` or the generated one,
``atende admin-token``) stands for: made at its first use, with id ``bootstrap`` (so processes starting together
make it once) and e-mail ``admin@localhost`` until an admin changes it. It is always an active admin of every
assistant: the token is the way back in.
"""
from __future__ import annotations

import re
import secrets
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import Conflict, InvalidRequest, NotFound
from kb import registry
from runtime.accounts import passwords
from runtime.accounts.models import User, UserAssistant
from runtime.accounts.roles import ADMIN, ROLES, Principal

BOOTSTRAP_ID = "bootstrap"
BOOTSTRAP_EMAIL = "admin@localhost"
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}$")
CHANGEABLE = ("email", "name", "role", "active", "all_assistants", "assistants", "password")


def normalize_email(email: str) -> str:
    """The e-mail as stored: trimmed, lower-case; refused unless it looks like one."""
    value = (email or "").strip().lower()
    if not _EMAIL.match(value):
        raise InvalidRequest(f"{email[:100]!r} is not an e-mail address")
    return value


def generate_password() -> str:
    """A random password (20 URL-safe characters, ~120 bits) for a user an admin creates without one."""
    return secrets.token_urlsafe(15)


def create_user(db: Session, *, email: str, role: str, password: str | None = None, name: str = "",
                assistants: Sequence[str] = (), all_assistants: bool = False) -> User:
    """Add a user (``assistants``: ids or names); not committed. ``Conflict`` if the e-mail is taken."""
    user = User(email=normalize_email(email), name=name.strip(), role=_role(role), all_assistants=all_assistants,
                password_hash=passwords.hash_password(password) if password is not None else None)
    if find_by_email(db, user.email) is not None:
        raise Conflict(f"a user with e-mail {user.email!r} exists")
    user.grants = [UserAssistant(assistant_id=a) for a in _assistant_ids(db, assistants)]
    db.add(user)
    db.flush()
    return user


def get_user(db: Session, user_id: str) -> User:
    user = db.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id!r} not found")
    return user


def find_by_email(db: Session, email: str) -> User | None:
    return db.scalar(select(User).where(User.email == email.strip().lower()))


def list_users(db: Session) -> list[User]:
    return list(db.scalars(select(User).order_by(User.created_at, User.email)))


def update_user(db: Session, user: User, changes: dict) -> None:
    """Apply ``changes`` (keys of ``CHANGEABLE``; ``assistants`` replaces the list); not committed. The bootstrap
    admin keeps its role and stays active."""
    unknown = set(changes) - set(CHANGEABLE)
    if unknown:
        raise InvalidRequest(f"unknown fields: {sorted(unknown)}")
    if user.id == BOOTSTRAP_ID and (changes.get("role", ADMIN) != ADMIN or changes.get("active") is False):
        raise InvalidRequest("the bootstrap admin (the admin token's user) stays an active admin")
    if "email" in changes:
        email = normalize_email(changes["email"])
        other = find_by_email(db, email)
        if other is not None and other.id != user.id:
            raise Conflict(f"a user with e-mail {email!r} exists")
        user.email = email
    if "role" in changes:
        user.role = _role(changes["role"])
    if "assistants" in changes:
        user.grants = [UserAssistant(assistant_id=a) for a in _assistant_ids(db, changes["assistants"])]
    for name in ("name", "active", "all_assistants"):
        if name in changes:
            setattr(user, name, changes[name].strip() if name == "name" else bool(changes[name]))
    if "password" in changes:
        user.password_hash = passwords.hash_password(changes["password"])
    db.flush()


def check_password(db: Session, email: str, password: str) -> User | None:
    """The active user with this e-mail and password, else None (in about the same time either way). A hash made
    with weaker parameters than today's is replaced (committed by the caller)."""
    user = find_by_email(db, email) if email else None
    stored = user.password_hash if user is not None and user.active else None
    if not passwords.verify_password(stored, password) or user is None or stored is None:
        return None
    if passwords.needs_rehash(stored):
        user.password_hash = passwords.hash_password(password)
    return user


def bootstrap_admin(db: Session) -> User:
    """The admin token's user, made (and committed) at its first use."""
    user = db.get(User, BOOTSTRAP_ID)
    if user is not None:
        return user
    db.add(User(id=BOOTSTRAP_ID, email=BOOTSTRAP_EMAIL, name="Admin (admin token)", role=ADMIN, all_assistants=True))
    try:
        db.commit()
    except IntegrityError:  # another process made it first
        db.rollback()
    return get_user(db, BOOTSTRAP_ID)


def principal_of(user: User, via: str) -> Principal:
    """Who ``user`` is for a request that came ``via`` a session, a token or the admin token."""
    every = user.role == ADMIN or user.all_assistants
    return Principal(user_id=user.id, email=user.email, role=user.role,
                     assistant_ids=None if every else frozenset(user.assistant_ids), via=via)


def _role(role: str) -> str:
    if role not in ROLES:
        raise InvalidRequest(f"unknown role {role!r}; one of {ROLES}")
    return role


def _assistant_ids(db: Session, refs: Sequence[str]) -> list[str]:
    return sorted({registry.get_assistant(db, ref).id for ref in refs})
