"""The dashboard's account pages: "My account" (password, sessions, personal API tokens) for every user, and
"Accounts" (users, their role and assistants) for admins. Plain forms posted to these routes, which do what the
JSON routes of ``api.routes.accounts`` do and draw the page again; a new token or generated password is shown on
that one page only."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse
from pydantic import SecretStr, ValidationError

from api import i18n
from api.deps import PRINCIPAL, SESSION_REF, CurrentUser, SessionDep, allow
from api.routes import accounts
from api.routes.dashboard import render, require_page_session, visible_assistants
from api.sessions import list_sessions, revoke_session
from core.errors import Conflict, InvalidRequest, NotFound
from runtime.accounts import tokens, users
from runtime.accounts.roles import ADMIN, ROLES, VIEWER

pages = APIRouter(prefix="/dashboard", include_in_schema=False, dependencies=[Depends(require_page_session)])
_REFUSED = (Conflict, InvalidRequest, NotFound, ValidationError)


def _refusal(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
    return str(exc)


# --------------------------------------------------------------------------------------------- my account


def _account_page(request: Request, session, status_code: int = 200, **context):
    principal = getattr(request.state, PRINCIPAL)
    return render(request, "account.html", status_code=status_code,
                  sessions=[accounts.SessionPublic.of(s, getattr(request.state, SESSION_REF, None))
                            for s in list_sessions(session, principal.user_id)],
                  tokens=tokens.list_tokens(session, principal.user_id),
                  user=users.get_user(session, principal.user_id), **context)


@pages.get("/account", dependencies=[allow(VIEWER)])
def account_page(request: Request, session: SessionDep):
    """Who one is, one's password, sessions and personal API tokens."""
    return _account_page(request, session)


@pages.post("/account/password", dependencies=[allow(VIEWER)])
def account_password(request: Request, session: SessionDep, principal: CurrentUser,
                     current_password: Annotated[str, Form(max_length=1024)] = "",
                     new_password: Annotated[str, Form(max_length=1024)] = ""):
    try:
        body = accounts.PasswordChange(current_password=current_password, new_password=SecretStr(new_password))
        accounts.change_password(session, principal, request, body)
    except _REFUSED as exc:
        return _account_page(request, session, 400, error=_refusal(exc))
    _ = i18n.translator(request)
    return _account_page(request, session, notice=_("Password changed; your other sessions were signed out."))


@pages.post("/account/sessions/{session_id}/end", dependencies=[allow(VIEWER)])
def account_end_session(session_id: str, session: SessionDep, principal: CurrentUser):
    revoke_session(session, principal.user_id, session_id)
    return RedirectResponse("/dashboard/account", status_code=303)


@pages.post("/account/tokens", dependencies=[allow(VIEWER)])
def account_new_token(request: Request, session: SessionDep, principal: CurrentUser,
                      name: Annotated[str, Form(max_length=100)] = "",
                      expires_in_days: Annotated[str, Form(max_length=5)] = ""):
    try:
        body = accounts.TokenCreate(name=name, expires_in_days=expires_in_days or None)
        created = accounts.issue_token(session, principal, body)
    except _REFUSED as exc:
        return _account_page(request, session, 400, error=_refusal(exc))
    return _account_page(request, session, new_token=created)


@pages.post("/account/tokens/{token_id}/revoke", dependencies=[allow(VIEWER)])
def account_revoke_token(token_id: str, session: SessionDep, principal: CurrentUser):
    tokens.revoke_token(session, principal.user_id, token_id)
    return RedirectResponse("/dashboard/account", status_code=303)


# --------------------------------------------------------------------------------------------- accounts (admins)


def _accounts_page(request: Request, session, status_code: int = 200, **context):
    return render(request, "accounts.html", status_code=status_code, users=users.list_users(session), roles=ROLES,
                  assistants=visible_assistants(session, getattr(request.state, PRINCIPAL)), **context)


@pages.get("/accounts", dependencies=[allow(ADMIN)])
def accounts_page(request: Request, session: SessionDep):
    """Every user with their role and assistants; add one, change one."""
    return _accounts_page(request, session)


@pages.post("/accounts", dependencies=[allow(ADMIN)])
def accounts_add(request: Request, session: SessionDep, email: Annotated[str, Form(max_length=254)] = "",
                 name: Annotated[str, Form(max_length=200)] = "", role: Annotated[str, Form(max_length=20)] = "",
                 assistants: Annotated[list[str], Form()] = [],  # noqa: B006 (FastAPI copies defaults)
                 all_assistants: Annotated[bool, Form()] = False):
    try:
        created = accounts.create_user(session, accounts.UserCreate(
            email=email, name=name, role=role, assistants=assistants, all_assistants=all_assistants))
    except _REFUSED as exc:
        session.rollback()
        return _accounts_page(request, session, 400, error=_refusal(exc))
    return _accounts_page(request, session, created=created)


@pages.post("/accounts/{user_id}", dependencies=[allow(ADMIN)])
def accounts_change(request: Request, user_id: str, session: SessionDep,
                    role: Annotated[str, Form(max_length=20)] = "",
                    assistants: Annotated[list[str], Form()] = [],  # noqa: B006
                    all_assistants: Annotated[bool, Form()] = False, active: Annotated[bool, Form()] = False,
                    password: Annotated[str, Form(max_length=1024)] = ""):
    try:
        accounts.update_user(session, user_id, accounts.UserUpdate(
            role=role, assistants=assistants, all_assistants=all_assistants, active=active,
            password=SecretStr(password) if password else None))
    except _REFUSED as exc:
        session.rollback()
        return _accounts_page(request, session, 400, error=_refusal(exc))
    _ = i18n.translator(request)
    return _accounts_page(request, session, notice=_("Saved %(email)s.", email=users.get_user(session, user_id).email))
