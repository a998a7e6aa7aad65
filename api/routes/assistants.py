"""Routes for assistants and knowledge-base search: a user lists and reads the assistants they see; supervisors
create (and then see) and change them, admins delete them."""
from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import select

from api import scopes
from api.deps import CurrentUser, QueueDep, ServicesDep, SessionDep, SignedIn, allow
from api.schemas import AssistantCreate, AssistantPublic, AssistantUpdate, SearchRequest, SearchResponse
from kb import registry
from kb.models import Assistant, IngestJob
from kb.search import search
from runtime.accounts.models import UserAssistant
from runtime.accounts.roles import ADMIN, SUPERVISOR, VIEWER
from runtime.config import merge_config

router = APIRouter(prefix="/api/assistants", tags=["assistants"], dependencies=[SignedIn])


def assistant_public(session, assistant: Assistant) -> AssistantPublic:
    out = AssistantPublic.model_validate(assistant)
    job = session.scalar(
        select(IngestJob)
        .where(IngestJob.knowledge_base_id == assistant.knowledge_base.id, IngestJob.kind == "reembed")
        .order_by(IngestJob.created_at.desc())
        .limit(1)
    )
    out.reembed_job = job
    return out


@router.post("", status_code=201, response_model=AssistantPublic, dependencies=[allow(SUPERVISOR)])
def create_assistant(body: AssistantCreate, session: SessionDep, services: ServicesDep, principal: CurrentUser):
    """A new assistant; a supervisor who sees only some assistants is given this one too."""
    s = services.settings
    assistant = registry.create_assistant(
        session,
        name=body.name,
        description=body.description,
        embedding_model=body.embedding_model or s.embedding_model,
        chunk_size=s.chunk_size if body.chunk_size is None else body.chunk_size,
        chunk_overlap=s.chunk_overlap if body.chunk_overlap is None else body.chunk_overlap,
    )
    if not principal.sees(assistant.id):
        session.add(UserAssistant(user_id=principal.user_id, assistant_id=assistant.id))
    session.commit()
    return assistant_public(session, assistant)


@router.get("", response_model=list[AssistantPublic], dependencies=[allow(VIEWER)])
def list_assistants(session: SessionDep, principal: CurrentUser):
    """The assistants the user sees."""
    return [assistant_public(session, a) for a in principal.visible(registry.list_assistants(session), key="id")]


@router.get("/{assistant_id}", response_model=AssistantPublic, dependencies=[allow(VIEWER, scopes.assistant)])
def get_assistant(assistant_id: str, session: SessionDep):
    return assistant_public(session, registry.get_assistant(session, assistant_id))


@router.patch("/{assistant_id}", response_model=AssistantPublic, dependencies=[allow(SUPERVISOR, scopes.assistant)])
def update_assistant(assistant_id: str, body: AssistantUpdate, session: SessionDep, queue: QueueDep):
    assistant = registry.get_assistant(session, assistant_id)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("config") is not None:
        assistant.config = merge_config(assistant.config or {}, changes.pop("config"))
    job = registry.update_assistant(session, assistant, changes)
    session.commit()
    if job is not None:
        queue.enqueue_job(job.id)
    return assistant_public(session, assistant)


@router.delete("/{assistant_id}", status_code=204, dependencies=[allow(ADMIN, scopes.assistant)])
def delete_assistant(assistant_id: str, session: SessionDep, services: ServicesDep):
    registry.delete_assistant(session, services.vectors, services.blobs, registry.get_assistant(session, assistant_id))
    return Response(status_code=204)


@router.post("/{assistant_id}/search", response_model=SearchResponse, dependencies=[allow(VIEWER, scopes.assistant)])
def search_knowledge_base(assistant_id: str, body: SearchRequest, session: SessionDep, services: ServicesDep):
    kb = registry.get_assistant(session, assistant_id).knowledge_base
    hits = search(services, session, kb, body.query, body.top_k, where=body.filters, mode=body.mode,
                  max_per_document=body.max_per_document)
    return SearchResponse(query=body.query, results=hits)
