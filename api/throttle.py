"""Backoff on failed admin authentication (a wrong bearer token, a wrong token on the login form), per client.

A client may fail ``FREE_FAILURES - 1`` times in a row; its next failure locks it out for ``BASE_LOCKOUT_S``,
and each failure after that for twice as long as the one before (1 s, 2 s, 4 s ... at most ``MAX_LOCKOUT_S``).
While locked out its credentials are not even compared: the answer is 429 with ``Retry-After``. The count is
forgotten ``FORGET_AFTER_S`` after the last failure (longer than the longest lockout, so a patient guesser
never gets its free tries back) or when the client signs in.

Failures are counted in the database, one row per client key and one atomic upsert
(``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``) per failure, so request threads and server processes
sharing a PostgreSQL database count together and never lose a failure. Only failures write (and sweep the
rows of clients forgotten); a request with credentials costs one primary-key read. Requests already in flight when a lockout starts are
still answered, so a client can slip in at most as many guesses as it has requests in flight.
"""
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Integer, String, case, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base, UTCDateTime

FREE_FAILURES = 5
BASE_LOCKOUT_S = 1.0
MAX_LOCKOUT_S = 15 * 60.0
FORGET_AFTER_S = 60 * 60.0


class AuthFailure(Base):
    """Consecutive authentication failures of one client (``ip:<address>``)."""

    __tablename__ = "auth_failures"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


@dataclass(frozen=True)
class Standing:
    """A client's recent failures and how long it must wait before its next try is checked (0: now)."""

    failures: int = 0
    retry_after: int = 0


def client_key(host: str | None) -> str:
    """The throttle key of a client address: IPv6 clients by /64, the block one subscriber usually holds."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return f"ip:{(host or 'unknown')[:100]}"
    if address.version == 6:
        if address.ipv4_mapped:
            return f"ip:{address.ipv4_mapped}"
        return f"ip:{ipaddress.ip_network(f'{address}/64', strict=False)}"
    return f"ip:{address}"


def lockout_s(failures: int) -> float:
    """How long a client is locked out after its ``failures``-th failure in a row."""
    if failures < FREE_FAILURES:
        return 0.0
    return min(BASE_LOCKOUT_S * 2 ** min(failures - FREE_FAILURES, 32), MAX_LOCKOUT_S)


def _standing(failures: int, last_failure_at: datetime, now: datetime) -> Standing:
    if last_failure_at <= now - timedelta(seconds=FORGET_AFTER_S):
        return Standing()
    wait = (last_failure_at - now).total_seconds() + lockout_s(failures)
    return Standing(failures, math.ceil(wait) if wait > 0 else 0)


def standing(db: Session, key: str, now: datetime) -> Standing:
    """The client's standing before it tries again."""
    row = db.get(AuthFailure, key)
    return Standing() if row is None else _standing(row.failures, row.last_failure_at, now)


def record_failure(db: Session, key: str, now: datetime) -> Standing:
    """Count one failure (atomically) and commit; returns the standing it leaves the client in."""
    insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[db.get_bind().dialect.name]
    forgotten = AuthFailure.last_failure_at <= now - timedelta(seconds=FORGET_AFTER_S)
    upsert = insert(AuthFailure).values(key=key, failures=1, last_failure_at=now).on_conflict_do_update(
        index_elements=[AuthFailure.key],
        set_={"failures": case((forgotten, 1), else_=AuthFailure.failures + 1), "last_failure_at": now},
    ).returning(AuthFailure.failures)
    failures = db.execute(upsert).scalar_one()
    db.commit()
    db.execute(delete(AuthFailure).where(forgotten))  # clients long gone, in a transaction of its own
    db.commit()
    return _standing(failures, now, now)


def forget(db: Session, key: str) -> None:
    """Clear the client's failures (it signed in)."""
    db.execute(delete(AuthFailure).where(AuthFailure.key == key))
    db.commit()
