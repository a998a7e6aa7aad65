"""The web widget channel: the embeddable script and its public routes (no admin token).

Visitors are anonymous: ``POST .../session`` hands out a visitor id signed with ``settings.secret_key``
(bound to the assistant), which the script keeps in localStorage. Each assistant says which other websites
may use its widget (``config.widget.allowed_origins``; the server's own pages always may) and how fast:
new visitors per client address and per assistant, messages per visitor, per client address and per
assistant (``runtime.ratelimit``: counted atomically in the database, so the limits hold across threads and
processes; 429 with ``Retry-After``). The client address is the connection's, or the one a trusted proxy
forwarded (uvicorn's proxy headers, ``ATENDE_TRUSTED_PROXIES``).

A message is stored and answered ``202`` with its id at once; its turn runs on the widget's own bounded
pool (``runtime.widget_turns``), never on a request thread, and the script polls ``.../reply`` for the
answer. When ``widget_max_turns`` turns are already in flight a message is refused with 503 and
``Retry-After`` (and not stored).

Visitors rate the assistant's replies of their own conversation with thumbs up or down (one rating per
reply, a new one replaces it; ``runtime.feedback``). Ratings are not rate-limited: each reply holds one.
"""
from __future__ import annotations

import base64
import re
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.deps import ServicesDep
from core import signing
from core.errors import InvalidRequest, NotFound
from kb import registry
from kb.types import Source
from runtime import feedback, store
from runtime.config import AssistantConfig, WidgetConfig
from runtime.feedback import COMMENT_MAX, Reason
from runtime.models import Conversation, Message
from runtime.ratelimit import Limit, RateLimiter
from runtime.turn import result_for_message, run_turn
from runtime.widget_turns import WidgetTurnPool


@asynccontextmanager
async def _lifespan(app: FastAPI):
    """The widget's turn pool and rate limiter live as long as the app (request state ``widget_*``)."""
    services = app.state.services
    s = services.settings
    turns = WidgetTurnPool(lambda conversation_id: run_turn(services, conversation_id), s.widget_turn_workers,
                           s.widget_max_turns)
    limiter = RateLimiter(services.engine, clock=lambda: services.clock().timestamp())
    try:
        yield {"widget_turns": turns, "widget_limiter": limiter}
    finally:
        await anyio.to_thread.run_sync(turns.close)


router = APIRouter(tags=["widget"], lifespan=_lifespan)

SCRIPT = Path(__file__).resolve().parents[1] / "static" / "widget.js"
CHANNEL = "widget"
MINUTE, HOUR = 60, 3600
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
    client_message_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{8,64}$",
        description="the script's id for this message: sending it again (a retry) stores nothing new")


class WidgetAccepted(BaseModel):
    message_id: str = Field(description="the visitor's message; poll .../messages/{message_id}/reply")
    status: Literal["pending"] = "pending"


class WidgetSource(BaseModel):  # where a reply came from, as a visitor sees it: a kb.types.Source's place, not its text
    filename: str
    page: int | None = None
    section: str = ""


class WidgetOption(BaseModel):
    position: int
    title: str


class WidgetReply(BaseModel):
    status: str = Field(description="pending (poll again), answered, smalltalk, fallback, handoff, paused "
                                    "(a human agent took over) or error (the assistant could not answer)")
    reply: str | None = Field(description="null while pending, when paused and on error")
    sources: list[WidgetSource]
    ai_enabled: bool
    message_id: str | None = Field(default=None, description="the reply's id, to rate it")
    options: list[WidgetOption] = Field(default_factory=list, description="choices offered with the reply: shown "
                                        "as buttons, a click sends the option's text")


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
    mac = signing.sign(secret, f"widget:{assistant_id}:{visitor_id}")
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
    return visitor_id if signing.verify(expected, sig) else None


# --- the assistant and CORS -----------------------------------------------------------------------


@dataclass(frozen=True)
class Widget:
    """The assistant a request is for, its widget settings and the CORS headers every answer carries."""

    assistant_id: str
    config: WidgetConfig
    client: str  # the client's address (a trusted proxy's forwarded one)
    turns: WidgetTurnPool
    limiter: RateLimiter
    cors: dict[str, str] = field(default_factory=dict)

    def fail(self, status: int, detail: str, **headers: str) -> HTTPException:
        # errors carry the CORS headers too, so the script can read 401/429 and react
        return HTTPException(status_code=status, detail=detail, headers={**self.cors, **headers})


def origin_allowed(config: WidgetConfig, origin: str, host: str) -> bool:
    """Whether a page of ``origin`` may use the widget of a server reached as ``host``: the server's own
    pages (the dashboard, the demo) always, other websites only when listed (or the list has ``*``)."""
    allowed = {o.strip().rstrip("/").lower() for o in config.allowed_origins}
    netloc = urlsplit(origin).netloc.lower()
    return "*" in allowed or origin.lower() in allowed or bool(netloc) and netloc == host.lower()


def load_widget(assistant: str, request: Request, response: Response, services: ServicesDep) -> Widget:
    """Resolve the assistant (id or name), refuse origins it does not allow (403), set CORS headers."""
    with services.session() as session:
        try:
            found = registry.get_assistant(session, assistant)
        except NotFound:
            raise HTTPException(status_code=404, detail=f"assistant {assistant!r} not found") from None
        assistant_id, config = found.id, AssistantConfig.model_validate(found.config or {}).widget
    origin = request.headers.get("origin")
    # no Origin: not a cross-site browser request (curl, a server); the origin list only binds browsers
    if origin is not None and not origin_allowed(config, origin, request.headers.get("host", "")):
        raise HTTPException(status_code=403, detail="this website may not use the assistant's widget")
    cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Expose-Headers": "Retry-After"} if origin else {}
    response.headers.update(cors)
    client = request.client.host if request.client else "unknown"
    return Widget(assistant_id, config, client, request.state.widget_turns, request.state.widget_limiter, cors)


WidgetDep = Annotated[Widget, Depends(load_widget)]


def _visitor(services, widget: Widget, token: str) -> str:
    visitor_id = verify_visitor_token(services.settings.secret_key, widget.assistant_id, token)
    if visitor_id is None:
        raise widget.fail(401, "invalid visitor token; start a new session")
    return visitor_id


def _conversation_key(widget: Widget, visitor_id: str) -> dict:
    return dict(assistant_id=widget.assistant_id, channel=CHANNEL, sender=f"widget:{widget.assistant_id}",
                customer_id=visitor_id)


def _limit(widget: Widget, *limits: Limit) -> None:
    """Count the request against ``limits`` (narrowest first); 429 with Retry-After at the first exceeded."""
    wait = widget.limiter.check(*limits)
    if wait:
        raise widget.fail(429, f"too many requests; try again in {wait}s", **{"Retry-After": str(wait)})


def _store_message(services, widget: Widget, visitor_id: str, body: WidgetMessageIn) -> tuple[str, str]:
    """Store the visitor's message (once per ``client_message_id``); returns (conversation id, message id)."""
    key = _conversation_key(widget, visitor_id)
    with services.session() as session:
        conv = store.find_or_create_conversation(session, **key)
        try:
            return conv.id, store.store_inbound(session, conv, body.message, channel_message_id=body.client_message_id).id
        except IntegrityError:  # sent again (the script retried): the message stored the first time
            session.rollback()
    with services.session() as session:
        conv_id = session.scalar(select(Conversation.id).filter_by(**key))
        message_id = session.scalar(select(Message.id).filter_by(conversation_id=conv_id,
                                                                  channel_message_id=body.client_message_id))
        return conv_id, message_id


def public_sources(sources: list[Source]) -> list[WidgetSource]:
    """Where the answer came from, without the passages themselves; one entry per place."""
    seen, out = set(), []
    for s in sources:
        key = (s.filename, s.page, s.section)
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


@router.options("/api/widget/{assistant}/{endpoint:path}", status_code=204, include_in_schema=False)
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


@router.post("/api/widget/{assistant}/session", response_model=WidgetSession,
             responses={429: {"description": "too many new visitors from this address or for this assistant"}})
def start_session(widget: WidgetDep, services: ServicesDep):
    """A new anonymous visitor id, signed; the script keeps it so the conversation continues."""
    c, a = widget.config, widget.assistant_id
    _limit(widget, Limit(f"widget:{a}:ip-sessions:{widget.client}", c.ip_sessions_per_hour, HOUR),
           Limit(f"widget:{a}:sessions", c.assistant_sessions_per_hour, HOUR))
    visitor_id, token = issue_visitor_token(services.settings.secret_key, a)
    return WidgetSession(visitor_id=visitor_id, token=token)


@router.post("/api/widget/{assistant}/messages", status_code=202, response_model=WidgetAccepted,
             responses={401: {"description": "bad visitor token"},
                        429: {"description": "too many messages from this visitor, this address or to this assistant"},
                        503: {"description": "too many widget turns in flight; not stored, send it again later"}})
def send_message(body: WidgetMessageIn, widget: WidgetDep, services: ServicesDep):
    """Store a visitor's message and start its turn; poll ``.../messages/{message_id}/reply`` for the answer."""
    visitor_id = _visitor(services, widget, body.token)
    if not body.message.strip():
        raise widget.fail(422, "message must not be empty")
    c, a = widget.config, widget.assistant_id
    _limit(widget, Limit(f"widget:{a}:visitor:{visitor_id}", c.rate_limit_per_minute, MINUTE),
           Limit(f"widget:{a}:ip:{widget.client}", c.ip_messages_per_minute, MINUTE),
           Limit(f"widget:{a}:messages", c.assistant_messages_per_minute, MINUTE))
    if not widget.turns.admit():
        wait = widget.turns.retry_after()
        raise widget.fail(503, f"the assistant is busy; try again in {wait}s", **{"Retry-After": str(wait)})
    try:
        conversation_id, message_id = _store_message(services, widget, visitor_id, body)
    except BaseException:
        widget.turns.release()
        raise
    widget.turns.submit(conversation_id)
    return WidgetAccepted(message_id=message_id)


@router.post("/api/widget/{assistant}/messages/{message_id}/reply", response_model=WidgetReply,
             responses={401: {"description": "bad visitor token"},
                        404: {"description": "no such message of the visitor's"}})
def message_reply(message_id: str, body: WidgetTokenIn, widget: WidgetDep, services: ServicesDep):
    """What answered the visitor's message: ``pending`` until its turn has run, then the reply with where it
    came from. A pending message whose turn is not in flight (its process stopped) is given a turn again."""
    visitor_id = _visitor(services, widget, body.token)
    with services.session() as session:
        conversation_id = session.scalar(select(Conversation.id).filter_by(**_conversation_key(widget, visitor_id)))
        message = session.get(Message, message_id)
        if conversation_id is None or message is None or message.conversation_id != conversation_id \
                or message.direction != "inbound":
            raise widget.fail(404, "message not found")
        result = result_for_message(session, message_id)
    if result.status == "pending" and not widget.turns.busy(conversation_id) and widget.turns.admit():
        widget.turns.submit(conversation_id)
    return WidgetReply(status=result.status, reply=result.reply, sources=public_sources(result.sources),
                       ai_enabled=result.ai_enabled, message_id=result.message_id,
                       options=[WidgetOption(position=o["position"], title=o["title"]) for o in result.options])


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
