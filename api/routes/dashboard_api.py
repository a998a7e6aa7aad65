"""The two JSON actions the dashboard needs beyond the existing API: the test console's chat (a
``test`` conversation, like ``atende chat``) and re-indexing a document from its stored file."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from api.deps import AdminDep, ServicesDep, SessionDep
from api.routes.documents import document_public
from api.schemas import ChatRequest, ChatResult, DocumentPublic
from atende.db import new_id
from kb import registry
from kb.errors import Conflict
from kb.models import DocumentVersion, IngestJob
from runtime.turn import handle_message

router = APIRouter(tags=["dashboard"], dependencies=[AdminDep])

CONSOLE_SENDER = "console"  # the same sender as the CLI's test console


@router.post("/api/console/chat", response_model=ChatResult, responses={502: {"description": "the language model failed"}})
def console_chat(body: ChatRequest, services: ServicesDep):
    """The test console: like ``POST /api/chat``, but the conversation is of type ``test``."""
    result = handle_message(
        services, assistant_ref=body.assistant_id, channel="test", sender=CONSOLE_SENDER,
        customer_id=body.customer_id, text=body.message, variables=body.variables,
    )
    out = ChatResult.from_turn(result)
    if result.status == "error":
        return JSONResponse(status_code=502, content={"detail": "the language model failed; the message is stored",
                                                      **out.model_dump(mode="json")})
    return out


@router.post("/api/documents/{document_id}/reindex", status_code=202, response_model=DocumentPublic)
def reindex_document(document_id: str, session: SessionDep, services: ServicesDep):
    """Parse, chunk and embed the document's latest file again, as a new version (e.g. after a change
    of chunk size); the current version stays searchable until the new one is ready."""
    doc = registry.get_document(session, document_id)
    if doc.status in ("queued", "processing", "deleting"):
        raise Conflict(f"'{doc.filename}' is {doc.status}; re-index it when that is done")
    latest = doc.versions[-1]
    version = DocumentVersion(id=new_id(), knowledge_base_id=doc.knowledge_base_id, version=latest.version + 1,
                              content_hash=latest.content_hash, size_bytes=latest.size_bytes, file_type=latest.file_type)
    doc.versions.append(version)
    doc.status, doc.error = "queued", None
    job = IngestJob(id=new_id(), knowledge_base_id=doc.knowledge_base_id, document_id=doc.id, version_id=version.id)
    session.add(job)
    try:
        session.commit()
    except IntegrityError as exc:  # a concurrent upload or re-index took the version number
        raise Conflict(f"'{doc.filename}' is being changed concurrently; try again") from exc
    services.enqueue(job.id)
    return document_public(session, doc)
