"""Keyword (BM25) side of hybrid search. The only home of ``bm25s``.

One in-memory BM25 index per knowledge base, built from the chunks the vector store holds for the
knowledge base's *current* document versions. The index is keyed by a fingerprint of those versions,
so every ingestion, re-upload, swap or delete (each changes the set) makes the next search rebuild it;
there is no second copy of the chunks to keep in sync. Every process (API, workers) keeps its own
cache and sees the same state because the fingerprint comes from the database.

Tokenisation is language-aware: each chunk's language is told by its stopwords and its words are
stemmed with that language's Snowball stemmer (measured on the QA sets' dev halves: +3 points of
recall@5 in Portuguese, +0.7 of MRR in English), then accent-folded (customers write "horario" for
"horário"). Chunks with no clear language (tables, codes) are folded but not stemmed.
"""
from __future__ import annotations

import logging
import functools
import re
import threading
import unicodedata
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from kb.types import ChunkMetadata

if TYPE_CHECKING:  # bm25s itself is imported when an index is built
    import bm25s

_WORD = re.compile(r"\w+", re.UNICODE)

# languages told apart by their stopwords (bm25s's lists) and stemmed with Snowball (PyStemmer)
_LANGUAGES = {
    "en": ("STOPWORDS_EN", "english"), "pt": ("STOPWORDS_PORTUGUESE", "portuguese"),
    "es": ("STOPWORDS_SPANISH", "spanish"), "fr": ("STOPWORDS_FRENCH", "french"),
    "it": ("STOPWORDS_ITALIAN", "italian"), "de": ("STOPWORDS_GERMAN", "german"),
    "nl": ("STOPWORDS_DUTCH", "dutch"), "sv": ("STOPWORDS_SWEDISH", "swedish"),
    "da": ("STOPWORDS_DANISH", "danish"), "no": ("STOPWORDS_NORWEGIAN", "norwegian"),
    "ru": ("STOPWORDS_RUSSIAN", "russian"), "tr": ("STOPWORDS_TURKISH", "turkish"),
}


@functools.cache
def _stoplist(name: str) -> frozenset[str]:
    """One of bm25s's stopword lists, by attribute name."""
    import bm25s.stopwords

    return frozenset(getattr(bm25s.stopwords, name))


def _stopwords() -> dict[str, frozenset[str]]:
    return {lang: _stoplist(name) for lang, (name, _) in _LANGUAGES.items()}


class _Stemmer(Protocol):
    """What is used of PyStemmer's ``Stemmer.Stemmer`` (the package has no type information)."""

    def stemWords(self, words: list[str]) -> list[str]: ...  # noqa: N802 (PyStemmer's name)


@functools.cache
def _stemmer(lang: str) -> _Stemmer:
    import Stemmer

    stemmer: _Stemmer = Stemmer.Stemmer(_LANGUAGES[lang][1])
    return stemmer


# a customer's message: a few words, so stopwords (English: bm25s's longer list) and letters one language has
_MESSAGE_CUES = {
    "en": ("STOPWORDS_EN_PLUS", ""), "pt": ("STOPWORDS_PORTUGUESE", "ãõçêâôà"), "es": ("STOPWORDS_SPANISH", "ñ¿¡"),
}



def message_language(text: str) -> str | None:
    """``en``, ``pt`` or ``es`` for a short message, by its stopwords and the letters only one of them uses
    (each counts double); None when nothing tells or two languages tie ("Oi", "Lisboa?")."""
    tokens = words(text)
    lowered = text.lower()
    counts = {
        lang: sum(t in _stoplist(name) for t in tokens) + 2 * sum(ch in lowered for ch in letters)
        for lang, (name, letters) in _MESSAGE_CUES.items()
    }
    ranked = sorted(counts.values(), reverse=True)
    return max(counts, key=counts.__getitem__) if ranked[0] > ranked[1] else None


def fold(text: str) -> str:
    """Lower-case ``text`` and strip diacritics ("Horário" -> "horario", "Ação" -> "acao")."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (accents kept: the stemmers need them); single letters dropped."""
    return [w for w in _WORD.findall(unicodedata.normalize("NFC", text.lower())) if len(w) > 1 or w.isdigit()]


def detect_language(tokens: list[str]) -> str | None:
    """The language whose stopwords are most frequent in ``tokens``, or None when too few occur
    (tables, code, numbers: they are indexed without stemming)."""
    if not tokens:
        return None
    counts = {lang: sum(t in sw for t in tokens) for lang, sw in _stopwords().items()}
    lang = max(counts, key=counts.__getitem__)
    return lang if counts[lang] >= max(2, 0.1 * len(tokens)) else None


def terms(tokens: list[str], lang: str | None) -> list[str]:
    """Index terms: stemmed in ``lang`` (when known), then accent-folded."""
    stemmed = _stemmer(lang).stemWords(tokens) if lang else tokens
    return [fold(t) for t in stemmed]


def key_terms(text: str, lang: str | None) -> set[str]:
    """The terms of ``text`` as indexed in ``lang``, that language's stopwords left out."""
    stop = _stopwords().get(lang, frozenset()) if lang else frozenset()
    return set(terms([w for w in words(text) if w not in stop], lang))


def query_terms(text: str, languages: tuple[str | None, ...]) -> list[str]:
    """Terms of a query for an index holding ``languages`` (None: chunks with no language): each word
    stemmed as in each of them (a query's own language is unreliable to detect from a few words),
    duplicates of a word removed."""
    out = []
    for word in words(text):
        out.extend(sorted({t for lang in languages or (None,) for t in terms([word], lang)}))
    return out


def _idf(n_docs: int, df: int) -> float:
    """Lucene's BM25 idf, as ``bm25s`` computes it."""
    return float(np.log(1 + (n_docs - df + 0.5) / (df + 0.5)))


@dataclass(frozen=True)
class IndexedChunk:
    """A chunk as the BM25 index holds it: a :class:`kb.vectorstore.StoredMatch` of the store's listing without
    the distance (which a listing has not). Search turns the ones it ranks into :class:`kb.types.Source`."""

    chunk_id: str
    text: str
    metadata: ChunkMetadata  # the vector store's: doc_version, section, filename...


class KeywordIndex:
    """BM25 over a fixed list of chunks (Lucene variant, k1=1.2, b=0.75), with the chunks' vectors
    row for row, so the dense similarity of a chunk found only by keywords costs one dot product."""

    def __init__(self, chunks: list[IndexedChunk], vectors: np.ndarray | None = None, k1: float = 1.2, b: float = 0.75):
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets DEBUG on import
        self.chunks = chunks
        self.vectors = vectors
        self.row = {c.chunk_id: i for i, c in enumerate(chunks)}
        self._bm25: bm25s.BM25 | None = None
        # the section path is indexed with the text: a heading names what its passages are about
        tokens = [words(f"{c.metadata.get('section', '')}\n{c.text}") for c in chunks]
        detected = [detect_language(t) for t in tokens]
        # every language a chunk was indexed in counts, however few its chunks: a query is stemmed in each (one
        # Portuguese FAQ beside an 800-page English handbook, a one-chunk table among prose: found by their own words)
        self.languages = tuple(sorted(set(detected), key=lambda lang: lang or ""))
        self._idf: dict[str, float] = {}
        if chunks:
            corpus = [terms(t, lang) or [""] for t, lang in zip(tokens, detected, strict=True)]
            self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
            self._bm25.index(corpus, show_progress=False)
            df = Counter(term for doc in corpus for term in set(doc))
            self._idf = {term: _idf(len(chunks), n) for term, n in df.items()}

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk for ``query`` (zeros when no query word is in the index)."""
        if self._bm25 is None:
            return np.zeros(0, dtype=np.float32)
        ids = self._bm25.get_tokens_ids(query_terms(query, self.languages))
        if not ids:
            return np.zeros(len(self.chunks), dtype=np.float32)
        scores: np.ndarray = self._bm25.get_scores_from_ids(ids)
        return scores

    def attainable(self, query: str) -> float:
        """The score a chunk holding every word of ``query`` tends to: the sum of their idf (``bm25s``'s
        Lucene term weight is ``idf * tf / (tf + k1 * length norm)``, below idf). A BM25 score divided
        by it says how much of the query a chunk matches, weighted by rarity. A word absent from the
        index counts as the rarest possible (it matched nothing, and it was probably what the query
        was about)."""
        if not self.chunks:
            return 0.0
        unseen = _idf(len(self.chunks), 0)
        total = 0.0
        for word in words(query):
            known = [self._idf[t] for t in {t for lang in self.languages or (None,) for t in terms([word], lang)}
                     if t in self._idf]
            total += max(known, default=unseen)
        return total

    def top(self, query: str, k: int) -> list[tuple[IndexedChunk, float]]:
        """The ``k`` best chunks with a positive score, best first."""
        scores = self.scores(query)
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self.chunks[i], float(scores[i])) for i in order if scores[i] > 0]


class KeywordIndexCache:
    """Keeps the most recently used indexes, one per collection, rebuilt when the fingerprint changes."""

    def __init__(self, capacity: int = 32):
        self._capacity = capacity
        self._items: OrderedDict[str, tuple[tuple[str, ...], KeywordIndex]] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}

    def get(self, collection: str, fingerprint: tuple[str, ...],
            load: Callable[[], tuple[list[IndexedChunk], np.ndarray]]) -> KeywordIndex:
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
