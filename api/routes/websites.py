"""Routes for website sources: create (checked against the site first), list, change, delete, sync, runs. Reading
needs the assistant; changing needs a supervisor of it."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import scopes
from api.deps import ServicesDep, SessionDep, SignedIn, allow
from core.errors import Conflict
from ingest.website_sync import check_source
from kb import registry, websites
from kb.models import KnowledgeBase, WebsitePage, WebsiteSource
from runtime.accounts.roles import SUPERVISOR, VIEWER

router = APIRouter(tags=["websites"], dependencies=[SignedIn])
Pattern = Annotated[str, Field(min_length=1, max_length=websites.MAX_PATTERN_CHARS)]


class WebsiteSourceCreate(BaseModel):
    url: str = Field(min_length=1, max_length=500, description="the start page (kind crawl) or the sitemap (kind sitemap)")
    kind: Literal["crawl", "sitemap"] = "crawl"
    include: list[Pattern] = Field(default_factory=list, max_length=websites.MAX_PATTERNS,
                                   description="glob patterns on a page's path and query (none: every page)")
    exclude: list[Pattern] = Field(default_factory=list, max_length=websites.MAX_PATTERNS)
    max_pages: int = Field(default=200, ge=1, le=5000)
    max_depth: int = Field(default=3, ge=0, le=10, description="links followed from the start page (crawl)")
    request_interval_s: float = Field(default=1.0, ge=0, le=60,
                                      description="seconds between two requests to the site (robots.txt's "
                                                  "Crawl-delay, when longer, wins)")
    sync_interval_hours: float = Field(default=24.0, ge=0, le=24 * 31, description="0: manual syncs only")


class WebsiteSourceUpdate(BaseModel):
    url: str | None = Field(default=None, min_length=1, max_length=500)
    kind: Literal["crawl", "sitemap"] | None = None
    include: list[Pattern] | None = Field(default=None, max_length=websites.MAX_PATTERNS)
    exclude: list[Pattern] | None = Field(default=None, max_length=websites.MAX_PATTERNS)
    max_pages: int | None = Field(default=None, ge=1, le=5000)
    max_depth: int | None = Field(default=None, ge=0, le=10)
    request_interval_s: float | None = Field(default=None, ge=0, le=60)
    sync_interval_hours: float | None = Field(default=None, ge=0, le=24 * 31)


class WebsiteSyncRunPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    source_id: str
    trigger: str
    status: str = Field(description="queued | running | succeeded | partial (some pages failed) | failed")
    error: str | None
    pages_planned: int
    pages_seen: int
    pages_added: int
    pages_changed: int
    pages_unchanged: int
    pages_removed: int
    pages_failed: int
    failures: list[dict[str, str]] = Field(description="the pages that failed, each {url, reason} (the first 200)")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class WebsiteSourcePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    knowledge_base_id: str
    url: str
    kind: str
    include: list[str]
    exclude: list[str]
    max_pages: int
    max_depth: int
    request_interval_s: float
    sync_interval_hours: float
    next_sync_at: datetime | None
    created_at: datetime
    updated_at: datetime
    pages: int = Field(description="pages the source feeds into the knowledge base")
    last_run: WebsiteSyncRunPublic | None


def source_public(session: Session, source: WebsiteSource) -> WebsiteSourcePublic:
    runs = websites.list_runs(session, source, limit=1)
    pages = session.scalar(select(func.count()).select_from(WebsitePage).where(
        WebsitePage.source_id == source.id, WebsitePage.document_id.is_not(None)))
    fields = {k: getattr(source, k) for k in WebsiteSourcePublic.model_fields if k not in ("pages", "last_run")}
    return WebsiteSourcePublic(**fields, pages=pages or 0,
                               last_run=WebsiteSyncRunPublic.model_validate(runs[0]) if runs else None)


def _kb(session: Session, assistant_id: str) -> KnowledgeBase:
    return registry.get_assistant(session, assistant_id).knowledge_base


@router.post("/api/assistants/{assistant_id}/websites", status_code=201, response_model=WebsiteSourcePublic,
             dependencies=[allow(SUPERVISOR, scopes.assistant)])
def create_website(assistant_id: str, body: WebsiteSourceCreate, session: SessionDep, services: ServicesDep):
    """Add a website source and queue its first sync. The site is asked first (robots.txt, the start page or the
    sitemap): a source that cannot work is refused with 422 and the reason."""
    kb = _kb(session, assistant_id)
    settings = websites.SourceSettings(**body.model_dump())
    check_source(services.settings, settings.url, settings.kind)
    source = websites.create_source(session, kb, settings)
    run = websites.start_run(session, source)
    session.commit()
    services.queue.enqueue_sync(run.id)
    return source_public(session, source)


@router.get("/api/assistants/{assistant_id}/websites", response_model=list[WebsiteSourcePublic],
            dependencies=[allow(VIEWER, scopes.assistant)])
def list_websites(assistant_id: str, session: SessionDep):
    return [source_public(session, s) for s in websites.list_sources(session, _kb(session, assistant_id))]


@router.get("/api/websites/{source_id}", response_model=WebsiteSourcePublic,
            dependencies=[allow(VIEWER, scopes.website_source)])
def get_website(source_id: str, session: SessionDep):
    return source_public(session, websites.get_source(session, source_id))


@router.patch("/api/websites/{source_id}", response_model=WebsiteSourcePublic,
              dependencies=[allow(SUPERVISOR, scopes.website_source)])
def update_website(source_id: str, body: WebsiteSourceUpdate, session: SessionDep, services: ServicesDep):
    """Change a source's settings; a new URL or kind is checked against the site as at creation."""
    source = websites.get_source(session, source_id)
    current = websites.SourceSettings(**{k: getattr(source, k) for k in WebsiteSourceCreate.model_fields})
    changes = body.model_dump(exclude_none=True)
    settings = websites.SourceSettings(**{**current.__dict__, **changes})
    if (settings.url, settings.kind) != (current.url, current.kind):
        check_source(services.settings, settings.url, settings.kind)
    websites.update_source(session, source, settings)
    session.commit()
    return source_public(session, source)


@router.delete("/api/websites/{source_id}", status_code=204, dependencies=[allow(SUPERVISOR, scopes.website_source)])
def delete_website(source_id: str, session: SessionDep, services: ServicesDep):
    """Delete a source and the documents of its pages (gone from search at once); 409 while it syncs."""
    source = websites.get_source(session, source_id)
    if websites.active_run(session, source) is not None:
        raise Conflict("the website is being synced; delete it when the sync is done")
    websites.delete_source(session, services.vectors, services.blobs, source, services.document_changed)
    return Response(status_code=204)


@router.post("/api/websites/{source_id}/sync", status_code=202, response_model=WebsiteSyncRunPublic,
             dependencies=[allow(SUPERVISOR, scopes.website_source)])
def sync_website(source_id: str, session: SessionDep, services: ServicesDep):
    """Queue a sync run now (409 when one is already queued or running); follow it in the source's runs."""
    run = websites.start_run(session, websites.get_source(session, source_id))
    session.commit()
    services.queue.enqueue_sync(run.id)
    session.refresh(run)
    return run


@router.get("/api/websites/{source_id}/runs", response_model=list[WebsiteSyncRunPublic],
            dependencies=[allow(VIEWER, scopes.website_source)])
def list_website_runs(source_id: str, session: SessionDep):
    """The source's sync runs, newest first (the last 50), with their counts and failures."""
    return websites.list_runs(session, websites.get_source(session, source_id))
