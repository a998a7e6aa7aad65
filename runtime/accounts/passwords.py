"""Password hashing, argon2id through ``argon2-cffi`` (its one home). Its defaults are RFC 9106's low-memory
profile (3 passes over 64 MiB, 4 lanes). A sign-in with an unknown e-mail still verifies against a dummy hash, so
the answer's timing does not tell which e-mails have accounts."""
from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from core.errors import InvalidRequest

MIN_LENGTH = 10
MAX_LENGTH = 1024  # argon2 takes any length; a megabyte "password" is only a way to spend our CPU

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("not a password of anyone")


def check_strength(password: str) -> None:
    """Refuse passwords shorter than ``MIN_LENGTH`` or longer than ``MAX_LENGTH`` characters."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise InvalidRequest(f"a password has {MIN_LENGTH} to {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    """The argon2id hash of an acceptable password (``check_strength``)."""
    check_strength(password)
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (None: no password set; the dummy hash is checked anyway)."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with weaker parameters than today's."""
    return _hasher.check_needs_rehash(stored)
