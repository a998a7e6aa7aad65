"""The two run profiles as real processes, started once for the tests of this package that use them and stopped
after its last test (tests/system/stack.py starts them):

- ``embedded_stack``: one ``atende serve`` on SQLite, the chromadb files and the SQLite queues in its data dir,
  its own worker threads (the default deployment);
- ``scale_stack``: a throw-away PostgreSQL database, a Chroma server (``chroma run``), Redis (the loopback one,
  a database of its own, under a key prefix of this run's own), two ``atende serve`` processes with no worker
  threads, an ``atende worker --queue customer`` and an ``atende worker --queue ingest``.

Both answer with the chat-model stand-in (tests/llm_standin.py, a child process; never the local model) and send
to the Graph API stand-in (``graph``, in this process). ``profile`` runs a test in each. Turns, retries and
sweeps are set short (debounce 0.3 s, recovery margin 1 s, sweep every 2 s, send retries from 0.5 s, a dead
sender's send waits 3 s for Meta's status) so faults recover within seconds.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from atende.jobs import flush_redis_queues
from runtime.whatsapp.standin import GraphStandIn
from tests.conftest import REDIS_URL, _postgres_database, redis_client, unique_redis_prefix
from tests.system.stack import (
    Child,
    Processes,
    api_process,
    atende,
    base_env,
    chroma_server,
    free_port,
    llm_standin,
    wait_api,
)

REPLY = "We open at nine in the morning, Monday to Saturday."
# the scale profile's Redis database: the test Redis's, but its own number; each run's stack has a prefix of its own
SCALE_REDIS_URL = os.environ.get("ATENDE_TEST_SCALE_REDIS_URL", REDIS_URL.rsplit("/", 1)[0] + "/14")
FAST = {  # short enough that a fault recovers within seconds; the same in both profiles
    "ATENDE_EMBEDDING_MODEL": "all-minilm-l6-v2",
    "ATENDE_WHATSAPP_DEBOUNCE_S": "0.3",
    "ATENDE_WHATSAPP_DEBOUNCE_MAX_S": "1",
    "ATENDE_RECOVERY_MARGIN_S": "1",
    "ATENDE_RECOVERY_INTERVAL_S": "2",
    "ATENDE_WHATSAPP_RETRY_FIRST_DELAY_S": "0.5",
    "ATENDE_WHATSAPP_RETRY_MAX_DELAY_S": "1",
    "ATENDE_WHATSAPP_SEND_TIMEOUT_S": "2",
    "ATENDE_WHATSAPP_STATUS_WAIT_S": "3",
}


@dataclass
class Stack:
    """One profile's running processes: ``apis`` (base URLs, one per API process), ``workers`` by queue (none in
    the embedded profile: its API process runs them), ``env`` (what a further process of the profile gets) and an
    engine on its database, for the tests' checks."""

    name: str
    apis: list[str]
    engine: sa.Engine
    env: dict[str, str]
    processes: Processes
    workers: dict[str, Child] = field(default_factory=dict)
    chroma: Child | None = None
    chroma_port: int = 0


@pytest.fixture(scope="package")
def graph() -> GraphStandIn:
    """Meta's Graph API stand-in for every process of the stacks (they read its URL from the environment); on a
    fixed port, so a test can stop it and start it again."""
    with GraphStandIn(port=free_port()) as standin:
        yield standin


@pytest.fixture(scope="package")
def chat_hold(tmp_path_factory) -> Path:
    """While this file exists, every completion of the chat-model stand-in waits (``.held`` appears then)."""
    return tmp_path_factory.mktemp("llm") / "hold"


@dataclass
class ChatModel:
    """The chat-model stand-in of the stacks: its base URL (``ATENDE_LLM_BASE_URL``) and its process."""

    url: str
    child: Child

    def completions(self) -> int:
        """How many chat completions the stand-in has answered so far (its request log, one line each)."""
        return self.child.log.read_text(errors="replace").count('"POST /v1/chat/completions ')


@pytest.fixture(scope="package")
def chat_model(tmp_path_factory, chat_hold) -> ChatModel:
    """The chat-model stand-in (a child process), replying ``REPLY``."""
    processes = Processes(tmp_path_factory.mktemp("llm-logs"))
    port = free_port()
    try:
        child = llm_standin(processes, port, REPLY, hold=chat_hold)
        yield ChatModel(f"http://127.0.0.1:{port}/v1", child)
    finally:
        processes.stop_all()


def _common(graph: GraphStandIn, chat_model: ChatModel) -> dict[str, str]:
    return {**FAST, "ATENDE_LLM_BASE_URL": chat_model.url, "WHATSAPP_GRAPH_URL": graph.base_url}


@pytest.fixture(scope="package")
def embedded_stack(tmp_path_factory, graph, chat_model) -> Stack:
    home = tmp_path_factory.mktemp("embedded")
    processes = Processes(home)
    env = base_env(home / "data", **_common(graph, chat_model))
    engine = sa.create_engine(f"sqlite:///{home / 'data' / 'atende.db'}")
    try:
        child, url = api_process(processes, "api", env)
        wait_api(child, url)
        yield Stack("embedded", [url], engine, env, processes)
    finally:
        processes.stop_all()
        engine.dispose()


@pytest.fixture(scope="package")
def scale_stack(tmp_path_factory, graph, chat_model) -> Stack:
    redis_client().close()  # reachable (in CI; skipped elsewhere otherwise)
    home = tmp_path_factory.mktemp("scale")
    processes = Processes(home)
    prefix = unique_redis_prefix()  # another run on this Redis (another checkout's, a dev's) keeps its own jobs
    database = _postgres_database()
    database_url = next(database)
    engine = sa.create_engine(database_url)
    try:
        chroma_port = free_port()
        chroma = chroma_server(processes, home / "chroma", chroma_port)
        env = base_env(home / "data", DATABASE_URL=database_url, CHROMA_URL=f"http://127.0.0.1:{chroma_port}",
                       REDIS_URL=SCALE_REDIS_URL, ATENDE_REDIS_PREFIX=prefix, **_common(graph, chat_model))
        api_env = {**env, "ATENDE_WORKERS": "0"}  # jobs only in the worker processes
        # all at once: they migrate the new database together (atende.migrate takes a lock)
        apis = [api_process(processes, f"api-{i}", api_env) for i in (1, 2)]
        workers = {q: atende(processes, f"worker-{q}", ["worker", "--queue", q], env) for q in ("customer", "ingest")}
        for child, url in apis:
            wait_api(child, url)
        for child in workers.values():  # they started too (a worker that cannot start exits at once)
            assert child.alive, f"{child.name} exited:\n{child.tail()}"
        yield Stack("scale", [url for _, url in apis], engine, env, processes, workers, chroma, chroma_port)
    finally:
        processes.stop_all()
        engine.dispose()
        flush_redis_queues(SCALE_REDIS_URL, prefix)
        database.close()  # drops the database


@pytest.fixture(params=["embedded", "scale"])
def profile(request) -> Stack:
    """The test runs in the embedded profile, then in the scale profile. The scale stack starts first, so its
    processes warm up (embedding models, parsers) while the embedded profile's tests run."""
    request.getfixturevalue("scale_stack")
    return request.getfixturevalue(f"{request.param}_stack")
