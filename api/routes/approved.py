"""Routes for approved answers: list, create, edit, delete, spreadsheet import, match playground. Reading and the
playground need the assistant; the rest, a supervisor of it."""
from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile

from api import scopes
from api.deps import ServicesDep, SessionDep, SignedIn, allow
from api.schemas import (
    ApprovedAnswerCreate, ApprovedAnswerPublic, ApprovedAnswerUpdate, ApprovedImportReport, ApprovedMatchRequest,
    ApprovedMatchResponse,
)
from kb import registry
from kb.errors import FileTooLarge
from runtime import approved
from runtime.accounts.roles import SUPERVISOR, VIEWER

router = APIRouter(tags=["approved answers"], dependencies=[SignedIn])


@router.get("/api/assistants/{assistant_id}/approved-answers", response_model=list[ApprovedAnswerPublic],
            dependencies=[allow(VIEWER, scopes.assistant)])
def list_approved_answers(assistant_id: str, session: SessionDep, needs_review: bool | None = None):
    return approved.list_answers(session, registry.get_assistant(session, assistant_id), needs_review)


@router.post("/api/assistants/{assistant_id}/approved-answers", status_code=201, response_model=ApprovedAnswerPublic,
             dependencies=[allow(SUPERVISOR, scopes.assistant)])
def create_approved_answer(assistant_id: str, body: ApprovedAnswerCreate, session: SessionDep):
    row = approved.create_answer(session, registry.get_assistant(session, assistant_id), **body.model_dump())
    session.commit()
    return row


@router.post("/api/assistants/{assistant_id}/approved-answers/import", response_model=ApprovedImportReport,
             dependencies=[allow(SUPERVISOR, scopes.assistant)])
def import_approved_answers(assistant_id: str, session: SessionDep, services: ServicesDep,
                            file: Annotated[UploadFile, File()], approved_by: str = Form("", max_length=200)):
    """A CSV or XLSX file with question, answer and (optional) variants columns; bad rows are reported."""
    assistant = registry.get_assistant(session, assistant_id)
    limit = services.settings.max_upload_bytes
    if file.size is not None and file.size > limit:  # refuse before reading it into memory
        raise FileTooLarge(f"'{file.filename}' is {file.size / 1e6:.1f} MB; the limit is {services.settings.max_upload_mb:g} MiB")
    report = approved.import_rows(session, assistant, file.filename or "", file.file.read(limit + 1), max_bytes=limit,
                                  approved_by=approved_by)
    session.commit()
    return asdict(report)


@router.post("/api/assistants/{assistant_id}/approved-answers/match", response_model=ApprovedMatchResponse,
             dependencies=[allow(VIEWER, scopes.assistant)])
def match_approved_answer(assistant_id: str, body: ApprovedMatchRequest, session: SessionDep, services: ServicesDep):
    """What a customer's message would get: the approved answer sent (or null) and the closest one with its score."""
    assistant = registry.get_assistant(session, assistant_id)
    found = approved.closest(services, session, assistant, body.text)
    rule = approved.match_rule(assistant.knowledge_base.embedding_model, body.threshold)
    closest = asdict(found) if found is not None else None
    return ApprovedMatchResponse(match=closest if rule.accepts(found) else None, closest=closest,
                                 threshold=rule.threshold, margin=rule.margin)


@router.get("/api/approved-answers/{approved_id}", response_model=ApprovedAnswerPublic,
            dependencies=[allow(VIEWER, scopes.approved_answer)])
def get_approved_answer(approved_id: str, session: SessionDep):
    return approved.get_answer(session, approved_id)


@router.patch("/api/approved-answers/{approved_id}", response_model=ApprovedAnswerPublic,
              dependencies=[allow(SUPERVISOR, scopes.approved_answer)])
def update_approved_answer(approved_id: str, body: ApprovedAnswerUpdate, session: SessionDep):
    row = approved.update_answer(session, approved.get_answer(session, approved_id), body.model_dump(exclude_unset=True))
    session.commit()
    return row


@router.delete("/api/approved-answers/{approved_id}", status_code=204,
               dependencies=[allow(SUPERVISOR, scopes.approved_answer)])
def delete_approved_answer(approved_id: str, session: SessionDep):
    approved.delete_answer(session, approved.get_answer(session, approved_id))
    session.commit()
    return Response(status_code=204)
