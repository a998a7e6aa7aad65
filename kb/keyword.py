"""Keyword (BM25) side of hybrid search. The only home of ``bm25s``.

One in-memory BM25 index per knowledge base, built from the chunks the vector store holds for the
knowledge base's *current* document versions. The index is keyed by a fingerprint of those versions,
so every ingestion, re-upload, swap or delete (each changes the set) makes the next search rebuild it;
there is no second copy of the chunks to keep in sync. Every process (API, workers) keeps its own
cache and sees the same state because the fingerprint comes from the database.

Tokenisation is language-agnostic: Unicode word characters, lower-cased, accents folded (customers
write "horario" for "horário"), numbers kept. Stemming was measured and is not used by default
(see ``benchmarks/retrieval.py`` and the README's retrieval section).
"""
from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

logging.getLogger("bm25s").setLevel(logging.WARNING)

_WORD = re.compile(r"\w+", re.UNICODE)


def fold(text: str) -> str:
    """Lower-case ``text`` and strip diacritics ("Horário" -> "horario", "Ação" -> "acao")."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def tokenize(text: str) -> list[str]:
    """Words of ``text`` for BM25: folded, split on non-word characters, single letters dropped."""
    return [t for t in _WORD.findall(fold(text)) if len(t) > 1 or t.isdigit()]


@dataclass(frozen=True)
class IndexedChunk:
    chunk_id: str
    text: str
    metadata: dict  # the vector store's: doc_version, section, filename...


class KeywordIndex:
    """BM25 over a fixed list of chunks (Lucene variant, k1=1.2, b=0.75), with the chunks' vectors
    row for row, so the dense similarity of a chunk found only by keywords costs one dot product."""

    def __init__(self, chunks: list[IndexedChunk], vectors: np.ndarray | None = None, k1: float = 1.2, b: float = 0.75):
        import bm25s

        self.chunks = chunks
        self.vectors = vectors
        self.row = {c.chunk_id: i for i, c in enumerate(chunks)}
        self._bm25 = None
        # the section path is indexed with the text: a heading names what its passages are about
        docs = [tokenize(f"{c.metadata.get('section', '')}\n{c.text}") or [""] for c in chunks]
        if chunks:
            self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
            self._bm25.index(docs, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk for ``query`` (zeros when no query word is in the index)."""
        if self._bm25 is None:
            return np.zeros(0, dtype=np.float32)
        ids = self._bm25.get_tokens_ids(tokenize(query))
        if not ids:
            return np.zeros(len(self.chunks), dtype=np.float32)
        return self._bm25.get_scores_from_ids(ids)

    def top(self, query: str, k: int) -> list[tuple[IndexedChunk, float]]:
        """The ``k`` best chunks with a positive score, best first."""
        scores = self.scores(query)
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self.chunks[i], float(scores[i])) for i in order if scores[i] > 0]


class KeywordIndexCache:
    """Keeps the most recently used indexes, one per collection, rebuilt when the fingerprint changes."""

    def __init__(self, capacity: int = 32):
        self._capacity = capacity
        self._items: OrderedDict[str, tuple[tuple, KeywordIndex]] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}

    def get(self, collection: str, fingerprint: tuple, load) -> KeywordIndex:
        """The index of ``collection`` for ``fingerprint``; ``load()`` returns (chunks, vectors) when it must be built."""
        with self._lock:
            hit = self._items.get(collection)
            if hit and hit[0] == fingerprint:
                self._items.move_to_end(collection)
                return hit[1]
            build_lock = self._building.setdefault(collection, threading.Lock())
        with build_lock:  # one build per collection at a time; others wait for it
            with self._lock:
                hit = self._items.get(collection)
                if hit and hit[0] == fingerprint:
                    return hit[1]
            index = KeywordIndex(*load())
            with self._lock:
                self._items[collection] = (fingerprint, index)
                self._items.move_to_end(collection)
                while len(self._items) > self._capacity:
                    self._items.popitem(last=False)
            return index

    def drop(self, collection: str) -> None:
        with self._lock:
            self._items.pop(collection, None)
