"""'Improve the assistant': frequent questions and knowledge gaps (``runtime.insights``), under the
review's filters (parsed by ``api.routes.review.conversation_filters``)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import ServicesDep, SessionDep, SignedIn, allow
from api.routes.review import FiltersDep
from runtime import insights as insights_service
from runtime.accounts.roles import VIEWER

router = APIRouter(tags=["insights"], dependencies=[SignedIn])


class QuestionCluster(BaseModel):
    question: str  # the medoid: the member most similar to the others
    count: int  # questions in the cluster
    conversations: int  # distinct conversations they came from
    examples: list[str]
    conversation_ids: list[str]  # most recent first, at most 20
    assistant_id: str
    assistant_name: str
    last_asked: datetime


class KnowledgeGap(QuestionCluster):
    best_score: float | None  # best source score among the members' answers; None: no sources at all
    reasons: dict[str, int]  # fallback / no_sources / low_score -> members
    weak_score: float  # the score under which a source counted as weak for this assistant


class Insights(BaseModel):
    clusters: list[QuestionCluster]
    gaps: list[KnowledgeGap]
    questions_considered: int


@router.get("/api/insights", response_model=Insights, dependencies=[allow(VIEWER)])
def get_insights(filters: FiltersDep, services: ServicesDep, session: SessionDep,
                 limit: Annotated[int, Query(ge=1, le=100, description="clusters and gaps listed, each")] = 20,
                 min_count: Annotated[int, Query(ge=1, description="questions a frequent-question cluster needs")] = 2):
    """The most frequent customer questions (clustered by meaning) and the questions answered with a
    fallback, without sources or with weak ones, each with the conversations it came from. Reads the
    newest 2,000 questions (messages of three words or more) of the selected conversations."""
    return insights_service.insights(services, session, filters, limit=limit, min_count=min_count)
