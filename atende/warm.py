"""Warm-up at a process's start: what the first search, turn or document would otherwise wait for (loading an
embedding model takes seconds; the parsers' forkserver ~10 s), done in a background thread while the process
already serves."""
from __future__ import annotations

import gc
import logging
import threading

from sqlalchemy import select

from ingest.sandbox import start_parsers
from kb.models import KnowledgeBase
from runtime.services import Services

log = logging.getLogger(__name__)


def embedding_models(services: Services) -> list[str]:
    """The default embedding model and those of the knowledge bases in the database, default first."""
    with services.session() as session:
        used = set(session.scalars(select(KnowledgeBase.embedding_model).distinct()))
    default = services.settings.embedding_model
    return [default, *sorted(used - {default})]


def warm_up(services: Services, parsers: bool) -> None:
    """Load the embedding models (``embedding_models``) and, with ``parsers`` (a process that ingests), start the
    warm parsers' forkserver, then :func:`freeze_start_up`. A failure is logged: the work that needs it loads it
    again and reports it there."""
    try:
        for name in embedding_models(services):
            services.embedders.get(name).embed_query("warm-up")
        if parsers:
            start_parsers()
    except Exception:
        log.exception("warm-up failed")
    freeze_start_up()


def freeze_start_up() -> None:
    """Collect once, then leave every object alive now (modules, models, the app) out of later collections
    (``gc.freeze``). Without it each full collection walks them all while holding the GIL: measured on an API
    process, ~320,000 objects after start-up and 30-460 ms per full collection on the 2 shared cores, a pause
    every request of the process waits out; an embedding model's process holds more."""
    gc.collect()
    gc.freeze()


def start_warm_up(services: Services, parsers: bool) -> threading.Thread:
    """``warm_up`` in a daemon thread, started."""
    thread = threading.Thread(target=warm_up, args=(services, parsers), name="warm-up", daemon=True)
    thread.start()
    return thread
