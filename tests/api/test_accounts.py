"""Accounts over the real app and database: signing in by e-mail and password (throttled), personal API tokens
(shown once, only a hash kept, revocable, expiring, last use noted), sessions listed and ended, password changes,
users an admin manages (the bootstrap admin stays one), every list kept to the user's assistants, the audit naming
the user, and the ``atende users`` CLI in a child process."""
from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.sessions import AdminSession
from atende.app import create_app
from core.db import utcnow
from runtime.accounts import users
from runtime.accounts.models import ApiToken, User
from runtime.audit import AuditEntry
from tests.api.test_dashboard import add_conversation
from tests.conftest import ADMIN_TOKEN, REPO, TEST_SECRETS

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PASSWORD = "correct horse battery"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def login(client: TestClient, email: str, password: str = PASSWORD) -> str:
    """Sign in through the form; returns the session cookie (and leaves the client without it)."""
    r = client.post("/dashboard/login", data={"email": email, "password": password}, follow_redirects=False)
    assert r.status_code == 303, r.text
    value = r.cookies["atende_session"]
    client.cookies.clear()
    return value


def cookie(value: str) -> dict:
    return {"Cookie": f"atende_session={value}"}


@pytest.fixture
def app(sqlite_services):
    with TestClient(create_app(services=sqlite_services)) as client:
        shop = client.post("/api/assistants", json={"name": "loja"}, headers=ADMIN).json()["id"]
        other = client.post("/api/assistants", json={"name": "outra"}, headers=ADMIN).json()["id"]
        made = client.post("/api/users", headers=ADMIN, json={
            "email": " Ana@Example.com ", "role": "operator", "password": PASSWORD, "assistants": ["loja"]})
        assert made.status_code == 201 and made.json()["password"] is None, made.text
        yield client, sqlite_services, {"loja": shop, "outra": other, "ana": made.json()["id"]}


def test_sign_in_by_email_and_password_with_throttling(app, monkeypatch):
    client, services, ids = app
    # a lockout long enough that a loaded machine's slow password checks (argon2) cannot outlast it before the next try
    monkeypatch.setattr("api.throttle.BASE_LOCKOUT_S", 60.0)
    assert client.get("/api/me", headers=cookie(login(client, "ANA@example.com"))).json() == {
        "id": ids["ana"], "email": "ana@example.com", "role": "operator", "assistant_ids": [ids["loja"]], "via": "session"}
    for email, password in (("ana@example.com", "wrong password!"), ("nobody@example.com", PASSWORD), ("", PASSWORD)):
        r = client.post("/dashboard/login", data={"email": email, "password": password}, follow_redirects=False)
        assert r.status_code == 401 and "Wrong e-mail or password" in r.text and "set-cookie" not in r.headers
    for _ in range(2):
        client.post("/dashboard/login", data={"email": "ana@example.com", "password": "guess guess guess"})
    r = client.post("/dashboard/login", data={"email": "ana@example.com", "password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1  # even the right password waits
    with services.session() as db:
        db.execute(AdminSession.__table__.delete())
        from api.throttle import AuthFailure
        db.execute(AuthFailure.__table__.delete())
        db.commit()
    # the admin token, with no e-mail or the bootstrap admin's, signs in the bootstrap admin
    for email in ("", "admin@localhost"):
        me = client.get("/api/me", headers=cookie(login(client, email, ADMIN_TOKEN))).json()
        assert (me["id"], me["role"], me["assistant_ids"]) == ("bootstrap", "admin", None)


def test_personal_tokens_are_shown_once_hashed_revocable_and_expire(app):
    client, services, ids = app
    session = cookie(login(client, "ana@example.com"))
    made = client.post("/api/me/tokens", json={"name": "relatórios", "expires_in_days": 30}, headers=session).json()
    token = made["token"]
    assert token.startswith("atk_") and len(token) > 40 and made["prefix"] == token[:10]
    assert made["expires_at"] and made["last_used_at"] is None
    listed = client.get("/api/me/tokens", headers=session).json()
    assert token not in str(listed) and [t["id"] for t in listed] == [made["id"]]
    with services.session() as db:  # only a SHA-256 is stored
        row = db.get(ApiToken, made["id"])
        assert token not in (row.token_hash, row.prefix) and len(row.token_hash) == 64
    assert client.get("/api/conversations", headers=bearer(token)).status_code == 200
    assert client.post("/api/assistants", json={"name": "x"}, headers=bearer(token)).status_code == 403  # operator
    assert client.get("/api/me/tokens", headers=session).json()[0]["last_used_at"] is not None
    with services.session() as db:  # expired: refused
        db.get(ApiToken, made["id"]).expires_at = utcnow() - timedelta(seconds=1)
        db.commit()
    assert client.get("/api/me", headers=bearer(token)).status_code == 401
    second = client.post("/api/me/tokens", json={"name": "script"}, headers=session).json()
    assert client.get("/api/me", headers=bearer(second["token"])).status_code == 200
    assert client.delete(f"/api/me/tokens/{second['id']}", headers=session).status_code == 204
    assert client.get("/api/me", headers=bearer(second["token"])).status_code == 401
    admin_token = client.post("/api/me/tokens", json={"name": "mine"}, headers=ADMIN).json()
    assert client.delete(f"/api/me/tokens/{admin_token['id']}", headers=session).status_code == 404  # not hers


def test_sessions_are_listed_and_ended_and_a_password_change_ends_the_others(app):
    client, services, ids = app
    first, second = login(client, "ana@example.com"), login(client, "ana@example.com")
    listed = client.get("/api/me/sessions", headers=cookie(first)).json()
    assert len(listed) == 2 and [s["current"] for s in listed].count(True) == 1
    other = next(s["id"] for s in listed if not s["current"])
    assert client.delete(f"/api/me/sessions/{other}", headers=cookie(first)).status_code == 204
    assert client.get("/api/me", headers=cookie(second)).status_code == 401
    assert client.get("/dashboard/conversations", headers=cookie(second), follow_redirects=False).status_code == 303
    third = login(client, "ana@example.com")
    wrong = client.post("/api/me/password", headers=cookie(first),
                        json={"current_password": "not it at all", "new_password": "a brand new password"})
    assert wrong.status_code == 422
    short = client.post("/api/me/password", headers=cookie(first), json={"current_password": PASSWORD, "new_password": "short"})
    assert short.status_code == 422
    assert client.post("/api/me/password", headers=cookie(first),
                       json={"current_password": PASSWORD, "new_password": "a brand new password"}).status_code == 204
    assert client.get("/api/me", headers=cookie(first)).status_code == 200  # this one stays
    assert client.get("/api/me", headers=cookie(third)).status_code == 401  # the others end
    assert client.post("/dashboard/login", data={"email": "ana@example.com", "password": PASSWORD}).status_code == 401
    login(client, "ana@example.com", "a brand new password")


def test_admins_manage_users_and_the_bootstrap_admin_stays_one(app):
    client, services, ids = app
    made = client.post("/api/users", headers=ADMIN, json={"email": "bia@example.com", "role": "viewer"}).json()
    assert len(made["password"]) >= 20 and made["has_password"]  # generated, answered once
    assert client.get(f"/api/users/{made['id']}", headers=ADMIN).json().get("password") is None
    bia = cookie(login(client, "bia@example.com", made["password"]))
    assert client.get("/api/assistants", headers=bia).json() == []  # given none
    assert client.post("/api/users", headers=ADMIN, json={"email": "BIA@example.com", "role": "viewer"}).status_code == 409
    for bad in ({"email": "not-an-email", "role": "viewer"}, {"email": "c@example.com", "role": "owner"},
                {"email": "c@example.com", "role": "viewer", "password": "short"},
                {"email": "c@example.com", "role": "viewer", "assistants": ["nope"]}):
        assert client.post("/api/users", headers=ADMIN, json=bad).status_code in (404, 422), bad
    r = client.patch(f"/api/users/{made['id']}", headers=ADMIN, json={"role": "supervisor", "assistants": ["outra"]})
    assert (r.json()["role"], r.json()["assistant_ids"]) == ("supervisor", [ids["outra"]])
    assert [a["name"] for a in client.get("/api/assistants", headers=bia).json()] == ["outra"]
    assert client.patch(f"/api/users/{made['id']}", headers=ADMIN, json={"active": False}).status_code == 200
    assert client.get("/api/me", headers=bia).status_code == 401  # signed out everywhere
    assert client.post("/dashboard/login", data={"email": "bia@example.com", "password": made["password"]}).status_code == 401
    for change in ({"role": "viewer"}, {"active": False}):
        assert client.patch("/api/users/bootstrap", headers=ADMIN, json=change).status_code == 422
    assert client.patch("/api/users/bootstrap", headers=ADMIN, json={"email": "dono@example.com"}).status_code == 200
    assert client.get("/api/me", headers=cookie(login(client, "dono@example.com", ADMIN_TOKEN))).json()["id"] == "bootstrap"
    ana = cookie(login(client, "ana@example.com"))
    assert client.get("/api/users", headers=ana).status_code == 403
    assert client.patch(f"/api/users/{ids['ana']}", headers=ana, json={"role": "admin"}).status_code == 403


def test_every_list_is_kept_to_the_users_assistants(app):
    client, services, ids = app
    mine = add_conversation(services, ids["loja"], "api", "cliente-loja", "Abrem sábado?", "Sim.")
    theirs = add_conversation(services, ids["outra"], "api", "cliente-outra", "Abrem domingo?", "Não.")
    for conv in (mine, theirs):
        assert client.post(f"/api/conversations/{conv}/ai", headers=ADMIN, json={"enabled": False}).status_code == 200
    for assistant, phone in (("loja", "p-1"), ("outra", "p-2")):
        sender = client.post("/api/whatsapp/senders", headers=ADMIN, json={
            "assistant_id": assistant, "phone_number_id": phone, "access_token": "t", "app_secret": "s",
            "verify_token": "v"}).json()
        client.post("/api/whatsapp/templates", headers=ADMIN, json={
            "sender_id": sender["id"], "name": f"modelo_{assistant}", "language": "pt_BR", "category": "UTILITY",
            "body": "Olá"}).raise_for_status()
    ana = cookie(login(client, "ana@example.com"))
    get = lambda url, **kw: client.get(url, headers=ana, **kw)  # noqa: E731
    assert [a["name"] for a in get("/api/assistants").json()] == ["loja"]
    assert [c["id"] for c in get("/api/conversations").json()["items"]] == [mine]
    assert get("/api/metrics").json()["conversations"] == 1
    assert [c["id"] for c in get("/api/handoff-queue").json()["with_human"]] == [mine]
    assert [s["phone_number_id"] for s in get("/api/whatsapp/senders").json()] == ["p-1"]
    assert [t["name"] for t in get("/api/whatsapp/templates").json()] == ["modelo_loja"]
    assert get(f"/api/conversations/{theirs}").status_code == 403
    assert get("/api/conversations", params={"assistant_id": ids["outra"]}).status_code == 403
    page = get("/dashboard/conversations").text
    assert "cliente-loja" in page and "cliente-outra" not in page
    assert get(f"/dashboard/conversations/{theirs}").status_code == 403
    assert "Not allowed" in get(f"/dashboard/knowledge?assistant_id={ids['outra']}").text
    assert len(client.get("/api/conversations", headers=ADMIN).json()["items"]) == 2  # admins see all


def test_the_audit_names_the_user_who_acted(app):
    client, services, ids = app
    conv = add_conversation(services, ids["loja"], "api", "cliente", "Oi", "Olá!")
    session = cookie(login(client, "ana@example.com"))
    token = client.post("/api/me/tokens", json={"name": "script"}, headers=session).json()["token"]
    assert client.post(f"/api/conversations/{conv}/messages", json={"text": "Aqui é a Ana"}, headers=session).status_code == 201
    assert client.post(f"/api/conversations/{conv}/handback", json={}, headers=bearer(token)).status_code == 200
    assert client.post("/api/assistants", json={"name": "x"}, headers=bearer(token)).status_code == 403
    with services.session() as db:
        rows = db.scalars(select(AuditEntry).where(AuditEntry.route.like("/api/conversations/%"))
                          .order_by(AuditEntry.at)).all()
        assert [(e.actor, e.user_id, e.route, e.status) for e in rows] == [
            ("ana@example.com", ids["ana"], "/api/conversations/{conversation_id}/messages", 201),
            ("ana@example.com", ids["ana"], "/api/conversations/{conversation_id}/handback", 200)]
        refused = db.scalars(select(AuditEntry).where(AuditEntry.route == "/api/assistants", AuditEntry.status == 403)).all()
        assert [e.actor for e in refused] == ["ana@example.com"]  # a refused change is on the record too
    mine = client.get("/api/audit", params={"user_id": ids["ana"]}, headers=ADMIN).json()
    assert {e["actor"] for e in mine} == {"ana@example.com"} and len(mine) >= 4


def test_hostile_requests_get_a_clear_4xx(app):
    client, services, ids = app
    assert client.get("/api/me").status_code == 401
    assert client.post("/api/users", json={"email": "a@b.c", "role": "viewer"}).status_code == 401
    huge = b'{"email": "' + b"a" * 3_000_000 + b'", "role": "viewer"}'
    assert client.post("/api/users", content=huge, headers={**ADMIN, "Content-Type": "application/json"}).status_code == 413
    for body in (b"[", b'{"email": {"$gt": ""}, "role": "viewer"}', b'{"email": "a@b.c", "role": ["admin"]}', b"null"):
        r = client.post("/api/users", content=body, headers={**ADMIN, "Content-Type": "application/json"})
        assert r.status_code == 422, (body, r.status_code)
    long_password = {"email": "ana@example.com", "password": "x" * 5000}
    assert client.post("/dashboard/login", data=long_password).status_code == 422
    assert client.get("/api/me", headers=bearer("atk_" + "x" * 500)).status_code == 401
    assert client.post("/dashboard/login", data={"email": "ana@example.com", "password": PASSWORD},
                       headers={"Origin": "https://evil.example"}).status_code == 403


def test_sign_in_and_tokens_on_both_databases(services):
    """The store on SQLite and PostgreSQL: hashes verify, e-mails are unique whatever their case, and processes
    using the admin token at once make one bootstrap admin."""
    from runtime.accounts import tokens

    with services.session() as db:
        user = users.create_user(db, email="Caio@Example.com", role="supervisor", password=PASSWORD)
        db.commit()
        assert users.check_password(db, "caio@example.com", PASSWORD).id == user.id
        assert users.check_password(db, "caio@example.com", PASSWORD + "x") is None
        assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
        with pytest.raises(Exception, match="exists"):
            users.create_user(db, email="CAIO@example.com", role="viewer")
        db.rollback()
        _, value = tokens.issue_token(db, user, "t")
        assert tokens.user_of_token(db, value).id == user.id and tokens.user_of_token(db, value + "x") is None
    made: list[str] = []
    workers = [threading.Thread(target=lambda: made.append(_bootstrap(services))) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert made == ["bootstrap"] * 4
    with services.session() as db:
        assert db.scalar(select(User).where(User.role == "admin")).id == "bootstrap"


def _bootstrap(services) -> str:
    with services.session() as db:
        return users.bootstrap_admin(db).id


def test_the_users_command_adds_lists_changes_and_makes_tokens(sqlite_services, tmp_path):
    env = {**{f"ATENDE_{k.upper()}": v for k, v in TEST_SECRETS.items()}, "ATENDE_HOME": str(sqlite_services.settings.home),
           "ATENDE_EMBEDDING_MODEL": "all-minilm-l6-v2", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}

    def atende(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "atende.cli", "users", *args], cwd=REPO, env=env, input=stdin,
                              capture_output=True, text=True, timeout=120)

    with sqlite_services.session() as db:
        from kb import registry
        registry.create_assistant(db, name="loja", embedding_model="all-minilm-l6-v2", chunk_size=128, chunk_overlap=16)
        db.commit()
    added = atende("add", "dora@example.com", "--role", "operator", "--assistant", "loja")
    assert added.returncode == 0, added.stderr
    generated = added.stdout.strip().split("password: ")[1]
    assert atende("add", "eva@example.com", "--role", "viewer", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    assert atende("add", "eva@example.com", "--role", "viewer").returncode == 2  # taken
    listed = atende("list").stdout
    assert "dora@example.com\toperator\tactive" in listed and "eva@example.com\tviewer" in listed
    token = atende("token", "dora@example.com", "--name", "cron", "--days", "7").stdout.strip()
    with TestClient(create_app(services=sqlite_services)) as client:
        assert client.get("/api/me", headers=bearer(token)).json()["email"] == "dora@example.com"
        login(client, "dora@example.com", generated)
        login(client, "eva@example.com")
        assert atende("set", "dora@example.com", "--role", "supervisor", "--no-active").returncode == 0
        assert client.get("/api/me", headers=bearer(token)).status_code == 401  # deactivated
        changed = atende("password", "eva@example.com")
        assert changed.returncode == 0 and "1 session(s) signed out" in changed.stdout
        login(client, "eva@example.com", changed.stdout.strip().split("password: ")[1])
