"""Recovery: work owed to customers that no queued job will do any more (its process died, its queue entry was
lost) is found in the database and queued again, at every worker's start and every minute (``atende.jobs``).

What is owed (``owed_work``), each compared with ``services.clock()``:

- **turns**: WhatsApp conversations with the AI on where (a) an inbound message no turn covered is older than
  ``whatsapp_debounce_max_s`` + ``recovery_margin_s`` (its scheduled turn should long have answered it), or
  (b) a turn's lease has expired (``conversations.turn_lease_until``: the turn deadline + the margin; its process
  died mid-turn), or (c) a turn's reply was logged but never handed to the outbox
  (``runtime.whatsapp.turns.unsent_replies``) and is older than the margin -- and no live lease says a turn is
  running. The turn is queued at once (``WorkQueue.schedule_turn``, delay 0).
- **ingestion jobs** ``processing`` past their lease (``ingest_jobs.lease_until``: ``ingest_timeout_s`` + the
  margin, renewed per re-embedded document; a job claimed before leases existed: its start + that much), moved
  back to ``queued`` by one conditional UPDATE and queued (``WorkQueue.enqueue_job``); a job with a live lease
  is left to the worker running it.
- **webhook posts** stored but not processed, without an error (a failed one is retried by its job), older
  than the margin (``WorkQueue.enqueue_webhook``).
- **media files** of customers left ``pending`` or stored-but-unread with no live claim
  (``runtime.whatsapp.media.owed_media``), queued again (``WorkQueue.enqueue_media``).
- **sends** the outbox has due (``runtime.whatsapp.outbound.due_conversations``), when asked: the periodic
  "whatsapp.send_due" task already sweeps them. That sweep also settles the parts whose sender died mid-send
  (their send lease ``message_parts.claimed_until`` expired: ``runtime.whatsapp.outbound.settle_dead_claims``).

Queuing twice is harmless, so any number of workers may sweep at once: a turn claims its lease
(``runtime.whatsapp.turns.claim_turn``), runs under ``runtime.turn.conversation_lock`` and answers only the
messages still pending (one reply per burst); a job, a post and a message part are each claimed by a
conditional UPDATE before they run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update

from kb.models import IngestJob
from runtime.models import Conversation, Message
from runtime.services import Services
from runtime.whatsapp.media import owed_media
from runtime.whatsapp.models import WebhookPost
from runtime.whatsapp.outbound import due_conversations
from runtime.whatsapp.turns import unsent_replies

log = logging.getLogger(__name__)


@dataclass
class OwedWork:
    """What a sweep found owed (and queued): conversation ids needing a turn, job ids, post ids and the
    conversations with sends due."""

    turns: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    posts: list[str] = field(default_factory=list)
    sends: list[str] = field(default_factory=list)
    media: list[str] = field(default_factory=list)  # customers' media files to fetch or read

    def __len__(self) -> int:
        return len(self.turns) + len(self.jobs) + len(self.posts) + len(self.sends) + len(self.media)


def owed_turns(services: Services, now: datetime) -> list[str]:
    """The WhatsApp conversations owed a turn (see the module's docstring), oldest owed first."""
    s = services.settings
    margin = timedelta(seconds=s.recovery_margin_s)
    late = now - timedelta(seconds=max(s.whatsapp_debounce_s, s.whatsapp_debounce_max_s)) - margin
    no_live_lease = or_(Conversation.turn_lease_until.is_(None), Conversation.turn_lease_until <= now)
    with services.session() as session:
        pending = session.execute(
            select(Message.conversation_id, func.min(Message.created_at))
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Conversation.channel == "whatsapp", Conversation.ai_enabled.is_(True), no_live_lease,
                   Message.direction == "inbound", Message.status == "received")
            .group_by(Message.conversation_id)
            .having(func.min(Message.created_at) <= late)
        ).all()
        expired = session.execute(
            select(Conversation.id, Conversation.turn_lease_until)
            .where(Conversation.channel == "whatsapp", Conversation.turn_lease_until <= now)
        ).all()
    owed = {cid: since for cid, since in pending}
    for cid, until in expired:
        owed.setdefault(cid, until)
    unsent = set(unsent_replies(services))
    if unsent:
        with services.session() as session:
            for cid, created_at, until in session.execute(
                    select(Message.conversation_id, Message.created_at, Conversation.turn_lease_until)
                    .join(Conversation, Conversation.id == Message.conversation_id)
                    .where(Message.id.in_(unsent), Message.created_at <= now - margin)):
                if until is None or until <= now:
                    owed.setdefault(cid, created_at)
    return sorted(owed, key=lambda cid: owed[cid])


def stuck_jobs(services: Services, now: datetime) -> list[str]:
    """Move the ``processing`` ingestion jobs past their lease back to ``queued`` (one conditional UPDATE each,
    so of concurrent sweeps one takes a job); returns their ids."""
    before = now - timedelta(seconds=services.settings.ingest_timeout_s + services.settings.recovery_margin_s)
    expired = or_(IngestJob.lease_until <= now, and_(IngestJob.lease_until.is_(None), IngestJob.started_at <= before))
    taken: list[str] = []
    with services.session() as session:
        for job_id in session.scalars(select(IngestJob.id).where(IngestJob.status == "processing", expired)):
            if session.execute(update(IngestJob).where(IngestJob.id == job_id, IngestJob.status == "processing",
                                                       expired)
                               .values(status="queued", lease_until=None)).rowcount:
                taken.append(job_id)
        session.commit()
    return taken


def unprocessed_posts(services: Services, now: datetime) -> list[str]:
    """Webhook posts stored more than ``recovery_margin_s`` ago and not processed, none failed."""
    before = now - timedelta(seconds=services.settings.recovery_margin_s)
    with services.session() as session:
        return list(session.scalars(select(WebhookPost.id).where(
            WebhookPost.processed.is_(False), WebhookPost.error.is_(None), WebhookPost.received_at <= before)))


def owed_work(services: Services, *, sends: bool = False) -> OwedWork:
    """Find what is owed now (``services.clock()``), taking back the stuck jobs (``stuck_jobs``); queues nothing."""
    now = services.clock()
    return OwedWork(turns=owed_turns(services, now), jobs=stuck_jobs(services, now),
                    posts=unprocessed_posts(services, now), sends=due_conversations(services) if sends else [],
                    media=owed_media(services, now))


def recover(services: Services, *, sends: bool = False) -> OwedWork:
    """The recovery sweep: queue what ``owed_work`` finds through ``services.queue`` (turns and sends at once);
    safe to run in every worker at any time. Returns what was queued."""
    owed = owed_work(services, sends=sends)
    for post_id in owed.posts:
        services.queue.enqueue_webhook(post_id)
    for conversation_id in owed.turns:
        services.queue.schedule_turn(conversation_id, 0)
    for job_id in owed.jobs:
        services.queue.enqueue_job(job_id)
    for conversation_id in owed.sends:
        services.queue.schedule_send(conversation_id, 0)
    for media_id in owed.media:
        services.queue.enqueue_media(media_id, 0)
    if owed:
        log.warning("recovery: queued %d turn(s), %d ingestion job(s), %d webhook post(s), %d send(s), "
                    "%d media file(s)", len(owed.turns), len(owed.jobs), len(owed.posts), len(owed.sends),
                    len(owed.media))
    return owed
