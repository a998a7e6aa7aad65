"""The files customers sent (``runtime.whatsapp.media``), for the dashboard: ``GET /api/messages/{id}/media``.

Served so a browser can never run them: ``X-Content-Type-Options: nosniff`` always, a restrictive
Content-Security-Policy (``sandbox``), and ``inline`` only for audio and raster images whose type was checked from
the content when it was stored (``runtime.whatsapp.media_check.INLINE_TYPES``); anything else -- documents, video,
any type not checked -- goes as an ``attachment`` of type ``application/octet-stream`` unless checked. Never HTML
or SVG inline.
"""
from __future__ import annotations

import re

from fastapi import APIRouter, Response

from api import scopes
from api.deps import ServicesDep, SessionDep, SignedIn, allow
from core.errors import NotFound
from runtime.accounts.roles import VIEWER
from runtime.whatsapp.media_check import INLINE_TYPES
from runtime.whatsapp.models import MessageMedia

router = APIRouter(tags=["conversations"], dependencies=[SignedIn])
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")
_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "audio/ogg": ".ogg",
               "audio/mpeg": ".mp3", "audio/mp4": ".m4a", "audio/aac": ".aac", "audio/amr": ".amr",
               "video/mp4": ".mp4", "application/pdf": ".pdf"}


@router.get("/api/messages/{message_id}/media", responses={200: {"content": {"application/octet-stream": {}}},
                                                            404: {"description": "no stored file for the message"}},
            dependencies=[allow(VIEWER, scopes.message)])
def get_message_media(message_id: str, services: ServicesDep, session: SessionDep) -> Response:
    """The file a customer sent with message ``message_id``, once stored: audio and checked images inline,
    everything else as an attachment."""
    record = session.query(MessageMedia).filter(MessageMedia.message_id == message_id).one_or_none()
    if record is None or record.status != "stored" or not record.sha256:
        raise NotFound(f"no stored file for message {message_id!r}")
    try:
        data = services.blobs.get(record.sha256)
    except FileNotFoundError:
        raise NotFound(f"the file of message {message_id!r} is no longer in the file store") from None
    mime = (record.mime_type or "").lower()
    inline = record.kind != "document" and mime in INLINE_TYPES
    name = _file_name(record, mime)
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Content-Disposition": f'{"inline" if inline else "attachment"}; filename="{name}"',
        "Cache-Control": "private, max-age=3600",
    }
    media_type = mime if inline or (mime and not _markup(mime)) else "application/octet-stream"
    return Response(content=data, media_type=media_type, headers=headers)


def _file_name(record: MessageMedia, mime: str) -> str:
    """A header-safe file name: the customer's, stripped to plain characters, or one made from the kind."""
    name = _UNSAFE_NAME.sub("_", record.file_name or "").strip("._ ")[:120]
    return name or f"{record.kind}-{record.message_id[:8]}{_EXTENSIONS.get(mime, '')}"


def _markup(mime: str) -> bool:
    return any(word in mime for word in ("html", "xml", "svg", "javascript", "ecmascript"))
