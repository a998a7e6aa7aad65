"""Secrets at rest: columns that hold credentials (a WhatsApp number's access token, app secret and verify token)
are stored encrypted, with Fernet (AES-128-CBC + HMAC-SHA256, the ``cryptography`` package), by the
:class:`EncryptedText` column type.

The key comes from ``ATENDE_DATA_KEY``, else it is generated into the data directory's secrets file like the other
generated secrets (``core.secret_store``); any string of at least 16 characters works (the Fernet key is its
SHA-256). Rotation: set the new key as ``ATENDE_DATA_KEY`` and the old one(s) in ``ATENDE_DATA_KEYS_OLD``
(comma-separated), run ``atende secrets rotate`` (every stored secret re-encrypted with the new key), then drop the
old ones. A value stored before encryption existed (plain text, without :data:`PREFIX`) is read as it is and
encrypted by :func:`reencrypt`, which every process runs at start-up.

The keys are the process's (:func:`use_keys`, called where the settings are turned into services): values are
encrypted with the newest primary key and decrypted with any key the process was given, so services built on other
data directories in one process (the tests) each read their own.
"""
from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import MetaData, Text, select, type_coerce, update
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.types import TypeDecorator

PREFIX = "enc:v1:"  # marks an encrypted value; anything else is a value stored before encryption


class SecretDecryptionError(RuntimeError):
    """A stored secret could not be decrypted with any key this process has (a wrong or missing ATENDE_DATA_KEY)."""


class _Keyring:
    def __init__(self) -> None:
        self._keys: list[Fernet] = []
        self._ids: list[str] = []
        self._lock = threading.Lock()

    def use(self, primary: str, old: Iterable[str] = ()) -> None:
        """Encrypt with ``primary`` from now on; decrypt with it, ``old`` and every key given before."""
        with self._lock:
            for raw in [*reversed(list(old)), primary]:  # the primary ends first
                key_id = _fernet_key(raw)
                if key_id in self._ids:
                    index = self._ids.index(key_id)
                    del self._ids[index], self._keys[index]
                self._ids.insert(0, key_id)
                self._keys.insert(0, Fernet(key_id))

    def encrypt(self, value: str) -> str:
        if not self._keys:
            raise SecretDecryptionError("no data key: build the services from settings before storing secrets")
        return PREFIX + self._keys[0].encrypt(value.encode()).decode("ascii")

    def decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # stored before encryption: reencrypt() takes care of it
        try:
            return MultiFernet(list(self._keys)).decrypt(stored[len(PREFIX):].encode("ascii")).decode()
        except (InvalidToken, IndexError, ValueError) as exc:
            raise SecretDecryptionError("a stored secret cannot be decrypted with this process's data keys: check "
                                        "ATENDE_DATA_KEY (and ATENDE_DATA_KEYS_OLD during a rotation)") from exc

    def is_current(self, stored: str) -> bool:
        """Whether ``stored`` is encrypted with the primary key."""
        if not stored.startswith(PREFIX) or not self._keys:
            return False
        try:
            self._keys[0].decrypt(stored[len(PREFIX):].encode("ascii"))
        except (InvalidToken, ValueError):
            return False
        return True


_KEYRING = _Keyring()


def _fernet_key(secret: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()).decode("ascii")


def use_keys(primary: str, old: Iterable[str] = ()) -> None:
    """Make ``primary`` the key new secrets are encrypted with; ``old`` keys (and earlier ones) still decrypt."""
    _KEYRING.use(primary, [k for k in old if k])


def encrypt(value: str) -> str:
    """``value`` encrypted with the primary key, as stored."""
    return _KEYRING.encrypt(value)


def decrypt(stored: str) -> str:
    """The value of a stored secret (one stored before encryption is returned as it is)."""
    return _KEYRING.decrypt(stored)


def is_current(stored: str) -> bool:
    """Whether a stored secret is encrypted with the primary key (else :func:`reencrypt` rewrites it)."""
    return _KEYRING.is_current(stored)


class EncryptedText(TypeDecorator[str]):
    """A text column stored encrypted (:func:`encrypt`) and read decrypted. Compare values in Python, not in SQL:
    each encryption of the same value differs."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else encrypt(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else decrypt(value)


def reencrypt(engine: Engine, metadata: MetaData) -> int:
    """Rewrite every :class:`EncryptedText` value of ``metadata``'s tables that is not encrypted with the primary
    key (stored before encryption, or with a key being rotated out); how many were rewritten. Safe to run by
    several processes at once (each writes a valid encryption)."""
    rewritten = 0
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            columns = [c for c in table.columns if isinstance(c.type, EncryptedText)]
            if not columns:
                continue
            keys = list(table.primary_key.columns)
            raw = [type_coerce(c, Text).label(c.name) for c in columns]
            for row in conn.execute(select(*keys, *raw)):
                values = {c.name: getattr(row, c.name) for c in columns}
                stale = {name: v for name, v in values.items() if v is not None and not is_current(v)}
                if stale:
                    where = [k == getattr(row, k.name) for k in keys]
                    conn.execute(update(table).where(*where).values(
                        {name: type_coerce(encrypt(decrypt(v)), Text) for name, v in stale.items()}))
                    rewritten += len(stale)
    return rewritten
