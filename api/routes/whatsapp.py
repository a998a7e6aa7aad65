"""WhatsApp: the public webhook Meta calls (``webhook_router``) and the API for senders and templates (``router``).
Secrets go in, never out: responses say ``has_app_secret`` and the like. Senders (Meta credentials) are set by
admins; templates are recorded by supervisors and sent by operators of the sender's assistant; a user lists those
of the assistants they see."""
from __future__ import annotations

import logging
import re
import secrets
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictBool, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api import scopes
from api.deps import CurrentUser, ServicesDep, SessionDep, SignedIn, allow
from api.schemas import MessagePublic
from core.db import new_id
from core.errors import Conflict, NotFound
from kb import registry
from runtime.accounts.roles import ADMIN, OPERATOR, SUPERVISOR, VIEWER, Principal
from runtime.models import Message
from runtime.services import Services
from runtime.whatsapp.inbound import WebhookError, accept_post
from runtime.whatsapp.models import WhatsAppSender, WhatsAppTemplate
from runtime.whatsapp.outbound import send_template

log = logging.getLogger(__name__)
_PARAM = re.compile(r"\{\{\s*(\d+)\s*\}\}")

WEBHOOK_PATH = "/webhooks/whatsapp"
webhook_router = APIRouter(tags=["whatsapp webhook"])
router = APIRouter(prefix="/api/whatsapp", tags=["whatsapp"], dependencies=[SignedIn])


# ------------------------------------------------------------------------------------------- schemas


class SenderCreate(BaseModel):
    assistant_id: str = Field(min_length=1, description="the assistant's id or name")
    phone_number_id: str = Field(min_length=1, max_length=64, description="Meta's id of the business number")
    display_phone_number: str = Field(default="", max_length=32)
    waba_id: str = Field(default="", max_length=64, description="WhatsApp Business Account id")
    access_token: SecretStr = Field(min_length=1)
    app_secret: SecretStr = Field(min_length=1, description="signs the webhooks of the app")
    verify_token: SecretStr = Field(min_length=1, description="answers Meta's webhook verification")
    graph_version: str = Field(default="v21.0", pattern=r"^v\d+\.\d+$")
    mark_read: bool = Field(default=True, description="mark the customer's messages read on receipt")
    show_typing: bool = Field(default=True, description="show 'typing...' while the assistant answers (needs mark_read)")

    @field_validator("phone_number_id", "display_phone_number", "waba_id")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()


class SenderPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    assistant_id: str
    phone_number_id: str
    display_phone_number: str
    waba_id: str
    graph_version: str
    created_at: datetime
    has_access_token: bool
    has_app_secret: bool
    has_verify_token: bool
    mark_read: bool = True
    show_typing: bool = True

    @classmethod
    def from_sender(cls, s: WhatsAppSender) -> SenderPublic:
        return cls(
            id=s.id, assistant_id=s.assistant_id, phone_number_id=s.phone_number_id,
            display_phone_number=s.display_phone_number, waba_id=s.waba_id, graph_version=s.graph_version,
            created_at=s.created_at, has_access_token=bool(s.access_token), has_app_secret=bool(s.app_secret),
            has_verify_token=bool(s.verify_token), mark_read=s.mark_read, show_typing=s.show_typing,
        )


class SenderUpdate(BaseModel):
    """The options of a sender that can change in place (the others: delete and create it again)."""

    model_config = ConfigDict(extra="forbid")

    mark_read: StrictBool | None = None
    show_typing: StrictBool | None = None


class TemplateCreate(BaseModel):
    sender_id: str
    name: str = Field(min_length=1, max_length=512, pattern=r"^[a-z0-9_]+$")
    language: str = Field(min_length=2, max_length=16, pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,4})?$")
    category: Literal["MARKETING", "UTILITY", "AUTHENTICATION"]
    body: str = Field(min_length=1, max_length=1024, description="text with {{1}}, {{2}} ... parameters")
    buttons: list[dict] = Field(default_factory=list)
    status: Literal["APPROVED", "PENDING", "REJECTED", "PAUSED", "DISABLED"] = "PENDING"
    meta_template_id: str | None = Field(default=None, max_length=64)

    @field_validator("body")
    @classmethod
    def _sequential_parameters(cls, body: str) -> str:
        numbers = sorted({int(n) for n in _PARAM.findall(body)})
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"parameters must be numbered {{{{1}}}} to {{{{n}}}} without gaps; found {numbers}")
        return body


class TemplatePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    sender_id: str
    name: str
    language: str
    category: str
    status: str
    meta_template_id: str | None
    body: str
    buttons: list[dict]
    updated_at: datetime
    parameters: int = 0

    @classmethod
    def from_template(cls, t: WhatsAppTemplate) -> TemplatePublic:
        out = cls.model_validate(t)
        out.parameters = len(set(_PARAM.findall(t.body)))
        return out


# ------------------------------------------------------------------------------------------- webhook


@webhook_router.get(WEBHOOK_PATH, response_class=PlainTextResponse)
def verify_webhook(
    session: SessionDep,
    mode: Annotated[str | None, Query(alias="hub.mode")] = None,
    token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    challenge: Annotated[str | None, Query(alias="hub.challenge")] = None,
):
    """Meta's subscription check: echo the challenge when the verify token is one of ours."""
    if mode != "subscribe" or token is None or challenge is None or not _known_verify_token(session, token):
        return PlainTextResponse("verification failed", status_code=403)
    return PlainTextResponse(challenge)


def _known_verify_token(session, token: str) -> bool:
    tokens = session.scalars(select(WhatsAppSender.verify_token))
    return sum(secrets.compare_digest(token.encode(), t.encode()) for t in tokens if t) > 0  # no early exit


@webhook_router.post(WEBHOOK_PATH, responses={
    400: {"description": "body is not a JSON object, or nested too deep"}, 401: {"description": "no signature"},
    403: {"description": "wrong signature, or a number or business account the signing app does not own"},
    413: {"description": "body over ATENDE_MAX_WEBHOOK_KB"}})
async def receive_webhook(
    request: Request,
    services: ServicesDep,
    x_hub_signature_256: Annotated[str | None, Header()] = None,
):
    """Store a signed post (once per body: the same bytes again get no second row), queue it and acknowledge
    it. With the huey queue it is processed in the background; with the inline queue (an app from
    ``api.app.build_app`` alone) it is processed, and its turns answered, before the answer. Whatever fails
    there is stored with the post or the turn: Meta must not retry what we already hold.

    Meta waits for this answer: the body is read on the event loop, then one worker thread stores and queues it."""
    raw_body = await request.body()
    try:
        await run_in_threadpool(_store_and_queue, services, raw_body, x_hub_signature_256)
    except WebhookError as exc:
        log.warning("whatsapp webhook refused (%s): %s", exc.status_code, exc)
        return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)})
    return {"status": "ok"}


def _store_and_queue(services: Services, raw_body: bytes, signature: str | None) -> None:
    services.queue.enqueue_webhook(accept_post(services, raw_body, signature).id)


# ------------------------------------------------------------------------------------------- senders


def _unprocessable(exc: ValidationError) -> JSONResponse:
    """A 422 like FastAPI's, without echoing the input back (it carries secrets)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    return JSONResponse(status_code=422, content={"detail": [{**e, "loc": ["body", *e["loc"]]} for e in errors]})


_SENDER_SCHEMA = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": SenderCreate.model_json_schema()}}}}


@router.post("/senders", status_code=201, response_model=SenderPublic, openapi_extra=_SENDER_SCHEMA,
             responses={404: {"description": "unknown assistant"}, 409: {"description": "number already configured"}},
             dependencies=[allow(ADMIN)])
def create_sender(session: SessionDep, services: ServicesDep, payload: Annotated[Any, Body()] = None):
    """Bind a business number of a Meta app to an assistant."""
    try:
        body = SenderCreate.model_validate(payload)
    except ValidationError as exc:
        return _unprocessable(exc)
    assistant = registry.get_assistant(session, body.assistant_id)
    if session.scalar(select(WhatsAppSender.id).where(WhatsAppSender.phone_number_id == body.phone_number_id)):
        raise Conflict(f"phone number id {body.phone_number_id!r} is already configured")
    sender = WhatsAppSender(
        id=new_id(), assistant_id=assistant.id, phone_number_id=body.phone_number_id,
        display_phone_number=body.display_phone_number, waba_id=body.waba_id, graph_version=body.graph_version,
        access_token=body.access_token.get_secret_value(), app_secret=body.app_secret.get_secret_value(),
        verify_token=body.verify_token.get_secret_value(), mark_read=body.mark_read, show_typing=body.show_typing,
    )
    session.add(sender)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"phone number id {body.phone_number_id!r} is already configured") from None
    services.whatsapp_apps.forget()
    return SenderPublic.from_sender(sender)


@router.get("/senders", response_model=list[SenderPublic], dependencies=[allow(VIEWER)])
def list_senders(session: SessionDep, principal: CurrentUser, assistant_id: str | None = None):
    """The business numbers of the assistants the user sees."""
    query = select(WhatsAppSender).order_by(WhatsAppSender.created_at, WhatsAppSender.id)
    if assistant_id:
        query = query.where(WhatsAppSender.assistant_id == registry.get_assistant(session, assistant_id).id)
    return [SenderPublic.from_sender(s) for s in principal.visible(session.scalars(query))]


@router.patch("/senders/{sender_id}", response_model=SenderPublic, responses={404: {"description": "unknown sender"}},
              dependencies=[allow(ADMIN, scopes.sender)])
def update_sender(sender_id: str, body: SenderUpdate, session: SessionDep):
    """Turn a sender's read receipts (``mark_read``) or typing indicator (``show_typing``) on or off."""
    sender = session.get(WhatsAppSender, sender_id)
    if sender is None:
        raise NotFound(f"WhatsApp sender {sender_id!r} not found")
    for name, value in body.model_dump(exclude_none=True).items():
        setattr(sender, name, value)
    session.commit()
    return SenderPublic.from_sender(sender)


@router.delete("/senders/{sender_id}", status_code=204, dependencies=[allow(ADMIN, scopes.sender)])
def delete_sender(sender_id: str, session: SessionDep, services: ServicesDep):
    sender = session.get(WhatsAppSender, sender_id)
    if sender is None:
        raise NotFound(f"WhatsApp sender {sender_id!r} not found")
    session.delete(sender)
    session.commit()
    services.whatsapp_apps.forget()
    return Response(status_code=204)


# ----------------------------------------------------------------------------------------- templates


@router.post("/templates", status_code=201, response_model=TemplatePublic,
             responses={404: {"description": "unknown sender"}, 409: {"description": "name and language taken"}},
             dependencies=[allow(SUPERVISOR)])
def create_template(body: TemplateCreate, session: SessionDep, principal: CurrentUser):
    """Record a template of a sender (as created in Meta's manager); only APPROVED ones are sent."""
    _require_sender(session, principal, body.sender_id)
    template = WhatsAppTemplate(id=new_id(), **body.model_dump())
    session.add(template)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"template {body.name!r} ({body.language}) already exists for this sender") from None
    return TemplatePublic.from_template(template)


def _require_sender(session, principal: Principal, sender_id: str) -> None:
    """404 for an unknown sender, 403 for one of an assistant the user does not see."""
    assistant_id = scopes.sender_assistant(session, sender_id)
    if assistant_id is None:
        raise NotFound(f"WhatsApp sender {sender_id!r} not found")
    principal.require_assistant(assistant_id)


def templates_of(session, sender_id: str | None = None, assistant_ids: frozenset[str] | None = None) -> list[TemplatePublic]:
    """Templates, of one sender or all, of the assistants ``assistant_ids`` (None: every assistant)."""
    query = (select(WhatsAppTemplate).join(WhatsAppSender, WhatsAppSender.id == WhatsAppTemplate.sender_id)
             .order_by(WhatsAppTemplate.sender_id, WhatsAppTemplate.name, WhatsAppTemplate.language))
    if sender_id:
        query = query.where(WhatsAppTemplate.sender_id == sender_id)
    if assistant_ids is not None:
        query = query.where(WhatsAppSender.assistant_id.in_(sorted(assistant_ids)))
    return [TemplatePublic.from_template(t) for t in session.scalars(query)]


@router.get("/templates", response_model=list[TemplatePublic], dependencies=[allow(VIEWER)])
def list_templates(session: SessionDep, principal: CurrentUser, sender_id: str | None = None):
    """The templates of the assistants the user sees."""
    return templates_of(session, sender_id, principal.assistant_ids)


class TemplateSend(BaseModel):
    sender_id: str
    customer_id: str = Field(min_length=1, max_length=200, description="the customer's wa_id (or business-scoped user id)")
    name: str
    language: str
    parameters: list[str] = Field(default_factory=list, description="values for {{1}}, {{2}}, ...")


@router.post("/messages/template", status_code=201, response_model=MessagePublic, dependencies=[allow(OPERATOR)])
def send_template_message(body: TemplateSend, services: ServicesDep, session: SessionDep, principal: CurrentUser):
    """Send an approved template to a customer (e.g. to re-open a conversation after 24 h)."""
    _require_sender(session, principal, body.sender_id)
    msg = send_template(services, sender_id=body.sender_id, customer_id=body.customer_id, name=body.name,
                        language=body.language, parameters=body.parameters)
    return MessagePublic.from_message(session.get(Message, msg.id))
