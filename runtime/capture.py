"""Typed values the customer sends, found by the runtime so they are saved even when the model does not
call ``collect_data`` (the 1.5B local model often answers "Meu CPF é 123.456.789-09" without the call).

``capture_calls`` turns the customer's new message(s) into ``collect_data`` calls for the assistant's
fields; the turn engine runs them through the toolset exactly as if the model had made them (same
validation, storage and log) before the model is asked, so its reply tells the customer the result.

Only types with an unmistakable written shape are found: CPF, CNPJ, e-mail and phone. Dates, numbers,
enums, patterns and free text mean different things in different sentences and are left to the model.
A value is captured only for a type exactly one configured field has (with two phone fields, which one
would it be?) and only when the message holds one value of that type (two CPFs may be the customer's
and someone else's, or a correction: the model reads which). A phone number inside a question ("o
telefone (11) 3333-4444 é da loja?") is captured too when the assistant has a phone field: the runtime
cannot tell whose number it is, but an assistant with a phone field asks customers for theirs, the
model sees the call and its result, and a later value replaces it. Without such a field nothing is
captured.
"""
from __future__ import annotations

import re

from runtime.config import AssistantConfig, DataField
from runtime.types import ToolCall
from runtime.validators import InvalidValue, validate_value

# Digits without punctuation also look like order numbers, protocols and codes: they are taken only
# when a check digit vouches for them (a bare phone number has none, so it is never taken).
CHECKSUMMED = ("cpf", "cnpj")
_BEFORE = r"(?<![\w@+])(?<!\d[.,/-])"  # not the middle of a longer number or word
_AFTER = r"(?![\w@])(?![.,/-]\d)"
_ALNUM = "[0-9A-Za-z]"
_EMAIL_LOCAL = r"[\w.!#$%&'*+/=?^`{|}~-]"
_SHAPES = [(kind, re.compile(pattern)) for kind, pattern in (
    # 123.456.789-09, 123 456 789 09, 123456789-09, 12345678909
    ("cpf", rf"{_BEFORE}\d{{3}}(?P<s>[. ]?)\d{{3}}(?P=s)\d{{3}}[-. ]?\d{{2}}{_AFTER}"),
    # 12.345.678/0001-95, 12345678000195
    ("cnpj", rf"{_BEFORE}\d{{2}}(?P<s>[. ]?)\d{{3}}(?P=s)\d{{3}}[/ ]?\d{{4}}[-. ]?\d{{2}}{_AFTER}"),
    # the alphanumeric CNPJ (from July 2026) only punctuated: 12.ABC.345/01DE-35
    ("cnpj", rf"{_BEFORE}{_ALNUM}{{2}}\.{_ALNUM}{{3}}\.{_ALNUM}{{3}}/{_ALNUM}{{4}}-\d{{2}}{_AFTER}"),
    ("email", rf"(?<!{_EMAIL_LOCAL}){_EMAIL_LOCAL}+@(?:[\w-]+\.)+[\w-]{{2,}}(?![\w@-]|\.[\w-])"),
    # +55 11 98765-4321, +1 (555) 123-4567
    ("phone", rf"{_BEFORE}\+\d[\d ().-]{{6,20}}\d{_AFTER}"),
    # (11) 98765-4321, 11 9 8765 4321, 55 11 3333-4444, 011 3333-4444, 11987654321
    ("phone", rf"{_BEFORE}(?:55 ?)?(?:\(0?\d{{2}}\)|0?\d{{2}})[ .-]?(?:9[ .]?)?\d{{4}}[ .-]?\d{{4}}{_AFTER}"),
)]


def find_values(text: str) -> list[tuple[str, str]]:
    """``(type, value as written)`` for each value in ``text`` whose shape tells its type, in order.

    Where shapes overlap the longest wins ("+55 11 98765-4321" is one phone). A value two types could
    be (11 bare digits: a CPF or a mobile number) is the one type whose validator accepts it, else none:
    a CPF is never taken for a phone, nor the reverse."""
    spans: dict[tuple[int, int], list[str]] = {}
    for kind, pattern in _SHAPES:
        for m in pattern.finditer(text):
            spans.setdefault(m.span(), []).append(kind)
    found, end = [], -1
    for (start, stop), kinds in sorted(spans.items(), key=lambda s: (s[0][0], -s[0][1])):
        if start < end:  # inside or across a longer value already seen
            continue
        end = stop
        value = text[start:stop]
        if kind := _kind(value, sorted(set(kinds))):
            found.append((kind, value))
    return found


def capture_calls(config: AssistantConfig, text: str) -> list[ToolCall]:
    """``collect_data`` calls for the values of ``text`` (the customer's new messages) that belong to the
    assistant's typed fields: one per type that exactly one field has and ``text`` holds one value of."""
    fields: dict[str, list[DataField]] = {}
    for f in config.data_fields:
        fields.setdefault(f.type, []).append(f)
    by_kind: dict[str, dict[str, str]] = {}
    for kind, value in find_values(text):
        if len(fields.get(kind, [])) == 1:
            by_kind.setdefault(kind, {}).setdefault(_canonical(fields[kind][0], value) or value, value)
    calls = []
    for kind, values in by_kind.items():
        if len(values) == 1:
            calls.append(ToolCall(f"capture_{len(calls)}", "collect_data",
                                  {"field": fields[kind][0].name, "value": next(iter(values.values()))}))
    return calls


def _kind(value: str, kinds: list[str]) -> str | None:
    if len(kinds) > 1:
        kinds = [k for k in kinds if _accepts(k, value)]
        if len(kinds) != 1:
            return None
    kind = kinds[0]
    written = not value.isdigit()
    return kind if written or (kind in CHECKSUMMED and _accepts(kind, value)) else None


def _accepts(kind: str, value: str) -> bool:
    return _canonical(DataField(name="value", type=kind), value) is not None


def _canonical(field: DataField, value: str) -> str | None:
    try:
        return validate_value(field, value)
    except InvalidValue:
        return None
