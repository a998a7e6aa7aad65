"""The audit trail: every change made through the admin API or the dashboard, and every read of personal data
(exports, a conversation's messages, a customer's data, media, the trail itself), recorded with who, when, what and
from where. The application only ever adds entries (no route or function changes or deletes one).

What is kept names no customer: a customer id in a route's path is kept as its HMAC (``runtime.privacy
.customer_ref``, the same reference as the erasure records), the query string with personal data masked
(``runtime.masking``); request bodies are not kept (they may carry secrets).
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import JSON, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base, UTCDateTime, new_id, utcnow
from runtime.masking import mask_text
from runtime.privacy import customer_ref
from runtime.services import Services

KINDS = ("change", "read")
EXPORT_COLUMNS = ("at", "actor", "user_id", "client", "kind", "method", "route", "path", "query", "status")
_CUSTOMER_PARAMS = ("customer_id",)


class AuditEntry(Base):
    """One audited request: ``actor`` (who: the user's e-mail, ``user_id`` their id), ``client`` (the address it
    came from), ``kind`` (change or read), the route's template and the path as requested (customer ids as their
    reference), the query (masked) and the answer's status."""

    __tablename__ = "audit_log"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    client: Mapped[str] = mapped_column(String(64), default="")
    kind: Mapped[str] = mapped_column(String(10))
    method: Mapped[str] = mapped_column(String(10))
    route: Mapped[str] = mapped_column(String(300))
    path: Mapped[str] = mapped_column(String(1000))
    query: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[int] = mapped_column(Integer)


@dataclass(frozen=True)
class Request:
    """What the audit keeps of a request (see :func:`record`)."""

    actor: str
    user_id: str | None
    client: str
    method: str
    route: str
    path: str
    path_params: dict[str, str]
    query: list[tuple[str, str]]
    status: int


def kind_of(method: str) -> str:
    """``read`` for GET/HEAD, else ``change``."""
    return "read" if method in ("GET", "HEAD") else "change"


def record(services: Services, request: Request) -> AuditEntry:
    """Add the entry of an audited request (customer ids as references, the query masked)."""
    secret = services.settings.secret_key or ""
    path = request.path
    for name in _CUSTOMER_PARAMS:
        value = request.path_params.get(name)
        if value:
            path = path.replace(value, f"customer:{customer_ref(secret, value)[:16]}")
    query: dict[str, list[str]] = {}
    for key, value in request.query:
        query.setdefault(key[:100], []).append(mask_text(value)[:500])
    entry = AuditEntry(actor=request.actor[:100], user_id=request.user_id, client=request.client[:64], kind=kind_of(request.method),
                       method=request.method[:10], route=request.route[:300], path=path[:1000], query=query,
                       status=request.status)
    with services.session() as session:
        session.add(entry)
        session.commit()
    return entry


def entries(session: Session, *, actor: str | None = None, user_id: str | None = None, kind: str | None = None,
            since: datetime | None = None, until: datetime | None = None, route: str | None = None, limit: int = 100,
            offset: int = 0) -> list[AuditEntry]:
    """The entries matching the filters (``route``: a part of the route template), newest first."""
    query = select(AuditEntry)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if user_id:
        query = query.where(AuditEntry.user_id == user_id)
    if kind:
        query = query.where(AuditEntry.kind == kind)
    if since:
        query = query.where(AuditEntry.at >= since)
    if until:
        query = query.where(AuditEntry.at < until)
    if route:
        query = query.where(AuditEntry.route.contains(route, autoescape=True))
    return list(session.scalars(query.order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit).offset(offset)))


def as_dict(entry: AuditEntry) -> dict:
    """An entry as JSON-ready values."""
    return {"id": entry.id, "at": entry.at.isoformat(), "actor": entry.actor, "user_id": entry.user_id, "client": entry.client,
            "kind": entry.kind, "method": entry.method, "route": entry.route, "path": entry.path,
            "query": entry.query, "status": entry.status}


def export_csv(rows: list[AuditEntry]) -> Iterator[str]:
    """The entries as CSV text (a header first); the query as JSON."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(EXPORT_COLUMNS)
    for entry in rows:
        values = as_dict(entry)
        writer.writerow([json.dumps(values[c], ensure_ascii=False) if c == "query" else values[c]
                         for c in EXPORT_COLUMNS])
    yield buf.getvalue()
