"""Matching a message against approved questions in memory: the question vectors of an assistant's
approved answers, the closest answer to a message vector, the rule that accepts it, and a per-assistant
cache that rebuilds an index when its fingerprint changes.

The database side (which answers, when they changed) lives in :mod:`runtime.approved`; the evaluation
(:mod:`atende.evaluation.approved_match`) builds the same ``ApprovedIndex`` from a FAQ file.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from kb.embedders import Embedder
from kb.types import Source

APPROVED_PREFIX = "approved:"  # chunk_id of a source that is an approved answer


@dataclass(frozen=True)
class IndexedAnswer:
    """What matching needs of an approved answer."""

    id: str
    answer: str
    questions: tuple[str, ...]  # the question, then its variants


@dataclass(frozen=True)
class ApprovedMatch:
    """The approved answer closest to a message."""

    approved_id: str
    question: str  # the question or variant most similar to the message
    answer: str
    score: float  # cosine similarity of the message and ``question``
    margin: float  # ``score`` minus the best similarity of any other approved answer (-1 if there is none)

    def as_source(self) -> Source:
        """The answer as a turn's first source: ``chunk_id`` ``approved:<id>``, the matched question as its
        section, the similarity as its score."""
        return Source(rank=1, chunk_id=f"{APPROVED_PREFIX}{self.approved_id}", score=round(self.score, 4),
                      text=self.answer, document_id=self.approved_id, version=0, filename="approved answer",
                      section=self.question)


@dataclass(frozen=True)
class MatchRule:
    """When the closest approved answer is close enough to be sent as the reply."""

    threshold: float  # least similarity of the message to the question or one of its variants
    margin: float  # least lead of that similarity over the best of any other approved answer

    def accepts(self, found: ApprovedMatch | None) -> bool:
        return found is not None and found.score >= self.threshold and found.margin >= self.margin


class ApprovedIndex:
    """The question and variant vectors of a set of approved answers, embedded with ``embed_query``.

    Vectors of texts that ``previous`` (an index of the same model) already holds are reused, so
    rebuilding after an edit embeds only the new texts.
    """

    def __init__(self, embedder: Embedder, answers: Sequence[IndexedAnswer], previous: ApprovedIndex | None = None):
        self.model = embedder.name
        known = previous._vectors if previous is not None and previous.model == self.model else {}
        self._answers = list(answers)
        self._texts = [q for a in self._answers for q in a.questions]
        self._vectors = {t: known[t] if t in known else embedder.embed_query(t) for t in dict.fromkeys(self._texts)}
        self._matrix = np.vstack([self._vectors[t] for t in self._texts]) if self._texts else None
        self._starts = np.cumsum([0] + [len(a.questions) for a in self._answers[:-1]])

    def __len__(self) -> int:
        return len(self._answers)

    def closest(self, vector: np.ndarray) -> ApprovedMatch | None:
        """The approved answer whose question or variant is most similar to ``vector`` (None if there are none)."""
        if self._matrix is None:
            return None
        similarities = self._matrix @ vector
        per_answer = np.maximum.reduceat(similarities, self._starts)
        best = int(np.argmax(per_answer))
        score = float(per_answer[best])
        runner_up = float(np.max(np.delete(per_answer, best), initial=-1.0))
        answer, start = self._answers[best], int(self._starts[best])
        text = start + int(np.argmax(similarities[start : start + len(answer.questions)]))
        return ApprovedMatch(answer.id, self._texts[text], answer.answer, score, score - runner_up)


class ApprovedIndexCache:
    """One ``ApprovedIndex`` per assistant, rebuilt when the fingerprint of its approved answers changes.

    Each process keeps its own; the fingerprint comes from the database, so every process sees edits.
    """

    def __init__(self) -> None:
        self._items: dict[str, tuple[Hashable, ApprovedIndex]] = {}
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}

    def get(self, key: str, fingerprint: Hashable, build: Callable[[ApprovedIndex | None], ApprovedIndex]) -> ApprovedIndex:
        """The index of ``key`` for ``fingerprint``; ``build(previous index or None)`` makes it when it must."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] == fingerprint:
                return hit[1]
            build_lock = self._building.setdefault(key, threading.Lock())
        with build_lock:  # one build per assistant at a time; concurrent turns wait for it
            with self._lock:
                hit = self._items.get(key)
            if hit is not None and hit[0] == fingerprint:
                return hit[1]
            index = build(hit[1] if hit is not None else None)
            with self._lock:
                self._items[key] = (fingerprint, index)
            return index
