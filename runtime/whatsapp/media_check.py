"""What a customer's media file really is, checked against what its message says it is, before it is stored.

A file is named by its content, never by the MIME type Meta relays from the customer's phone: ``filetype`` (magic
numbers, pure Python) for images, audio, video and stickers; ``kb.detect.sniff`` (the uploads' check) for
documents. An "image" that is HTML, a "voice note" that is a PDF, a "PDF" that is a ZIP: rejected, never stored.
Only raster images and audio of a checked type may be shown inline by the dashboard (``INLINE_TYPES``); anything
else, documents included, is served as an attachment.
"""
from __future__ import annotations

from dataclasses import dataclass

import filetype

from kb.detect import sniff

# what WhatsApp carries per kind (Meta's supported media types), as filetype names them
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
_STICKER_TYPES = frozenset({"image/webp", "image/png"})
_AUDIO_TYPES = frozenset({"audio/ogg", "audio/mpeg", "audio/mp4", "audio/aac", "audio/amr", "audio/x-wav",
                          "audio/webm", "audio/opus", "audio/x-flac", "video/mp4", "video/webm"})
_VIDEO_TYPES = frozenset({"video/mp4", "video/3gpp", "video/quicktime", "video/webm", "video/x-matroska"})
_ALLOWED = {"image": _IMAGE_TYPES, "sticker": _STICKER_TYPES, "audio": _AUDIO_TYPES, "voice": _AUDIO_TYPES,
            "video": _VIDEO_TYPES}
# the documents whose declared type says what the content must be (kb.detect.sniff's names)
_DOCUMENT_SNIFF = {
    "application/pdf": {"pdf"},
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": {"docx"},
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {"xlsx"},
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": {"pptx"},
    "application/msword": {"ole"}, "application/vnd.ms-excel": {"ole"}, "application/vnd.ms-powerpoint": {"ole"},
    "text/plain": {"text"}, "text/csv": {"text"},
}
INLINE_TYPES = _IMAGE_TYPES | (_AUDIO_TYPES - {"video/mp4", "video/webm"})


class MediaRejected(Exception):
    """The content is not what the message says it is (or not a kind WhatsApp carries)."""


@dataclass(frozen=True)
class CheckedType:
    """What a checked file is: its MIME type (from the content for media; the declared one for a document whose
    content matches it) and the document type ``ingest`` knows it as (``pdf``, ``docx``..., or None)."""

    mime_type: str
    document_type: str | None = None


def check_content(kind: str, declared_mime: str | None, data: bytes) -> CheckedType:
    """The checked type of ``data`` sent as a ``kind`` message declared ``declared_mime``; raises MediaRejected."""
    if not data:
        raise MediaRejected("the file is empty")
    declared = (declared_mime or "").split(";")[0].strip().lower()
    if kind == "document":
        return _check_document(declared, data)
    allowed = _ALLOWED.get(kind)
    if allowed is None:
        raise MediaRejected(f"media of kind {kind!r} is not accepted")
    found = _guess(data)
    if found is None and kind in ("audio", "voice", "video") and data[4:8] == b"ftyp":
        found = "video/mp4" if kind == "video" else "audio/mp4"  # ISO media filetype does not name (3gp, m4a...)
    if found not in allowed:
        what = found or _describe(data)
        raise MediaRejected(f"a {kind} message whose content is {what} (declared {declared or 'nothing'})")
    if found == "video/mp4" and kind in ("audio", "voice"):
        found = "audio/mp4"
    return CheckedType(found)


def _check_document(declared: str, data: bytes) -> CheckedType:
    actual = sniff(data)
    expected = _DOCUMENT_SNIFF.get(declared)
    if expected is not None and actual not in expected:
        raise MediaRejected(f"a document declared {declared} whose content is {_describe(data)}")
    document_type = {"pdf": "pdf", "docx": "docx", "xlsx": "xlsx", "pptx": "pptx"}.get(actual)
    if actual == "text" and declared in ("text/plain", "text/csv"):
        document_type = "csv" if declared == "text/csv" else "txt"
    return CheckedType(declared or "application/octet-stream", document_type)


def _guess(data: bytes) -> str | None:
    kind = filetype.guess(data[:8192])
    return kind.mime if kind is not None else None


def _describe(data: bytes) -> str:
    found = _guess(data)
    if found:
        return found
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<svg", b"<?xml", b"<script")) or b"<html" in head:
        return "HTML/XML markup"
    return {"text": "plain text", "pdf": "a PDF", "zip": "a ZIP archive"}.get(sniff(data), "unrecognised data")
