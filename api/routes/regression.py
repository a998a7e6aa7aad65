"""Routes for regression checks: promote an AI reply to a case, edit cases, start and read runs (reading needs the
assistant, the rest a supervisor of it).

A run executes in a thread of its own, not on the job queue: the queue's worker (one by default) also
carries ingestion and WhatsApp turns, which must not wait behind a run of many cases. A run cut short
by a stopped process is settled as ``error`` when read (see :mod:`runtime.regression`).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import asdict
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from api import scopes
from api.deps import ServicesDep, SessionDep, SignedIn, allow
from kb import registry
from runtime import regression
from runtime.accounts.roles import SUPERVISOR, VIEWER

router = APIRouter(tags=["regression checks"], dependencies=[SignedIn])
log = logging.getLogger(__name__)


class CasePromote(BaseModel):
    facts: list[str] = Field(default_factory=list, description="texts the reply must keep containing")
    note: str | None = None


ExpectedStatus = Literal[regression.STATUSES]


class CaseCreate(BaseModel):
    question: str
    expected_status: ExpectedStatus
    expected_facts: list[str] = Field(default_factory=list)
    expected_sources: list[str] = Field(default_factory=list, description="filenames the reply must cite")
    expected_reply: str | None = None
    note: str | None = None


class CaseUpdate(BaseModel):
    question: str | None = None
    expected_status: ExpectedStatus | None = None
    expected_facts: list[str] | None = None
    expected_sources: list[str] | None = None
    expected_reply: str | None = None
    note: str | None = None


class CasePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    assistant_id: str
    question: str
    expected_status: str
    expected_facts: list[str]
    expected_sources: list[str]
    expected_reply: str | None
    created_from_message_id: str | None
    note: str
    created_at: datetime


class ChangePublic(BaseModel):
    what: Literal["status", "sources", "facts"]
    expected: str
    got: str | list[str] | None
    description: str = Field(description='e.g. "status answered -> fallback"')


class DiffSegmentPublic(BaseModel):
    op: Literal["equal", "delete", "insert"]
    text: str


class CaseResultPublic(BaseModel):
    case_id: str
    question: str
    passed: bool
    changes: list[ChangePublic]
    reply: str | None
    status: str
    sources: list[dict]
    latency_ms: int
    expected_reply: str | None
    error: str | None
    diff: list[DiffSegmentPublic] | None = Field(description="expected reply -> new reply, word by word; failed cases only")


class RunStarted(BaseModel):
    id: str
    status: str


class RunSummaryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    assistant_id: str
    status: Literal["running", "passed", "failed", "error"]
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    summary: dict = Field(description="total, done, passed, failed, and changes by kind (status, sources, facts)")
    error: str | None


class RunPublic(RunSummaryPublic):
    results: list[CaseResultPublic]


def _result(stored: dict) -> CaseResultPublic:
    """A stored case result with each change described and, when it failed, the diff of its reply."""
    changes = [{**c, "description": regression.Change(**c).describe()} for c in stored["changes"]]
    failed_with_reply = not stored["passed"] and stored["expected_reply"] is not None
    diff = [asdict(d) for d in regression.reply_diff(stored["expected_reply"], stored["reply"] or "")] \
        if failed_with_reply else None
    return CaseResultPublic.model_validate({**stored, "changes": changes, "diff": diff})


@router.post("/api/messages/{message_id}/regression-case", status_code=201, response_model=CasePublic,
             dependencies=[allow(SUPERVISOR, scopes.message)])
def promote_message(message_id: str, body: CasePromote, session: SessionDep):
    """Make a regression case of an AI reply: its question, status and cited files, plus the facts given."""
    case = regression.promote(session, message_id, facts=body.facts, note=body.note)
    session.commit()
    return case


@router.get("/api/assistants/{assistant_id}/regression-cases", response_model=list[CasePublic],
            dependencies=[allow(VIEWER, scopes.assistant)])
def list_cases(assistant_id: str, session: SessionDep):
    return regression.list_cases(session, registry.get_assistant(session, assistant_id))


@router.post("/api/assistants/{assistant_id}/regression-cases", status_code=201, response_model=CasePublic,
             dependencies=[allow(SUPERVISOR, scopes.assistant)])
def create_case(assistant_id: str, body: CaseCreate, session: SessionDep):
    case = regression.create_case(session, registry.get_assistant(session, assistant_id), **body.model_dump())
    session.commit()
    return case


@router.get("/api/regression-cases/{case_id}", response_model=CasePublic,
            dependencies=[allow(VIEWER, scopes.regression_case)])
def get_case(case_id: str, session: SessionDep):
    return regression.get_case(session, case_id)


@router.patch("/api/regression-cases/{case_id}", response_model=CasePublic,
              dependencies=[allow(SUPERVISOR, scopes.regression_case)])
def update_case(case_id: str, body: CaseUpdate, session: SessionDep):
    case = regression.update_case(session, regression.get_case(session, case_id), body.model_dump(exclude_unset=True))
    session.commit()
    return case


@router.delete("/api/regression-cases/{case_id}", status_code=204,
               dependencies=[allow(SUPERVISOR, scopes.regression_case)])
def delete_case(case_id: str, session: SessionDep):
    regression.delete_case(session, regression.get_case(session, case_id))
    session.commit()
    return Response(status_code=204)


@router.post("/api/assistants/{assistant_id}/regression-runs", status_code=202, response_model=RunStarted,
             dependencies=[allow(SUPERVISOR, scopes.assistant)])
def start_run(assistant_id: str, session: SessionDep, services: ServicesDep):
    """Replay every case of the assistant in the background; 409 while one of its runs is running."""
    run = regression.start_run(session, registry.get_assistant(session, assistant_id))
    session.commit()
    threading.Thread(target=regression.execute_run, args=(services, run.id, log.info), name=f"regression-{run.id}",
                     daemon=True).start()
    return RunStarted(id=run.id, status=run.status)


@router.get("/api/assistants/{assistant_id}/regression-runs", response_model=list[RunSummaryPublic],
            dependencies=[allow(VIEWER, scopes.assistant)])
def list_runs(assistant_id: str, session: SessionDep, limit: int = Query(50, ge=1, le=500)):
    """The assistant's runs, newest first, without per-case results."""
    runs = regression.list_runs(session, registry.get_assistant(session, assistant_id), limit)
    session.commit()  # a run given up as stale
    return runs


@router.get("/api/regression-runs/{run_id}", response_model=RunPublic,
            dependencies=[allow(VIEWER, scopes.regression_run)])
def get_run(run_id: str, session: SessionDep):
    """A run with every case done so far and, for each failed case, the word diff of its reply."""
    run = regression.get_run(session, run_id)
    session.commit()  # a run given up as stale
    return RunPublic(**RunSummaryPublic.model_validate(run).model_dump(), results=[_result(r) for r in run.results])
