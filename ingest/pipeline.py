"""Ingestion jobs: parse -> chunk -> embed -> store a document version, then swap it in atomically.

Files are parsed in a child process within the settings' limits (``ingest.sandbox``); a file over
a limit fails its job like any unreadable file. Each document has a time limit as a whole
(``ingest_timeout_s``), kept by ``Deadline``.

A version's chunks are written while it is ``writing`` (hidden from search); one database
transaction then makes it ``current`` and the previous version ``stale``; stale chunks are
purged afterwards. A failure at any point leaves the previous version searchable.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from core.settings import Settings
from ingest.chunk import Chunker
from ingest.errors import IngestError, IngestTimeLimitExceeded, ParseLimitExceeded
from ingest.sandbox import ParseLimits, parse_isolated
from kb.blobs import BlobStore
from kb.embedders import Embedder, EmbedderRegistry
from kb.errors import VectorStoreUnavailable
from kb.models import Document, DocumentVersion, IngestJob, KnowledgeBase
from kb.registry import INTERNAL_ERROR, purge_stale
from kb.types import Chunk, ChunkMetadata
from kb.vectorstore import ChromaVectorStore

log = logging.getLogger(__name__)
EMBED_BATCH = 64  # chunks embedded and written per step (bounds memory, drives progress)


class IngestServices(Protocol):
    """What ingestion uses of the process's shared components (``runtime.services.Services`` is one)."""

    settings: Settings
    embedders: EmbedderRegistry
    vectors: ChromaVectorStore
    blobs: BlobStore
    # told, in the transaction that swaps a new version in: (session, document_id, reason)
    document_changed: Callable[[Session, str, str], object]

    def session(self) -> Session: ...


class Cancelled(Exception):
    """The document was deleted or replaced while its job ran."""


class Deadline:
    """The time one document's ingestion may take (setting ``ingest_timeout_s``), counted from its start.

    A job runs on a worker thread that shares its process with other workers (and, embedded, with the API), so
    nothing can kill it from outside; the limit is kept where the time goes instead:

    - parsing, which can run for minutes inside one call to unstructured, happens in a child process
      (``ingest.sandbox.parse_isolated``) that is killed when the parse limit (``parse_timeout_s``) or the
      document's remaining time runs out, whichever comes first: a hard bound;
    - chunking checks the deadline before each block, embedding and writing after each batch of ``EMBED_BATCH``
      chunks: cooperative checks between steps of a few seconds at most.

    So a job overruns its limit by at most one block's chunking or one batch's embedding. A job out of time
    raises ``IngestTimeLimitExceeded``, which fails it like an unreadable file (``run_job``): the version being
    written was never visible to search and its chunks are purged, the previous version stays current, and the
    worker goes on with its next job.
    """

    def __init__(self, limit_s: float, what: str = "ingesting this document",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_s, self.what, self._clock = limit_s, what, clock
        self._at = clock() + limit_s

    def remaining(self) -> float:
        """Seconds left (negative once the time is up)."""
        return self._at - self._clock()

    @property
    def message(self) -> str:
        """The job's error when the time is up."""
        return f"{self.what} took longer than the limit of {self.limit_s:g} s (ATENDE_INGEST_TIMEOUT_S)"

    def check(self) -> None:
        """Raise ``IngestTimeLimitExceeded`` once the time is up."""
        if self.remaining() <= 0:
            raise IngestTimeLimitExceeded(self.message)

    def parse_limits(self, limits: ParseLimits) -> ParseLimits:
        """``limits`` with the parse's wall-clock limit cut to the time left, when that is shorter."""
        self.check()
        return dataclasses.replace(limits, timeout_s=min(limits.timeout_s, self.remaining()))


NO_DEADLINE = Deadline(math.inf)


@dataclass
class Timings:
    parse_s: float = 0.0
    chunk_s: float = 0.0
    embed_s: float = 0.0
    store_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def as_dict(self) -> dict:
        stages = {k: round(getattr(self, k), 3) for k in ("parse_s", "chunk_s", "embed_s", "store_s")}
        return stages | {"total_s": round(time.perf_counter() - self.started, 3)}


def prepare_chunks(data: bytes, file_type: str, limits: ParseLimits, embedder: Embedder, kb: KnowledgeBase,
                   timings: Timings, deadline: Deadline = NO_DEADLINE) -> tuple[int, list[Chunk]]:
    """Parse (in a child process, within ``limits`` and the time ``deadline`` leaves) and chunk one file; returns
    (element count, chunks). Raises ``IngestTimeLimitExceeded`` when the deadline passes meanwhile."""
    t = time.perf_counter()
    capped = deadline.parse_limits(limits)
    try:
        elements = parse_isolated(data, file_type, capped)
    except ParseLimitExceeded:
        if capped.timeout_s < limits.timeout_s and deadline.remaining() <= 0:
            raise IngestTimeLimitExceeded(deadline.message) from None  # the document's limit, not the parse's
        raise
    timings.parse_s += time.perf_counter() - t
    t = time.perf_counter()
    chunks = Chunker(embedder, kb.chunk_size, kb.chunk_overlap).chunk(elements, deadline.check)
    timings.chunk_s += time.perf_counter() - t
    deadline.check()
    return len(elements), chunks


def chunk_metadata(chunk: Chunk, doc: Document, version: DocumentVersion) -> ChunkMetadata:
    """What the vector store keeps beside ``chunk``: the schema search and the keyword index read back
    (``kb.types.ChunkMetadata``); a page a text file does not have is left out."""
    metadata = ChunkMetadata(
        document_id=doc.id, version=version.version, doc_version=version.key, filename=doc.filename,
        position=chunk.position, section=chunk.section, element_types=",".join(chunk.element_types),
        char_start=chunk.char_start, char_end=chunk.char_end,
    )
    if chunk.page is not None:
        metadata["page"] = chunk.page
    if chunk.page_end is not None:
        metadata["page_end"] = chunk.page_end
    return metadata


def embed_and_store(
    services: IngestServices, collection: str, embedder: Embedder, doc: Document, version: DocumentVersion,
    chunks: list[Chunk], timings: Timings, on_batch: Callable[[int], None] = lambda n: None,
    deadline: Deadline = NO_DEADLINE,
) -> None:
    """Embed chunks in batches and write each batch to the collection as soon as it is embedded; after each batch
    ``on_batch`` is told how many are done, and ``deadline`` is checked (``IngestTimeLimitExceeded``)."""
    for i in range(0, len(chunks), EMBED_BATCH):
        batch = chunks[i : i + EMBED_BATCH]
        t = time.perf_counter()
        vectors = embedder.embed_documents([c.embed_text for c in batch], batch_size=services.settings.embed_batch_size)
        timings.embed_s += time.perf_counter() - t
        t = time.perf_counter()
        services.vectors.add(
            collection,
            ids=[c.chunk_id(doc.id, version.version) for c in batch],
            embeddings=vectors,
            texts=[c.text for c in batch],
            metadatas=[chunk_metadata(c, doc, version) for c in batch],
        )
        timings.store_s += time.perf_counter() - t
        on_batch(i + len(batch))
        deadline.check()


def job_lease_until(settings: Settings) -> datetime:
    """Until when a worker answers for the job it claims now (or for the document it starts re-embedding):
    the time limit of one document (``ingest_timeout_s``) plus ``recovery_margin_s``. A ``processing`` job past
    its lease was left by a dead worker (``runtime.recovery`` queues it again)."""
    return utcnow() + timedelta(seconds=settings.ingest_timeout_s + settings.recovery_margin_s)


def run_job(services: IngestServices, job_id: str) -> IngestJob:
    """Run one queued job (ingest or re-embed) to completion; never raises for a failed document.

    Each document gets ``settings.ingest_timeout_s`` (``Deadline``): an ingestion over it fails with
    ``IngestTimeLimitExceeded``, as does a re-embedding when one of its documents is over it."""
    with services.session() as session:
        # claim the job atomically: a job enqueued twice runs once
        claimed = session.execute(
            update(IngestJob)
            .where(IngestJob.id == job_id, IngestJob.status == "queued")
            .values(status="processing", started_at=utcnow(), lease_until=job_lease_until(services.settings))
        ).rowcount
        job = session.get(IngestJob, job_id)
        if not claimed:
            return job
        if job.version_id and _is_latest(session.get(DocumentVersion, job.version_id)):
            session.get(Document, job.document_id).status = "processing"
        session.commit()
        kind = job.kind
    timings = Timings()
    limit_s = services.settings.ingest_timeout_s
    try:
        if kind == "reembed":
            _reembed(services, job_id, timings, limit_s)
        else:
            _ingest(services, job_id, timings, Deadline(limit_s))
    except VectorStoreUnavailable as exc:
        if kind == "reembed":  # fails as before (a rerun would build another collection and count again)
            _fail(services, job_id, str(exc), timings.as_dict())
        else:
            _wait_for_vector_store(services, job_id, exc)
    except Exception as exc:
        message = str(exc) if isinstance(exc, (IngestError, Cancelled)) else f"{INTERNAL_ERROR}: {type(exc).__name__}: {exc}"
        if not isinstance(exc, (IngestError, Cancelled)):
            log.exception("ingest job %s failed", job_id)
        _fail(services, job_id, message, timings.as_dict())
    with services.session() as session:
        return session.get(IngestJob, job_id)


def _wait_for_vector_store(services: IngestServices, job_id: str, exc: VectorStoreUnavailable) -> None:
    """The Chroma server went away mid-ingestion: the job is not failed but left ``processing`` with a lease of
    ``recovery_margin_s``, so the recovery sweep (``runtime.recovery.stuck_jobs``) queues it again once it
    expires and it runs again from the start (chunk ids are deterministic: what was written is overwritten). Its
    version stays ``writing``, unseen by search; the previous version stays current. A job that was already
    finished when the store went away (its stale chunks not yet purged) is left as it is."""
    until = utcnow() + timedelta(seconds=services.settings.recovery_margin_s)
    with services.session() as session:
        waiting = session.execute(update(IngestJob).where(IngestJob.id == job_id, IngestJob.status == "processing")
                                  .values(lease_until=until)).rowcount
        session.commit()
    if waiting:
        log.warning("ingest job %s waits for the vector store (retried from %s): %s", job_id, until.isoformat(), exc)


def _ingest(services: IngestServices, job_id: str, timings: Timings, deadline: Deadline) -> None:
    with services.session() as session:
        job = session.get(IngestJob, job_id)
        version = session.get(DocumentVersion, job.version_id)
        doc, kb = version.document, session.get(KnowledgeBase, job.knowledge_base_id)
        version.state = "writing"
        session.commit()
        embedder = services.embedders.get(kb.embedding_model)
        elements, chunks = prepare_chunks(services.blobs.get(version.content_hash), version.file_type,
                                          ParseLimits.from_settings(services.settings), embedder, kb, timings,
                                          deadline)
        job.elements, job.chunks_total = elements, len(chunks)
        session.commit()

        def progress(done: int) -> None:
            session.refresh(doc)
            if doc.status == "deleting":
                raise Cancelled("the document was deleted while it was being ingested")
            job.chunks_embedded = done
            session.commit()

        embed_and_store(services, kb.collection, embedder, doc, version, chunks, timings, progress, deadline)
        _swap_in(session, doc, version, job, len(chunks), timings, services.document_changed)
        purge_stale(session, services.vectors, kb)


def _is_latest(version: DocumentVersion) -> bool:
    """The document's status follows its newest upload, not older jobs finishing late."""
    return version.version == max(v.version for v in version.document.versions)


def _swap_in(session, doc: Document, version: DocumentVersion, job: IngestJob, chunk_count: int, timings: Timings,
             changed: Callable[[Session, str, str], object]) -> None:
    """One transaction: the new version becomes current, the old one stale (``changed`` is told when
    there was one)."""
    session.refresh(doc)
    session.refresh(version)
    if doc.status == "deleting" or version.state != "writing":
        raise Cancelled("the document was deleted or replaced while it was being ingested")
    if doc.current_version is not None and doc.current_version > version.version:
        raise Cancelled(f"superseded: version {doc.current_version} of this document is already current")
    replaced = [other for other in doc.versions if other.state == "current"]
    for other in replaced:
        other.state = "stale"
    if replaced:
        changed(session, doc.id, f"{doc.filename} changed (version {version.version})")
    version.state, version.chunk_count = "current", chunk_count
    doc.current_version = version.version
    if _is_latest(version):
        doc.status, doc.error = "ready", None
    job.status, job.finished_at, job.timings = "ready", utcnow(), timings.as_dict()
    session.commit()


def _fail(services: IngestServices, job_id: str, message: str, timings: dict) -> None:
    with services.session() as session:
        job = session.get(IngestJob, job_id)
        job.status, job.error, job.finished_at, job.timings = "failed", message, utcnow(), timings
        kb = session.get(KnowledgeBase, job.knowledge_base_id)
        if job.kind == "reembed":
            kb.target_embedding_model = None
        version = session.get(DocumentVersion, job.version_id) if job.version_id else None
        if version is not None and version.state in ("pending", "writing"):
            version.state = "stale"  # its partial chunks are hidden at once, purged below
        doc = session.get(Document, job.document_id) if job.document_id else None
        if doc is not None and doc.status != "deleting" and version is not None and _is_latest(version):
            doc.status, doc.error = "failed", message
        session.commit()
        try:
            purge_stale(session, services.vectors, kb)
        except VectorStoreUnavailable as exc:  # the stale chunks are hidden; the next purge of the kb deletes them
            log.warning("stale chunks of knowledge base %s left for a later purge: %s", kb.id, exc)


def _reembed(services: IngestServices, job_id: str, timings: Timings, limit_s: float) -> None:
    """Rebuild the knowledge base in a new collection with the target model, then switch to it; each document
    gets ``limit_s`` seconds."""
    with services.session() as session:
        job = session.get(IngestJob, job_id)
        kb = session.get(KnowledgeBase, job.knowledge_base_id)
        embedder = services.embedders.get(kb.target_embedding_model)
        limits = ParseLimits.from_settings(services.settings)
        new_collection = f"kb_{kb.id}_{new_id()[:8]}"
        try:
            done: set[str] = set()
            while True:
                current = list(
                    session.scalars(
                        select(DocumentVersion).where(
                            DocumentVersion.knowledge_base_id == kb.id, DocumentVersion.state == "current"
                        ).order_by(DocumentVersion.created_at)
                    )
                )
                todo = [v for v in current if v.id not in done]
                if not todo:
                    break
                job.chunks_total += len(todo)
                for version in todo:  # documents replaced meanwhile show up in the next round
                    deadline = Deadline(limit_s, f"re-embedding {version.document.filename}")
                    job.lease_until = job_lease_until(services.settings)  # each document gets its own time
                    session.commit()
                    _, chunks = prepare_chunks(services.blobs.get(version.content_hash), version.file_type, limits,
                                               embedder, kb, timings, deadline)
                    embed_and_store(services, new_collection, embedder, version.document, version, chunks, timings,
                                    deadline=deadline)
                    version.chunk_count = len(chunks)
                    done.add(version.id)
                    job.chunks_embedded += 1
                    session.commit()
        except BaseException:
            services.vectors.drop(new_collection)  # leave no half-built collection behind
            raise
        gone = [v.key for v in session.scalars(select(DocumentVersion).where(DocumentVersion.id.in_(done),
                                                                             DocumentVersion.state != "current"))]
        old_collection = kb.collection
        kb.collection, kb.embedding_model, kb.target_embedding_model = new_collection, kb.target_embedding_model, None
        job.status, job.finished_at, job.timings = "ready", utcnow(), timings.as_dict()
        session.commit()
        services.vectors.delete_versions(new_collection, gone)
        services.vectors.drop(old_collection)
