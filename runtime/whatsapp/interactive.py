"""Choices as WhatsApp renders them natively: reply buttons, a list message, or a numbered list in text.

Meta's limits (WhatsApp Cloud API, as documented in 2025: developers.facebook.com/docs/whatsapp/cloud-api/messages/
interactive-reply-buttons-messages, .../interactive-list-messages and .../reference/messages#interactive-object):
reply buttons at most 3, a button's title at most 20 characters and its id 256; a list's button label at most 20,
at most 10 sections and 10 rows in all, a section title 24, a row title 24, a row description 72, a row id 200;
an interactive message's body at most 1024 (the list page allows 4096; we keep to the lower one), header and
footer 60. Titles must be unique among a message's buttons and rows.

Decisions:
- Up to 3 options whose titles fit a button (20 characters) -> reply buttons; up to 10 -> a list message (a title
  too long for a button moves the offer to a list, whose rows keep the full text: a cut button title loses it);
  more -> a numbered list in text, answered by number or text (``runtime.options.interpret``).
- Cutting: on a word boundary when one falls in the last half, never inside a character and its combining marks
  or an emoji sequence, with an ellipsis ("…", one character). Titles equal once cut are made distinct with " (2)",
  " (3)"... A row whose title was cut shows the full text in its description (itself cut to 72, its own
  description after it).
- The reply's text is the body when it fits (1024); a longer reply goes as text message(s) first and the choice as
  its own interactive message, whose body is the offer's prompt (or "Choose an option:" in the reply's language).
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from kb.keyword import message_language
from runtime.options import PROMPTS, Offered, fold, numbered

MAX_BUTTONS = 3
BUTTON_TITLE = 20
BUTTON_ID = 256
LIST_BUTTON = 20
MAX_ROWS = 10
SECTION_TITLE = 24
ROW_TITLE = 24
ROW_DESCRIPTION = 72
ROW_ID = 200
BODY = 1024
HEADER = 60
FOOTER = 60
ELLIPSIS = "…"
LIST_LABELS = {"pt": "Ver opções", "es": "Ver opciones", "en": "See options"}
_JOINERS = {"\u200d", "\ufe0e", "\ufe0f"}  # zero-width joiner, variation selectors


@dataclass(frozen=True)
class Rendered:
    """What goes out for a reply with options: ``texts`` (plain messages, in order, before the interactive one) and
    ``interactive`` (Meta's ``interactive`` object, whose body holds the text when it fits), or None."""

    texts: list[str]
    interactive: dict | None


def render_choices(text: str, options: list[Offered], *, prompt: str | None = None) -> Rendered:
    """The messages that show ``text`` (already rendered for WhatsApp) and ``options`` (see the module docstring)."""
    text = text.strip()
    if not options:
        return Rendered([text] if text else [], None)
    if len(options) > MAX_ROWS:
        return Rendered([numbered(text, options)], None)
    language = message_language(text or prompt or "") or "pt"
    if text and len(text) <= BODY:
        texts, body = [], text
    else:
        texts, body = ([text] if text else []), shorten(prompt or PROMPTS[language], BODY)
    if len(options) <= MAX_BUTTONS and all(len(o.title) <= BUTTON_TITLE for o in options):
        titles = distinct([o.title for o in options], BUTTON_TITLE)
        buttons = [{"type": "reply", "reply": {"id": o.option_id[:BUTTON_ID], "title": t}}
                   for o, t in zip(options, titles, strict=True)]
        return Rendered(texts, {"type": "button", "body": {"text": body}, "action": {"buttons": buttons}})
    titles = distinct([o.title for o in options], ROW_TITLE)
    rows = []
    for option, title in zip(options, titles, strict=True):
        row = {"id": option.option_id[:ROW_ID], "title": title}
        full = option.title if shorten(option.title, ROW_TITLE) != option.title else ""
        description = " — ".join(filter(None, [full, option.description or ""]))
        if description:
            row["description"] = shorten(description, ROW_DESCRIPTION)
        rows.append(row)
    action = {"button": LIST_LABELS[language][:LIST_BUTTON], "sections": [{"rows": rows}]}
    return Rendered(texts, {"type": "list", "body": {"text": body}, "action": action})


def shorten(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: cut on a word boundary (if one is in the last half) with an
    ellipsis, never splitting a character from its combining marks or an emoji sequence."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = limit - len(ELLIPSIS)
    # text[cut] is the first character dropped: keep a character with its marks, an emoji sequence whole
    while cut > 0 and (_continues(text[cut]) or text[cut - 1] == "\u200d"):
        cut -= 1
    head = text[:cut]
    space = head.rfind(" ")
    if space >= limit // 2:
        head = head[:space]
    return head.rstrip(" ,;:.-–—") + ELLIPSIS


def _continues(char: str) -> bool:
    """Whether ``char`` belongs to the character before it (a combining mark, a joiner, a skin tone)."""
    return bool(unicodedata.combining(char)) or char in _JOINERS or "\U0001f3fb" <= char <= "\U0001f3ff"


def distinct(titles: list[str], limit: int) -> list[str]:
    """``titles`` cut to ``limit``, those equal once cut (case and accents aside) told apart by " (2)", " (3)"..."""
    out: list[str] = []
    seen: set[str] = set()
    for title in titles:
        candidate = shorten(title, limit)
        n = 1
        while fold(candidate) in seen:
            n += 1
            suffix = f" ({n})"
            candidate = shorten(title, limit - len(suffix)) + suffix
        seen.add(fold(candidate))
        out.append(candidate)
    return out
