"""core.signing: HMAC-SHA256 of the parts end to end, and a constant-time check that takes any text."""
from __future__ import annotations

import hashlib
import hmac

from core.signing import sign, verify


def test_sign_is_hmac_sha256_of_the_parts_joined():
    expected = hmac.new(b"secret", b"1700000000.{\"a\": 1}", hashlib.sha256).digest()
    assert sign("secret", "1700000000.", b'{"a": 1}') == expected
    assert sign(b"secret", b"1700000000.{\"a\": 1}") == expected


def test_verify_compares_text_and_bytes_and_refuses_anything_else():
    mac = sign("k", "v").hex()
    assert verify(mac, mac) and verify(mac, mac.encode())
    assert not verify(mac, "0" * 64)
    assert not verify(mac, "é" * 64)  # non-ASCII text is refused, not a TypeError
