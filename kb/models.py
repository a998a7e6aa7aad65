r"""Tables of assistants, their knowledge bases, documents, document versions and ingest jobs.

A document is identified by (knowledge base, filename). Each upload with new content is a new
version; the version's ``state`` says whether its chunks are in the vector store and visible:

    pending -> writing -> current -> stale -> gone
                     \-> stale (failed) -> gone

Search excludes every version that is ``writing`` or ``stale``, so flipping ``current`` in one
database transaction swaps what is searchable atomically.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, UTCDateTime, new_id, utcnow

VERSION_HIDDEN_STATES = ("writing", "stale")


class Assistant(Base):
    __tablename__ = "assistants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # conversation settings (runtime.config.AssistantConfig as JSON)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    knowledge_base: Mapped[KnowledgeBase] = relationship(
        back_populates="assistant", cascade="all, delete-orphan", uselist=False, lazy="joined"
    )


class KnowledgeBase(Base):
    __tablename__ = "knowledge_bases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    assistant_id: Mapped[str] = mapped_column(ForeignKey("assistants.id", ondelete="CASCADE"), unique=True)
    embedding_model: Mapped[str] = mapped_column(String(200))
    collection: Mapped[str] = mapped_column(String(100))
    # set while the knowledge base is being re-embedded with another model
    target_embedding_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    chunk_size: Mapped[int] = mapped_column(Integer)
    chunk_overlap: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    assistant: Mapped[Assistant] = relationship(back_populates="knowledge_base")


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("knowledge_base_id", "filename"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    knowledge_base_id: Mapped[str] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(500))
    # status of the latest upload: queued | processing | ready | failed | deleting
    status: Mapped[str] = mapped_column(String(20), default="queued")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    current_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    versions: Mapped[list[DocumentVersion]] = relationship(
        back_populates="document", cascade="all, delete-orphan", order_by="DocumentVersion.version"
    )


class DocumentVersion(Base):
    __tablename__ = "document_versions"
    __table_args__ = (UniqueConstraint("document_id", "version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    knowledge_base_id: Mapped[str] = mapped_column(String(32), index=True)
    version: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    file_type: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20), default="pending")
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    document: Mapped[Document] = relationship(back_populates="versions")

    @property
    def key(self) -> str:
        """The value of the ``doc_version`` metadata on this version's chunks."""
        return f"{self.document_id}:{self.version}"


class IngestJob(Base):
    __tablename__ = "ingest_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    knowledge_base_id: Mapped[str] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True)
    document_id: Mapped[str | None] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), nullable=True, index=True)
    version_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    kind: Mapped[str] = mapped_column(String(20), default="ingest")  # ingest | reembed
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued | processing | ready | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    elements: Mapped[int] = mapped_column(Integer, default=0)
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    chunks_embedded: Mapped[int] = mapped_column(Integer, default=0)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # while ``processing``: until when the worker answers for it (claimed, renewed as it progresses); a job past
    # it was left by a dead worker, and the recovery sweep (runtime.recovery) queues it again
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WebsiteSource(Base):
    """A website a knowledge base follows: its pages are documents (filename = URL), re-synced on a schedule
    (``ingest.website_sync``). ``kind`` says what ``url`` is: a start page to crawl links from, or a sitemap."""

    __tablename__ = "website_sources"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    knowledge_base_id: Mapped[str] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    kind: Mapped[str] = mapped_column(String(20), default="crawl")  # crawl | sitemap
    # glob patterns (fnmatch) on the URL's path and query; empty include = every page of the site
    include: Mapped[list[str]] = mapped_column(JSON, default=list)
    exclude: Mapped[list[str]] = mapped_column(JSON, default=list)
    max_pages: Mapped[int] = mapped_column(Integer, default=200)
    max_depth: Mapped[int] = mapped_column(Integer, default=3)  # links followed from the start page (crawl)
    request_interval_s: Mapped[float] = mapped_column(Float, default=1.0)  # between two requests to the site
    sync_interval_hours: Mapped[float] = mapped_column(Float, default=24.0)  # 0: manual syncs only
    next_sync_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class WebsitePage(Base):
    """A page a website source has seen, and the document it feeds (None while it never had content)."""

    __tablename__ = "website_pages"
    __table_args__ = (UniqueConstraint("source_id", "url"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    source_id: Mapped[str] = mapped_column(ForeignKey("website_sources.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    document_id: Mapped[str | None] = mapped_column(ForeignKey("documents.id", ondelete="SET NULL"), nullable=True,
                                                    index=True)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # the validators of the response its current document was made from (sent back as If-None-Match /
    # If-Modified-Since: a 304 is not downloaded again), and its same-site links (followed when it answers 304)
    etag: Mapped[str | None] = mapped_column(String(500), nullable=True)
    last_modified: Mapped[str | None] = mapped_column(String(100), nullable=True)
    links: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class WebsiteSyncRun(Base):
    """One sync of a website source: what it saw and did, page by page counted, with the reasons of failures."""

    __tablename__ = "website_sync_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    source_id: Mapped[str] = mapped_column(ForeignKey("website_sources.id", ondelete="CASCADE"), index=True)
    trigger: Mapped[str] = mapped_column(String(20), default="manual")  # manual | scheduled
    # queued | running | succeeded | partial (some pages failed) | failed (the site itself)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    pages_planned: Mapped[int] = mapped_column(Integer, default=0)  # known so far (sitemap entries, links queued)
    pages_seen: Mapped[int] = mapped_column(Integer, default=0)
    pages_added: Mapped[int] = mapped_column(Integer, default=0)
    pages_changed: Mapped[int] = mapped_column(Integer, default=0)
    pages_unchanged: Mapped[int] = mapped_column(Integer, default=0)
    pages_removed: Mapped[int] = mapped_column(Integer, default=0)
    pages_failed: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)  # [{"url", "reason"}], capped
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # while ``running``: until when the worker answers for it (renewed page by page); past it, the run was left by
    # a dead worker and the scheduler marks it failed
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
