"""Authentication under attack: no default secrets (generated owner-only into the data directory, placeholders
refused, ``atende admin-token``), backoff on wrong tokens per client (429 with Retry-After, counted atomically
in SQLite and PostgreSQL), server-side sessions that signing out and a secret change end, and the client's
address and scheme believed only from trusted proxies. Real app, real databases, real child processes."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api import throttle
from api.deps import SESSION_COOKIE
from api.routes.widget import issue_visitor_token
from api.sessions import AdminSession
from atende.app import create_app
from atende.services import build_services
from core.db import utcnow
from core.secret_store import SecretStoreError, secrets_path
from core.settings import SECRET_FIELDS, Settings
from kb import registry
from runtime.config import merge_config
from tests.conftest import ADMIN_TOKEN, REPO, make_services
from tests.factories import use_scripted_model

SECRET_ENV = [f"ATENDE_{name.upper()}" for name in SECRET_FIELDS]


@pytest.fixture
def no_secret_env(monkeypatch):
    """Nothing from the environment: the data directory has to provide every secret."""
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)


def wrong(client: TestClient, path: str = "/api/assistants", token: str = "not-the-admin-token"):
    return client.get(path, headers={"Authorization": f"Bearer {token}"})


def age_failures(services, key: str, seconds: float) -> None:
    """Move a client's last failure back in time, as if ``seconds`` had passed (negative: forward)."""
    with services.session() as db:
        row = db.get(throttle.AuthFailure, key)
        row.last_failure_at -= timedelta(seconds=seconds)
        db.commit()


# --------------------------------------------------------------------------- no default secrets


def test_a_fresh_data_directory_generates_strong_owner_only_secrets(tmp_path, no_secret_env, monkeypatch):
    home = tmp_path / "home"
    first = Settings(home=home)
    values = [getattr(first, name) for name in SECRET_FIELDS]
    assert len(set(values)) == len(values) and all(len(v) >= 43 for v in values)
    assert "change-me" not in values
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(secrets_path(home).stat().st_mode) == 0o600
    assert json.loads(secrets_path(home).read_text()) == dict(zip(SECRET_FIELDS, values, strict=True))
    assert Settings(home=home).admin_token == first.admin_token  # a restart keeps them
    monkeypatch.setenv("ATENDE_ADMIN_TOKEN", "an-explicit-admin-token")  # the environment wins...
    assert Settings(home=home).admin_token == "an-explicit-admin-token"
    assert json.loads(secrets_path(home).read_text())["admin_token"] == first.admin_token  # ...and is not stored


def test_an_existing_data_directory_is_made_owner_only_and_an_open_secrets_file_refused(tmp_path, no_secret_env):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    Settings(home=home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    secrets_path(home).chmod(0o644)
    with pytest.raises(SecretStoreError, match="chmod 600"):
        Settings(home=home)
    shared = tmp_path / "shared"  # a sticky directory such as /tmp is left as it is
    shared.mkdir()
    shared.chmod(0o1777)
    Settings(home=shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777 and secrets_path(shared).exists()


@pytest.mark.parametrize("field", ["admin_token", "session_secret", "secret_key"])
@pytest.mark.parametrize("value", ["change-me", "", "short", "change-me-in-production", "x" * 40, "CHANGEME-please-now"])
def test_placeholders_and_short_secrets_are_refused_in_every_environment(tmp_path, no_secret_env, monkeypatch,
                                                                         field, value):
    monkeypatch.setenv(f"ATENDE_{field.upper()}", value)
    with pytest.raises(ValidationError) as failure:
        Settings(home=tmp_path / "home")
    assert f"ATENDE_{field.upper()}" in str(failure.value)
    assert len(value) < 5 or value not in str(failure.value)  # the refused value is not echoed into logs


def test_the_documented_placeholder_opens_nothing(tmp_path, embedders, no_secret_env):
    """An app on defaults: `Bearer change-me`, a dashboard cookie signed with it and a widget visitor token
    signed with it are all refused; the generated admin token works."""
    services = build_services(Settings(home=tmp_path / "home", embedding_model="all-minilm-l6-v2"))
    services.embedders = embedders
    use_scripted_model(services)
    with services.session() as db:
        assistant = registry.create_assistant(db, name="loja", embedding_model="all-minilm-l6-v2", chunk_size=128,
                                               chunk_overlap=16)
        assistant.config = merge_config({}, {"widget": {"allowed_origins": ["*"]}})
        db.commit()
        aid = assistant.id
    with TestClient(create_app(services=services)) as client:
        assert wrong(client, token="change-me").status_code == 401
        payload = f"{int(time.time()) + 3600}.forgedforged"  # the old cookie format, keyed by the placeholders
        key = hashlib.sha256(b"dashboard-session\0change-me\0change-me").digest()
        client.cookies.set(SESSION_COOKIE, f"{payload}.{hmac.new(key, payload.encode(), 'sha256').hexdigest()}")
        assert client.get("/dashboard/conversations", follow_redirects=False).status_code == 303
        assert client.get("/api/assistants").status_code == 401
        client.cookies.clear()
        _, forged = issue_visitor_token("change-me", aid)
        r = client.post("/api/widget/loja/messages", json={"token": forged, "message": "olá"})
        assert r.status_code == 401, r.text
        token = services.settings.admin_token
        assert client.get("/api/assistants", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    services.engine.dispose()


def test_admin_token_command_prints_one_token_however_many_processes_start_at_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV} | {"ATENDE_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "atende.cli", "admin-token"]
    children = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(4)]
    outputs = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0] * 4, outputs
    printed = {out.strip() for out, _ in outputs}
    assert printed == {json.loads(secrets_path(tmp_path / "home").read_text())["admin_token"]}
    explicit = subprocess.run(command, cwd=REPO, env=env | {"ATENDE_ADMIN_TOKEN": "an-explicit-admin-token"},
                              capture_output=True, text=True, timeout=120)
    assert explicit.stdout.strip() == "an-explicit-admin-token"
    refused = subprocess.run(command, cwd=REPO, env=env | {"ATENDE_ADMIN_TOKEN": "change-me"},
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "ATENDE_ADMIN_TOKEN" in refused.stderr
    assert "change-me" not in refused.stdout + refused.stderr and "Traceback" not in refused.stderr


# --------------------------------------------------------------------------- throttling


def test_wrong_bearer_tokens_lock_the_client_out_with_growing_waits(services, caplog):
    caplog.set_level(logging.WARNING, logger="api.deps")
    with TestClient(create_app(services=services)) as client:
        for _ in range(throttle.FREE_FAILURES - 1):
            assert wrong(client).status_code == 401
        r = wrong(client)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        # locked out: not even the right token is compared (the lockout held a minute longer, however slow
        # this machine is)
        age_failures(services, "ip:testclient", -60)
        right = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert client.get("/api/assistants", headers=right).status_code == 429
        age_failures(services, "ip:testclient", 61)
        r = wrong(client)
        assert r.status_code == 429 and r.headers["retry-after"] == "2"  # twice as long as the last lockout
        age_failures(services, "ip:testclient", 2)
        assert client.get("/api/assistants", headers=right).status_code == 200
        with services.session() as db:  # a sign-in clears the count
            assert db.get(throttle.AuthFailure, "ip:testclient") is None
        assert wrong(client).status_code == 401
    assert "wrong credentials from ip:testclient (1 in a row)" in caplog.text
    assert f"({throttle.FREE_FAILURES} in a row; locked out for 1 s)" in caplog.text


def test_backoff_doubles_to_a_cap_and_is_forgotten_after_a_quiet_hour(sqlite_services):
    now = utcnow()
    with sqlite_services.session() as db:
        waits = [throttle.record_failure(db, "ip:192.0.2.1", now).retry_after for _ in range(throttle.FREE_FAILURES + 12)]
        assert waits[:throttle.FREE_FAILURES - 1] == [0] * (throttle.FREE_FAILURES - 1)
        assert waits[throttle.FREE_FAILURES - 1:] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900]
        assert throttle.standing(db, "ip:192.0.2.1", now + timedelta(seconds=899)).retry_after == 1
        later = now + timedelta(seconds=throttle.FORGET_AFTER_S)
        assert throttle.standing(db, "ip:192.0.2.1", later) == throttle.Standing()
        throttle.record_failure(db, "ip:192.0.2.2", now)
        assert throttle.record_failure(db, "ip:192.0.2.1", later).failures == 1  # counting starts over
        assert db.get(throttle.AuthFailure, "ip:192.0.2.2") is None  # and forgotten clients are swept


def test_wrong_tokens_on_the_login_form_are_throttled(sqlite_services):
    with TestClient(create_app(services=sqlite_services)) as client:
        for _ in range(throttle.FREE_FAILURES - 1):
            assert client.post("/dashboard/login", data={"token": "guess-guess-guess"}).status_code == 401
        r = client.post("/dashboard/login", data={"token": "guess-guess-guess"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and "Too many failed attempts" in r.text
        age_failures(sqlite_services, "ip:testclient", -60)  # still locked out, however slow this machine is
        r = client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
        assert r.status_code == 429 and SESSION_COOKIE not in client.cookies


def test_each_client_address_has_its_own_count(sqlite_services):
    app = create_app(services=sqlite_services)
    with TestClient(app, client=("203.0.113.7", 40000)) as attacker, \
            TestClient(app, client=("198.51.100.2", 40000)) as admin:
        for _ in range(throttle.FREE_FAILURES):
            wrong(attacker)
        age_failures(sqlite_services, "ip:203.0.113.7", -60)  # still locked out, however slow this machine is
        assert wrong(attacker).status_code == 429
        assert admin.get("/api/assistants", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200


def test_client_keys_group_ipv6_by_subscriber_block():
    assert throttle.client_key("2001:db8:1:2::1") == throttle.client_key("2001:db8:1:2:ffff::9") == "ip:2001:db8:1:2::/64"
    assert throttle.client_key("::ffff:203.0.113.9") == throttle.client_key("203.0.113.9") == "ip:203.0.113.9"
    assert throttle.client_key(None) == "ip:unknown"


def test_failures_from_many_threads_are_all_counted(services):
    """Request threads (and, on PostgreSQL, server processes) failing at once on one key lose no failure."""
    threads, each = 8, 6
    start = threading.Barrier(threads)
    errors = []

    def fail():
        start.wait()
        try:
            for _ in range(each):
                with services.session() as db:
                    throttle.record_failure(db, "ip:192.0.2.50", utcnow())
        except Exception as exc:  # reported below: a lost or crashed update must fail the test
            errors.append(exc)

    workers = [threading.Thread(target=fail) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    with services.session() as db:
        assert db.get(throttle.AuthFailure, "ip:192.0.2.50").failures == threads * each


# --------------------------------------------------------------------------- sessions


def test_signing_out_ends_the_session_for_every_copy_of_the_cookie(sqlite_services):
    app = create_app(services=sqlite_services)
    with TestClient(app) as browser, TestClient(app) as thief:
        assert browser.post("/dashboard/login", data={"token": ADMIN_TOKEN}, follow_redirects=False).status_code == 303
        thief.cookies.set(SESSION_COOKIE, browser.cookies[SESSION_COOKIE])
        assert thief.get("/api/assistants").status_code == 200
        assert browser.post("/dashboard/logout", follow_redirects=False).status_code == 303
        assert thief.get("/api/assistants").status_code == 401
        assert thief.get("/dashboard/conversations", follow_redirects=False).status_code == 303
    with sqlite_services.session() as db:
        assert db.query(AdminSession).count() == 0


@pytest.mark.parametrize("secret", ["admin_token", "session_secret"])
def test_changing_a_secret_signs_everyone_out(tmp_path, embedders, secret):
    db_url = f"sqlite:///{tmp_path / 'atende.db'}"  # one database, each process its own data directory
    before = make_services(tmp_path / "before", embedders, db_url)
    with TestClient(create_app(services=before)) as client:
        client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
        cookie = client.cookies[SESSION_COOKIE]
        assert client.get("/api/assistants").status_code == 200
    after = make_services(tmp_path / "after", embedders, db_url, **{secret: "a-brand-new-secret-value"})
    with TestClient(create_app(services=after), cookies={SESSION_COOKIE: cookie}) as client:
        assert client.get("/api/assistants").status_code == 401
        assert client.get("/dashboard/conversations", follow_redirects=False).status_code == 303
    before.engine.dispose()
    after.engine.dispose()


# --------------------------------------------------------------------------- behind a TLS proxy


def test_forwarded_address_and_scheme_are_believed_only_from_trusted_proxies(tmp_path, embedders):
    services = make_services(tmp_path / "home", embedders, trusted_proxies="10.0.0.0/8")
    app = create_app(services=services)
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    with TestClient(app, client=("10.1.2.3", 5000)) as proxy, TestClient(app, client=("192.0.2.77", 5000)) as direct:
        r = proxy.post("/dashboard/login", data={"token": ADMIN_TOKEN}, headers=forwarded, follow_redirects=False)
        assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]
        r = direct.post("/dashboard/login", data={"token": ADMIN_TOKEN}, headers=forwarded, follow_redirects=False)
        assert r.status_code == 303 and "Secure" not in r.headers["set-cookie"]
        wrong_forwarded = {"Authorization": "Bearer not-the-admin-token", **forwarded}
        assert proxy.get("/api/assistants", headers=wrong_forwarded).status_code == 401
        for spoofed in ("198.51.100.1", "198.51.100.2"):  # a direct client cannot pick its address
            assert direct.get("/api/assistants", headers={**wrong_forwarded, "X-Forwarded-For": spoofed}).status_code == 401
    with services.session() as db:
        counts = {row.key: row.failures for row in db.query(throttle.AuthFailure)}
    assert counts == {"ip:203.0.113.9": 1, "ip:192.0.2.77": 2}
    services.engine.dispose()
