"""Comparing answer texts by their words: the normalised tokens of a text and whether a phrase appears in it.

Shared by the answer evaluation (``atende.evaluation.answers``: token F1, gold-answer containment) and the
regression checks (``runtime.regression``: an expected fact must appear in the reply). Case, accents,
punctuation and articles do not count; numbers are compared as written, except that zero cents and
thousands separators do not count either, so "180" matches "R$ 180,00" while "180" does not match
"R$ 1.180,00" (``1180``).
"""
from __future__ import annotations

import re
import unicodedata

ARTICLES = {
    "a", "an", "the",  # English
    "o", "os", "as", "um", "uma", "uns", "umas",  # Portuguese ("a" above)
    "el", "la", "lo", "los", "las", "un", "una", "unos", "unas",  # Spanish
}
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_ZERO_CENTS = re.compile(r"[.,]00$")


def _plain_number(match: re.Match) -> str:
    return _ZERO_CENTS.sub("", match.group()).replace(".", "").replace(",", "")


def _drop(ch: str) -> bool:
    return unicodedata.combining(ch) or unicodedata.category(ch).startswith(("P", "S"))


def normalize(text: str) -> list[str]:
    """Tokens of ``text``: lowercased, accents stripped, numbers without zero cents and separators,
    punctuation and symbols removed (a currency sign parts words: "R$180" is "r 180"),
    English/Portuguese/Spanish articles dropped, split on whitespace."""
    text = _NUMBER.sub(_plain_number, unicodedata.normalize("NFKD", (text or "").lower()))
    text = "".join(" " if unicodedata.category(ch) == "Sc" else "" if _drop(ch) else ch for ch in text)
    return [t for t in text.split() if t not in ARTICLES]


def contains_answer(prediction: str, answers: list[str]) -> bool:
    """Whether some answer, normalised, appears as a run of whole tokens in the normalised prediction
    (an answer that normalises to nothing never does)."""
    reply = f" {' '.join(normalize(prediction))} "
    return any(ref and f" {' '.join(ref)} " in reply for ref in map(normalize, answers))
