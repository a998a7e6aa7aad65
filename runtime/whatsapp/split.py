"""Cut WhatsApp text into messages WhatsApp accepts (at most 4096 characters each).

Works on text already in WhatsApp's formatting (``runtime.whatsapp.render``): cuts fall where a reader
expects a break, and never inside a ``*bold*``/``_italic_``/``~strike~``/```` ```monospace``` ```` span
that fits in one message. Pure functions.
"""
from __future__ import annotations

import re
import unicodedata

WHATSAPP_TEXT_LIMIT = 4096

# Formatting may not open after, nor close before, a letter or digit: 2*3*4 and snake_case are no spans.
_NOT_ALNUM_BEFORE = r"(?<![^\W_])"
_NOT_ALNUM_AFTER = r"(?![^\W_])"

_MONO_SPAN = re.compile(r"```.+?```", re.DOTALL)
_STYLE_SPANS = [
    re.compile(_NOT_ALNUM_BEFORE + rf"{re.escape(c)}(?=[^\s{c}])[^{c}\n]*?(?<=[^\s{c}]){re.escape(c)}" + _NOT_ALNUM_AFTER)
    for c in "*_~"
]
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_LINE_BREAK = re.compile(r"\n")
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]*_~]*(?=\s)")
_SPACE = re.compile(r"\s")
_JOINERS = {"\u200d", "\ufe0f", "\ufe0e"}


def split_message(text: str, limit: int = WHATSAPP_TEXT_LIMIT) -> list[str]:
    """Cut ``text`` into stripped, non-empty parts of at most ``limit`` characters each.

    Cuts fall at the last paragraph break that fits, else the last line break, sentence end,
    space, and only then anywhere. A cut never falls inside a ``*bold*``/``_italic_``/``~strike~``/
    ```` ```monospace``` ```` span unless the span alone is longer than the limit; then the span is
    closed at the end of one part and opened again in the next, so both still render.
    """
    if limit < 8:
        raise ValueError("limit must be at least 8 characters")
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        head, rest = _cut(rest, limit)
        parts.append(head)
    if rest:
        parts.append(rest)
    return parts


def _cut(text: str, limit: int) -> tuple[str, str]:
    spans = _format_spans(text, limit)
    blocked = bytearray(limit + 2)
    for start, end, _ in spans:
        blocked[start + 1:min(end, limit + 2)] = b"\1" * (min(end, limit + 2) - start - 1)
    inside = blocked.__getitem__
    for pattern in (_PARAGRAPH_BREAK, _LINE_BREAK, _SENTENCE_END, _SPACE):
        cut = _last_cut(text, pattern, limit, inside)
        if cut:
            return text[:cut].rstrip(), text[cut:].lstrip()
    hard = _hard_cut(text, limit, inside)
    if hard:
        return text[:hard].rstrip(), text[hard:].lstrip()
    # Everything that fits lies inside one span: close it here and open it again in the next part.
    outer = max((span for span in spans if span[0] == 0), key=lambda span: span[1], default=None)
    if outer is None:  # e.g. a long run of combining marks: nothing better than a plain cut
        return text[:limit].rstrip(), text[limit:].lstrip()
    _, end, marker = outer
    width = len(marker)
    ok = lambda c: bool(text[width:c].strip() and text[c:end - width].strip())  # noqa: E731
    for pattern in (_LINE_BREAK, _SENTENCE_END, _SPACE):
        cut = _last_cut(text, pattern, limit - width, lambda c: not ok(c))
        if cut:
            break
    else:
        cut = _hard_cut(text, limit - width, lambda c: not ok(c))
    if not cut:
        return text[:limit].rstrip(), text[limit:].lstrip()
    return text[:cut].rstrip() + marker, marker + text[cut:].lstrip()


def _format_spans(text: str, limit: int) -> list[tuple[int, int, str]]:
    """Formatting spans that start within the first ``limit`` characters: (start, end, marker)."""
    spans = []
    for m in _MONO_SPAN.finditer(text):
        if m.start() > limit:
            break
        spans.append((m.start(), m.end(), "```"))
    # style spans are single-line, so a window a line longer than the limit finds every one that matters
    window_end = text.find("\n", limit)
    window = text[: len(text) if window_end < 0 else window_end]
    masked = list(window)
    for start, end, _ in spans:
        masked[start:end] = "\0" * len(masked[start:end])
    masked = "".join(masked)
    for pattern in _STYLE_SPANS:
        spans += [(m.start(), m.end(), m.group(0)[0]) for m in pattern.finditer(masked, 0) if m.start() <= limit]
    return spans


def _last_cut(text: str, pattern: re.Pattern, limit: int, forbidden) -> int:
    """The last position ≤ limit where ``pattern`` allows a cut (0 if none)."""
    best = 0
    for m in pattern.finditer(text):
        if m.start() > limit:
            break
        cut = m.end() if pattern is _SENTENCE_END else m.start()
        if 0 < cut <= limit and not forbidden(cut):
            best = cut
    return best


def _hard_cut(text: str, limit: int, forbidden) -> int:
    """The last position ≤ limit that splits no span and no combined character (0 if none)."""
    for cut in range(min(limit, len(text) - 1), 0, -1):
        if forbidden(cut):
            continue
        if unicodedata.combining(text[cut]) or text[cut] in _JOINERS or text[cut - 1] in _JOINERS:
            continue
        if 0xDC00 <= ord(text[cut]) <= 0xDFFF or 0x1F3FB <= ord(text[cut]) <= 0x1F3FF:
            continue
        return cut
    return 0
