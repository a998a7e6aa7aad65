"""Website sources of a knowledge base: create, change, delete, start a sync run, and find the ones due.

The fetching and the sync itself are ``ingest.website_sync``'s; this module keeps the rows. A source has at most
one run queued or running at a time (``start_run`` refuses a second); its next scheduled sync is
``sync_interval_hours`` after the last one started (0: manual syncs only).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from core.errors import Conflict, InvalidRequest, NotFound
from kb.blobs import BlobStore
from kb.models import Document, KnowledgeBase, WebsitePage, WebsiteSource, WebsiteSyncRun
from kb.registry import MAX_FILENAME, delete_document
from kb.vectorstore import ChromaVectorStore

KINDS = ("crawl", "sitemap")
ACTIVE = ("queued", "running")
MAX_PATTERNS, MAX_PATTERN_CHARS = 50, 200
# a run still queued after this long lost its job (a flushed Redis, a deleted queue file): the scheduler fails it
QUEUED_FOR_AT_MOST = timedelta(hours=6)


@dataclass
class SourceSettings:
    """What an admin sets on a source (the API's ``WebsiteSourceCreate`` checks the ranges)."""

    url: str
    kind: str = "crawl"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    max_pages: int = 200
    max_depth: int = 3
    request_interval_s: float = 1.0
    sync_interval_hours: float = 24.0


def _check_url(url: str) -> str:
    url = (url or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("url must be an http:// or https:// address with a host")
    if len(url) > MAX_FILENAME:
        raise InvalidRequest(f"url must be at most {MAX_FILENAME} characters")
    return url


def _check_patterns(name: str, patterns: list[str]) -> list[str]:
    cleaned = [p.strip() for p in patterns if p and p.strip()]
    if len(cleaned) > MAX_PATTERNS or any(len(p) > MAX_PATTERN_CHARS for p in cleaned):
        raise InvalidRequest(f"{name}: at most {MAX_PATTERNS} patterns of at most {MAX_PATTERN_CHARS} characters")
    return cleaned


def create_source(session: Session, kb: KnowledgeBase, settings: SourceSettings) -> WebsiteSource:
    """Add a source to ``kb`` (settings already checked by the caller, e.g. ``ingest.website_sync.check_source``);
    ``Conflict`` when the knowledge base already follows that URL."""
    source = WebsiteSource(id=new_id(), knowledge_base_id=kb.id)
    _apply(source, settings, utcnow())
    _check_unique(session, source)
    session.add(source)
    session.flush()
    return source


def update_source(session: Session, source: WebsiteSource, settings: SourceSettings) -> WebsiteSource:
    """Replace the source's settings; a changed interval moves its next scheduled sync."""
    _apply(source, settings, utcnow())
    _check_unique(session, source)
    session.flush()
    return source


def _check_unique(session: Session, source: WebsiteSource) -> None:
    with session.no_autoflush:
        clash = session.scalar(select(WebsiteSource.id).where(
            WebsiteSource.knowledge_base_id == source.knowledge_base_id, WebsiteSource.url == source.url,
            WebsiteSource.id != source.id).limit(1))
    if clash:
        raise Conflict(f"this knowledge base already follows {source.url}")


def _apply(source: WebsiteSource, settings: SourceSettings, now: datetime) -> None:
    if settings.kind not in KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(KINDS)}")
    source.url, source.kind = _check_url(settings.url), settings.kind
    source.include = _check_patterns("include", settings.include)
    source.exclude = _check_patterns("exclude", settings.exclude)
    source.max_pages, source.max_depth = settings.max_pages, settings.max_depth
    source.request_interval_s, source.sync_interval_hours = settings.request_interval_s, settings.sync_interval_hours
    source.next_sync_at = (now + timedelta(hours=settings.sync_interval_hours)) if settings.sync_interval_hours else None


def get_source(session: Session, source_id: str) -> WebsiteSource:
    source = session.get(WebsiteSource, source_id)
    if source is None:
        raise NotFound(f"website source {source_id!r} not found")
    return source


def list_sources(session: Session, kb: KnowledgeBase) -> list[WebsiteSource]:
    return list(session.scalars(select(WebsiteSource).where(WebsiteSource.knowledge_base_id == kb.id)
                                .order_by(WebsiteSource.created_at)))


def start_run(session: Session, source: WebsiteSource, trigger: str = "manual") -> WebsiteSyncRun:
    """Queue a sync run of ``source`` (the caller commits, then hands its id to the queue); ``Conflict`` when one
    is already queued or running."""
    if active_run(session, source) is not None:
        raise Conflict("a sync of this website is already queued or running; wait for it to finish")
    run = WebsiteSyncRun(id=new_id(), source_id=source.id, trigger=trigger, failures=[])
    session.add(run)
    session.flush()
    return run


def active_run(session: Session, source: WebsiteSource) -> WebsiteSyncRun | None:
    return session.scalar(select(WebsiteSyncRun).where(WebsiteSyncRun.source_id == source.id,
                                                       WebsiteSyncRun.status.in_(ACTIVE)).limit(1))


def list_runs(session: Session, source: WebsiteSource, limit: int = 50) -> list[WebsiteSyncRun]:
    """The source's runs, newest first."""
    return list(session.scalars(select(WebsiteSyncRun).where(WebsiteSyncRun.source_id == source.id)
                                .order_by(WebsiteSyncRun.created_at.desc()).limit(limit)))


def due_runs(session: Session, now: datetime) -> list[WebsiteSyncRun]:
    """Start the scheduled runs due at ``now`` (committed; their ids go to the queue): each source past its
    ``next_sync_at`` is claimed by moving that time on by its interval, so schedulers of several processes start
    one run. A run left ``running`` past its lease (a dead worker), or ``queued`` for longer than
    ``QUEUED_FOR_AT_MOST`` (its job lost with the queue), is first marked failed: it no longer holds its source."""
    session.execute(update(WebsiteSyncRun)
                    .where(WebsiteSyncRun.status == "running", WebsiteSyncRun.lease_until < now)
                    .values(status="failed", finished_at=now,
                            error="interrupted: the worker running it stopped; what it had swapped in stays"))
    session.execute(update(WebsiteSyncRun)
                    .where(WebsiteSyncRun.status == "queued", WebsiteSyncRun.created_at < now - QUEUED_FOR_AT_MOST)
                    .values(status="failed", finished_at=now, error="never started: its job was lost from the queue"))
    session.commit()
    runs = []
    due = session.scalars(select(WebsiteSource).where(WebsiteSource.next_sync_at.is_not(None),
                                                      WebsiteSource.next_sync_at <= now))
    for source in list(due):
        claimed = session.execute(
            update(WebsiteSource)
            .where(WebsiteSource.id == source.id, WebsiteSource.next_sync_at == source.next_sync_at)
            .values(next_sync_at=now + timedelta(hours=source.sync_interval_hours))
        ).rowcount  # type: ignore[attr-defined]
        if claimed and active_run(session, source) is None:
            runs.append(start_run(session, source, trigger="scheduled"))
        session.commit()
    return runs


def pages_of(session: Session, source: WebsiteSource) -> list[WebsitePage]:
    return list(session.scalars(select(WebsitePage).where(WebsitePage.source_id == source.id)))


def remove_page(session: Session, vectors: ChromaVectorStore, blobs: BlobStore, page: WebsitePage,
                changed: Callable[[Session, str, str], object]) -> bool:
    """Forget a page; its document is deleted (gone from search at once) unless another source's page feeds it,
    ``changed`` told first (as for a deleted upload: approved answers drawn from it go back to review). Returns
    whether a document was deleted."""
    doc = session.get(Document, page.document_id) if page.document_id else None
    session.delete(page)
    session.commit()
    if doc is None or session.scalar(select(WebsitePage.id).where(WebsitePage.document_id == doc.id).limit(1)):
        return False
    changed(session, doc.id, f"{doc.filename} is gone from the website")
    delete_document(session, vectors, blobs, doc)
    return True


def delete_source(session: Session, vectors: ChromaVectorStore, blobs: BlobStore, source: WebsiteSource,
                  changed: Callable[[Session, str, str], object]) -> int:
    """Delete a source, its runs and the documents of its pages; returns how many documents were deleted."""
    removed = sum(remove_page(session, vectors, blobs, page, changed) for page in pages_of(session, source))
    session.delete(source)
    session.commit()
    return removed
