"""Automations (``runtime.automations``): the trigger another system calls with the automation's own token
(``POST /api/automations/{id}/runs``), and the admin API to create, list, change and delete automations and list
their runs."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from api import throttle
from api.deps import AdminDep, ServicesDep, SessionDep, set_audit_actor
from core.db import utcnow
from core.errors import NotFound
from kb import registry
from runtime import automations
from runtime.models import Automation

router = APIRouter(prefix="/api/automations", tags=["automations"], dependencies=[AdminDep])
trigger_router = APIRouter(prefix="/api/automations", tags=["automations"])
_bearer = HTTPBearer(auto_error=False)
Action = Literal["message", "ai", "template"]


class AutomationFields(BaseModel):
    """What an automation does; ``{{variable}}`` in the message and the template parameters is filled from a
    run's variables."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100)
    template_name: str | None = Field(default=None, max_length=512, description="approved template sent outside "
                                                                                "the 24-hour window")
    template_language: str | None = Field(default=None, max_length=16)
    template_parameters: list[Annotated[str, Field(max_length=1000)]] | None = Field(
        default=None, max_length=20, description="the template's {{1}}, {{2}} ..., e.g. [\"{{first_name}}\"]")
    inside_window: Action | None = Field(default=None, description="inside the window: send the message, let the "
                                                                   "AI open the conversation, or send the template")
    message: str | None = Field(default=None, max_length=4096)
    ai_instruction: str | None = Field(default=None, max_length=2000, description="what the AI opens with")
    enabled: bool | None = None


class AutomationCreate(AutomationFields):
    sender_id: str = Field(max_length=32, description="the WhatsApp number (its assistant is the automation's)")
    name: str = Field(min_length=1, max_length=100)


class AutomationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    assistant_id: str
    sender_id: str
    name: str
    template_name: str | None
    template_language: str | None
    template_parameters: list[str]
    inside_window: Action
    message: str | None
    ai_instruction: str | None
    enabled: bool
    created_at: datetime
    updated_at: datetime
    trigger_url: str = Field(default="", description="where to POST a run, with the token as a bearer token")


class AutomationWithToken(AutomationPublic):
    token: str = Field(description="shown this once: only its SHA-256 is stored")


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=1, max_length=40, description="the customer's number, international format")
    variables: dict[str, str | int | float | bool | None] = Field(default_factory=dict,
                                                                  description="the context passed in")
    idempotency_key: str | None = Field(default=None, max_length=200,
                                        description="or the Idempotency-Key header: the same key runs once")


class RunPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    automation_id: str
    idempotency_key: str
    customer_id: str
    variables: dict
    triggered_by: str
    conversation_id: str | None
    action: Action
    message_id: str | None
    status: Literal["queued", "sent", "failed"]
    error: str | None
    created_at: datetime
    finished_at: datetime | None


def _public(automation: Automation, cls: type[AutomationPublic] = AutomationPublic, **extra) -> AutomationPublic:
    out = cls.model_validate({**{k: getattr(automation, k) for k in AutomationPublic.model_fields if k != "trigger_url"},
                              **extra})
    out.trigger_url = f"/api/automations/{automation.id}/runs"
    return out


def _get(session, automation_id: str) -> Automation:
    automation = session.get(Automation, automation_id)
    if automation is None:
        raise NotFound(f"automation {automation_id!r} not found")
    return automation


def _token_of(request: Request, services, session, automation_id: str,
              creds: HTTPAuthorizationCredentials | None) -> Automation:
    """The automation the bearer token opens; wrong tokens count against the client (``api.throttle``), apart from
    its admin sign-ins: a CRM with a stale token locks out its own triggers, not the admins behind the same address."""
    key = "automation " + throttle.client_key(request.client.host if request.client else None)
    now = utcnow()
    before = throttle.standing(session, key, now)
    if before.retry_after:
        raise HTTPException(status_code=429, detail=f"too many wrong tokens; try again in {before.retry_after} s",
                            headers={"Retry-After": str(before.retry_after)})
    automation = automations.authenticate(session, automation_id, creds.credentials) if creds else None
    if automation is None:
        if creds is not None:
            throttle.record_failure(session, key, now)
        raise HTTPException(status_code=401, detail="missing or wrong automation token (Authorization: Bearer atr_...)",
                            headers={"WWW-Authenticate": "Bearer"})
    return automation


@trigger_router.post("/{automation_id}/runs", status_code=201, response_model=RunPublic, responses={
    200: {"description": "the idempotency key was seen: the stored run, nothing done again"},
    401: {"description": "missing or wrong automation token"},
    409: {"description": "the window is closed and there is no template, the template is not approved, the "
                         "automation is disabled, or the key was used for another request"},
    422: {"description": "an unreadable number, a missing variable or a bad value"}})
def run_automation(automation_id: str, body: RunRequest, request: Request, response: Response,
                   services: ServicesDep, session: SessionDep,
                   creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                   idempotency_key: Annotated[str | None, Header(max_length=200)] = None):
    """Start or continue the customer's conversation (the automation's token as a bearer token; no admin token)."""
    automation = _token_of(request, services, session, automation_id, creds)
    who = f"automation token from {request.client.host if request.client else 'unknown'}"
    set_audit_actor(request, who)
    key = body.idempotency_key or idempotency_key
    if not key:
        raise HTTPException(status_code=422, detail="idempotency_key (or the Idempotency-Key header) is required")
    run, new = automations.trigger(services, automation, to=body.to, variables=body.variables, idempotency_key=key,
                                   triggered_by=who)
    if not new:
        response.status_code = 200
    return run


@router.post("", status_code=201, response_model=AutomationWithToken,
             responses={404: {"description": "unknown sender"}, 422: {"description": "an inconsistent automation"}})
def create_automation(body: AutomationCreate, session: SessionDep):
    """A new automation; its token is in the answer, this once."""
    fields = body.model_dump(exclude={"sender_id", "name"})
    automation, token = automations.create(session, sender_id=body.sender_id, name=body.name, **fields)
    session.commit()
    return _public(automation, AutomationWithToken, token=token)


@router.get("", response_model=list[AutomationPublic])
def list_automations(session: SessionDep, assistant_id: str | None = None):
    """The automations, of one assistant (id or name) when given."""
    query = select(Automation).order_by(Automation.created_at)
    if assistant_id:
        query = query.where(Automation.assistant_id == registry.get_assistant(session, assistant_id).id)
    return [_public(a) for a in session.scalars(query)]


@router.get("/{automation_id}", response_model=AutomationPublic)
def get_automation(automation_id: str, session: SessionDep):
    return _public(_get(session, automation_id))


@router.patch("/{automation_id}", response_model=AutomationPublic)
def update_automation(automation_id: str, body: AutomationFields, session: SessionDep):
    """Change what the automation does (the fields given)."""
    automation = automations.change(_get(session, automation_id), body.model_dump(exclude_unset=True))
    session.commit()
    return _public(automation)


@router.post("/{automation_id}/token", response_model=AutomationWithToken)
def rotate_token(automation_id: str, session: SessionDep):
    """A new token (the old one stops working); in the answer, this once."""
    automation = _get(session, automation_id)
    token = automations.rotate_token(automation)
    session.commit()
    return _public(automation, AutomationWithToken, token=token)


@router.delete("/{automation_id}", status_code=204)
def delete_automation(automation_id: str, session: SessionDep):
    session.delete(_get(session, automation_id))
    session.commit()
    return Response(status_code=204)


@router.get("/{automation_id}/runs", response_model=list[RunPublic])
def list_runs(automation_id: str, session: SessionDep, limit: Annotated[int, Query(ge=1, le=500)] = 100):
    """The automation's runs, newest first: who triggered it, with what, what was sent, how it ended."""
    return automations.list_runs(session, automation_id, limit)

