"""The application factory: services, background jobs and the demo wired around the HTTP app (api.app)."""
from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.app import build_app
from atende import __version__
from atende.demo import ensure_demo
from atende.jobs import HueyQueue, requeue_interrupted, start_embedded_consumers
from atende.services import build_services
from atende.warm import freeze_start_up
from core.settings import Settings
from runtime.recovery import recover
from runtime.services import Services

log = logging.getLogger(__name__)


def _warm_up(services: Services) -> None:
    try:
        services.chat_models.get()
    except Exception as exc:  # the API still serves search and admin routes without a chat model
        log.warning("chat model unavailable: %s", exc)


def create_server_app() -> FastAPI:
    """The app of a server process started by uvicorn (``uvicorn atende.app:create_server_app --factory
    --workers N``): ``create_app`` from the environment's settings, its start-up ending in ``freeze_start_up``
    (``atende serve`` freezes after its warm-up)."""
    return create_app(freeze=True)


def create_app(settings: Settings | None = None, services: Services | None = None, demo: bool = False,
               freeze: bool = False) -> FastAPI:
    """Build the app; background jobs run in-process unless ``settings.workers`` is 0: ``settings.workers`` threads
    on the customer queue, ``settings.ingest_workers`` on the ingest queue (``atende.jobs``).

    With ``demo`` the demo assistant is created (if missing) and its sample documents queued. With ``freeze`` the
    objects start-up leaves are kept out of later garbage collections (``atende.warm.freeze_start_up``): for a
    process that serves until it exits, not for an app of many in one process (tests).
    """
    services = services or build_services(settings or Settings())
    services.queue = queue = HueyQueue.from_settings(services)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        consumers = start_embedded_consumers(queue, services.settings)
        if consumers and not services.settings.redis_url:  # the only worker: nothing else can be running them
            requeue_interrupted(services, jobs=services.settings.ingest_workers > 0)
        elif consumers:  # one worker among others: only what is owed by its leases and ages (runtime.recovery)
            recover(services, sends=True)
        if demo:
            for job_id in ensure_demo(services):
                services.queue.enqueue_job(job_id)
            # start the embedded chat model now, so the first customer does not wait for it
            threading.Thread(target=_warm_up, args=(services,), daemon=True).start()
        if freeze:
            freeze_start_up()
        yield
        for consumer in consumers:
            consumer.stop(graceful=True)
        services.close()

    app = build_app(services, __version__, lifespan)
    app.state.huey, app.state.ingest_huey = queue.huey, queue.ingest_huey
    return app
