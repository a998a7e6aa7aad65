"""Vector store: one chromadb collection per knowledge base. The only home of ``chromadb``.

The store only stores. Embeddings are always passed in (chromadb's default embedding
function would try to download a model), and visibility of document versions is decided by
the caller through ``exclude_versions`` (see kb.models).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np


@dataclass(frozen=True)
class StoredMatch:
    chunk_id: str
    text: str
    metadata: dict
    distance: float


class ChromaVectorStore:
    """A persistent chromadb client in the data dir, or a Chroma server when given a URL."""

    def __init__(self, path: Path | None = None, url: str | None = None):
        if (path is None) == (url is None):
            raise ValueError("give exactly one of path or url")
        self._path, self._url = path, url
        self._client = None
        self._lock = threading.Lock()

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                import chromadb

                settings = chromadb.Settings(anonymized_telemetry=False)
                if self._url:
                    u = urlparse(self._url)
                    self._client = chromadb.HttpClient(
                        host=u.hostname or "localhost", port=u.port or 8000, ssl=u.scheme == "https", settings=settings
                    )
                else:
                    self._path.mkdir(parents=True, exist_ok=True)
                    self._client = chromadb.PersistentClient(path=str(self._path), settings=settings)
            return self._client

    def _collection(self, name: str):
        return self.client.get_or_create_collection(
            name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
        )

    def add(self, collection: str, ids: list[str], embeddings: np.ndarray, texts: list[str], metadatas: list[dict]) -> None:
        """Upsert chunks; ``metadatas`` values must be str, int, float or bool (None values are dropped)."""
        col = self._collection(collection)
        step = self.client.get_max_batch_size()
        clean = [{k: v for k, v in m.items() if v is not None} for m in metadatas]
        for i in range(0, len(ids), step):
            col.upsert(
                ids=ids[i : i + step],
                embeddings=np.asarray(embeddings[i : i + step], dtype=np.float32),
                documents=texts[i : i + step],
                metadatas=clean[i : i + step],
            )

    def query(self, collection: str, embedding: np.ndarray, k: int, exclude_versions: list[str] = (),
              where: dict | None = None) -> list[StoredMatch]:
        """Nearest ``k`` chunks by cosine distance, skipping chunks whose ``doc_version`` is excluded.

        ``where`` is an extra chromadb metadata filter (e.g. ``{"filename": "faq.pdf"}``).
        """
        col = self._collection(collection)
        conditions = ([{"doc_version": {"$nin": list(exclude_versions)}}] if exclude_versions else []) + (
            [where] if where else [])
        where = conditions[0] if len(conditions) == 1 else ({"$and": conditions} if conditions else None)
        res = col.query(
            query_embeddings=[np.asarray(embedding, dtype=np.float32).tolist()],
            n_results=k,
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        return [
            StoredMatch(cid, doc, meta or {}, float(dist))
            for cid, doc, meta, dist in zip(res["ids"][0], res["documents"][0], res["metadatas"][0],
                                            res["distances"][0], strict=True)
        ]

    def chunks(self, collection: str, version_keys: list[str], page: int = 5000) -> tuple[list[StoredMatch], np.ndarray]:
        """Every chunk of the given ``doc_version`` keys (distance 0) and their vectors, row for row."""
        col, out, vectors = self._collection(collection), [], []
        for i in range(0, len(version_keys), 500):  # keep each $in list small
            keys = version_keys[i : i + 500]
            offset = 0
            while True:
                res = col.get(where={"doc_version": {"$in": keys}}, include=["documents", "metadatas", "embeddings"],
                              limit=page, offset=offset)
                out += [StoredMatch(cid, doc, meta or {}, 0.0)
                        for cid, doc, meta in zip(res["ids"], res["documents"], res["metadatas"], strict=True)]
                if len(res["ids"]):
                    vectors.append(np.asarray(res["embeddings"], dtype=np.float32))
                if len(res["ids"]) < page:
                    break
                offset += page
        return out, (np.vstack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32))

    def delete_versions(self, collection: str, version_keys: list[str]) -> None:
        if version_keys:
            self._collection(collection).delete(where={"doc_version": {"$in": list(version_keys)}})

    def count(self, collection: str, version_key: str | None = None) -> int:
        col = self._collection(collection)
        if version_key is None:
            return col.count()
        return len(col.get(where={"doc_version": version_key}, include=[])["ids"])

    def drop(self, collection: str) -> None:
        try:
            self.client.delete_collection(collection)
        except Exception as exc:  # chromadb raises NotFoundError (class moved between releases)
            if "does not exist" not in str(exc) and "NotFound" not in type(exc).__name__:
                raise
