"""Fixed-window rate limits counted in the database, atomic across threads and processes.

Each (key, window) is one row of ``rate_limits``; a hit is a single ``INSERT ... ON CONFLICT DO UPDATE
SET hits = hits + 1 RETURNING hits``, which SQLite (3.35+, one writer at a time) and PostgreSQL (a row
lock on the conflicting row) both run atomically, so N concurrent hits on a limit of L let exactly L
through, whichever process sends them. Refused hits count too: a client that keeps hammering stays
refused until its window ends, and no later.

A fixed window lets a client send up to twice its limit across a window boundary; in exchange a hit
costs one statement and one row, and a window's rows are deleted once it has ended (swept at most
once a minute per process).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import BigInteger, Integer, String, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base

SWEEP_EVERY_S = 60.0


class RateCounter(Base):
    """Hits on one key in one fixed window (``window_start`` and ``expires_at`` in Unix seconds)."""

    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hits: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


@dataclass(frozen=True)
class Limit:
    """At most ``limit`` hits on ``key`` per ``window_s`` seconds."""

    key: str
    limit: int
    window_s: int


class RateLimiter:
    """Counts hits on keys in the database; ``clock`` gives Unix seconds (replaceable in tests)."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine, self.clock = engine, clock
        dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(engine.dialect.name)
        if dialect is None:
            raise ValueError(f"rate limits need SQLite or PostgreSQL, not {engine.dialect.name}")
        self._insert = dialect.insert
        self._next_sweep = 0.0

    def hit(self, limit: Limit) -> int:
        """Count one hit; 0 if it is within the limit, else the seconds until its window ends (>= 1)."""
        now = self.clock()
        start = int(now // limit.window_s) * limit.window_s
        end = start + limit.window_s
        upsert = self._insert(RateCounter).values(key=limit.key, window_start=start, hits=1, expires_at=end)
        upsert = upsert.on_conflict_do_update(
            index_elements=[RateCounter.key, RateCounter.window_start], set_={"hits": RateCounter.hits + 1},
        ).returning(RateCounter.hits)
        with self.engine.begin() as conn:
            hits = conn.execute(upsert).scalar_one()
        self._sweep(now)
        return 0 if hits <= limit.limit else max(1, math.ceil(end - now))

    def check(self, *limits: Limit) -> int:
        """Hit each limit in order and stop at the first that refuses; returns its wait (0: all allowed).

        Put the narrowest key first (a visitor before its address, an address before the assistant): a
        client over its own limit then uses up nothing that others share.
        """
        for limit in limits:
            wait = self.hit(limit)
            if wait:
                return wait
        return 0

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY_S
        with self.engine.begin() as conn:
            conn.execute(delete(RateCounter).where(RateCounter.expires_at <= int(now)))
