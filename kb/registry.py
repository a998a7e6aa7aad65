"""Assistants, their knowledge bases and the document registry (uploads, versions, deletes)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import new_id
from core.errors import Conflict, InvalidRequest, NotFound
from kb.blobs import BlobStore, content_hash
from kb.detect import detect_file_type
from kb.embedders import validate_model_name
from kb.models import VERSION_HIDDEN_STATES, Assistant, Document, DocumentVersion, IngestJob, KnowledgeBase
from kb.vectorstore import ChromaVectorStore

MIN_CHUNK_TOKENS, MAX_CHUNK_TOKENS = 32, 2048
INTERNAL_ERROR = "internal error"  # prefix of job errors that are not the file's fault
MAX_FILENAME = 500  # documents.filename: an upload's name, or a website page's URL


def _check_chunking(size: int, overlap: int) -> None:
    if not MIN_CHUNK_TOKENS <= size <= MAX_CHUNK_TOKENS:
        raise InvalidRequest(f"chunk_size must be between {MIN_CHUNK_TOKENS} and {MAX_CHUNK_TOKENS} tokens")
    if not 0 <= overlap <= size // 2:
        raise InvalidRequest("chunk_overlap must be between 0 and half of chunk_size")


def create_assistant(
    session: Session, *, name: str, description: str = "", embedding_model: str, chunk_size: int, chunk_overlap: int
) -> Assistant:
    """Create an assistant with its (empty) knowledge base."""
    name = name.strip()
    if not name:
        raise InvalidRequest("name must not be empty")
    validate_model_name(embedding_model)
    _check_chunking(chunk_size, chunk_overlap)
    if session.scalar(select(Assistant).where(Assistant.name == name)):
        raise Conflict(f"an assistant named {name!r} already exists")
    assistant = Assistant(id=new_id(), name=name, description=description)
    kb_id = new_id()
    assistant.knowledge_base = KnowledgeBase(
        id=kb_id, embedding_model=embedding_model, collection=f"kb_{kb_id}",
        chunk_size=chunk_size, chunk_overlap=chunk_overlap,
    )
    session.add(assistant)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(f"an assistant named {name!r} already exists") from exc
    return assistant


def get_assistant(session: Session, ref: str) -> Assistant:
    """Find an assistant by id or by name."""
    found = session.get(Assistant, ref) or session.scalar(select(Assistant).where(Assistant.name == ref))
    if found is None:
        raise NotFound(f"assistant {ref!r} not found")
    return found


def list_assistants(session: Session) -> list[Assistant]:
    return list(session.scalars(select(Assistant).order_by(Assistant.created_at)))


def update_assistant(session: Session, assistant: Assistant, changes: dict[str, Any]) -> IngestJob | None:
    """Apply changes; a new embedding model queues a re-embedding job, which is returned."""
    kb = assistant.knowledge_base
    if "name" in changes and changes["name"] != assistant.name:
        name = (changes["name"] or "").strip()
        if not name:
            raise InvalidRequest("name must not be empty")
        if session.scalar(select(Assistant).where(Assistant.name == name, Assistant.id != assistant.id)):
            raise Conflict(f"an assistant named {name!r} already exists")
        assistant.name = name
    if "description" in changes:
        assistant.description = changes["description"] or ""
    size = kb.chunk_size if changes.get("chunk_size") is None else changes["chunk_size"]
    overlap = kb.chunk_overlap if changes.get("chunk_overlap") is None else changes["chunk_overlap"]
    _check_chunking(size, overlap)
    kb.chunk_size, kb.chunk_overlap = size, overlap
    model = changes.get("embedding_model")
    if model and model != (kb.target_embedding_model or kb.embedding_model):
        validate_model_name(model)
        if kb.target_embedding_model:
            raise Conflict("the knowledge base is already being re-embedded; try again when it is done")
        kb.target_embedding_model = model
        job = IngestJob(id=new_id(), knowledge_base_id=kb.id, kind="reembed")
        session.add(job)
        session.flush()
        return job
    session.flush()
    return None


@dataclass
class Upload:
    document: Document
    job: IngestJob | None  # None when the content is unchanged
    unchanged: bool


def register_upload(
    session: Session, blobs: BlobStore, kb: KnowledgeBase, filename: str, data: bytes, max_bytes: int
) -> Upload:
    """Validate an upload and queue a new version, or do nothing if the content is unchanged.

    Raises ``kb.errors.InvalidUpload`` (nothing is stored) for empty, oversized, unsupported
    or mislabelled files.
    """
    filename = _clean_filename(filename)
    return _register(session, blobs, kb, filename, data, detect_file_type(filename, data, max_bytes))


def register_page(session: Session, blobs: BlobStore, kb: KnowledgeBase, url: str, markdown: bytes) -> Upload:
    """Queue a new version of a website page's document (filename = its URL, the extracted Markdown as its file),
    or do nothing when the extracted content is unchanged (``ingest.website_sync``)."""
    if len(url) > MAX_FILENAME:
        raise InvalidRequest(f"the URL is longer than {MAX_FILENAME} characters")
    return _register(session, blobs, kb, url, markdown, "md")


def _register(session: Session, blobs: BlobStore, kb: KnowledgeBase, filename: str, data: bytes,
              file_type: str) -> Upload:
    digest = content_hash(data)
    doc = session.scalar(
        select(Document).where(Document.knowledge_base_id == kb.id, Document.filename == filename)
    )
    if doc is not None and doc.status == "deleting":
        raise Conflict(f"'{filename}' is being deleted; upload it again in a moment")
    if doc is not None:
        latest = doc.versions[-1] if doc.versions else None
        # the same bytes again change nothing, even after a failure: parsing would fail the same
        # way; only a failure of ours (an internal error) is worth retrying
        retry = doc.status == "failed" and (doc.error or "").startswith(INTERNAL_ERROR)
        if latest is not None and latest.content_hash == digest and not retry:
            return Upload(doc, None, unchanged=True)
    else:
        doc = Document(id=new_id(), knowledge_base_id=kb.id, filename=filename)
        session.add(doc)
    blobs.put(data)
    return Upload(doc, _queue_version(session, doc, digest, len(data), file_type), unchanged=False)


def reindex_document(session: Session, doc: Document) -> IngestJob:
    """Queue the document's latest file again as a new version (e.g. after a chunking change); the
    current version stays searchable until the new one is ready."""
    if doc.status in ("queued", "processing", "deleting"):
        raise Conflict(f"'{doc.filename}' is {doc.status}; re-index it when that is done")
    latest = doc.versions[-1]
    return _queue_version(session, doc, latest.content_hash, latest.size_bytes, latest.file_type)


def _queue_version(session: Session, doc: Document, digest: str, size: int, file_type: str) -> IngestJob:
    number = max((v.version for v in doc.versions), default=0) + 1
    version = DocumentVersion(
        id=new_id(), knowledge_base_id=doc.knowledge_base_id, version=number, content_hash=digest,
        size_bytes=size, file_type=file_type,
    )
    doc.versions.append(version)
    doc.status, doc.error = "queued", None
    job = IngestJob(id=new_id(), knowledge_base_id=doc.knowledge_base_id, document_id=doc.id, version_id=version.id)
    session.add(job)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent upload or re-index took the version number
        raise Conflict(f"'{doc.filename}' is being changed concurrently; try again") from exc
    return job


def _clean_filename(filename: str | None) -> str:
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or name in (".", ".."):
        raise InvalidRequest("the upload has no filename")
    return name[:MAX_FILENAME]


def get_document(session: Session, document_id: str) -> Document:
    doc = session.get(Document, document_id)
    if doc is None:
        raise NotFound(f"document {document_id!r} not found")
    return doc


def list_documents(session: Session, kb: KnowledgeBase) -> list[Document]:
    return list(session.scalars(select(Document).where(Document.knowledge_base_id == kb.id).order_by(Document.filename)))


def has_documents(session: Session, kb: KnowledgeBase) -> bool:
    """Whether ``kb`` holds a document with an ingested version (something a search can find)."""
    query = select(Document.id).where(Document.knowledge_base_id == kb.id, Document.current_version.is_not(None))
    return session.scalar(query.limit(1)) is not None


def latest_job(session: Session, document_id: str) -> IngestJob | None:
    return session.scalar(
        select(IngestJob).where(IngestJob.document_id == document_id).order_by(IngestJob.created_at.desc()).limit(1)
    )


def hidden_version_keys(session: Session, kb_id: str) -> list[str]:
    """``doc_version`` keys whose chunks may be in the store but must not be searched."""
    rows = session.execute(
        select(DocumentVersion.document_id, DocumentVersion.version).where(
            DocumentVersion.knowledge_base_id == kb_id, DocumentVersion.state.in_(VERSION_HIDDEN_STATES)
        )
    )
    return [f"{d}:{v}" for d, v in rows]


def purge_stale(session: Session, vectors: ChromaVectorStore, kb: KnowledgeBase) -> int:
    """Delete the chunks of stale versions from the store, then mark them gone. Returns how many."""
    stale = list(
        session.scalars(
            select(DocumentVersion).where(DocumentVersion.knowledge_base_id == kb.id, DocumentVersion.state == "stale")
        )
    )
    vectors.delete_versions(kb.collection, [v.key for v in stale])
    for v in stale:
        v.state = "gone"
    session.commit()
    return len(stale)


def delete_document(session: Session, vectors: ChromaVectorStore, blobs: BlobStore, doc: Document) -> None:
    """Hide every version at once, delete its chunks, then the rows and unreferenced files."""
    kb = session.get_one(KnowledgeBase, doc.knowledge_base_id)
    doc.status = "deleting"
    for v in doc.versions:
        if v.state in ("current", "writing"):
            v.state = "stale"
    session.commit()
    purge_stale(session, vectors, kb)
    hashes = {v.content_hash for v in doc.versions}
    session.delete(doc)
    session.commit()
    for digest in hashes:
        if not session.scalar(select(DocumentVersion.id).where(DocumentVersion.content_hash == digest).limit(1)):
            blobs.delete(digest)


def delete_assistant(session: Session, vectors: ChromaVectorStore, blobs: BlobStore, assistant: Assistant) -> None:
    """Delete an assistant, its knowledge base, its documents and its collection."""
    kb = assistant.knowledge_base
    for doc in list_documents(session, kb):
        delete_document(session, vectors, blobs, doc)
    vectors.drop(kb.collection)
    session.delete(assistant)
    session.commit()
