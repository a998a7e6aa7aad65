"""The two JSON actions the dashboard needs beyond the existing API: the test console's chat (a
``test`` conversation, like ``atende chat``) and re-indexing a document from its stored file; both a supervisor's."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api import scopes
from api.deps import CurrentUser, QueueDep, ServicesDep, SessionDep, SignedIn, allow
from api.routes.documents import document_public
from api.schemas import ChatRequest, ChatResult, DocumentPublic
from kb import registry
from runtime.accounts.roles import SUPERVISOR
from runtime.turn import handle_message

router = APIRouter(tags=["dashboard"], dependencies=[SignedIn])

CONSOLE_SENDER = "console"  # the same sender as the CLI's test console


@router.post("/api/console/chat", response_model=ChatResult, responses={502: {"description": "the language model failed"}},
             dependencies=[allow(SUPERVISOR)])
def console_chat(body: ChatRequest, services: ServicesDep, session: SessionDep, principal: CurrentUser):
    """The test console: like ``POST /api/chat``, but the conversation is of type ``test``."""
    principal.require_assistant(registry.get_assistant(session, body.assistant_id).id)
    result = handle_message(
        services, assistant_ref=body.assistant_id, channel="test", sender=CONSOLE_SENDER,
        customer_id=body.customer_id, text=body.message, variables=body.variables,
    )
    out = ChatResult.from_turn(result)
    if result.status == "error":
        return JSONResponse(status_code=502, content={"detail": "the language model failed; the message is stored",
                                                      **out.model_dump(mode="json")})
    return out


@router.post("/api/documents/{document_id}/reindex", status_code=202, response_model=DocumentPublic,
             dependencies=[allow(SUPERVISOR, scopes.document)])
def reindex_document(document_id: str, session: SessionDep, queue: QueueDep):
    """Parse, chunk and embed the document's latest file again, as a new version (e.g. after a change
    of chunk size); the current version stays searchable until the new one is ready."""
    doc = registry.get_document(session, document_id)
    job = registry.reindex_document(session, doc)
    session.commit()
    queue.enqueue_job(job.id)
    return document_public(session, doc)
