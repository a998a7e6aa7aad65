"""Accounts over the API: admins create and change users (``/api/users``); every user reads who they are, changes
their password, and lists and ends their sessions and personal API tokens (``/api/me``). A token's value is in the
answer that makes it, and nowhere after."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from api.deps import SESSION_REF, CurrentUser, SessionDep, SignedIn, allow
from api.sessions import AdminSession, end_user_sessions, list_sessions, revoke_session
from core.db import utcnow
from core.errors import InvalidRequest
from runtime.accounts import passwords, tokens, users
from runtime.accounts.models import User
from runtime.accounts.roles import ADMIN, ROLES, VIEWER

router = APIRouter(tags=["accounts"], dependencies=[SignedIn])
Role = Literal[ROLES]  # type: ignore[valid-type]
Password = Annotated[SecretStr, Field(min_length=passwords.MIN_LENGTH, max_length=passwords.MAX_LENGTH)]


class UserCreate(BaseModel):
    email: str = Field(max_length=254)
    name: str = Field(default="", max_length=200)
    role: Role
    password: Password | None = Field(default=None, description="none: one is generated and answered once")
    assistants: list[str] = Field(default_factory=list, max_length=1000, description="ids or names it sees")
    all_assistants: bool = Field(default=False, description="sees every assistant (admins always do)")


class UserUpdate(BaseModel):
    email: str | None = Field(default=None, max_length=254)
    name: str | None = Field(default=None, max_length=200)
    role: Role | None = None
    active: bool | None = Field(default=None, description="false: signed out everywhere, tokens stop working")
    assistants: list[str] | None = Field(default=None, max_length=1000, description="replaces the list")
    all_assistants: bool | None = None
    password: Password | None = Field(default=None, description="a new password; the user is signed out everywhere")


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    email: str
    name: str
    role: str
    active: bool
    all_assistants: bool
    assistant_ids: list[str]
    has_password: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserPublic:
        return cls.model_validate({**{k: getattr(user, k) for k in cls.model_fields if k != "has_password"},
                                   "has_password": user.password_hash is not None})


class UserCreated(UserPublic):
    password: str | None = Field(description="the generated password, shown this once (null when one was given)")


class Me(BaseModel):
    id: str
    email: str
    role: str
    assistant_ids: list[str] | None = Field(description="null: every assistant")
    via: str = Field(description="session, token or admin token")


class PasswordChange(BaseModel):
    current_password: str = Field(default="", max_length=passwords.MAX_LENGTH,
                                  description="needed when the user has a password")
    new_password: Password


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650, description="none: until revoked")


class TokenPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    prefix: str = Field(description="the token's first characters")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="the token, shown this once: send it as Authorization: Bearer <token>")


class SessionPublic(BaseModel):
    id: str = Field(description="the session's public reference")
    created_at: datetime
    expires_at: datetime
    client: str
    user_agent: str
    current: bool

    @classmethod
    def of(cls, row: AdminSession, current: str | None) -> SessionPublic:
        return cls(id=row.ref, created_at=row.created_at, expires_at=row.expires_at, client=row.client,
                   user_agent=row.user_agent, current=row.ref == current)


# ------------------------------------------------------------------------------------------------ users (admins)


def create_user(session, body: UserCreate) -> UserCreated:
    """Add a user; without a password, one is generated and answered once."""
    generated = users.generate_password() if body.password is None else None
    user = users.create_user(session, email=body.email, role=body.role, name=body.name,
                             password=generated or body.password.get_secret_value(),  # type: ignore[union-attr]
                             assistants=body.assistants, all_assistants=body.all_assistants)
    session.commit()
    return UserCreated(**UserPublic.of(user).model_dump(), password=generated)


def update_user(session, user_id: str, body: UserUpdate) -> UserPublic:
    """Change a user; a new password or deactivation signs them out everywhere."""
    user = users.get_user(session, user_id)
    changes = body.model_dump(exclude_unset=True)
    if "password" in changes:
        changes["password"] = body.password.get_secret_value() if body.password else None
    changes = {k: v for k, v in changes.items() if v is not None}
    users.update_user(session, user, changes)
    if "password" in changes or changes.get("active") is False:
        end_user_sessions(session, user.id)
    session.commit()
    return UserPublic.of(user)


@router.get("/api/users", response_model=list[UserPublic], dependencies=[allow(ADMIN)])
def list_users(session: SessionDep):
    """Every user, oldest first."""
    return [UserPublic.of(u) for u in users.list_users(session)]


@router.post("/api/users", status_code=201, response_model=UserCreated, dependencies=[allow(ADMIN)],
             responses={409: {"description": "e-mail taken"}})
def add_user(body: UserCreate, session: SessionDep):
    return create_user(session, body)


@router.get("/api/users/{user_id}", response_model=UserPublic, dependencies=[allow(ADMIN)])
def get_user(user_id: str, session: SessionDep):
    return UserPublic.of(users.get_user(session, user_id))


@router.patch("/api/users/{user_id}", response_model=UserPublic, dependencies=[allow(ADMIN)],
              responses={409: {"description": "e-mail taken"}})
def change_user(user_id: str, body: UserUpdate, session: SessionDep):
    return update_user(session, user_id, body)


# ------------------------------------------------------------------------------------------------ me


@router.get("/api/me", response_model=Me, dependencies=[allow(VIEWER)])
def me(principal: CurrentUser):
    """Who the credentials stand for, their role and the assistants they see."""
    ids = sorted(principal.assistant_ids) if principal.assistant_ids is not None else None
    return Me(id=principal.user_id, email=principal.email, role=principal.role, assistant_ids=ids, via=principal.via)


def change_password(session, principal, request: Request, body: PasswordChange) -> None:
    """Set the user's password (checking the current one, if they have one); their other sessions end."""
    user = users.get_user(session, principal.user_id)
    if user.password_hash is not None and not passwords.verify_password(user.password_hash, body.current_password):
        raise InvalidRequest("the current password is wrong")
    users.update_user(session, user, {"password": body.new_password.get_secret_value()})
    end_user_sessions(session, user.id, keep=getattr(request.state, SESSION_REF, None))
    session.commit()


@router.post("/api/me/password", status_code=204, dependencies=[allow(VIEWER)])
def set_my_password(body: PasswordChange, request: Request, session: SessionDep, principal: CurrentUser):
    """Change one's password; every other session of the user ends."""
    change_password(session, principal, request, body)
    return Response(status_code=204)


@router.get("/api/me/sessions", response_model=list[SessionPublic], dependencies=[allow(VIEWER)])
def my_sessions(request: Request, session: SessionDep, principal: CurrentUser):
    """One's open dashboard sessions, newest first (``current``: this request's)."""
    current = getattr(request.state, SESSION_REF, None)
    return [SessionPublic.of(s, current) for s in list_sessions(session, principal.user_id)]


@router.delete("/api/me/sessions/{session_id}", status_code=204, dependencies=[allow(VIEWER)])
def end_my_session(session_id: str, session: SessionDep, principal: CurrentUser):
    """Sign one of one's sessions out (its cookie stops working at once)."""
    revoke_session(session, principal.user_id, session_id)
    return Response(status_code=204)


def issue_token(session, principal, body: TokenCreate) -> TokenCreated:
    """Make a personal API token for the user; its value is answered once."""
    expires = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    row, value = tokens.issue_token(session, users.get_user(session, principal.user_id), body.name, expires)
    return TokenCreated(**TokenPublic.model_validate(row).model_dump(), token=value)


@router.get("/api/me/tokens", response_model=list[TokenPublic], dependencies=[allow(VIEWER)])
def my_tokens(session: SessionDep, principal: CurrentUser):
    """One's personal API tokens, newest first, revoked ones too."""
    return tokens.list_tokens(session, principal.user_id)


@router.post("/api/me/tokens", status_code=201, response_model=TokenCreated, dependencies=[allow(VIEWER)])
def add_my_token(body: TokenCreate, session: SessionDep, principal: CurrentUser):
    """A new personal API token acting with the user's role; shown this once."""
    return issue_token(session, principal, body)


@router.delete("/api/me/tokens/{token_id}", status_code=204, dependencies=[allow(VIEWER)])
def revoke_my_token(token_id: str, session: SessionDep, principal: CurrentUser):
    """Revoke one of one's tokens: it stops working at once."""
    tokens.revoke_token(session, principal.user_id, token_id)
    return Response(status_code=204)

