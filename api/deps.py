"""Dependencies shared by the routers: services, the work queue, a database session, the admin check.

Admins authenticate with the bearer token (API clients) or with the dashboard's session cookie, which
the login page hands out in exchange for the token: a random id of a server-side session (``api.sessions``;
signing out or changing a secret ends it), HttpOnly, SameSite=Strict, and Secure when the request came over
HTTPS (through a proxy in ``ATENDE_TRUSTED_PROXIES`` too). Wrong tokens count against the client's address
and lock it out with growing waits (``api.throttle``: 429 with ``Retry-After``). Requests that change
something and carry only the cookie must also come from our own origin: a browser's ``Origin`` header, when
present, has to name this host (CSRF).
"""
from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterator
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api import throttle
from api.sessions import session_is_open
from core.db import utcnow
from core.settings import Settings
from runtime.queue import WorkQueue
from runtime.services import Services

log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False)

SESSION_COOKIE = "atende_session"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
AUDIT_ACTOR = "audit_actor"  # the request state's name of who makes it (api.audit)


def set_actor(request: Request, actor: str) -> None:
    """Name who makes this request, for its audit entry (``api.audit``)."""
    setattr(request.state, AUDIT_ACTOR, actor)


def session_actor(request: Request) -> str:
    """A dashboard session as the audit names it: a digest of its cookie, never the cookie."""
    digest = hashlib.sha256(request.cookies.get(SESSION_COOKIE, "").encode()).hexdigest()[:12]
    return f"dashboard session {digest}"


async def get_services(request: Request) -> Services:
    """The app's services (async: no worker thread for an attribute read)."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_queue(services: ServicesDep) -> WorkQueue:
    return services.queue


QueueDep = Annotated[WorkQueue, Depends(get_queue)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    with services.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def token_matches(settings: Settings, token: str) -> bool:
    """Constant-time comparison with the admin token."""
    return secrets.compare_digest(token.encode(), settings.admin_token.encode())


class AuthFailed(Exception):
    """A wrong admin token (``retry_after`` 0), or a client locked out for ``retry_after`` seconds."""

    def __init__(self, retry_after: int = 0):
        super().__init__(retry_after)
        self.retry_after = retry_after


def authenticate(request: Request, services: Services, token: str) -> None:
    """Accept ``token`` if it is the admin token and the client is not locked out; raises ``AuthFailed``
    otherwise. A locked-out client's token is not even compared; a wrong one counts against the client
    (``api.throttle``) and is logged."""
    key = throttle.client_key(request.client.host if request.client else None)
    now = utcnow()
    with services.session() as db:
        before = throttle.standing(db, key, now)
        if before.retry_after:
            raise AuthFailed(before.retry_after)
        if token and token_matches(services.settings, token):
            if before.failures:
                throttle.forget(db, key)
            return
        after = throttle.record_failure(db, key, now)
    log.warning("wrong admin token from %s (%d in a row%s)", key, after.failures,
                f"; locked out for {after.retry_after} s" if after.retry_after else "")
    raise AuthFailed(after.retry_after)


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (``Origin`` or, failing that,
    ``Sec-Fetch-Site``); requests without either header (non-browser clients) pass."""
    origin = request.headers.get("origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc == request.headers.get("host", "")
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


def has_session(request: Request, services: Services) -> bool:
    """Whether the request carries the cookie of an open dashboard session."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        return False
    with services.session() as db:
        return session_is_open(db, services.settings, value)


def require_admin(
    request: Request, services: ServicesDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The bearer token, or the session cookie (plus a same-origin check for changes)."""
    if creds is not None:
        try:
            authenticate(request, services, creds.credentials)
            set_actor(request, "admin token")
            return
        except AuthFailed as exc:
            if exc.retry_after:
                raise HTTPException(status_code=429, detail=f"too many wrong tokens; try again in {exc.retry_after} s",
                                    headers={"Retry-After": str(exc.retry_after)}) from None
    elif has_session(request, services):
        if request.method not in SAFE_METHODS and not same_origin(request):
            raise HTTPException(status_code=403, detail="cross-site request refused")
        set_actor(request, session_actor(request))
        return
    raise HTTPException(status_code=401, detail="missing or wrong admin token", headers={"WWW-Authenticate": "Bearer"})


AdminDep = Depends(require_admin)
