"""The audit trail's capture (``runtime.audit``): a middleware that, once an admin's request is answered, records
it if it changed something (any method but GET/HEAD/OPTIONS) or read personal data (:data:`PERSONAL_READS`), and the
admin routes that list and export the trail.

Who asks comes from the authentication (``api.deps.current_user``, the dashboard's page session): they leave the
user's e-mail and id on the request's state (``api.deps.set_actor``); a request without one (public routes, refused ones) is
not recorded here (wrong tokens are counted by ``api.throttle``). The entry is written after the answer, off the
event loop.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import logging

import anyio
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import AUDIT_ACTOR, AUDIT_USER, MAX_OFFSET, AdminDep, SessionDep
from runtime import audit
from runtime.services import Services

# route templates whose answer shows personal data: reading them is recorded like a change
PERSONAL_READS = frozenset({
    "/api/conversations/export", "/api/conversations/{conversation_id}", "/dashboard/conversations/{conversation_id}",
    "/api/customers/{customer_id}/export", "/api/customers/{customer_id}/erasures", "/api/audit",
    "/api/audit/export",
})
log = logging.getLogger(__name__)
router = APIRouter(tags=["audit"], dependencies=[AdminDep])


class AuditMiddleware:
    """Records the admin's changes and personal-data reads once they are answered (see the module docstring)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app, self.services = app, services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            state = scope.get("state") or {}
            actor = state.get(AUDIT_ACTOR)
            route = getattr(scope.get("route"), "path", None) or scope["path"]
            if actor and (audit.kind_of(scope["method"]) == "change" or route in PERSONAL_READS):
                client = scope.get("client") or ("", 0)
                entry = audit.Request(
                    actor=actor, user_id=state.get(AUDIT_USER), client=str(client[0]), method=scope["method"], route=route,
                    path=scope["path"], path_params={k: str(v) for k, v in (scope.get("path_params") or {}).items()},
                    query=_query(scope), status=status)
                try:
                    await anyio.to_thread.run_sync(audit.record, self.services, entry)
                except Exception:  # the answer has gone: say loudly that its entry is missing
                    log.exception("audit entry not recorded: %s %s by %s (%d)", entry.method, entry.route, actor, status)


def _query(scope: Scope) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


@router.get("/api/audit")
def list_audit(session: SessionDep, actor: str | None = None, user_id: str | None = None, kind: Literal["change", "read"] | None = None,
               since: datetime | None = None, until: datetime | None = None,
               route: Annotated[str | None, Query(max_length=300, description="a part of the route template")] = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> list[dict]:
    """Audit entries, newest first, by actor (an e-mail) or user id, kind (change/read), time and route."""
    rows = audit.entries(session, actor=actor, user_id=user_id, kind=kind, since=since, until=until, route=route, limit=limit,
                         offset=offset)
    return [audit.as_dict(e) for e in rows]


@router.get("/api/audit/export", response_class=StreamingResponse, responses={200: {"content": {"text/csv": {}}}})
def export_audit(session: SessionDep, actor: str | None = None, user_id: str | None = None, kind: Literal["change", "read"] | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 route: Annotated[str | None, Query(max_length=300)] = None,
                 limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000) -> StreamingResponse:
    """The filtered entries as CSV (newest first)."""
    rows = audit.entries(session, actor=actor, user_id=user_id, kind=kind, since=since, until=until, route=route,
                         limit=limit)
    return StreamingResponse(audit.export_csv(rows), media_type="text/csv",
                             headers={"Content-Disposition": 'attachment; filename="audit.csv"'})
