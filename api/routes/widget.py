"""The web widget channel: the embeddable script and its public routes (no admin token).

Visitors are anonymous: ``POST .../session`` hands out a visitor id signed with ``settings.secret_key``
(bound to the assistant), which the script keeps in localStorage. Each assistant says which websites
may use its widget (``config.widget.allowed_origins``) and how many messages a visitor may send per
minute; the count comes from the database, so it holds across processes.

Visitors rate the assistant's replies of their own conversation with thumbs up or down (one rating per
reply, a new one replaces it; ``runtime.feedback``). Ratings are not rate-limited: each reply holds one.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import ServicesDep
from atende.db import utcnow
from kb import registry
from kb.errors import InvalidRequest, NotFound
from runtime import feedback
from runtime.config import AssistantConfig, WidgetConfig
from runtime.feedback import COMMENT_MAX, Reason
from runtime.models import Conversation, Message
from runtime.turn import handle_message

router = APIRouter(tags=["widget"])

SCRIPT = Path(__file__).resolve().parents[1] / "static" / "widget.js"
CHANNEL = "widget"
WINDOW = timedelta(seconds=60)
HISTORY_LIMIT = 50
_VISITOR_ID = re.compile(r"^v_[A-Za-z0-9_-]{16,64}$")


class WidgetConfigPublic(BaseModel):
    title: str
    greeting: str


class WidgetSession(BaseModel):
    visitor_id: str
    token: str = Field(description="<visitor id>.<signature>; send it with every message")


class WidgetTokenIn(BaseModel):
    token: str = Field(max_length=300)


class WidgetMessageIn(WidgetTokenIn):
    message: str = Field(min_length=1, max_length=2000)


class WidgetSource(BaseModel):
    filename: str
    page: int | None = None
    section: str = ""


class WidgetReply(BaseModel):
    reply: str | None = Field(description="null when the AI is paused (a human agent took over)")
    sources: list[WidgetSource]
    ai_enabled: bool
    message_id: str | None = Field(default=None, description="the reply's id, to rate it")


class WidgetMessagePublic(BaseModel):
    direction: str  # inbound (the visitor) | outbound (the assistant or an agent)
    text: str
    created_at: datetime
    message_id: str
    rateable: bool = Field(description="an AI reply, which the visitor may rate")
    rating: Literal["good", "bad"] | None = Field(description="the visitor's rating of it")


class WidgetFeedbackIn(WidgetTokenIn):
    rating: Literal["good", "bad"]
    reason: Reason | None = None
    comment: str | None = Field(default=None, max_length=COMMENT_MAX)


class WidgetFeedbackPublic(BaseModel):
    message_id: str
    rating: str
    reason: str | None


class WidgetHistory(BaseModel):
    messages: list[WidgetMessagePublic]
    ai_enabled: bool


# --- visitor tokens -------------------------------------------------------------------------------


def _signature(secret: str, assistant_id: str, visitor_id: str) -> str:
    mac = hmac.new(secret.encode(), f"widget:{assistant_id}:{visitor_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def issue_visitor_token(secret: str, assistant_id: str) -> tuple[str, str]:
    """A fresh visitor id and its token ``<id>.<sig>``; the signature binds it to the assistant."""
    visitor_id = f"v_{secrets.token_urlsafe(18)}"
    return visitor_id, f"{visitor_id}.{_signature(secret, assistant_id, visitor_id)}"


def verify_visitor_token(secret: str, assistant_id: str, token: str) -> str | None:
    """The visitor id if ``token`` was issued for this assistant with this secret, else None."""
    visitor_id, _, sig = token.rpartition(".")
    if not _VISITOR_ID.match(visitor_id):
        return None
    expected = _signature(secret, assistant_id, visitor_id)
    return visitor_id if hmac.compare_digest(sig.encode(), expected.encode()) else None


# --- the assistant and CORS -----------------------------------------------------------------------


@dataclass(frozen=True)
class Widget:
    """The assistant a request is for, its widget settings and the CORS headers every answer carries."""

    assistant_id: str
    config: WidgetConfig
    cors: dict[str, str] = field(default_factory=dict)

    def fail(self, status: int, detail: str, **headers: str) -> HTTPException:
        # errors carry the CORS headers too, so the script can read 401/429 and react
        return HTTPException(status_code=status, detail=detail, headers={**self.cors, **headers})


def origin_allowed(config: WidgetConfig, origin: str) -> bool:
    allowed = {o.strip().rstrip("/").lower() for o in config.allowed_origins}
    return not allowed or origin.lower() in allowed


def load_widget(assistant: str, request: Request, response: Response, services: ServicesDep) -> Widget:
    """Resolve the assistant (id or name), refuse origins it does not list (403), set CORS headers."""
    with services.session() as session:
        try:
            found = registry.get_assistant(session, assistant)
        except NotFound:
            raise HTTPException(status_code=404, detail=f"assistant {assistant!r} not found") from None
        assistant_id, config = found.id, AssistantConfig.model_validate(found.config or {}).widget
    origin = request.headers.get("origin")
    # no Origin: not a cross-site browser request (curl, a server); the origin list only binds browsers
    if origin is not None and not origin_allowed(config, origin):
        raise HTTPException(status_code=403, detail="this website may not use the assistant's widget")
    cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Expose-Headers": "Retry-After"} if origin else {}
    response.headers.update(cors)
    return Widget(assistant_id, config, cors)


WidgetDep = Annotated[Widget, Depends(load_widget)]


def _visitor(services, widget: Widget, token: str) -> str:
    visitor_id = verify_visitor_token(services.settings.secret_key, widget.assistant_id, token)
    if visitor_id is None:
        raise widget.fail(401, "invalid visitor token; start a new session")
    return visitor_id


def _conversation_key(widget: Widget, visitor_id: str) -> dict:
    return dict(assistant_id=widget.assistant_id, channel=CHANNEL, sender=f"widget:{widget.assistant_id}",
                customer_id=visitor_id)


def seconds_until_allowed(services, widget: Widget, visitor_id: str) -> int:
    """0 if the visitor may send now, else the seconds until the oldest message in the window ages out."""
    limit, now = widget.config.rate_limit_per_minute, utcnow()
    with services.session() as session:
        recent = session.scalars(
            select(Message.created_at)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .filter_by(**_conversation_key(widget, visitor_id))
            .where(Message.direction == "inbound", Message.created_at > now - WINDOW)
            .order_by(Message.created_at.desc())
            .limit(limit)
        ).all()
    if len(recent) < limit:
        return 0
    return max(1, math.ceil((recent[-1] + WINDOW - now).total_seconds()))


def public_sources(sources: list[dict]) -> list[WidgetSource]:
    """Where the answer came from, without the passages themselves; one entry per place."""
    seen, out = set(), []
    for s in sources:
        key = (s.get("filename") or "", s.get("page"), s.get("section") or "")
        if key not in seen:
            seen.add(key)
            out.append(WidgetSource(filename=key[0], page=key[1], section=key[2]))
    return out


# --- routes ---------------------------------------------------------------------------------------


@router.get("/widget.js", include_in_schema=False)
def widget_script() -> FileResponse:
    """The embeddable chat script: ``<script src="https://host/widget.js" data-assistant="..."></script>``."""
    return FileResponse(SCRIPT, media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=300"})


@router.options("/api/widget/{assistant}/{endpoint}", status_code=204, include_in_schema=False)
@router.options("/api/widget/{assistant}/messages/{message_id}/feedback", status_code=204, include_in_schema=False)
def preflight(widget: WidgetDep) -> Response:
    """CORS preflight: the origin was checked by ``load_widget``."""
    return Response(status_code=204, headers={
        **widget.cors, "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "600",
    })


@router.get("/api/widget/{assistant}/config", response_model=WidgetConfigPublic)
def widget_config(widget: WidgetDep):
    """Title and greeting the script shows."""
    return WidgetConfigPublic(title=widget.config.title, greeting=widget.config.greeting)


@router.post("/api/widget/{assistant}/session", response_model=WidgetSession)
def start_session(widget: WidgetDep, services: ServicesDep):
    """A new anonymous visitor id, signed; the script keeps it so the conversation continues."""
    visitor_id, token = issue_visitor_token(services.settings.secret_key, widget.assistant_id)
    return WidgetSession(visitor_id=visitor_id, token=token)


@router.post("/api/widget/{assistant}/messages", response_model=WidgetReply,
             responses={401: {"description": "bad visitor token"}, 429: {"description": "too many messages"},
                        502: {"description": "the language model failed; the message is stored"}})
def send_message(body: WidgetMessageIn, widget: WidgetDep, services: ServicesDep):
    """The assistant's reply to a visitor's message, with where it came from."""
    visitor_id = _visitor(services, widget, body.token)
    if not body.message.strip():
        raise widget.fail(422, "message must not be empty")
    wait = seconds_until_allowed(services, widget, visitor_id)
    if wait:
        raise widget.fail(429, f"too many messages; try again in {wait}s", **{"Retry-After": str(wait)})
    key = _conversation_key(widget, visitor_id)
    result = handle_message(services, assistant_ref=widget.assistant_id, channel=CHANNEL, sender=key["sender"],
                            customer_id=visitor_id, text=body.message)
    if result.status == "error":
        raise widget.fail(502, "the assistant could not answer now; please try again")
    return WidgetReply(reply=result.reply, sources=public_sources(result.sources), ai_enabled=result.ai_enabled,
                       message_id=result.message_id)


@router.post("/api/widget/{assistant}/messages/{message_id}/feedback", response_model=WidgetFeedbackPublic,
             responses={401: {"description": "bad visitor token"},
                        404: {"description": "no such message in the visitor's conversation"},
                        422: {"description": "not an AI reply"}})
def rate_message(message_id: str, body: WidgetFeedbackIn, widget: WidgetDep, services: ServicesDep):
    """The visitor's thumbs up or down on one of the assistant's replies in their conversation; a new
    rating replaces the previous one. Another visitor's message is a 404, as an unknown one."""
    visitor_id = _visitor(services, widget, body.token)
    with services.session() as session:
        conversation_id = session.scalar(select(Conversation.id).filter_by(**_conversation_key(widget, visitor_id)))
        message = session.get(Message, message_id)
        if conversation_id is None or message is None or message.conversation_id != conversation_id:
            raise widget.fail(404, "message not found")
        try:
            row = feedback.rate_reply(session, message_id, source="widget", rating=body.rating, reason=body.reason,
                                      comment=body.comment)
        except InvalidRequest as exc:
            raise widget.fail(422, str(exc)) from None
        session.commit()
        return WidgetFeedbackPublic(message_id=row.message_id, rating=row.rating, reason=row.reason)


@router.post("/api/widget/{assistant}/history", response_model=WidgetHistory)
def history(body: WidgetTokenIn, widget: WidgetDep, services: ServicesDep):
    """The visitor's last messages, so a page reload shows the conversation it continues."""
    visitor_id = _visitor(services, widget, body.token)
    with services.session() as session:
        conv = session.scalar(select(Conversation).filter_by(**_conversation_key(widget, visitor_id)))
        if conv is None:
            return WidgetHistory(messages=[], ai_enabled=True)
        rows = session.scalars(
            select(Message).where(Message.conversation_id == conv.id)
            .order_by(Message.created_at.desc(), Message.id.desc()).limit(HISTORY_LIMIT)
        ).all()
        replies = [m.id for m in rows if feedback.is_ai_reply(m)]
        rated = {f.message_id: f.rating for ratings in feedback.feedback_by_message(session, replies).values()
                 for f in ratings if f.source == "widget"}
        messages = [WidgetMessagePublic(direction=m.direction, text=m.text, created_at=m.created_at, message_id=m.id,
                                        rateable=feedback.is_ai_reply(m), rating=rated.get(m.id))
                    for m in reversed(rows)]
        return WidgetHistory(messages=messages, ai_enabled=conv.ai_enabled)
