"""Regression checks: turns promoted to test cases, replayed through the real runtime after a change.

A case is a question and what its answer must keep: the turn's status, facts that must appear in the
reply (by :func:`runtime.text_match.contains_answer`: case, accents and punctuation do not count, numbers
are compared as written) and the source files it must cite. A run sends each case of an assistant as the
first message of a new conversation (channel ``test``, sender ``regression``, a customer id of its own per
case and run) through :func:`runtime.turn.handle_message`, compares the outcome with :func:`compare` and
stores every case's result. Run turns deliver no events: a handoff case must not page a human.

One run per assistant at a time, across processes (CLI and API): a partial unique index admits a single
``running`` run. The runner saves its results after every case, which moves ``updated_at``; a run whose
runner died (a stopped server, a killed CLI) stops moving and, once idle longer than the assistant's turn
deadline plus ``STALE_MARGIN``, is marked ``error`` when it is next read or when a new run starts.

Case and run-reading functions flush; the caller commits. The run functions commit their own rows.
"""
from __future__ import annotations

import difflib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from sqlalchemy import JSON, ForeignKey, Index, String, Text, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base, UTCDateTime, new_id, utcnow
from core.errors import Conflict, InvalidRequest, NotFound
from kb import registry
from kb.models import Assistant
from runtime.config import AssistantConfig
from runtime.models import Conversation, Message, Turn
from runtime.text_match import contains_answer, normalize
from runtime.turn import handle_message
from runtime.types import TurnResult

if TYPE_CHECKING:
    from runtime.queue import WorkQueue
    from runtime.services import Services

logger = logging.getLogger(__name__)

# the statuses a turn that sent a reply can end in; "paused" and "error" turns send none
STATUSES = ("answered", "smalltalk", "fallback", "handoff")
CHANNEL, SENDER = "test", "regression"
MAX_TEXT, MAX_NOTE, MAX_ITEMS, MAX_ITEM = 10_000, 1000, 50, 500
STALE_MARGIN = timedelta(minutes=5)  # beyond the turn deadline: retrieval, logging, a slow database


class RegressionCase(Base):
    """A question and what its answer must keep: status, facts in the reply, cited source files."""

    __tablename__ = "regression_cases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    assistant_id: Mapped[str] = mapped_column(ForeignKey("assistants.id", ondelete="CASCADE"), index=True)
    question: Mapped[str] = mapped_column(Text)
    expected_status: Mapped[str] = mapped_column(String(20))
    expected_facts: Mapped[list] = mapped_column(JSON, default=list)  # texts the reply must contain
    expected_sources: Mapped[list] = mapped_column(JSON, default=list)  # filenames it must cite; empty: not checked
    expected_reply: Mapped[str | None] = mapped_column(Text, nullable=True)  # the reply when promoted, for the diff
    created_from_message_id: Mapped[str | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RegressionRun(Base):
    """One replay of an assistant's cases: ``running``, then ``passed``, ``failed`` or ``error``."""

    __tablename__ = "regression_runs"
    __table_args__ = (
        Index("uq_regression_runs_running", "assistant_id", unique=True,
              sqlite_where=text("status = 'running'"), postgresql_where=text("status = 'running'")),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    assistant_id: Mapped[str] = mapped_column(ForeignKey("assistants.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20), default="running")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # moved after every case
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    summary: Mapped[dict] = mapped_column(JSON, default=dict)  # total, done, passed, failed, changes by kind
    results: Mapped[list] = mapped_column(JSON, default=list)  # CaseResult.to_dict() per case done
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


@dataclass(frozen=True)
class Change:
    """How a reply differs from its case: ``status`` (the expected and the new status), ``sources`` (an
    expected file, and the files cited instead) or ``facts`` (an expected fact missing from the reply)."""

    what: Literal["status", "sources", "facts"]
    expected: str
    got: str | list[str] | None

    def describe(self) -> str:
        if self.what == "status":
            return f"status {self.expected} -> {self.got}"
        if self.what == "sources":
            return f"source {self.expected} not cited"
        return f'missing fact "{self.expected}"'


@dataclass(frozen=True)
class CaseResult:
    """A case's outcome in a run; ``expected_reply`` is copied from the case, which may change later."""

    case_id: str
    question: str
    passed: bool
    changes: list[Change]
    reply: str | None
    status: str
    sources: list[dict]  # rank, filename, document_id, chunk_id, score of every source shown to the model
    latency_ms: int
    expected_reply: str | None
    error: str | None  # why an ``error`` turn failed

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """``PASS question`` or ``FAIL question: change; change``, on one line."""
        question = " ".join(self.question.split())
        question = question if len(question) <= 60 else question[:59] + "…"
        changes = "; ".join(c.describe() for c in self.changes)
        return f"PASS {question}" if self.passed else f"FAIL {question}: {changes}"


@dataclass(frozen=True)
class DiffSegment:
    """A run of words of the expected reply (``delete``), of the new one (``insert``) or of both (``equal``)."""

    op: Literal["equal", "delete", "insert"]
    text: str


def cited_filenames(status: str, filenames: Iterable[str]) -> list[str]:
    """The files a reply cites, in rank order without repeats: its sources' ``filenames`` when it is an
    answer; a fallback, hand-off or small-talk message rests on none of the passages shown."""
    return list(dict.fromkeys(filenames)) if status == "answered" else []


def compare(case: RegressionCase, result: TurnResult) -> list[Change]:
    """What changed in ``result`` against ``case``: a different status (``answered`` and ``smalltalk``
    differ too), each expected fact missing from the reply, each expected source file not cited."""
    changes = []
    if result.status != case.expected_status:
        changes.append(Change("status", case.expected_status, result.status))
    cited = cited_filenames(result.status, [s.filename for s in result.sources])
    changes += [Change("sources", f, cited) for f in case.expected_sources if f not in cited]
    changes += [Change("facts", f, None) for f in case.expected_facts if not contains_answer(result.reply or "", [f])]
    return changes


def reply_diff(expected: str, got: str) -> list[DiffSegment]:
    """A word-level diff of two replies, whitespace kept, for showing what changed."""
    a, b = re.split(r"(\s+)", expected), re.split(r"(\s+)", got)
    segments = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op in ("equal", "delete", "replace"):
            segments.append(DiffSegment("equal" if op == "equal" else "delete", "".join(a[i1:i2])))
        if op in ("insert", "replace"):
            segments.append(DiffSegment("insert", "".join(b[j1:j2])))
    return segments


def _text(name: str, value: str | None, limit: int, required: bool = True) -> str:
    value = (value or "").strip()
    if required and not value:
        raise InvalidRequest(f"missing {name}")
    if len(value) > limit:
        raise InvalidRequest(f"{name} too long: {len(value)} characters (at most {limit})")
    return value


def _items(name: str, values: Iterable[str] | None) -> list[str]:
    """Stripped, without blanks and repeats; a fact must keep some words after normalisation."""
    out = list(dict.fromkeys(_text(name, v, MAX_ITEM) for v in values or () if (v or "").strip()))
    if len(out) > MAX_ITEMS:
        raise InvalidRequest(f"too many {name}s: {len(out)} (at most {MAX_ITEMS})")
    if name == "fact" and (empty := next((f for f in out if not normalize(f)), None)):
        raise InvalidRequest(f"fact {empty!r} has no words or numbers to look for")
    return out


def _validated(*, question: str, expected_status: str, expected_facts: Iterable[str], expected_sources: Iterable[str],
               expected_reply: str | None, note: str | None) -> dict:
    if expected_status not in STATUSES:
        raise InvalidRequest(f"expected_status must be one of {', '.join(STATUSES)}, not {expected_status!r}")
    return {
        "question": _text("question", question, MAX_TEXT), "expected_status": expected_status,
        "expected_facts": _items("fact", expected_facts), "expected_sources": _items("source", expected_sources),
        "expected_reply": _text("expected_reply", expected_reply, MAX_TEXT, required=False) or None,
        "note": _text("note", note, MAX_NOTE, required=False),
    }


def create_case(
    session: Session, assistant: Assistant, *, question: str, expected_status: str, expected_facts: Iterable[str] = (),
    expected_sources: Iterable[str] = (), expected_reply: str | None = None, note: str | None = None,
    created_from_message_id: str | None = None,
) -> RegressionCase:
    """Store a new case. ``InvalidRequest`` for a missing or too long text, an unknown status, a fact
    without words or too many facts or sources."""
    fields = _validated(question=question, expected_status=expected_status, expected_facts=expected_facts,
                        expected_sources=expected_sources, expected_reply=expected_reply, note=note)
    case = RegressionCase(id=new_id(), assistant_id=assistant.id, created_from_message_id=created_from_message_id, **fields)
    session.add(case)
    session.flush()
    return case


def update_case(session: Session, case: RegressionCase, changes: Mapping) -> RegressionCase:
    """Apply ``changes`` (any of question, expected_status, expected_facts, expected_sources,
    expected_reply, note), validated as in :func:`create_case`, all or none."""
    current = {k: getattr(case, k) for k in
               ("question", "expected_status", "expected_facts", "expected_sources", "expected_reply", "note")}
    for name, value in _validated(**{**current, **changes}).items():
        setattr(case, name, value)
    session.flush()
    return case


def promote(session: Session, message_id: str, facts: Iterable[str] | None = None, note: str | None = None) -> RegressionCase:
    """Make a case of the AI reply ``message_id``: the question is the text of the inbound messages its turn
    covered, the expectations are the turn's status, the files the reply cites and the ``facts`` given
    (none are guessed); the reply is kept for the diff. ``NotFound``; ``InvalidRequest`` if the message is
    not an AI reply (an inbound message, an operator's reply, a template)."""
    reply = session.get(Message, message_id)
    if reply is None:
        raise NotFound(f"message {message_id!r} not found")
    if reply.direction != "outbound" or reply.turn_id is None:
        raise InvalidRequest(f"message {message_id!r} is not an AI reply")
    status = session.get(Turn, reply.turn_id).status
    assistant = session.get(Assistant, session.get(Conversation, reply.conversation_id).assistant_id)
    return create_case(
        session, assistant, question=reply_questions(session, [reply])[reply.id], expected_status=status,
        expected_facts=facts or (),
        expected_sources=cited_filenames(status, [s.filename for s in reply.sources]), expected_reply=reply.text,
        note=note, created_from_message_id=reply.id,
    )


def reply_questions(session: Session, replies: Iterable[Message]) -> dict[str, str]:
    """The question each AI reply answered, by reply id: the texts of the inbound messages its turn covered,
    one per line (``""`` when none are left). Other messages (the customer's, operators') are left out."""
    turns = {m.id: m.turn_id for m in replies if m.direction == "outbound" and m.turn_id is not None}
    texts: dict[str, list[str]] = {}
    if turns:
        for turn_id, body in session.execute(
                select(Message.turn_id, Message.text)
                .where(Message.turn_id.in_(set(turns.values())), Message.direction == "inbound")
                .order_by(Message.created_at, Message.id)):
            texts.setdefault(turn_id, []).append(body)
    return {message_id: "\n".join(texts.get(turn_id, [])) for message_id, turn_id in turns.items()}


def get_case(session: Session, case_id: str) -> RegressionCase:
    found = session.get(RegressionCase, case_id)
    if found is None:
        raise NotFound(f"regression case {case_id!r} not found")
    return found


def list_cases(session: Session, assistant: Assistant) -> list[RegressionCase]:
    """The assistant's cases, oldest first."""
    query = select(RegressionCase).where(RegressionCase.assistant_id == assistant.id)
    return list(session.scalars(query.order_by(RegressionCase.created_at, RegressionCase.id)))


def delete_case(session: Session, case: RegressionCase) -> None:
    session.delete(case)
    session.flush()


def _give_up_stale(session: Session, assistant_id: str) -> None:
    """Mark the assistant's running run ``error`` when its runner has stopped moving (module docstring)."""
    run = session.scalar(select(RegressionRun).where(RegressionRun.assistant_id == assistant_id,
                                                     RegressionRun.status == "running"))
    if run is None:
        return
    deadline_s = AssistantConfig.model_validate(session.get(Assistant, assistant_id).config or {}).turn_deadline_s
    idle = utcnow() - run.updated_at
    if idle > timedelta(seconds=deadline_s) + STALE_MARGIN:
        run.status, run.finished_at = "error", utcnow()
        run.error = f"interrupted: no progress for {idle.total_seconds() / 60:.0f} min (the process running it stopped)"
        session.flush()


def get_run(session: Session, run_id: str) -> RegressionRun:
    """A run; one left ``running`` by a dead process becomes ``error`` (flushed; the caller commits)."""
    run = session.get(RegressionRun, run_id)
    if run is None:
        raise NotFound(f"regression run {run_id!r} not found")
    if run.status == "running":
        _give_up_stale(session, run.assistant_id)
    return run


def list_runs(session: Session, assistant: Assistant, limit: int = 50) -> list[RegressionRun]:
    """The assistant's latest runs, newest first (stale ones settled as in :func:`get_run`)."""
    _give_up_stale(session, assistant.id)
    query = select(RegressionRun).where(RegressionRun.assistant_id == assistant.id)
    return list(session.scalars(query.order_by(RegressionRun.started_at.desc(), RegressionRun.id.desc()).limit(limit)))


def start_run(session: Session, assistant: Assistant) -> RegressionRun:
    """Store a new ``running`` run of the assistant's cases (flushed; the caller commits, then calls
    :func:`execute_run`). ``InvalidRequest`` without cases, ``Conflict`` while another run is running."""
    total = session.scalar(select(func.count()).where(RegressionCase.assistant_id == assistant.id))
    if not total:
        raise InvalidRequest(f"assistant {assistant.name!r} has no regression cases")
    _give_up_stale(session, assistant.id)
    busy = f"a regression run of assistant {assistant.name!r} is already running"
    running = session.scalar(select(RegressionRun.id).where(RegressionRun.assistant_id == assistant.id,
                                                            RegressionRun.status == "running"))
    if running:
        raise Conflict(f"{busy} ({running})")
    run = RegressionRun(id=new_id(), assistant_id=assistant.id, status="running", summary=_summary([], total), results=[])
    session.add(run)
    try:
        session.flush()
    except IntegrityError as exc:  # another process started one since the check
        raise Conflict(busy) from exc
    return run


def _summary(results: list[CaseResult], total: int) -> dict:
    passed = sum(r.passed for r in results)
    changes = Counter(c.what for r in results for c in r.changes)
    return {"total": total, "done": len(results), "passed": passed, "failed": len(results) - passed,
            "changes": {what: changes[what] for what in ("status", "sources", "facts")}}


class _EventsKept:
    """A run's queue (a ``WorkQueue``): the events of its turns stay stored, undelivered, since a replay must
    not notify anyone; other work goes to ``queue``."""

    def __init__(self, queue: WorkQueue) -> None:
        self._queue = queue

    def enqueue_job(self, job_id: str) -> None:
        self._queue.enqueue_job(job_id)

    def enqueue_webhook(self, post_id: str) -> None:
        self._queue.enqueue_webhook(post_id)

    def schedule_turn(self, conversation_id: str, delay_s: float) -> None:
        self._queue.schedule_turn(conversation_id, delay_s)

    def deliver_events(self, event_ids: list[str], delay_s: float = 0.0) -> None:
        pass

    def schedule_followup(self, followup_id: str, delay_s: float) -> None:
        pass  # a replay schedules nothing for the customer

    def schedule_send(self, conversation_id: str, delay_s: float) -> None:
        self._queue.schedule_send(conversation_id, delay_s)

    def enqueue_media(self, media_id: str, delay_s: float) -> None:
        self._queue.enqueue_media(media_id, delay_s)

    def enqueue_sync(self, run_id: str) -> None:
        self._queue.enqueue_sync(run_id)


def _run_case(services: Services, case: RegressionCase, run_id: str) -> CaseResult:
    t = time.perf_counter()
    result = handle_message(services, assistant_ref=case.assistant_id, channel=CHANNEL, sender=SENDER,
                            customer_id=f"{run_id}-{case.id}", text=case.question)
    changes = compare(case, result)
    sources = [{k: getattr(s, k) for k in ("rank", "filename", "document_id", "chunk_id", "score")}
               for s in result.sources]
    return CaseResult(case.id, case.question, not changes, changes, result.reply, result.status, sources,
                      round((time.perf_counter() - t) * 1000), case.expected_reply, result.error)


def _save(services: Services, run_id: str, results: list[CaseResult], total: int, status: str = "running",
          error: str | None = None) -> bool:
    """Store the results so far (with ``status`` other than running: the end of the run); False when the
    run is no longer running (given up as stale), and then nothing is written."""
    now = utcnow()
    values = {"results": [r.to_dict() for r in results], "summary": _summary(results, total), "updated_at": now}
    if status != "running":
        values |= {"status": status, "error": error, "finished_at": now}
    with services.session() as session:
        saved = session.execute(update(RegressionRun).where(RegressionRun.id == run_id, RegressionRun.status == "running")
                                .values(**values)).rowcount
        session.commit()
    return bool(saved)


def execute_run(services: Services, run_id: str, log: Callable[[str], None] = print) -> RegressionRun:
    """Replay every case of a started run (:func:`start_run`), logging one line per case and saving the
    results after each. The run ends ``passed``, ``failed`` (a case changed; a turn's own error is a
    changed status) or ``error`` (something else failed, e.g. the database)."""
    quiet = replace(services)
    quiet.queue = _EventsKept(services.queue)
    with services.session() as session:
        run = get_run(session, run_id)
        if run.status != "running":
            raise Conflict(f"regression run {run_id!r} is {run.status}, not running")
        cases = list_cases(session, session.get(Assistant, run.assistant_id))
    results: list[CaseResult] = []
    try:
        for case in cases:
            results.append(_run_case(quiet, case, run_id))
            log(results[-1].line())
            if not _save(services, run_id, results, len(cases)):
                break
        status, error = ("passed" if all(r.passed for r in results) else "failed"), None
    except Exception as exc:  # the run must not stay "running": record why it stopped
        logger.exception("regression run %s failed", run_id)
        status, error = "error", f"{type(exc).__name__}: {exc}"
    _save(services, run_id, results, len(cases), status, error)
    with services.session() as session:
        return session.get(RegressionRun, run_id)


def run_cases(services: Services, assistant_ref: str, log: Callable[[str], None] = print) -> RegressionRun:
    """Start and execute a run of the assistant's cases (by id or name); returns the finished run.
    ``NotFound``, ``InvalidRequest`` without cases, ``Conflict`` while another run is running."""
    with services.session() as session:
        run = start_run(session, registry.get_assistant(session, assistant_ref))
        session.commit()
    return execute_run(services, run.id, log)
