"""The signing apps' secrets, and the numbers and business accounts each app's senders own, as the webhook's
acknowledgement needs them: read from the senders (``WhatsAppSender``, secrets decrypted) and kept by the
process for ``ttl_s`` seconds, so a post costs no query for them.

A post that the kept keys refuse (signature or ownership) is checked again against freshly read ones before it is
refused, so a sender added in another process is known at its first post. A sender deleted or a secret changed
elsewhere is forgotten here within ``ttl_s`` (in this process at once: the admin routes call ``forget``).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from runtime.whatsapp.models import WhatsAppSender

TTL_S = 30.0


@dataclass(frozen=True)
class AppKey:
    """One Meta app: the secret it signs posts with, the business numbers and accounts its senders hold."""

    secret: str
    phone_number_ids: frozenset[str]
    waba_ids: frozenset[str]


class AppKeys:
    """The process's copy of every app's key (thread-safe; see the module's docstring)."""

    def __init__(self, ttl_s: float = TTL_S) -> None:
        self.ttl_s = ttl_s
        self._keys: tuple[AppKey, ...] | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()

    def kept(self, session_factory: Callable[[], Session]) -> tuple[tuple[AppKey, ...], bool]:
        """The keys (read with a session from ``session_factory`` if none are kept or they are older than
        ``ttl_s``), and whether they were read just now."""
        with self._lock:
            keys, read_at = self._keys, self._read_at
        if keys is not None and time.monotonic() - read_at < self.ttl_s:
            return keys, False
        return self.fresh(session_factory), True

    def fresh(self, session_factory: Callable[[], Session]) -> tuple[AppKey, ...]:
        """Read the keys from the senders now, and keep them."""
        with session_factory() as session:
            keys = read_keys(session)
        with self._lock:
            self._keys, self._read_at = keys, time.monotonic()
        return keys

    def forget(self) -> None:
        """Drop the kept keys: the next post reads them again (after a sender is added, changed or deleted)."""
        with self._lock:
            self._keys = None


def read_keys(session: Session) -> tuple[AppKey, ...]:
    """Every app's key, from its senders (sorted by secret: the order never tells which one matched)."""
    numbers: dict[str, set[str]] = {}
    accounts: dict[str, set[str]] = {}
    for secret, number, waba in session.execute(
            select(WhatsAppSender.app_secret, WhatsAppSender.phone_number_id, WhatsAppSender.waba_id)):
        numbers.setdefault(secret, set()).add(number)
        if waba:
            accounts.setdefault(secret, set()).add(waba)
    return tuple(AppKey(secret, frozenset(numbers[secret]), frozenset(accounts.get(secret, ())))
                 for secret in sorted(numbers))
