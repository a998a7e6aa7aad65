"""Dense search over one knowledge base, seeing only the current version of each document."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from atende.services import Services
from kb.errors import InvalidRequest
from kb.models import DocumentVersion, KnowledgeBase
from kb.registry import hidden_version_keys
from kb.types import SearchHit

MAX_TOP_K = 50


def search(services: Services, session: Session, kb: KnowledgeBase, query: str, top_k: int = 5) -> list[SearchHit]:
    """Rank the knowledge base's chunks for ``query`` by cosine similarity (score in [-1, 1])."""
    query = (query or "").strip()
    if not query:
        raise InvalidRequest("query must not be empty")
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidRequest(f"top_k must be between 1 and {MAX_TOP_K}")
    embedder = services.embedders.get(kb.embedding_model)
    vector = embedder.embed_query(query)
    matches = services.vectors.query(kb.collection, vector, top_k * 2, hidden_version_keys(session, kb.id))
    # belt and braces: keep only chunks of versions that are current right now
    keys = {m.metadata.get("doc_version") for m in matches}
    current = {
        f"{d}:{v}"
        for d, v in session.execute(
            select(DocumentVersion.document_id, DocumentVersion.version).where(
                DocumentVersion.knowledge_base_id == kb.id,
                DocumentVersion.state == "current",
                DocumentVersion.document_id.in_({k.split(":")[0] for k in keys if k}),
            )
        )
    }
    hits = []
    for m in matches:
        if m.metadata.get("doc_version") not in current:
            continue
        md = m.metadata
        hits.append(
            SearchHit(
                rank=len(hits) + 1, chunk_id=m.chunk_id, score=round(1.0 - m.distance, 4), text=m.text,
                document_id=md["document_id"], version=int(md["version"]), filename=md.get("filename", ""),
                page=md.get("page"), section=md.get("section", ""),
                element_types=[t for t in md.get("element_types", "").split(",") if t],
                char_start=int(md.get("char_start", 0)), char_end=int(md.get("char_end", 0)),
            )
        )
        if len(hits) == top_k:
            break
    return hits
