"""Request and response schemas of the HTTP API."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kb.types import Source
from runtime.config import AssistantConfig
from runtime.options import numbered
from runtime.types import TurnResult


class AssistantCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    embedding_model: str | None = Field(default=None, description="default: ATENDE_EMBEDDING_MODEL")
    chunk_size: int | None = Field(default=None, description="tokens of the embedding model")
    chunk_overlap: int | None = None


class AssistantUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = None
    embedding_model: str | None = Field(default=None, description="changing it re-embeds the knowledge base")
    chunk_size: int | None = Field(default=None, description="applies to documents ingested from now on")
    chunk_overlap: int | None = None
    config: dict | None = Field(default=None, description="conversation settings (AssistantConfig); keys given replace stored ones")


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    status: str
    error: str | None
    elements: int
    chunks_total: int
    chunks_embedded: int
    timings: dict
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class KnowledgeBasePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    embedding_model: str
    target_embedding_model: str | None
    chunk_size: int
    chunk_overlap: int


class AssistantPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    description: str
    created_at: datetime
    updated_at: datetime
    knowledge_base: KnowledgeBasePublic
    config: AssistantConfig = Field(default_factory=AssistantConfig,
                                    description="effective conversation settings, defaults filled in")
    reembed_job: JobPublic | None = None

    @field_validator("config", mode="before")
    @classmethod
    def _stored(cls, value: dict | None) -> dict:
        """An assistant stores only the settings it changed (or none): the rest are AssistantConfig's defaults."""
        return value or {}


class DocumentPublic(BaseModel):
    id: str
    knowledge_base_id: str
    filename: str
    status: str
    error: str | None
    current_version: int | None
    latest_version: int | None
    file_type: str | None
    size_bytes: int | None
    content_hash: str | None
    chunk_count: int
    created_at: datetime
    updated_at: datetime
    unchanged: bool = Field(default=False, description="true when an upload matched the stored content")
    job: JobPublic | None = None


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
    top_k: int = Field(default=5, ge=1, le=50)
    mode: Literal["hybrid", "dense", "keyword"] = "hybrid"
    filters: dict[str, str | int | list[str | int]] | None = Field(
        default=None, description="chunk metadata: document_id, filename, section, page (a value or a list)")
    max_per_document: int | None = Field(default=None, ge=1, description="at most this many chunks of one document")


class SearchResponse(BaseModel):
    query: str
    results: list[Source]


class ChatRequest(BaseModel):
    assistant_id: str = Field(description="assistant id or name")
    customer_id: str = Field(min_length=1, max_length=200)
    message: str = Field(min_length=1, max_length=4096)
    variables: dict[str, str] = Field(default_factory=dict, description="fill {{placeholders}} in the prompt")


class OptionPublic(BaseModel):
    """A choice offered with a reply (``runtime.options``)."""

    id: str
    position: int
    title: str
    value: str | None = None
    description: str | None = None


class ChatResult(BaseModel):
    conversation_id: str
    reply: str | None
    status: str
    sources: list[dict]  # kb.types.Source.to_dict
    function_calls: list[dict]
    ai_enabled: bool
    usage: dict
    cost: float
    timings: dict
    error: str | None = None  # why the model failed (status ``error``)
    options: list[OptionPublic] = Field(default_factory=list, description="choices offered with the reply: show "
                                        "them as buttons, or send the number or the text of one as the next message")
    reply_text: str | None = Field(default=None, description="the reply with its options as a numbered list, for "
                                                              "a plain-text channel")

    @classmethod
    def from_turn(cls, r: TurnResult) -> ChatResult:
        options = [OptionPublic(**o) for o in r.options if isinstance(o, dict)]
        return cls(
            conversation_id=r.conversation_id, reply=r.reply, status=r.status, sources=[s.to_dict() for s in r.sources],
            function_calls=r.function_calls, ai_enabled=r.ai_enabled, cost=r.cost, timings=r.timings, error=r.error,
            usage={"prompt_tokens": r.usage.prompt_tokens, "completion_tokens": r.usage.completion_tokens},
            options=options, reply_text=numbered(r.reply, options) if r.reply is not None else None,
        )


class AIToggle(BaseModel):
    enabled: bool


class HandoffChangePublic(BaseModel):
    """One change of a conversation's handoff state."""

    model_config = ConfigDict(from_attributes=True, populate_by_name=True)

    from_state: str = Field(serialization_alias="from")
    to_state: str = Field(serialization_alias="to")
    actor: str = Field(description="customer, assistant, operator or system")
    reason: str
    at: datetime


class Handback(BaseModel):
    reason: str = Field(default="", max_length=500, description="why the conversation goes back to the AI")


class OperatorMessage(BaseModel):
    text: str = Field(min_length=1, max_length=4096)


class MessagePublic(BaseModel):
    id: str
    direction: str
    kind: str = "text"
    text: str
    status: str = Field(description="inbound: received | answered | skipped | logged; outbound: answered (API "
                        "channel) | pending | retrying | sent | delivered | read | played | failed | not_sent | unknown")
    error_code: int | None = Field(default=None, description="retrying: the last error's code; failed: the failure's")
    error_title: str | None = Field(default=None, description="retrying: the last error; failed, not_sent: the reason")
    created_at: datetime
    tokens_in: int
    tokens_out: int
    cost: float
    latency_ms: int | None
    send_attempts: int = Field(default=0, description="sends to the channel tried for this message (all its parts)")
    next_attempt_at: datetime | None = Field(default=None, description="when the outbox sends it next (pending, "
                                             "retrying), else null")
    sources: list[dict] = Field(default_factory=list)
    function_calls: list[dict] = Field(default_factory=list)

    @classmethod
    def from_message(cls, m) -> MessagePublic:
        out = cls(id=m.id, direction=m.direction, kind=m.kind, text=m.text, status=m.status, error_code=m.error_code,
                  error_title=m.error_title, created_at=m.created_at,
                  tokens_in=m.tokens_in, tokens_out=m.tokens_out, cost=m.cost, latency_ms=m.latency_ms)
        if m.direction == "outbound":
            out.sources = [s.as_source().to_dict() for s in m.sources]
            out.function_calls = [c.as_dict() for c in m.tool_calls]
            out.send_attempts = sum(p.attempts or 0 for p in m.parts)
            due = [p.next_attempt_at for p in m.parts if p.next_attempt_at is not None and p.status in ("pending", "retrying")]
            out.next_attempt_at = min(due) if due else None
        return out


class ConversationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    assistant_id: str
    channel: str
    sender: str
    customer_id: str
    ai_enabled: bool = Field(description="the AI answers: handoff_state is ai")
    handoff_state: str = Field(description="ai | waiting_for_human | with_human")
    variables: dict
    handoff: dict | None
    created_at: datetime
    last_inbound_at: datetime | None
    tokens_in: int
    tokens_out: int
    cost: float
    messages: list[MessagePublic] = Field(default_factory=list)


class ApprovedSource(BaseModel):
    """A knowledge-base passage an approved answer was derived from."""

    document_id: str = Field(min_length=1, max_length=32)
    chunk_id: str = Field(default="", max_length=64)
    filename: str = Field(default="", max_length=500)


class ApprovedAnswerCreate(BaseModel):
    question: str = Field(min_length=1, max_length=1000)
    answer: str = Field(min_length=1, max_length=4096)
    variants: list[Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=list, max_length=50, description="other phrasings of the question")
    approved_by: str = Field(default="", max_length=200)
    sources: list[ApprovedSource] = Field(default_factory=list)


class ApprovedAnswerUpdate(BaseModel):
    question: str | None = Field(default=None, min_length=1, max_length=1000)
    answer: str | None = Field(default=None, min_length=1, max_length=4096)
    variants: list[Annotated[str, Field(max_length=1000)]] | None = Field(default=None, max_length=50)
    approved_by: str | None = Field(default=None, max_length=200, description="given: re-approved now by this person")
    sources: list[ApprovedSource] | None = None
    needs_review: bool | None = Field(default=None, description="false clears the flag and its reason")
    review_reason: str | None = Field(default=None, max_length=1000)


class ApprovedAnswerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    assistant_id: str
    question: str
    variants: list[str]
    answer: str
    approved_by: str
    approved_at: datetime
    sources: list[ApprovedSource]
    needs_review: bool
    review_reason: str | None
    hits: int
    last_hit_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ApprovedImportRowError(BaseModel):
    row: int = Field(description="row number as a spreadsheet shows it (the header is row 1)")
    error: str


class ApprovedImportReport(BaseModel):
    imported: int
    updated: int
    errors: list[ApprovedImportRowError]


class ApprovedMatchRequest(BaseModel):
    text: str = Field(min_length=1, max_length=4096)
    threshold: float | None = Field(default=None, ge=0, le=1, description="default: the embedding model's calibrated one")


class ApprovedMatchPublic(BaseModel):
    approved_id: str
    question: str = Field(description="the question or variant most similar to the text")
    answer: str
    score: float = Field(description="cosine similarity of the text and the question")
    margin: float = Field(description="lead of the score over the best score of any other approved answer")


class ApprovedMatchResponse(BaseModel):
    match: ApprovedMatchPublic | None = Field(description="the answer that would be sent, or null")
    closest: ApprovedMatchPublic | None = Field(description="the closest approved answer, however far")
    threshold: float
    margin: float
