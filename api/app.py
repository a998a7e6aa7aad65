"""The HTTP application over the process's services: routes, error handlers, body limits, static files.

The process around it (services, background jobs, the demo) is wired by ``atende.app.create_app``.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from api.body_limits import install_body_limits
from api.errors import install_error_handlers
from api.routes import assistants, conversations, dashboard, dashboard_api, documents, review, whatsapp, widget
from api.routes import insights
from api.routes import approved
from api.routes import feedback
from api.routes import regression
from api.audit import AuditMiddleware
from api.audit import router as audit_router
from api.routes import followups, media, privacy
from api.routes import account_pages, accounts
from runtime.services import Services


def build_app(services: Services, version: str,
              lifespan: Callable[[FastAPI], AbstractAsyncContextManager] | None = None) -> FastAPI:
    """The FastAPI app serving ``services``; ``lifespan`` starts and stops what runs beside it."""
    app = FastAPI(title="atende", version=version, lifespan=lifespan)
    app.state.services = services
    # the client's address and scheme as a trusted reverse proxy saw them (auth throttling, Secure cookies)
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=services.settings.trusted_proxies)
    install_error_handlers(app)
    install_body_limits(app, services.settings)
    app.add_middleware(AuditMiddleware, services=services)
    app.include_router(whatsapp.webhook_router)  # first: Meta's posts, the hottest route, match at once
    app.include_router(assistants.router)
    app.include_router(documents.router)
    app.include_router(review.router)  # before conversations: /api/conversations/export is not an id
    app.include_router(insights.router)
    app.include_router(approved.router)
    app.include_router(conversations.router)
    app.include_router(media.router)
    app.include_router(feedback.router)
    app.include_router(regression.router)
    app.include_router(widget.router)
    app.include_router(whatsapp.router)
    app.include_router(dashboard_api.router)
    app.include_router(dashboard.public)
    app.include_router(dashboard.router)
    app.include_router(followups.router)
    app.include_router(privacy.router)
    app.include_router(audit_router)
    app.include_router(followups.pages)
    app.include_router(accounts.router)
    app.include_router(account_pages.pages)
    dashboard.install_page_handlers(app)
    app.mount("/static", StaticFiles(directory=Path(__file__).resolve().parent / "static"), name="static")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        # a newcomer opening the server lands on the dashboard (its login page when signed out)
        return RedirectResponse("/dashboard", status_code=303)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        return {"status": "ok", "version": version}

    return app
