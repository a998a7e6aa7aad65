"""Secrets at rest (core.crypto): the WhatsApp credentials and the event subscriptions' signing secrets are never in
the database in clear, on SQLite (the raw file scanned) and PostgreSQL (every column of every table as the server
holds it); values stored before encryption are encrypted at
start-up; a key rotation re-encrypts everything; a wrong key is an error, never garbage."""
from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import inspect, select, text

from atende.services import build_services
from core import crypto
from core.db import Base
from core.settings import Settings
from kb.models import Assistant
from runtime.models import EventSubscription
from runtime.whatsapp.models import WhatsAppSender
from tests.conftest import TEST_SECRETS

SECRETS = {"access_token": "EAAG-access-token-7f3a9c", "app_secret": "app-secret-5d1e88b2",
           "verify_token": "verify-token-c0ffee42"}
EVENT_SECRET = "event-signing-secret-9a8b7c6d"


def _add_sender(services, **secrets) -> None:
    with services.session() as session:
        session.add(Assistant(id="shop", name="Shop", config={}))
        session.add(WhatsAppSender(id="snd1", assistant_id="shop", phone_number_id="111", **(secrets or SECRETS)))
        session.commit()


def _stored(services) -> dict[str, str]:
    """The columns as the database holds them (not through the encrypted type)."""
    with services.engine.connect() as conn:
        row = conn.execute(text("SELECT access_token, app_secret, verify_token FROM whatsapp_senders")).one()
    return dict(row._mapping)


def test_the_credentials_are_stored_encrypted_and_read_in_clear(services):
    _add_sender(services)
    with services.session() as session:
        session.add(EventSubscription(assistant_id="shop", url="https://crm.example/events", events=["*"],
                                      secret=EVENT_SECRET))
        session.commit()
        assert session.scalar(select(EventSubscription.secret)) == EVENT_SECRET
    stored = _stored(services)
    assert all(v.startswith(crypto.PREFIX) for v in stored.values())
    assert not any(secret in value for secret in SECRETS.values() for value in stored.values())
    with services.session() as session:
        sender = session.scalar(select(WhatsAppSender))
        assert {k: getattr(sender, k) for k in SECRETS} == SECRETS
    if services.engine.dialect.name == "postgresql":  # every column of every row, as the server keeps it
        with services.engine.connect() as conn:
            dump = "\n".join(row for table in inspect(conn).get_table_names() for row in conn.execute(
                text(f'SELECT row_to_json(t)::text FROM "{table}" t')).scalars())
    else:  # the raw database file and its write-ahead log
        services.engine.dispose()
        home = services.settings.home
        dump = b"".join(p.read_bytes() for p in home.glob("atende.db*")).decode("latin-1")
    assert not any(secret in dump for secret in (*SECRETS.values(), EVENT_SECRET))


def test_each_encryption_of_a_value_differs_and_a_foreign_key_is_refused():
    crypto.use_keys(TEST_SECRETS["data_key"])
    a, b = crypto.encrypt("same"), crypto.encrypt("same")
    assert a != b and crypto.decrypt(a) == crypto.decrypt(b) == "same"
    foreign = crypto.PREFIX + Fernet(Fernet.generate_key()).encrypt(b"x").decode()
    with pytest.raises(crypto.SecretDecryptionError, match="ATENDE_DATA_KEY"):
        crypto.decrypt(foreign)


def test_values_stored_before_encryption_are_encrypted_at_start_up(services):
    _add_sender(services)
    with services.engine.begin() as conn:  # as a version without encryption left them
        conn.execute(text("UPDATE whatsapp_senders SET access_token = 'plain-token-1', app_secret = 'plain-secret-2'"))
    assert crypto.reencrypt(services.engine, Base.metadata) == 2
    stored = _stored(services)
    assert stored["access_token"].startswith(crypto.PREFIX) and "plain-token-1" not in stored["access_token"]
    with services.session() as session:
        sender = session.scalar(select(WhatsAppSender))
        assert (sender.access_token, sender.app_secret) == ("plain-token-1", "plain-secret-2")
    assert crypto.reencrypt(services.engine, Base.metadata) == 0  # nothing left to do


def test_a_key_rotation_reencrypts_every_stored_secret(tmp_path, embedders, database_url):
    settings = {**TEST_SECRETS, "home": tmp_path / "home", "database_url": database_url}
    services = build_services(Settings(**settings))
    _add_sender(services)
    before = _stored(services)
    services.engine.dispose()
    old, new = TEST_SECRETS["data_key"], "a-new-data-key-for-the-rotation"
    rotated = build_services(Settings(**{**settings, "data_key": new, "data_keys_old": old}))  # rotates at start
    after = _stored(rotated)
    assert all(after[k] != before[k] and crypto.is_current(after[k]) for k in SECRETS)
    with rotated.session() as session:
        sender = session.scalar(select(WhatsAppSender))
        assert {k: getattr(sender, k) for k in SECRETS} == SECRETS
    rotated.engine.dispose()
    crypto.use_keys(old)  # the other tests' key first again


def test_the_rotate_command_reencrypts_with_the_new_key(tmp_path, embedders, monkeypatch, capsys):
    from atende.cli import main

    home = tmp_path / "home"
    settings = {**TEST_SECRETS, "home": home}
    services = build_services(Settings(**settings))
    _add_sender(services)
    services.engine.dispose()
    monkeypatch.setenv("ATENDE_HOME", str(home))
    for name, value in TEST_SECRETS.items():
        monkeypatch.setenv(f"ATENDE_{name.upper()}", value)
    monkeypatch.setenv("ATENDE_DATA_KEY", "the-key-after-the-rotation")
    monkeypatch.setenv("ATENDE_DATA_KEYS_OLD", TEST_SECRETS["data_key"])
    assert main(["secrets", "rotate"]) == 0
    assert capsys.readouterr().out.startswith("3 stored secret(s) re-encrypted")
    rotated = build_services(Settings(home=home, **{**TEST_SECRETS, "data_key": "the-key-after-the-rotation"}))
    assert all(crypto.is_current(v) for v in _stored(rotated).values())
    rotated.engine.dispose()
    crypto.use_keys(TEST_SECRETS["data_key"])
