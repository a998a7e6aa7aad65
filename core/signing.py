"""HMAC-SHA256, the one way atende signs: webhook bodies (Meta's ``X-Hub-Signature-256``, the handoff
deliveries' ``X-Atende-Signature``), widget visitor tokens and the keyed ids of dashboard sessions.

Callers add their own framing (a ``sha256=`` prefix, hex or base64url); the key and the signed bytes are
theirs too, so every signature stays what its receiver expects."""
from __future__ import annotations

import hashlib
import hmac


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def sign(secret: str | bytes, *parts: str | bytes) -> bytes:
    """The HMAC-SHA256 digest of ``parts`` joined end to end, keyed by ``secret`` (text as UTF-8)."""
    return hmac.new(_bytes(secret), b"".join(_bytes(p) for p in parts), hashlib.sha256).digest()


def verify(expected: str | bytes, given: str | bytes) -> bool:
    """Whether ``given`` equals ``expected``, compared in constant time (text as UTF-8, so any input works)."""
    return hmac.compare_digest(_bytes(expected), _bytes(given))
