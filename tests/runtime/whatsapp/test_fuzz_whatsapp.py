"""Property tests (hypothesis) of the WhatsApp webhook parser and the WhatsApp renderer.

Parser: ``decode_body`` refuses a body only with ``MalformedBody``; ``parse_payload`` never raises, whatever
JSON it gets (arbitrary values, Meta-shaped ones, real Meta payloads with parts replaced), and its events carry
the types they declare (a string where Meta sends a string), since they are written to the database as they are;
well-formed generated payloads become exactly the messages and statuses they carry.

Renderer: ``split_message`` keeps every part within the limit, stripped and non-empty, and loses no text (it
may only add the markers of a span it closes and reopens); ``render_for_whatsapp`` loses no word of Markdown
(links keep their URL, tables their cells, code its text) and leaves none of its private markers behind.

Deterministic (``derandomize``) and bounded for CI; no example database is written.
"""
from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.whatsapp.render import render_for_whatsapp
from runtime.whatsapp.split import WHATSAPP_TEXT_LIMIT, split_message
from runtime.whatsapp.webhook import (
    InboundMessage, MalformedBody, Reaction, StatusUpdate, TemplateStatusUpdate, Unhandled, decode_body,
    parse_payload, phone_number_ids, template_waba_ids,
)
from tests.conftest import SHARED_DATA
from tests.runtime.whatsapp.test_whatsapp_split import _only_markers_added, _words

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RECEIVED_AT = datetime(2026, 1, 1, tzinfo=UTC)
PYWA = SHARED_DATA / "webhooks" / "pywa"
REAL_PAYLOADS = [json.loads(p.read_text()) for p in sorted(PYWA.glob("*/*.json"))] if PYWA.is_dir() else []
requires_pywa = pytest.mark.skipif(not REAL_PAYLOADS, reason=f"pywa webhook fixtures not found under {PYWA}")


def _keys(value, found: set[str]) -> set[str]:
    if isinstance(value, dict):
        found.update(value)
        for item in value.values():
            _keys(item, found)
    elif isinstance(value, list):
        for item in value:
            _keys(item, found)
    return found


# the words Meta's payloads use, so generated objects hit the parser's branches and not only its first check
VOCABULARY = sorted(_keys(REAL_PAYLOADS, set()) | {
    "object", "entry", "changes", "field", "value", "metadata", "phone_number_id", "messages", "statuses",
    "contacts", "errors", "type", "text", "body", "id", "from", "timestamp", "status", "pricing", "billable",
    "category", "code", "title", "message", "event", "message_template_id", "message_template_name",
    "message_template_language", "reason", "user_preferences", "wa_id", "user_id", "context", "reaction",
    "emoji", "message_id", "interactive", "button_reply", "list_reply", "nfm_reply", "order", "product_items",
    "location", "latitude", "longitude", "biz_opaque_callback_data", "recipient_id", "profile", "name",
})
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=20) | st.sampled_from(VOCABULARY))
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(VOCABULARY) | st.text(max_size=8), inner, max_size=6),
    max_leaves=40,
)
FIELDS = st.sampled_from(["messages", "user_preferences", "message_template_status_update", "account_update"])
META_SHAPED = st.fixed_dictionaries({
    "object": st.just("whatsapp_business_account"),
    "entry": st.lists(st.fixed_dictionaries({
        "id": SCALARS, "time": SCALARS,
        "changes": st.lists(st.fixed_dictionaries({"field": FIELDS, "value": JSON_VALUES}), max_size=3),
    }), max_size=3),
})


@st.composite
def mutated_real_payloads(draw) -> dict:
    """A real Meta payload with one to three values (anywhere in it) replaced by arbitrary JSON or removed."""
    payload = json.loads(json.dumps(draw(st.sampled_from(REAL_PAYLOADS))))
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(payload)
        if not slots:
            break
        parent, key = draw(st.sampled_from(slots))
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = draw(JSON_VALUES)
    return payload


def _slots(value, out: list | None = None) -> list:
    """Every (container, key or index) of a JSON value."""
    out = [] if out is None else out
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        out.append((value, key))
        _slots(item, out)
    return out


def assert_typed(event) -> None:
    """Each field of an event holds the type it declares (events go to the database as they are)."""
    hints = typing.get_type_hints(type(event))
    for f in dataclasses.fields(event):
        value, hint = getattr(event, f.name), hints[f.name]
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
            else (hint,)
        assert isinstance(value, tuple(typing.get_origin(t) or t for t in allowed)), \
            f"{type(event).__name__}.{f.name} = {value!r} is not {hint}"
        if isinstance(value, Reaction):
            assert_typed(value)


def check_parsed(body) -> list:
    events = parse_payload(body, received_at=RECEIVED_AT)
    for event in events:
        assert isinstance(event, (InboundMessage, StatusUpdate, TemplateStatusUpdate, Unhandled))
        assert_typed(event)
    if isinstance(body, dict):  # accept_post reads these before anything is stored
        assert all(isinstance(n, str) for n in phone_number_ids(body))
        assert all(isinstance(n, str) for n in template_waba_ids(body))
    return events


# --------------------------------------------------------------------------- decoding


@FUZZ
@given(st.binary(max_size=300) | JSON_VALUES.map(lambda v: json.dumps(v).encode())
       | st.integers(1, 3000).map(lambda n: b'{"a":' + b"[" * n + b"]" * n + b"}"))
def test_decode_body_returns_an_object_or_raises_malformed_body(raw):
    try:
        body = decode_body(raw)
    except MalformedBody:
        return
    assert isinstance(body, dict)
    check_parsed(body)


# --------------------------------------------------------------------------- parsing


@FUZZ
@given(JSON_VALUES | META_SHAPED)
def test_any_json_parses_into_typed_events_without_raising(body):
    check_parsed(body)


@requires_pywa
@FUZZ
@given(mutated_real_payloads())
def test_real_payloads_with_parts_replaced_parse_into_typed_events(body):
    check_parsed(body)


@FUZZ
@given(code=JSON_VALUES, title=JSON_VALUES, category=JSON_VALUES, recipient=JSON_VALUES, callback=JSON_VALUES)
def test_a_status_with_any_error_pricing_and_ids_is_still_a_typed_status(code, title, category, recipient, callback):
    status = {"id": "wamid.OUT", "status": "failed", "timestamp": "1700000000", "recipient_id": recipient,
              "biz_opaque_callback_data": callback, "errors": [{"code": code, "title": title}],
              "pricing": {"billable": False, "category": category}}
    value = {"metadata": {"phone_number_id": "111"}, "statuses": [status]}
    [event] = check_parsed({"object": "whatsapp_business_account",
                            "entry": [{"id": "waba", "changes": [{"field": "messages", "value": value}]}]})
    assert isinstance(event, StatusUpdate) and (event.wamid, event.status) == ("wamid.OUT", "failed")


DIGITS = st.text("0123456789", min_size=8, max_size=15)
WAMIDS = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=4, max_size=20).map(lambda s: f"wamid.{s}")
TIMES = st.integers(1_500_000_000, 2_000_000_000)
STATUSES = st.sampled_from(["sent", "delivered", "read", "failed", "deleted"])


@FUZZ
@given(
    phone_number_id=DIGITS,
    messages=st.lists(st.tuples(WAMIDS, DIGITS, st.text(min_size=1, max_size=200).filter(str.strip), TIMES),
                      max_size=5),
    statuses=st.lists(st.tuples(WAMIDS, DIGITS, STATUSES, TIMES), max_size=5),
)
def test_well_formed_payloads_become_their_messages_and_statuses(phone_number_id, messages, statuses):
    value = {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000000",
                                                      "phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": wa_id} for _, wa_id, _, _ in messages],
        "messages": [{"from": wa_id, "id": wamid, "timestamp": str(ts), "type": "text", "text": {"body": text}}
                     for wamid, wa_id, text, ts in messages],
        "statuses": [{"id": wamid, "status": status, "timestamp": str(ts), "recipient_id": to}
                     for wamid, to, status, ts in statuses],
    }
    body = {"object": "whatsapp_business_account",
            "entry": [{"id": "waba", "changes": [{"field": "messages", "value": value}]}]}
    events = check_parsed(json.loads(json.dumps(body)))
    assert [(e.wamid, e.customer_id, e.text_for_assistant, e.timestamp, e.phone_number_id, e.kind)
            for e in events if isinstance(e, InboundMessage)] == [
        (wamid, wa_id, text.strip(), datetime.fromtimestamp(ts, UTC), phone_number_id, "text")
        for wamid, wa_id, text, ts in messages]
    assert [(e.wamid, e.recipient_id, e.status, e.timestamp, e.phone_number_id)
            for e in events if isinstance(e, StatusUpdate)] == [
        (wamid, to, status, datetime.fromtimestamp(ts, UTC), phone_number_id)
        for wamid, to, status, ts in statuses]
    assert len(events) == len(messages) + len(statuses)
    assert phone_number_ids(body) == {phone_number_id}


# --------------------------------------------------------------------------- rendering and splitting

# text as a model writes it: words, WhatsApp and Markdown markers, line breaks, emoji, accents and joiners
CHAT_TEXT = st.lists(st.sampled_from([*"abcxyz019 .,!?:*_~`#>-|[]()\n\t", "ção", "👍🏽", "e\u0301", "👨\u200d👩",
                                      "https://x.io/a_b", "**", "```"]), max_size=200).map("".join)


def only_markers_added(original: str, parts: list[str]) -> bool:
    """The parts, joined without whitespace, are the original without whitespace plus formatting markers."""
    return _only_markers_added(_words(original), _words("".join(parts)))


@FUZZ
@given(text=CHAT_TEXT | st.text(max_size=300), limit=st.integers(8, 120))
def test_split_parts_fit_the_limit_and_keep_all_the_text(text, limit):
    parts = split_message(text, limit)
    assert all(0 < len(part) <= limit and part == part.strip() for part in parts)
    assert bool(parts) == bool(text.strip())
    assert only_markers_added(text, parts)


WORD = st.text("abcdefghijklmnopqrstuvwxyzçãé0123456789", min_size=1, max_size=8)
URL = WORD.map(lambda w: f"https://loja.example/{w}")


@st.composite
def markdown(draw) -> tuple[str, list[str]]:
    """A Markdown answer as models write them, and the words (and URLs) it contains."""
    blocks, words = [], []

    def phrase() -> str:
        chosen = draw(st.lists(WORD, min_size=1, max_size=6))
        words.extend(chosen)
        text = " ".join(chosen)
        style = draw(st.sampled_from(["", "**", "*", "_", "__", "~~", "`"]))
        if draw(st.booleans()):
            url = draw(URL)
            words.append(url)
            return f"[{text}]({url})"
        return f"{style}{text}{style}"

    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["paragraph", "heading", "bullets", "numbered", "quote", "table", "code"]))
        if kind == "paragraph":
            blocks.append(" ".join(phrase() for _ in range(draw(st.integers(1, 4)))))
        elif kind == "heading":
            blocks.append("#" * draw(st.integers(1, 6)) + " " + phrase())
        elif kind in ("bullets", "numbered"):
            items = [phrase() for _ in range(draw(st.integers(1, 4)))]
            blocks.append("\n".join(f"{'-' if kind == 'bullets' else f'{n + 1}.'} {item}" for n, item in enumerate(items)))
        elif kind == "quote":
            blocks.append("> " + phrase())
        elif kind == "table":
            columns = draw(st.integers(1, 5))
            rows = [[phrase() for _ in range(columns)] for _ in range(draw(st.integers(1, 4)))]
            lines = ["| " + " | ".join(row) + " |" for row in rows]
            blocks.append("\n".join([lines[0], "|" + "---|" * columns, *lines[1:]]))
        else:
            code = draw(st.lists(WORD, min_size=1, max_size=5))
            words.extend(code)
            blocks.append("```\n" + "\n".join(code) + "\n```")
    return "\n\n".join(blocks), words


@FUZZ
@given(markdown())
def test_rendering_keeps_every_word_and_url(generated):
    source, words = generated
    rendered = render_for_whatsapp(source)
    for word in words:
        assert word in rendered, (word, source, rendered)
    assert not re.search("[\ue000-\ue011]", rendered)
    for part in split_message(rendered):
        assert 0 < len(part) <= WHATSAPP_TEXT_LIMIT


@FUZZ
@given(st.text(max_size=400) | CHAT_TEXT)
def test_rendering_any_text_leaves_no_private_marker_behind(text):
    rendered = render_for_whatsapp(text)
    assert not re.search("[\ue000-\ue011]", rendered)
    assert rendered == rendered.strip()
