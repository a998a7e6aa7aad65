"""A customer's personal data (LGPD art. 18, ``runtime.privacy``): everything held about them exported, or erased
with a record that names nobody; the retention rules' runs (``runtime.retention``); admins only (``AdminDep``)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from api.deps import AdminDep, ServicesDep, SessionDep
from kb import registry
from runtime import privacy, retention

router = APIRouter(tags=["privacy"], dependencies=[AdminDep])
CustomerId = Annotated[str, Path(min_length=1, max_length=200, description="the channel's id for the person: a "
                                                                          "WhatsApp number, a widget visitor...")]
AssistantRef = Annotated[str | None, Query(description="only this assistant's conversations (id or name)")]


class ErasureRequest(BaseModel):
    requested_by: str = Field(min_length=1, max_length=200, description="who asked for it (kept in the record)")
    reason: str = Field(default="", max_length=2000, description="e.g. the customer's request, its date and channel")


class ErasurePublic(BaseModel):
    """The record of an erasure: the rows removed per table; the customer only as ``customer_ref``."""

    id: str
    customer_ref: str = Field(description="HMAC-SHA256 of the customer id under the deployment's secret")
    assistant_id: str | None
    requested_by: str
    reason: str
    counts: dict[str, int]
    at: datetime

    model_config = {"from_attributes": True}


class RetentionRunPublic(BaseModel):
    """A run of a retention rule (``runtime.retention``) that changed something: the rule (anonymise, delete or
    webhook_bodies), the assistant, what was older than ``cutoff`` went, the rows per table."""

    id: str
    at: datetime
    assistant_id: str | None
    rule: str
    cutoff: datetime
    items: int
    counts: dict[str, int]

    model_config = {"from_attributes": True}


def _assistant_id(session, ref: str | None) -> str | None:
    return registry.get_assistant(session, ref).id if ref else None


@router.get("/api/customers/{customer_id}/export")
def export_customer(session: SessionDep, customer_id: CustomerId, assistant: AssistantRef = None) -> dict:
    """Everything held about the customer, machine-readable: conversations with their messages, collected data,
    follow-ups, handoffs, feedback, appointments, and the raw webhook objects that name them."""
    return privacy.export_customer(session, customer_id, _assistant_id(session, assistant))


@router.post("/api/customers/{customer_id}/erase", response_model=ErasurePublic)
def erase_customer(services: ServicesDep, session: SessionDep, customer_id: CustomerId, body: ErasureRequest,
                   assistant: AssistantRef = None) -> privacy.Erasure:
    """Erase everything held about the customer (their conversations and all under them, appointments, regression
    cases made from their messages, their objects in the raw webhook bodies) in one transaction, and record it.
    Asking twice is harmless: the second record removes nothing."""
    return privacy.erase_customer(services, customer_id, requested_by=body.requested_by, reason=body.reason,
                                  assistant_id=_assistant_id(session, assistant))


@router.get("/api/customers/{customer_id}/erasures", response_model=list[ErasurePublic])
def list_erasures(services: ServicesDep, customer_id: CustomerId) -> list[privacy.Erasure]:
    """The erasure records of this customer id, newest first (found by its HMAC: the records name nobody)."""
    return privacy.erasures_of(services, customer_id)


@router.get("/api/retention/runs", response_model=list[RetentionRunPublic])
def list_retention_runs(session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list:
    """The retention rules' runs, newest first (the rules are each assistant's ``config.retention``)."""
    return retention.recent_runs(session, limit)
