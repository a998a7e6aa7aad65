"""Personal data masked in free text: CPF and CNPJ numbers, e-mail addresses and phone numbers, as exports and logs
show them by default (an admin may export unmasked).

Each is found where it is written, whatever the surrounding text: CPF and CNPJ by their shape with their
punctuation, or bare with valid check digits (a CNPJ's first 12 characters may be letters since July 2026), e-mail
addresses by the address grammar, phone numbers by libphonenumber (``phonenumbers``) as valid numbers of any country
(Brazilian when written without a country code). What is kept: a CPF's and a CNPJ's check digits, an address's
first character and its domain, a phone number's last four digits; the separators stay, so the text keeps its shape.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import phonenumbers

from runtime.config import DataField
from runtime.validators import InvalidValue, validate_value

_CPF = re.compile(r"(?<![\w.])\d{3}\.?\d{3}\.?\d{3}-?\d{2}(?![\w-])")
_CNPJ = re.compile(r"(?<![\w.])[0-9A-Za-z]{2}\.?[0-9A-Za-z]{3}\.?[0-9A-Za-z]{3}/?[0-9A-Za-z]{4}-?\d{2}(?![\w-])")
_EMAIL = re.compile(r"(?<![\w.+-])([\w.+-])[\w.+-]*@((?:[\w-]+\.)+[A-Za-z]{2,63})\b")
_DIGITS_TO_KEEP = 4
REGION = "BR"  # numbers written without a country code


def _star_all_but_last(text: str, keep: int) -> str:
    """``text`` with every letter or digit starred except the last ``keep`` digits; separators kept."""
    total = sum(ch.isdigit() for ch in text)
    out, seen = [], 0
    for ch in text:
        if ch.isdigit():
            seen += 1
            out.append(ch if seen > total - keep else "*")
        else:
            out.append("*" if ch.isalpha() else ch)
    return "".join(out)


_CHECKED = {"cpf": DataField(name="cpf", type="cpf"), "cnpj": DataField(name="cnpj", type="cnpj")}


def _is(kind: str, match: re.Match) -> bool:
    """Whether the match is a CPF/CNPJ: written with its punctuation, or bare with valid check digits (a bare run
    of 11 or 14 digits may be a phone number or an order number)."""
    found = match.group(0)
    if kind == "cnpj" and sum(ch.isdigit() for ch in found) < 8:  # letters are allowed, a word is not a CNPJ
        return False
    if any(ch in ".-/" for ch in found):
        return True
    try:
        validate_value(_CHECKED[kind], found)
    except InvalidValue:
        return False
    return True


@dataclass(frozen=True)
class Found:
    """Personal data found in a text: ``text[start:end]`` is a ``kind`` (cpf, cnpj, email or phone)."""

    start: int
    end: int
    kind: str


def find_personal(text: str) -> list[Found]:
    """Every CPF, CNPJ, e-mail address and phone number in ``text``, in order, none overlapping (a CNPJ or CPF is
    not also a phone number)."""
    if not text:
        return []
    found = [Found(m.start(), m.end(), "cnpj") for m in _CNPJ.finditer(text) if _is("cnpj", m)]
    found += [Found(m.start(), m.end(), "cpf") for m in _CPF.finditer(text) if _is("cpf", m)]
    found += [Found(m.start(), m.end(), "email") for m in _EMAIL.finditer(text)]
    found += [Found(m.start, m.end, "phone") for m in phonenumbers.PhoneNumberMatcher(text, REGION)]
    kept: list[Found] = []
    for f in found:  # in the order above: the first kind that claims characters keeps them
        if not any(f.start < k.end and k.start < f.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


def replace_personal(text: str, replacement) -> str:
    """``text`` with each piece of personal data (:func:`find_personal`) replaced by ``replacement(found, value)``."""
    for f in reversed(find_personal(text)):
        text = text[:f.start] + replacement(f, text[f.start:f.end]) + text[f.end:]
    return text


def _masked(found: Found, value: str) -> str:
    if found.kind == "email":
        match = _EMAIL.fullmatch(value)
        return f"{match.group(1)}***@{match.group(2)}" if match else "***"
    return _star_all_but_last(value, 2 if found.kind in ("cpf", "cnpj") else _DIGITS_TO_KEEP)


def mask_text(text: str) -> str:
    """``text`` with its CPF/CNPJ numbers, e-mail addresses and phone numbers masked."""
    return replace_personal(text, _masked) if text else text


_NUMBER_ID = re.compile(r"\+?\d{8,15}")


def mask_id(customer_id: str) -> str:
    """A channel's id for a person masked: a number (a WhatsApp ``wa_id``, ``5511987654321``) but its last four
    digits, personal data in it as :func:`mask_text` does; other ids (a widget visitor's random id) as they are."""
    if _NUMBER_ID.fullmatch(customer_id):
        return _star_all_but_last(customer_id, _DIGITS_TO_KEEP)
    return mask_text(customer_id)


def mask_json(value):
    """Every string in a JSON value masked (:func:`mask_text`), at any depth."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: mask_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_json(v) for v in value]
    return value


class MaskingFilter(logging.Filter):
    """A log filter masking personal data in every record's message (install it on the handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
