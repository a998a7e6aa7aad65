"""Media customers send on WhatsApp: fetched from the Graph API, checked, stored, and read (voice notes
transcribed, documents parsed) so their turn answers what they say.

The life of a file (``runtime.whatsapp.models.MessageMedia``), one queued job per step (``process_media``, queued
by ``WorkQueue.enqueue_media`` on the customer queue):

1. ``record_media``: stored with its message (``pending``) when the webhook post is processed; the post's job then
   queues it (``queue_media``). A redelivered message is not stored again, so its file is not fetched again.
2. Download: ``GET /{version}/{media_id}`` for a fresh URL (it expires in minutes: asked again on every attempt),
   then the bytes, capped while they stream by ``Settings.media_max_mb`` for the kind and never over the upload
   cap (a lying ``file_size`` reads no more than the cap); sha256 checked when Meta gives it; the content checked
   against the kind (``runtime.whatsapp.media_check``); stored in the blob store by hash. Ends ``stored``,
   ``too_large``, ``rejected``, or after ``Settings.media_attempts`` retryable failures (exponential backoff from
   ``media_retry_delay_s``) or one final failure, ``failed`` -- the message keeps its description and the log
   says why.
3. Reading: a stored voice note or audio is transcribed (``runtime.transcription.make_transcriber``, one per
   process) and the transcript becomes the message's text; a stored PDF or office document is parsed in the
   uploads' sandbox (``ingest.sandbox.parse_isolated``, the same limits) and its text, capped at
   ``Settings.media_document_chars``, joins the message's text as the customer's attachment. A failure is retried
   when retryable, else recorded in ``transcript_error`` (shown on the dashboard); the message keeps what it had.

A WhatsApp turn waits for every file of its burst still being fetched or read (``awaited``), at most
``Settings.media_wait_max_s`` after the burst's first message (``runtime.whatsapp.turns``). A worker holds a file
while it works on it (``claimed_until``); past that (its process died) the recovery sweep queues it again
(``owed_media``).
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from core.db import utcnow
from ingest.errors import IngestError
from ingest.sandbox import ParseLimits, parse_isolated
from kb.blobs import content_hash
from runtime.models import Conversation, Message
from runtime.services import Services
from runtime.transcription import Transcriber, TranscriptionError, make_transcriber
from runtime.whatsapp.graph import MediaFetchError, MediaTooLarge
from runtime.whatsapp.media_check import MediaRejected, check_content
from runtime.whatsapp.models import MessageMedia, WhatsAppSender
from runtime.whatsapp.outbound import graph_client
from runtime.whatsapp.webhook import InboundMessage

log = logging.getLogger(__name__)

TRANSCRIBED_KINDS = ("audio", "voice")
PARSED_DOCUMENTS = ("pdf", "docx", "pptx", "xlsx", "txt", "csv")
DONE = ("stored", "failed", "rejected", "too_large")
_transcriber_lock = threading.Lock()


def record_media(session: Session, message: Message, event: InboundMessage) -> MessageMedia | None:
    """The ``pending`` media record of a message that carries a media id (added to ``session``), or None."""
    if not event.media_id:
        return None
    body = event.payload.get(event.payload.get("type")) if isinstance(event.payload, dict) else None
    body = body if isinstance(body, dict) else {}
    record = MessageMedia(message_id=message.id, conversation_id=message.conversation_id, kind=event.kind,
                          media_id=event.media_id, mime_type=_text(body.get("mime_type"), 200),
                          file_name=_text(body.get("filename"), 500), sha256=None, status="pending", attempts=0,
                          transcript_attempts=0, created_at=utcnow())
    session.add(record)
    return record


def queue_media(services: Services, conversation_ids: list[str]) -> list[str]:
    """Queue the first attempt of the never-tried files of these conversations (after their post is processed)."""
    if not conversation_ids:
        return []
    with services.session() as session:
        ids = list(session.scalars(select(MessageMedia.id).where(
            MessageMedia.conversation_id.in_(conversation_ids), MessageMedia.status == "pending",
            MessageMedia.attempts == 0)))
    for record_id in ids:
        services.queue.enqueue_media(record_id, 0)
    return ids


def process_media(services: Services, record_id: str) -> str | None:
    """The queued step of one file: download it when ``pending``, else read it when it needs reading and has not
    been; returns the record's status afterwards, None when there was nothing to do (done, or another worker
    holds it)."""
    step = _claim(services, record_id)
    if step == "download":
        status = _download(services, record_id)
        if status != "stored" or not _needs_reading(services, record_id):
            return status
        if _claim(services, record_id) != "read":
            return status
    elif step != "read":
        return None
    _read(services, record_id)
    return "stored"


def awaited(session: Session, message_ids: list[str]) -> list[MessageMedia]:
    """The files of these messages a turn should wait for: still being fetched, or stored and not yet read."""
    if not message_ids:
        return []
    records = session.scalars(select(MessageMedia).where(MessageMedia.message_id.in_(message_ids)))
    return [r for r in records if r.status == "pending" or _unread(r)]


def owed_media(services: Services, now: datetime, *, margin_s: float | None = None) -> list[str]:
    """Files left pending or unread by a dead worker or a lost queue entry: no live claim, no retry scheduled
    later, and older than ``margin_s`` (default ``recovery_margin_s``; 0 at a lone worker's start, once the
    claims of the dead process are cleared, ``release_claims``)."""
    margin = timedelta(seconds=services.settings.recovery_margin_s if margin_s is None else margin_s)
    free = and_(or_(MessageMedia.claimed_until.is_(None), MessageMedia.claimed_until <= now),
                or_(MessageMedia.next_attempt_at.is_(None), MessageMedia.next_attempt_at <= now - margin))
    with services.session() as session:
        records = session.scalars(select(MessageMedia).where(
            MessageMedia.status.in_(("pending", "stored")), MessageMedia.created_at <= now - margin, free))
        return [r.id for r in records if r.status == "pending" or _unread(r)]


def release_claims(services: Services) -> int:
    """Clear every file's claim (at the start of the only worker: a claim left is a dead process's); returns how
    many there were."""
    with services.session() as session:
        count = session.execute(update(MessageMedia).where(MessageMedia.claimed_until.is_not(None))
                                .values(claimed_until=None)).rowcount
        session.commit()
    return count


def transcriber(services: Services) -> Transcriber:
    """The process's one transcriber, built at first use (``make_transcriber``) and kept in ``Services``."""
    with _transcriber_lock:
        if services.transcriber is None:
            services.transcriber = make_transcriber(services.settings)
        return services.transcriber


# ---------------------------------------------------------------------------------------------- steps


def _claim(services: Services, record_id: str) -> str | None:
    """Take the record for one step ("download" or "read") until the step's longest time, by a conditional
    UPDATE (one worker wins); None when there is nothing to do or another worker holds it."""
    s, now = services.settings, services.clock()
    with services.session() as session:
        record = session.get(MessageMedia, record_id)
        if record is None or (record.claimed_until is not None and record.claimed_until > now):
            return None
        step = "download" if record.status == "pending" else "read" if _unread(record) else None
        if step is None:
            return None
        hold = (s.media_timeout_s * 2 if step == "download" else s.transcription_timeout_s + s.parse_timeout_s)
        values: dict = {"claimed_until": now + timedelta(seconds=hold + s.recovery_margin_s), "next_attempt_at": None}
        if step == "download":
            values["attempts"] = MessageMedia.attempts + 1
        else:
            values["transcript_attempts"] = MessageMedia.transcript_attempts + 1
        free = or_(MessageMedia.claimed_until.is_(None), MessageMedia.claimed_until <= now)
        taken = session.execute(update(MessageMedia).where(
            MessageMedia.id == record_id, MessageMedia.status == record.status, free).values(**values)).rowcount
        session.commit()
        return step if taken else None


def _download(services: Services, record_id: str) -> str:
    s = services.settings
    with services.session() as session:
        record = session.get(MessageMedia, record_id)
        sender = session.scalar(select(WhatsAppSender).join(
            Conversation, Conversation.sender == WhatsAppSender.phone_number_id).where(
            Conversation.id == record.conversation_id))
        kind, media_id, declared, attempts = record.kind, record.media_id, record.mime_type, record.attempts
        if sender is None:
            return _finish(services, record_id, "failed", error="no WhatsApp sender configured for its number")
        session.expunge(sender)
    cap = int(min(s.media_max_mb.get(kind, s.max_upload_mb), s.max_upload_mb) * 1024 * 1024)
    client = graph_client(services)
    try:
        info = client.media_info(sender, media_id)
        if info.file_size is not None and info.file_size > cap:
            raise MediaTooLarge(f"Meta declares {info.file_size:,} bytes, over the {kind} limit of {cap:,}")
        data = client.download_media(sender, info.url, cap, s.media_timeout_s)
        if info.sha256 and info.sha256.lower() != content_hash(data):
            raise MediaFetchError("the bytes do not match the sha256 Meta declared", retryable=True)
        checked = check_content(kind, info.mime_type or declared, data)
    except MediaTooLarge as exc:
        return _finish(services, record_id, "too_large", error=str(exc))
    except MediaRejected as exc:
        return _finish(services, record_id, "rejected", error=str(exc))
    except MediaFetchError as exc:
        if exc.retryable and attempts < s.media_attempts:
            return _retry(services, record_id, attempts, f"attempt {attempts}: {exc}", download=True)
        return _finish(services, record_id, "failed", error=f"after {attempts} attempt(s): {exc}")
    digest = services.blobs.put(data)
    return _finish(services, record_id, "stored", sha256=digest, size=len(data), mime_type=checked.mime_type)


def _finish(services: Services, record_id: str, status: str, *, error: str | None = None, **values) -> str:
    with services.session() as session:
        record = session.get(MessageMedia, record_id)
        record.status, record.last_error, record.claimed_until = status, error, None
        for name, value in values.items():
            setattr(record, name, value)
        if status == "stored":
            record.stored_at = utcnow()
        else:
            log.warning("whatsapp media %s (%s) of message %s %s: %s; the turn goes on with its description",
                        record.media_id, record.kind, record.message_id, status, error)
        session.commit()
    return status


def _retry(services: Services, record_id: str, attempt: int, error: str, *, download: bool) -> str:
    delay = services.settings.media_retry_delay_s * 2 ** (attempt - 1)
    with services.session() as session:
        record = session.get(MessageMedia, record_id)
        record.claimed_until, record.next_attempt_at = None, services.clock() + timedelta(seconds=delay)
        if download:
            record.last_error = error
        log.warning("whatsapp media %s of message %s: %s; trying again in %.1fs", record.media_id,
                    record.message_id, error, delay)
        status = record.status
        session.commit()
    services.queue.enqueue_media(record_id, delay)
    return status


def _needs_reading(services: Services, record_id: str) -> bool:
    with services.session() as session:
        record = session.get(MessageMedia, record_id)
        return record is not None and _unread(record)


def _read(services: Services, record_id: str) -> None:
    """Transcribe a voice note or parse a document, then give its text to the message."""
    s = services.settings
    with services.session() as session:
        record = session.get(MessageMedia, record_id)
        kind, mime, digest, name, attempts = (record.kind, record.mime_type, record.sha256, record.file_name,
                                              record.transcript_attempts)
    data = services.blobs.get(digest)
    try:
        if kind in TRANSCRIBED_KINDS:
            transcript = transcriber(services).transcribe(data, mime_type=mime)
            text, language, engine = transcript.text.strip(), transcript.language, transcript.engine
            if not text:
                raise TranscriptionError("no speech was heard in the audio")
        else:
            text, language, engine = _document_text(data, mime, name, s), None, "ingest.parse"
    except Exception as exc:  # the engine's or the parser's: the file stays unread, the turn goes on
        retryable = isinstance(exc, TranscriptionError) and exc.retryable
        if not isinstance(exc, (TranscriptionError, IngestError, MediaRejected)):
            log.exception("whatsapp media %s could not be read", record_id)
        if retryable and attempts < s.media_attempts:
            _retry(services, record_id, attempts, f"reading attempt {attempts}: {exc}", download=False)
            return
        _read_failed(services, record_id, str(exc) or type(exc).__name__)
        return
    with services.session() as session:
        record = session.get(MessageMedia, record_id)
        record.transcript_text, record.transcript_language, record.transcript_engine = text, language, engine
        record.transcribed_at, record.transcript_error, record.claimed_until = utcnow(), None, None
        message = session.get(Message, record.message_id)
        if message is not None and message.status == "received":  # an answered message keeps what its turn saw
            message.text = text if kind in TRANSCRIBED_KINDS else f"{message.text}\n{text}"
        session.commit()


def _read_failed(services: Services, record_id: str, error: str) -> None:
    with services.session() as session:
        record = session.get(MessageMedia, record_id)
        record.transcript_error, record.claimed_until = error[:2000], None
        log.warning("whatsapp media %s (%s) of message %s could not be read: %s; the turn goes on with its "
                    "description", record.media_id, record.kind, record.message_id, error)
        session.commit()


def _document_text(data: bytes, mime: str | None, name: str | None, settings) -> str:
    """The customer's document as text for the turn: parsed in the uploads' sandbox, cut at a paragraph or
    sentence end within ``media_document_chars``, labelled with its file name."""
    document_type = check_content("document", mime, data).document_type
    if document_type not in PARSED_DOCUMENTS:
        raise MediaRejected(f"documents of type {mime or 'unknown'} are not read")
    elements = parse_isolated(data, document_type, ParseLimits.from_settings(settings))
    full = "\n\n".join(e.text.strip() for e in elements if e.text and e.text.strip())
    if not full:
        raise MediaRejected("the document has no text")
    cut = cap_text(full, settings.media_document_chars)
    label = f'[The customer\'s document "{name or "document"}"' + (", cut short" if len(cut) < len(full) else "")
    return f"{label}:]\n{cut}\n[end of the customer's document]"


def cap_text(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its longest start ending at a paragraph, else a sentence,
    else a word boundary (never cut inside a word when a boundary is in the second half)."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    for marks in (("\n\n",), (". ", "! ", "? ", ".\n", "!\n", "?\n"), (" ", "\n")):
        end = max(head.rfind(mark) for mark in marks)
        if end >= limit // 2:
            return head[: end + (1 if marks[0] != "\n\n" else 0)].rstrip()
    return head.rstrip()


def _unread(record: MessageMedia) -> bool:
    """A stored file still to be read: a voice note/audio, or a document, with neither text nor a final error."""
    readable = record.kind in TRANSCRIBED_KINDS or record.kind == "document"
    return (record.status == "stored" and readable and record.transcribed_at is None
            and record.transcript_error is None)


def _text(value, limit: int) -> str | None:
    return str(value)[:limit] if isinstance(value, (str, int)) and str(value) else None


def media_of_messages(session: Session, message_ids: list[str]) -> dict[str, MessageMedia]:
    """The media records of these messages, by message id (for the conversation API, the page, the export)."""
    if not message_ids:
        return {}
    return {r.message_id: r for r in session.scalars(select(MessageMedia).where(
        MessageMedia.message_id.in_(message_ids)))}


def media_summary(record: MessageMedia) -> dict:
    """What a reviewer sees of a file: kind, type, name, size, hash, the download's state and its error, and the
    text read from it (a transcript, a document's text) or why it could not be read."""
    return {"kind": record.kind, "mime_type": record.mime_type, "file_name": record.file_name, "size": record.size,
            "sha256": record.sha256, "status": record.status, "attempts": record.attempts, "error": record.last_error
            if record.status != "stored" else None,
            "transcript": record.transcript_text, "transcript_language": record.transcript_language,
            "transcript_engine": record.transcript_engine,
            "transcribed_at": record.transcribed_at.isoformat() if record.transcribed_at else None,
            "transcript_error": record.transcript_error,
            "reading": _unread(record)}
