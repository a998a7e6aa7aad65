"""Dependencies shared by the routers: services, the work queue, a database session, who is asking and what
they may do.

A request acts as a user (``runtime.accounts``): a bearer token -- a personal API token, or the deployment's
admin token, which stands for the bootstrap admin -- or the dashboard's session cookie, which the login page
hands out for an e-mail and password (or the admin token): a random id of a server-side session
(``api.sessions``; signing out or changing a secret ends it), HttpOnly, SameSite=Strict, and Secure when the
request came over HTTPS (through a proxy in ``ATENDE_TRUSTED_PROXIES`` too). Wrong credentials count against the
client's address and lock it out with growing waits (``api.throttle``: 429 with ``Retry-After``). Requests that
change something and carry only the cookie must also come from our own origin: a browser's ``Origin`` header,
when present, has to name this host (CSRF).

Every route names the least role it needs and, when it touches one assistant's data, how to find that assistant
(``allow``; the resolvers are in ``api.scopes``): a user without the role, or without that assistant, gets 403.
"""
from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api import throttle
from api.sessions import find_session
from core.db import utcnow
from core.settings import Settings
from runtime.accounts import tokens, users
from runtime.accounts.models import User
from runtime.accounts.roles import ADMIN, Principal
from runtime.queue import WorkQueue
from runtime.services import Services

log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False)

SESSION_COOKIE = "atende_session"
MAX_OFFSET = 10**9  # a page's offset: past any table's rows, and within a database integer (SQLite: 2**63 - 1)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
AUDIT_ACTOR = "audit_actor"  # the request state's name of who makes it (api.audit): the user's e-mail
AUDIT_USER = "audit_user"  # ... and the user's id
PRINCIPAL = "principal"  # ... and the whole Principal, once authenticated
SESSION_REF = "session_ref"  # ... and, signed in by cookie, the session's public ref

Scope = Callable[[Session, dict[str, Any]], str | None]
"""Finds the assistant a route's path names (its id), or None when the path names nothing that exists."""


def set_actor(request: Request, principal: Principal) -> None:
    """Name who makes this request, for its audit entry (``api.audit``) and the routes after."""
    setattr(request.state, PRINCIPAL, principal)
    setattr(request.state, AUDIT_ACTOR, principal.email)
    setattr(request.state, AUDIT_USER, principal.user_id)


def set_audit_actor(request: Request, actor: str) -> None:
    """Name who makes a request that no user makes (an automation's own token) for its audit entry."""
    setattr(request.state, AUDIT_ACTOR, actor)


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
    """Wrong credentials (``retry_after`` 0), or a client locked out for ``retry_after`` seconds."""

    def __init__(self, retry_after: int = 0):
        super().__init__(retry_after)
        self.retry_after = retry_after


def throttled(request: Request, services: Services, check: Callable[[Session], Principal | None]) -> Principal:
    """Run ``check`` (credentials -> the user, or None) unless the client is locked out; raises ``AuthFailed``
    otherwise. A locked-out client's credentials are not even checked; wrong ones count against the client
    (``api.throttle``) and are logged."""
    key = throttle.client_key(request.client.host if request.client else None)
    now = utcnow()
    with services.session() as db:
        before = throttle.standing(db, key, now)
        if before.retry_after:
            raise AuthFailed(before.retry_after)
        principal = check(db)
        if principal is not None:
            if before.failures:
                throttle.forget(db, key)
            return principal
        after = throttle.record_failure(db, key, now)
    log.warning("wrong credentials from %s (%d in a row%s)", key, after.failures,
                f"; locked out for {after.retry_after} s" if after.retry_after else "")
    raise AuthFailed(after.retry_after)


def bearer_principal(db: Session, settings: Settings, token: str) -> Principal | None:
    """The user of a bearer token: the admin token is the bootstrap admin's, else a personal API token's."""
    if token and token_matches(settings, token):
        return users.principal_of(users.bootstrap_admin(db), "admin token")
    user = tokens.user_of_token(db, token)
    return users.principal_of(user, "token") if user is not None else None


def authenticate(request: Request, services: Services, token: str) -> Principal:
    """The user of a bearer token, throttled (see ``throttled``)."""
    return throttled(request, services, lambda db: bearer_principal(db, services.settings, token))


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (``Origin`` or, failing that,
    ``Sec-Fetch-Site``); requests without either header (non-browser clients) pass."""
    origin = request.headers.get("origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc == request.headers.get("host", "")
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


def session_principal(request: Request, services: Services) -> Principal | None:
    """The active user of the request's open dashboard session, if any (its ref noted on the request)."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        return None
    with services.session() as db:
        row = find_session(db, services.settings, value)
        user = db.get(User, row.user_id) if row is not None else None
        if row is None or user is None or not user.active:
            return None
        setattr(request.state, SESSION_REF, row.ref)
        return users.principal_of(user, "session")


def current_user(
    request: Request, services: ServicesDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Who asks: the bearer token's user, or the session cookie's (plus a same-origin check for changes); 401
    without either."""
    known = getattr(request.state, PRINCIPAL, None)
    if known is not None:
        return known
    principal = None
    if creds is not None:
        try:
            principal = authenticate(request, services, creds.credentials)
        except AuthFailed as exc:
            if exc.retry_after:
                raise HTTPException(status_code=429, detail=f"too many wrong tokens; try again in {exc.retry_after} s",
                                    headers={"Retry-After": str(exc.retry_after)}) from None
    else:
        principal = session_principal(request, services)
        if principal is not None and request.method not in SAFE_METHODS and not same_origin(request):
            raise HTTPException(status_code=403, detail="cross-site request refused")
    if principal is None:
        raise HTTPException(status_code=401, detail="missing or wrong credentials",
                            headers={"WWW-Authenticate": "Bearer"})
    set_actor(request, principal)
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]
SignedIn = Depends(current_user)


def allow(role: str, scope: Scope | None = None) -> Any:
    """A route's rule: the user needs ``role`` (or above) and, with ``scope``, the assistant it finds in the path
    (403 otherwise; a path naming nothing is left to the route's 404)."""
    def check(request: Request, services: ServicesDep, principal: CurrentUser) -> None:
        principal.require(role)
        if scope is not None:
            with services.session() as db:
                assistant_id = scope(db, request.path_params)
            if assistant_id is not None:
                principal.require_assistant(assistant_id)

    return Depends(check)


AdminDep = allow(ADMIN)
