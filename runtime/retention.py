"""Retention rules (LGPD: data kept no longer than needed): an assistant's conversations with no message for
``AssistantConfig.retention.conversations_days`` are anonymised or deleted (``runtime.privacy``), and raw WhatsApp
webhook bodies are emptied once processed and old enough (the strictest rule among the assistants whose numbers a
body names, else ``Settings.webhook_body_retention_days``; never later than those assistants' conversations).

``sweep`` runs from the customer queue's scheduler (``atende.jobs``, lowest priority) and does a bounded batch per
call, so a large backlog is worked off over several runs without holding a worker for long; ``atende retention run``
runs it until nothing is due. Each run that changed something is recorded (:class:`RetentionRun`: when, which
assistant, the rule, the rows per table), naming no customer.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import JSON, ForeignKey, Integer, String, select, tuple_
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base, UTCDateTime, new_id, utcnow
from kb.models import Assistant
from runtime.config import AssistantConfig
from runtime.models import Conversation, Message
from runtime.privacy import ANONYMOUS, anonymise_conversations, forget, remove_conversations, unshared_files
from runtime.services import Services
from runtime.whatsapp.models import WebhookPost, WhatsAppSender
from runtime.whatsapp.webhook import phone_number_ids

CONVERSATIONS_PER_RUN = 200
POSTS_PER_PAGE = 1000  # webhook bodies looked at per page, and emptied per run at most
PAGES_PER_RUN = 10
WEBHOOK_BODIES = "webhook_bodies"  # a run's ``rule`` when it emptied webhook bodies


class RetentionRun(Base):
    """A retention run that changed something: its rule (``anonymise``, ``delete`` or ``webhook_bodies``), the
    assistant (None for webhook bodies), the cut-off (what was older went) and the rows per table."""

    __tablename__ = "retention_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    assistant_id: Mapped[str | None] = mapped_column(ForeignKey("assistants.id", ondelete="SET NULL"), nullable=True)
    rule: Mapped[str] = mapped_column(String(20))
    cutoff: Mapped[datetime] = mapped_column(UTCDateTime)
    counts: Mapped[dict] = mapped_column(JSON, default=dict)
    items: Mapped[int] = mapped_column(Integer, default=0)  # conversations or webhook bodies


@dataclass(frozen=True)
class SweepResult:
    """What one sweep did: the runs recorded, and whether work was left for the next sweep (a batch was full)."""

    runs: list[RetentionRun]
    more: bool


def sweep(services: Services, now: datetime | None = None) -> SweepResult:
    """Apply every retention rule once, a batch at most per rule (see the module's docstring)."""
    now = now or services.clock()
    runs: list[RetentionRun] = []
    more = False
    with services.session() as session:
        configs = {a.id: AssistantConfig.model_validate(a.config or {}) for a in session.scalars(select(Assistant))}
    for assistant_id, config in configs.items():
        days = config.retention.conversations_days
        if days:
            run, full = _conversations(services, assistant_id, config.retention.action, now - timedelta(days=days))
            runs += [run] if run else []
            more |= full
    run, full = _webhook_bodies(services, configs, now)
    runs += [run] if run else []
    return SweepResult(runs, more or full)


def run_until_done(services: Services, now: datetime | None = None) -> list[RetentionRun]:
    """Sweep until no rule has anything due (``atende retention run``)."""
    runs: list[RetentionRun] = []
    while True:
        result = sweep(services, now)
        runs += result.runs
        if not result.more:
            return runs


def _conversations(services: Services, assistant_id: str, action: str,
                   cutoff: datetime) -> tuple[RetentionRun | None, bool]:
    newer = select(Message.id).where(Message.conversation_id == Conversation.id, Message.created_at >= cutoff)
    due = (select(Conversation.id)
           .where(Conversation.assistant_id == assistant_id, Conversation.created_at < cutoff, ~newer.exists())
           .order_by(Conversation.created_at).limit(CONVERSATIONS_PER_RUN)
           .with_for_update(skip_locked=True))  # PostgreSQL: two workers' sweeps take different conversations
    if action == "anonymise":
        due = due.where(Conversation.customer_id.not_like(f"{ANONYMOUS}%"))
    with services.session() as session:
        ids = list(session.scalars(due))
        if not ids:
            return None, False
        if action == "delete":
            counts, files = remove_conversations(session, ids)
        else:
            counts, files = anonymise_conversations(session, ids, services.settings.secret_key or "")
        session.flush()
        files = unshared_files(session, files)
        run = _record(session, assistant_id, action, cutoff, {**counts, "files": len(files)}, len(ids))
        session.commit()
    forget(services, files)
    return run, len(ids) == CONVERSATIONS_PER_RUN


def _webhook_bodies(services: Services, configs: dict[str, AssistantConfig],
                    now: datetime) -> tuple[RetentionRun | None, bool]:
    default = services.settings.webhook_body_retention_days or None
    with services.session() as session:
        days_of = {}  # phone number id -> the days its bodies are kept (None: forever)
        for number, assistant_id in session.execute(select(WhatsAppSender.phone_number_id, WhatsAppSender.assistant_id)):
            rule = configs[assistant_id].retention if assistant_id in configs else None
            days_of[number] = _strictest(default if rule is None or rule.webhook_bodies_days is None
                                         else rule.webhook_bodies_days, rule and rule.conversations_days)
        kept = [d for d in (default, *days_of.values()) if d]
        if not kept:
            return None, False
        oldest_cutoff = now - timedelta(days=min(kept))
        emptied, after, full = 0, None, False
        # pages from the oldest: a body older than the strictest rule may be kept longer by its own (skipped)
        for _ in range(PAGES_PER_RUN):
            page = select(WebhookPost).where(WebhookPost.processed.is_(True), WebhookPost.purged_at.is_(None),
                                             WebhookPost.received_at < oldest_cutoff)
            if after is not None:
                page = page.where(tuple_(WebhookPost.received_at, WebhookPost.id) > after)
            posts = list(session.scalars(page.order_by(WebhookPost.received_at, WebhookPost.id).limit(POSTS_PER_PAGE)
                                         .with_for_update(skip_locked=True)))
            for post in posts:
                numbers = phone_number_ids(post.body)
                days = _strictest(*(days_of.get(n, default) for n in numbers)) if numbers else default
                if days and post.received_at < now - timedelta(days=days):
                    post.body, post.purged_at = {}, now
                    emptied += 1
            full = len(posts) == POSTS_PER_PAGE
            if not full or emptied >= POSTS_PER_PAGE:
                break
            after = (posts[-1].received_at, posts[-1].id)
        if not emptied:
            return None, False
        run = _record(session, None, WEBHOOK_BODIES, oldest_cutoff, {"whatsapp_webhook_posts": emptied}, emptied)
        session.commit()
    return run, full


def _strictest(*days: int | None) -> int | None:
    return min((d for d in days if d), default=None)


def _record(session: Session, assistant_id: str | None, rule: str, cutoff: datetime, counts: dict,
            items: int) -> RetentionRun:
    run = RetentionRun(assistant_id=assistant_id, rule=rule, cutoff=cutoff, counts=counts, items=items)
    session.add(run)
    session.flush()
    return run


def recent_runs(session: Session, limit: int = 100) -> list[RetentionRun]:
    """The newest retention runs first."""
    return list(session.scalars(select(RetentionRun).order_by(RetentionRun.at.desc()).limit(limit)))
