"""Core value types of the knowledge base, shared by ingestion, search and the runtime."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypedDict


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
class Source:
    """A passage as a turn shows it to the model and logs it: the one record of a retrieved source, from
    :func:`kb.search.search` through the prompt, the context budget and the log to the turn's result.

    A search gives every field, ``rank`` its place in the results; the turn renumbers the sources it shows
    1..n and cuts ``text`` to what the prompt holds (``runtime.prompt.seen_sources``; the context budget may
    cut it further), so ``text`` is always the text the model saw. The log keeps ``LOGGED`` of it
    (``runtime.models.MessageSource``): a source read back from the log, like an approved answer shown as a
    source (``runtime.approved_index.ApprovedMatch.as_source``), has None for the fields a search adds.
    """

    # the API documents the fields from their docstrings (pydantic reads this; kb imports no pydantic)
    __pydantic_config__ = {"use_attribute_docstrings": True}
    LOGGED: ClassVar[tuple[str, ...]] = (
        "rank", "chunk_id", "document_id", "version", "filename", "page", "section", "score", "text")

    rank: int
    chunk_id: str
    score: float
    """dense cosine similarity to the query (an approved answer's: to its question)"""
    text: str
    document_id: str
    version: int
    filename: str
    page: int | None = None
    section: str = ""
    element_types: tuple[str, ...] | None = None
    char_start: int | None = None
    char_end: int | None = None
    keyword_score: float | None = None
    """BM25 score; 0 when no query word occurs in the chunk"""
    fusion: float | None = None
    """the fused ranking score the results are ordered by"""

    def logged(self) -> dict[str, Any]:
        """The fields the log keeps, in its order (the columns of ``runtime.models.MessageSource``)."""
        return {k: getattr(self, k) for k in self.LOGGED}

    def to_dict(self) -> dict[str, Any]:
        """The source as JSON gives it (the chat API, the CLI): a search's every field in this order; the
        logged fields alone when it has no more (an approved answer, a source read back from the log)."""
        return asdict(self) if self.fusion is not None else self.logged()
