"""Shared fixtures: real SQLite and PostgreSQL, real chromadb, the real embedding model."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from atende.services import build_services  # noqa: E402
from core.settings import SECRET_FIELDS, Settings  # noqa: E402
from kb.embedders import EmbedderRegistry  # noqa: E402
from runtime.services import Services  # noqa: E402
from tests.factories import use_scripted_model  # noqa: E402

# model_guard fails a test not marked llm that reaches a real chat model; pytester runs the guard's own tests
pytest_plugins = ["pytester", "tests.model_guard"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ATENDE_SHARED_DATA", REPO.parent / "shared" / "data"))
DOCS = SHARED_DATA / "docs"
POSTGRES_URL = os.environ.get("ATENDE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ATENDE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
ADMIN_TOKEN = "test-admin-token"
# every secret explicit: a test never relies on (or generates) a data directory's secrets
TEST_SECRETS = {**{name: f"{name}-of-the-tests" for name in SECRET_FIELDS}, "admin_token": ADMIN_TOKEN}

requires_shared = pytest.mark.skipif(not DOCS.is_dir(), reason=f"shared test data not found at {SHARED_DATA}")


def shared_doc(relative: str) -> Path:
    """Path of a document in ../shared/data/docs (use with @requires_shared)."""
    return DOCS / relative


@pytest.fixture(scope="session")
def embedders() -> EmbedderRegistry:
    """One registry for the whole run, so each model loads once."""
    return EmbedderRegistry()


def _postgres_database():
    """Create a throw-away PostgreSQL database; yields its URL. Skips (locally) if PostgreSQL is unreachable."""
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"atende_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc.orig}")
    url = sa.engine.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Each store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'atende.db'}"
    else:
        yield from _postgres_database()


def make_services(home: Path, embedders: EmbedderRegistry, database_url: str | None = None, **overrides) -> Services:
    """Services for a test; assistants default to the fast English MiniLM unless a test picks a model."""
    overrides.setdefault("embedding_model", "all-minilm-l6-v2")
    # no test reaches Meta: a test that sends or fetches media names its Graph stand-in, the others a closed port
    overrides.setdefault("whatsapp_graph_url", "http://127.0.0.1:9")
    settings = Settings(home=home, database_url=database_url, **{**TEST_SECRETS, **overrides})
    services = build_services(settings)
    services.embedders = embedders
    return services


@pytest.fixture
def services(tmp_path, embedders, database_url) -> Services:
    """Services on a fresh data dir, parametrized over SQLite and PostgreSQL."""
    s = make_services(tmp_path / "home", embedders, database_url)
    yield s
    s.engine.dispose()


def redis_client():
    """A client of the test Redis (``REDIS_URL``, database 15 by default); skips (locally) if it is unreachable."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    return client


def unique_redis_prefix() -> str:
    """A Redis prefix (``Settings.redis_prefix``) of this test's own: tests (and test runs) sharing the test Redis
    never take each other's jobs, and each empties only its own queues (``atende.jobs.flush_redis_queues``)."""
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_services(tmp_path, embedders) -> Services:
    """Services (SQLite) whose queues are on the test Redis, under a prefix of their own, emptied after."""
    from atende.jobs import flush_redis_queues

    redis_client().close()  # reachable (or skipped)
    prefix = unique_redis_prefix()
    services = make_services(tmp_path / "home", embedders, redis_url=REDIS_URL, redis_prefix=prefix)
    yield services
    services.engine.dispose()
    flush_redis_queues(REDIS_URL, prefix)


@pytest.fixture
def sqlite_services(tmp_path, embedders) -> Services:
    s = make_services(tmp_path / "home", embedders)
    yield s
    s.engine.dispose()


@pytest.fixture
def scripted_model(services):
    """``(services, model)``: the services (SQLite and PostgreSQL) answering with a ScriptedChatModel; see
    tests/factories.py for an assistant with documents and a chat helper."""
    return services, use_scripted_model(services)


@pytest.fixture
def client(sqlite_services):
    """A TestClient on the real app, with its embedded job consumer running."""
    from fastapi.testclient import TestClient

    from atende.app import create_app

    with TestClient(create_app(services=sqlite_services)) as c:
        c.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield c


def wait_for_document(client, document_id: str, timeout: float = 120.0) -> dict:
    """Poll a document until its latest job has finished; returns the document."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = client.get(f"/api/documents/{document_id}").json()
        if doc["status"] in ("ready", "failed"):
            return doc
        time.sleep(0.1)
    raise AssertionError(f"document {document_id} still {doc['status']} after {timeout}s")
