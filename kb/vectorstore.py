"""Vector store: one chromadb collection per knowledge base. The only home of ``chromadb``.

The store only stores. Embeddings are always passed in (chromadb's default embedding
function would try to download a model), and visibility of document versions is decided by
the caller through ``exclude_versions`` (see kb.models).
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar, cast
from urllib.parse import urlparse

import httpx
import numpy as np

from kb.errors import VectorStoreUnavailable
from kb.types import ChunkMetadata

if TYPE_CHECKING:  # chromadb itself is imported on first use
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Metadata, Where

# a chromadb metadata filter, e.g. {"filename": "faq.pdf"} or {"$and": [{"page": 2}, {"section": {"$in": [...]}}]}
Filter = Mapping[str, object]


P = ParamSpec("P")
R = TypeVar("R")


def _reachable(method: Callable[P, R]) -> Callable[P, R]:
    """A Chroma server out of reach (``chromadb.HttpClient`` speaks httpx) raises ``VectorStoreUnavailable``;
    also when the client is made then (chromadb checks the server at once and raises a ValueError, from httpx's
    error), so a process started while the server is down connects once it is up."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except httpx.TransportError as exc:
            raise VectorStoreUnavailable(f"the vector store is unreachable: {type(exc).__name__}: {exc}") from exc
        except ValueError as exc:
            if isinstance(exc.__context__, httpx.TransportError):
                raise VectorStoreUnavailable(f"the vector store is unreachable: {exc}") from exc
            raise

    return call


@dataclass(frozen=True)
class StoredMatch:
    """A chunk as the store keeps it, with its cosine distance to the query (0 when listed by ``chunks``).

    Raw material of a search: :func:`kb.search.search` fuses these with BM25 scores into
    :class:`kb.types.Source` records, the only shape a source has above the knowledge base."""

    chunk_id: str
    text: str
    metadata: ChunkMetadata
    distance: float


class ChromaVectorStore:
    """A persistent chromadb client in the data dir, or a Chroma server when given a URL."""

    def __init__(self, path: Path | None = None, url: str | None = None):
        if (path is None) == (url is None):
            raise ValueError("give exactly one of path or url")
        self._path, self._url = path, url
        self._client: ClientAPI | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> ClientAPI:
        with self._lock:
            if self._client is None:
                import chromadb
                from chromadb.config import Settings

                settings = Settings(anonymized_telemetry=False)
                if self._url:
                    u = urlparse(self._url)
                    self._client = chromadb.HttpClient(
                        host=u.hostname or "localhost", port=u.port or 8000, ssl=u.scheme == "https", settings=settings
                    )
                else:
                    assert self._path is not None  # __init__ takes exactly one of path and url
                    self._path.mkdir(parents=True, exist_ok=True)
                    self._client = chromadb.PersistentClient(path=str(self._path), settings=settings)
            return self._client

    def _collection(self, name: str) -> Collection:
        return self.client.get_or_create_collection(
            name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
        )

    @_reachable
    def add(self, collection: str, ids: list[str], embeddings: np.ndarray, texts: list[str],
            metadatas: Sequence[Mapping[str, str | int | float | bool | None]]) -> None:
        """Upsert chunks; ``metadatas`` values must be str, int, float or bool (None values are dropped)."""
        col = self._collection(collection)
        step = self.client.get_max_batch_size()
        clean: list[Metadata] = [{k: v for k, v in m.items() if v is not None} for m in metadatas]
        for i in range(0, len(ids), step):
            col.upsert(
                ids=ids[i : i + step],
                embeddings=np.asarray(embeddings[i : i + step], dtype=np.float32),
                documents=texts[i : i + step],
                metadatas=clean[i : i + step],
            )

    @_reachable
    def query(self, collection: str, embedding: np.ndarray, k: int, exclude_versions: Sequence[str] = (),
              where: Filter | None = None) -> list[StoredMatch]:
        """Nearest ``k`` chunks by cosine distance, skipping chunks whose ``doc_version`` is excluded.

        ``where`` is an extra chromadb metadata filter (e.g. ``{"filename": "faq.pdf"}``).
        """
        col = self._collection(collection)
        excluded: list[Filter] = [{"doc_version": {"$nin": list(exclude_versions)}}] if exclude_versions else []
        conditions = excluded + ([where] if where else [])
        combined = conditions[0] if len(conditions) == 1 else ({"$and": conditions} if conditions else None)
        res = col.query(
            query_embeddings=[np.asarray(embedding, dtype=np.float32).tolist()],
            n_results=k,
            where=_where(combined) if combined else None,
            include=["documents", "metadatas", "distances"],
        )
        documents, metadatas, distances = res["documents"], res["metadatas"], res["distances"]
        assert documents is not None and metadatas is not None and distances is not None  # all in include
        return [
            StoredMatch(cid, doc, _chunk_metadata(meta), float(dist))
            for cid, doc, meta, dist in zip(res["ids"][0], documents[0], metadatas[0], distances[0], strict=True)
        ]

    @_reachable
    def chunks(self, collection: str, version_keys: list[str], page: int = 5000) -> tuple[list[StoredMatch], np.ndarray]:
        """Every chunk of the given ``doc_version`` keys (distance 0) and their vectors, row for row."""
        col = self._collection(collection)
        out: list[StoredMatch] = []
        vectors: list[np.ndarray] = []
        for i in range(0, len(version_keys), 500):  # keep each $in list small
            keys = version_keys[i : i + 500]
            offset = 0
            while True:
                res = col.get(where=_where({"doc_version": {"$in": keys}}),
                              include=["documents", "metadatas", "embeddings"], limit=page, offset=offset)
                documents, metadatas = res["documents"], res["metadatas"]
                assert documents is not None and metadatas is not None  # both in include
                out += [StoredMatch(cid, doc, _chunk_metadata(meta), 0.0)
                        for cid, doc, meta in zip(res["ids"], documents, metadatas, strict=True)]
                if len(res["ids"]):
                    vectors.append(np.asarray(res["embeddings"], dtype=np.float32))
                if len(res["ids"]) < page:
                    break
                offset += page
        return out, (np.vstack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32))

    @_reachable
    def delete_versions(self, collection: str, version_keys: list[str]) -> None:
        if version_keys:
            self._collection(collection).delete(where=_where({"doc_version": {"$in": list(version_keys)}}))

    @_reachable
    def count(self, collection: str, version_key: str | None = None) -> int:
        col = self._collection(collection)
        if version_key is None:
            return col.count()
        return len(col.get(where=_where({"doc_version": version_key}), include=[])["ids"])

    @_reachable
    def drop(self, collection: str) -> None:
        try:
            self.client.delete_collection(collection)
        except Exception as exc:  # chromadb raises NotFoundError (class moved between releases)
            if "does not exist" not in str(exc) and "NotFound" not in type(exc).__name__:
                raise


def _chunk_metadata(stored: Mapping[str, object] | None) -> ChunkMetadata:
    """A chunk's metadata as read back: what ``add`` was given for it, less its None values."""
    return cast(ChunkMetadata, stored or {})


def _where(condition: Filter) -> Where:
    """chromadb's ``Where`` is a recursive union of dicts with literal operator keys, which a dict display
    built here (``{"doc_version": {"$in": keys}}``) is not inferred as."""
    return cast("Where", condition)
