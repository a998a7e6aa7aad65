"""Routes for knowledge-base documents: upload, list, inspect, delete; and jobs. Reading needs the assistant;
changing needs a supervisor of it."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Response, UploadFile
from fastapi.responses import JSONResponse

from api import scopes
from api.deps import ServicesDep, SessionDep, SignedIn, allow
from api.schemas import DocumentPublic, JobPublic
from core.errors import NotFound
from kb import registry
from kb.errors import FileTooLarge
from kb.models import Document, IngestJob
from runtime.accounts.roles import SUPERVISOR, VIEWER
from runtime.approved import flag_for_review

router = APIRouter(tags=["documents"], dependencies=[SignedIn])


def document_public(session, doc: Document, unchanged: bool = False) -> DocumentPublic:
    latest = doc.versions[-1] if doc.versions else None
    current = next((v for v in doc.versions if v.version == doc.current_version), None)
    return DocumentPublic(
        id=doc.id, knowledge_base_id=doc.knowledge_base_id, filename=doc.filename, status=doc.status,
        error=doc.error, current_version=doc.current_version, latest_version=latest.version if latest else None,
        file_type=latest.file_type if latest else None, size_bytes=latest.size_bytes if latest else None,
        content_hash=latest.content_hash if latest else None, chunk_count=current.chunk_count if current else 0,
        created_at=doc.created_at, updated_at=doc.updated_at, unchanged=unchanged,
        job=registry.latest_job(session, doc.id),
    )


@router.post("/api/assistants/{assistant_id}/documents", status_code=202, response_model=DocumentPublic,
             responses={200: {"description": "identical content was already stored; nothing to do"}},
             dependencies=[allow(SUPERVISOR, scopes.assistant)])
async def upload_document(assistant_id: str, session: SessionDep, services: ServicesDep,
                          file: Annotated[UploadFile, File()]):
    kb = registry.get_assistant(session, assistant_id).knowledge_base
    limit = services.settings.max_upload_bytes
    if file.size is not None and file.size > limit:  # refuse before reading it into memory
        raise FileTooLarge(
            f"'{file.filename}' is {file.size / 1e6:.1f} MB; the limit is {services.settings.max_upload_mb:g} MiB"
        )
    data = await file.read(limit + 1)
    upload = registry.register_upload(session, services.blobs, kb, file.filename, data, limit)
    session.commit()
    if upload.job is not None:
        services.queue.enqueue_job(upload.job.id)
    body = document_public(session, upload.document, unchanged=upload.unchanged)
    return JSONResponse(status_code=200 if upload.unchanged else 202, content=body.model_dump(mode="json"))


@router.get("/api/assistants/{assistant_id}/documents", response_model=list[DocumentPublic],
            dependencies=[allow(VIEWER, scopes.assistant)])
def list_documents(assistant_id: str, session: SessionDep):
    kb = registry.get_assistant(session, assistant_id).knowledge_base
    return [document_public(session, d) for d in registry.list_documents(session, kb)]


@router.get("/api/documents/{document_id}", response_model=DocumentPublic, dependencies=[allow(VIEWER, scopes.document)])
def get_document(document_id: str, session: SessionDep):
    return document_public(session, registry.get_document(session, document_id))


@router.delete("/api/documents/{document_id}", status_code=204, dependencies=[allow(SUPERVISOR, scopes.document)])
def delete_document(document_id: str, session: SessionDep, services: ServicesDep):
    doc = registry.get_document(session, document_id)
    flag_for_review(session, doc.id, f"{doc.filename} was deleted")  # committed with the deletion's first step
    registry.delete_document(session, services.vectors, services.blobs, doc)
    return Response(status_code=204)


@router.get("/api/jobs/{job_id}", response_model=JobPublic, dependencies=[allow(VIEWER, scopes.job)])
def get_job(job_id: str, session: SessionDep):
    job = session.get(IngestJob, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} not found")
    return job
