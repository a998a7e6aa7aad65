"""The FastAPI application factory."""
from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from api.body_limits import install_body_limits
from api.errors import install_error_handlers
from api.routes import assistants, conversations, dashboard, dashboard_api, documents, review, whatsapp, widget
from api.routes import insights
from api.routes import approved
from api.routes import feedback
from api.routes import regression
from atende import __version__
from atende.demo import ensure_demo
from atende.jobs import make_huey, requeue_interrupted, start_embedded_consumer
from atende.services import Services, build_services
from core.settings import Settings

log = logging.getLogger(__name__)


def _warm_up(services: Services) -> None:
    try:
        services.chat_models.get()
    except Exception as exc:  # the API still serves search and admin routes without a chat model
        log.warning("chat model unavailable: %s", exc)


def create_app(settings: Settings | None = None, services: Services | None = None, demo: bool = False) -> FastAPI:
    """Build the app; background jobs run in-process unless ``settings.workers`` is 0.

    With ``demo`` the demo assistant is created (if missing) and its sample documents queued.
    """
    services = services or build_services(settings or Settings())
    huey = make_huey(services)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        consumer = None
        if services.settings.workers > 0:
            consumer = start_embedded_consumer(huey, services.settings.workers)
            if not services.settings.redis_url:  # the only worker: nothing else can be running them
                requeue_interrupted(services)
        if demo:
            for job_id in ensure_demo(services):
                services.enqueue(job_id)
            # start the embedded chat model now, so the first customer does not wait for it
            threading.Thread(target=_warm_up, args=(services,), daemon=True).start()
        yield
        if consumer is not None:
            consumer.stop(graceful=True)
        services.chat_models.close()

    app = FastAPI(title="atende", version=__version__, lifespan=lifespan)
    app.state.services = services
    app.state.huey = huey
    # the client's address and scheme as a trusted reverse proxy saw them (auth throttling, Secure cookies)
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=services.settings.trusted_proxies)
    install_error_handlers(app)
    install_body_limits(app, services.settings)
    app.include_router(assistants.router)
    app.include_router(documents.router)
    app.include_router(review.router)  # before conversations: /api/conversations/export is not an id
    app.include_router(insights.router)
    app.include_router(approved.router)
    app.include_router(conversations.router)
    app.include_router(feedback.router)
    app.include_router(regression.router)
    app.include_router(widget.router)
    app.include_router(whatsapp.router)
    app.include_router(whatsapp.webhook_router)
    app.include_router(dashboard_api.router)
    app.include_router(dashboard.public)
    app.include_router(dashboard.router)
    dashboard.install_page_handlers(app)
    app.mount("/static", StaticFiles(directory=Path(__file__).resolve().parent / "static"), name="static")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        return {"status": "ok", "version": __version__}

    return app
