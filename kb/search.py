"""Hybrid search over one knowledge base: dense (chromadb) + keyword (BM25), fused by score.

Only chunks of each document's current version are ever returned. Every hit carries three numbers:
``score`` is the dense cosine similarity of the chunk to the query (comparable across queries, so the
"nothing relevant" threshold ``min_score`` applies to it), ``keyword_score`` its BM25 score and
``fusion`` the fused ranking score the results are ordered by.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, cast

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import InvalidRequest
from kb.embedders import EmbedderRegistry
from kb.keyword import IndexedChunk, KeywordIndex, KeywordIndexCache
from kb.models import DocumentVersion, KnowledgeBase
from kb.types import ChunkMetadata, Source
from kb.vectorstore import ChromaVectorStore, Filter

MAX_TOP_K = 50
Mode = Literal["hybrid", "dense", "keyword"]
FILTER_KEYS = ("document_id", "filename", "section", "page")
# a validated ``where``: each of FILTER_KEYS to a value or a list of values
MetadataFilter = dict[str, str | int | list[str | int]]


class SearchServices(Protocol):
    """What search uses of the process's shared components (``runtime.services.Services`` is one)."""

    embedders: EmbedderRegistry
    vectors: ChromaVectorStore
    keywords: KeywordIndexCache


@dataclass(frozen=True)
class Fusion:
    """How the two rankings are fused: the ``candidates`` best of each side are pooled and scored
    ``alpha * dense + (1 - alpha) * keyword``, the dense similarity min-max scaled over the pool and the
    BM25 score divided by the pool's best, or by ``keyword_floor`` times the query's attainable BM25 score
    (:meth:`~kb.keyword.KeywordIndex.attainable`) when that is larger. That is the keyword side weighted
    by its best hit's coverage of the query (best / attainable), in full from ``keyword_floor`` up: a
    customer's paraphrase that shares a word or two with some passage leans on dense, a question
    with the document's words keeps the keyword boost (Lucene's BM25 gives a chunk of average length
    holding every query word once about 0.45 of the attainable score, so hardly any hit reaches 0.7).

    Score fusion with alpha 0.5 was chosen over reciprocal-rank fusion on the QA sets (scores keep how
    far ahead a passage is, which ranks lose). The floor, first 0.3 on the QA sets alone, was then
    chosen on the dev halves of the QA sets and of the paraphrase sets together (``atende eval
    retrieval --split dev``, ``python -m benchmarks.paraphrase --split dev``), where 0.3 was only level
    with dense-only search on paraphrases (MRR@10 cosibot_ptpt 0.826 vs 0.812, averaged per entry
    +0.000; clinc150_en 0.783 vs 0.780). Floors 0.6 to 0.8 form a plateau (alpha 0.45 to 0.55 too):
    0.7 gives cosibot_ptpt 0.840, clinc150_en 0.797, faquad_pt 0.915 (0.923 before; dense 0.803),
    xquad_en 0.977 (0.978; dense 0.949), with hybrid at least level with dense whatever share of the
    query the best keyword hit holds. Coverage to a power, the idf share of the query words the best hit
    holds, z-scored sides, reciprocal ranks, queries without their stopwords, and an attainable score
    without the unseen words all did no better on both kinds of set at once. The README's retrieval
    section has the test figures."""

    candidates: int = 50
    alpha: float = 0.5
    keyword_floor: float = 0.7


FUSION = Fusion()


def _validate_where(where: Mapping[str, object] | None) -> MetadataFilter | None:
    if not where:
        return None
    unknown = set(where) - set(FILTER_KEYS)
    if unknown:
        raise InvalidRequest(f"unknown filter field(s) {sorted(unknown)}; filter on {list(FILTER_KEYS)}")
    for key, value in where.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
            raise InvalidRequest(f"filter {key!r} must be a string/integer or a non-empty list of them")
    return cast(MetadataFilter, where)  # as checked above


def _chroma_where(where: MetadataFilter) -> Filter:
    parts = [{k: {"$in": v} if isinstance(v, list) else v} for k, v in where.items()]
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _matches(metadata: ChunkMetadata, where: MetadataFilter | None) -> bool:
    return not where or all(
        metadata.get(k) in (v if isinstance(v, list) else [v]) for k, v in where.items()
    )


def _versions(session: Session, kb_id: str) -> tuple[set[str], list[str]]:
    """(current ``doc_version`` keys, hidden keys) of the knowledge base, read in one query."""
    current: set[str] = set()
    hidden: list[str] = []
    for d, v, state in session.execute(
        select(DocumentVersion.document_id, DocumentVersion.version, DocumentVersion.state).where(
            DocumentVersion.knowledge_base_id == kb_id, DocumentVersion.state != "gone"
        )
    ):
        (current.add if state == "current" else hidden.append)(f"{d}:{v}")
    return current, hidden


def _still_current(session: Session, kb_id: str, keys: set[str]) -> set[str]:
    """Belt and braces: which of ``keys`` are current right now (a swap may have happened meanwhile)."""
    if not keys:
        return set()
    return {
        f"{d}:{v}"
        for d, v in session.execute(
            select(DocumentVersion.document_id, DocumentVersion.version).where(
                DocumentVersion.knowledge_base_id == kb_id,
                DocumentVersion.state == "current",
                DocumentVersion.document_id.in_({k.split(":")[0] for k in keys}),
            )
        )
    }


def _fuse(similarity: dict[str, float], keyword: dict[str, float], mode: Mode, attainable: float) -> dict[str, float]:
    if mode == "dense":
        return similarity
    if mode == "keyword":
        return keyword
    lo, hi = min(similarity.values(), default=0.0), max(similarity.values(), default=0.0)
    best = max(max(keyword.values(), default=0.0), FUSION.keyword_floor * attainable) or 1.0
    return {
        cid: FUSION.alpha * (similarity.get(cid, lo) - lo) / ((hi - lo) or 1.0) + (1 - FUSION.alpha) * keyword[cid] / best
        for cid in similarity.keys() | keyword.keys()
    }


def keyword_index(services: SearchServices, kb: KnowledgeBase, current: set[str]) -> KeywordIndex:
    """The knowledge base's BM25 index over its current versions (built or reused from the cache)."""
    fingerprint = tuple(sorted(current))

    def load() -> tuple[list[IndexedChunk], np.ndarray]:
        stored, vectors = services.vectors.chunks(kb.collection, sorted(current))
        return [IndexedChunk(m.chunk_id, m.text, m.metadata) for m in stored], vectors

    return services.keywords.get(kb.collection, fingerprint, load)


def search(services: SearchServices, session: Session, kb: KnowledgeBase, query: str, top_k: int = 5, *,
           where: Mapping[str, object] | None = None, mode: Mode = "hybrid",
           max_per_document: int | None = None) -> list[Source]:
    """Rank the knowledge base's chunks for ``query``.

    ``where`` filters on chunk metadata (``document_id``, ``filename``, ``section``, ``page``; a value or a
    list of values). ``mode`` picks hybrid (default), dense only or keyword only. ``max_per_document``
    keeps at most that many chunks of one document, for more diverse results.
    """
    query = (query or "").strip()
    if not query:
        raise InvalidRequest("query must not be empty")
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidRequest(f"top_k must be between 1 and {MAX_TOP_K}")
    if max_per_document is not None and max_per_document < 1:
        raise InvalidRequest("max_per_document must be at least 1")
    checked = _validate_where(where)
    current, hidden = _versions(session, kb.id)
    if not current:
        return []
    n = max(FUSION.candidates, top_k * 2)
    vector = services.embedders.get(kb.embedding_model).embed_query(query)

    found: dict[str, tuple[str, ChunkMetadata]] = {}  # chunk id -> (text, metadata)
    similarity: dict[str, float] = {}
    if mode != "keyword":
        for m in services.vectors.query(kb.collection, vector, n, hidden, _chroma_where(checked) if checked else None):
            found[m.chunk_id] = (m.text, m.metadata)
            similarity[m.chunk_id] = 1.0 - m.distance
    keyword: dict[str, float] = {}
    attainable = 0.0
    if mode != "dense":
        index = keyword_index(services, kb, current)
        bm25, attainable = index.scores(query), index.attainable(query)
        pool = 0
        for i in np.argsort(-bm25, kind="stable"):
            chunk = index.chunks[i]
            if bm25[i] <= 0 or pool == n:
                break
            if _matches(chunk.metadata, checked):
                found.setdefault(chunk.chunk_id, (chunk.text, chunk.metadata))
                pool += 1
        assert index.vectors is not None  # keyword_index builds every index with its chunks' vectors
        for cid in found:  # both scores for every pooled chunk
            row = index.row.get(cid)
            keyword[cid] = float(bm25[row]) if row is not None else 0.0
            if cid not in similarity and row is not None:
                similarity[cid] = float(np.dot(index.vectors[row], vector))
    fusion = _fuse(similarity, keyword, mode, attainable)

    alive = _still_current(session, kb.id, {v for _, md in found.values() if (v := md.get("doc_version")) is not None})
    hits: list[Source] = []
    per_document: dict[str, int] = {}
    for cid in sorted(found, key=lambda c: (-fusion.get(c, 0.0), -similarity.get(c, -1.0))):
        text, md = found[cid]
        if md.get("doc_version") not in alive:
            continue
        doc = md["document_id"]
        if max_per_document and per_document.get(doc, 0) >= max_per_document:
            continue
        per_document[doc] = per_document.get(doc, 0) + 1
        hits.append(
            Source(
                rank=len(hits) + 1, chunk_id=cid, score=round(similarity.get(cid, 0.0), 4), text=text,
                document_id=doc, version=int(md["version"]), filename=md.get("filename", ""),
                page=md.get("page"), section=md.get("section", ""),
                element_types=tuple(t for t in md.get("element_types", "").split(",") if t),
                char_start=int(md.get("char_start", 0)), char_end=int(md.get("char_end", 0)),
                keyword_score=round(keyword.get(cid, 0.0), 4), fusion=round(fusion.get(cid, 0.0), 6),
            )
        )
        if len(hits) == top_k:
            break
    return hits
