"""Request and response schemas of the HTTP API."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


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
    reembed_job: JobPublic | None = None


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


class SearchResult(BaseModel):
    rank: int
    chunk_id: str
    score: float
    text: str
    document_id: str
    version: int
    filename: str
    page: int | None
    section: str
    element_types: list[str]
    char_start: int
    char_end: int


class SearchResponse(BaseModel):
    query: str
    results: list[SearchResult]
