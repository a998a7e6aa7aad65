"""Admin routes for assistants and knowledge-base search."""
from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import select

from api.deps import AdminDep, QueueDep, ServicesDep, SessionDep
from api.schemas import AssistantCreate, AssistantPublic, AssistantUpdate, SearchRequest, SearchResponse
from kb import registry
from kb.models import Assistant, IngestJob
from kb.search import search
from runtime.config import merge_config

router = APIRouter(prefix="/api/assistants", tags=["assistants"], dependencies=[AdminDep])


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


@router.post("", status_code=201, response_model=AssistantPublic)
def create_assistant(body: AssistantCreate, session: SessionDep, services: ServicesDep):
    s = services.settings
    assistant = registry.create_assistant(
        session,
        name=body.name,
        description=body.description,
        embedding_model=body.embedding_model or s.embedding_model,
        chunk_size=s.chunk_size if body.chunk_size is None else body.chunk_size,
        chunk_overlap=s.chunk_overlap if body.chunk_overlap is None else body.chunk_overlap,
    )
    session.commit()
    return assistant_public(session, assistant)


@router.get("", response_model=list[AssistantPublic])
def list_assistants(session: SessionDep):
    return [assistant_public(session, a) for a in registry.list_assistants(session)]


@router.get("/{assistant_id}", response_model=AssistantPublic)
def get_assistant(assistant_id: str, session: SessionDep):
    return assistant_public(session, registry.get_assistant(session, assistant_id))


@router.patch("/{assistant_id}", response_model=AssistantPublic)
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


@router.delete("/{assistant_id}", status_code=204)
def delete_assistant(assistant_id: str, session: SessionDep, services: ServicesDep):
    registry.delete_assistant(session, services.vectors, services.blobs, registry.get_assistant(session, assistant_id))
    return Response(status_code=204)


@router.post("/{assistant_id}/search", response_model=SearchResponse)
def search_knowledge_base(assistant_id: str, body: SearchRequest, session: SessionDep, services: ServicesDep):
    kb = registry.get_assistant(session, assistant_id).knowledge_base
    hits = search(services, session, kb, body.query, body.top_k, where=body.filters, mode=body.mode,
                  max_per_document=body.max_per_document)
    return SearchResponse(query=body.query, results=hits)
