"""Dependencies shared by the routers: services, a database session, the admin check.

Admins authenticate with the bearer token (API clients) or with the dashboard's session cookie, which
the login page hands out in exchange for the token. The cookie is ``<expiry>.<nonce>.<hmac>``, signed
with a key derived from ``secret_key`` and the admin token (changing either signs everyone out),
HttpOnly and SameSite=Strict. Requests that change something and carry only the cookie must also come
from our own origin: a browser's ``Origin`` header, when present, has to name this host (CSRF).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterator
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from atende.services import Services
from atende.settings import Settings

_bearer = HTTPBearer(auto_error=False)

SESSION_COOKIE = "atende_session"
SESSION_TTL_S = 12 * 3600
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    with services.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def _signing_key(settings: Settings) -> bytes:
    material = f"dashboard-session\0{settings.secret_key}\0{settings.admin_token}".encode()
    return hashlib.sha256(material).digest()


def _sign(settings: Settings, payload: str) -> str:
    return hmac.new(_signing_key(settings), payload.encode(), hashlib.sha256).hexdigest()


def issue_session_cookie(settings: Settings, now: float | None = None) -> str:
    """A new signed session value, valid for ``SESSION_TTL_S`` seconds."""
    payload = f"{int((now or time.time()) + SESSION_TTL_S)}.{secrets.token_urlsafe(12)}"
    return f"{payload}.{_sign(settings, payload)}"


def valid_session_cookie(settings: Settings, value: str | None, now: float | None = None) -> bool:
    """True for an unexpired value signed by ``issue_session_cookie`` with the same settings."""
    if not value or value.count(".") != 2:
        return False
    payload, signature = value.rsplit(".", 1)
    if not hmac.compare_digest(signature, _sign(settings, payload)):
        return False
    expires = payload.split(".", 1)[0]
    return expires.isdigit() and int(expires) > (now or time.time())


def token_matches(settings: Settings, token: str) -> bool:
    """Constant-time comparison with the admin token."""
    return secrets.compare_digest(token.encode(), settings.admin_token.encode())


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (``Origin`` or, failing that,
    ``Sec-Fetch-Site``); requests without either header (non-browser clients) pass."""
    origin = request.headers.get("origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc == request.headers.get("host", "")
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


def has_session(request: Request, settings: Settings) -> bool:
    """Whether the request carries a valid dashboard session cookie."""
    return valid_session_cookie(settings, request.cookies.get(SESSION_COOKIE))


def require_admin(
    request: Request, services: ServicesDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The bearer token, or the session cookie (plus a same-origin check for changes)."""
    if creds is not None and token_matches(services.settings, creds.credentials):
        return
    if creds is None and has_session(request, services.settings):
        if request.method not in SAFE_METHODS and not same_origin(request):
            raise HTTPException(status_code=403, detail="cross-site request refused")
        return
    raise HTTPException(status_code=401, detail="missing or wrong admin token", headers={"WWW-Authenticate": "Bearer"})


AdminDep = Depends(require_admin)
