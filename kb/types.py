"""Core value types of the knowledge base, shared by ingestion, search and the runtime."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict


@dataclass(frozen=True)
class Chunk:
    """A piece of a document version as stored in the vector store.

    ``text`` is what a reader (and the LLM) sees; ``embed_text`` adds the section path so the
    vector knows where the passage sits. Offsets are into the document's extracted text.
    """

    text: str
    embed_text: str
    position: int
    section: str = ""
    page: int | None = None
    page_end: int | None = None
    element_types: tuple[str, ...] = ()
    char_start: int = 0
    char_end: int = 0

    def chunk_id(self, document_id: str, version: int) -> str:
        """Derived from document, version, position and content: two versions never collide."""
        key = "\x1f".join((document_id, str(version), str(self.position), self.text))
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


class ChunkMetadata(TypedDict, total=False):
    """What the vector store keeps beside each chunk (ingest.pipeline.chunk_metadata writes it; keys whose
    value is None, such as the page of a text file, are not stored)."""

    document_id: str
    version: int
    doc_version: str  # "<document_id>:<version>", the key search hides versions by
    filename: str
    position: int
    section: str
    page: int
    page_end: int
    element_types: str  # comma-separated
    char_start: int
    char_end: int


@dataclass(frozen=True)
class SearchHit:
    """One ranked search result with everything needed to cite it."""

    rank: int
    chunk_id: str
    score: float
    text: str
    document_id: str
    version: int
    filename: str
    page: int | None = None
    section: str = ""
    element_types: list[str] = field(default_factory=list)
    char_start: int = 0
    char_end: int = 0
    keyword_score: float = 0.0  # BM25; 0 when no query word occurs in the chunk
    fusion: float = 0.0  # the fused ranking score results are ordered by

    def to_dict(self) -> dict[str, Any]:  # asdict's own type: the field values as they are
        return asdict(self)
