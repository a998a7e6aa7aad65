"""Scheduled website syncs: the ingest queue's periodic "website.schedule" starts the runs that are due, once each,
on SQLite and PostgreSQL; a run a dead worker left running is closed as failed."""
from __future__ import annotations

from datetime import timedelta

from atende.jobs import HueyQueue
from core.db import utcnow
from kb import registry, websites
from kb.models import KnowledgeBase, WebsiteSyncRun


def _source(services, hours: float):
    with services.session() as session:
        kb = registry.create_assistant(session, name="loja", embedding_model="all-minilm-l6-v2", chunk_size=128,
                                       chunk_overlap=16).knowledge_base
        source = websites.create_source(session, kb, websites.SourceSettings(
            url="https://loja.example/", sync_interval_hours=hours))
        session.commit()
        return source.id, source.next_sync_at


def test_due_sources_get_one_run_each_and_move_on_by_their_interval(services):
    daily, next_at = _source(services, 24)
    with services.session() as session:
        kb = session.get(KnowledgeBase, websites.get_source(session, daily).knowledge_base_id)
        manual = websites.create_source(session, kb, websites.SourceSettings(url="https://loja.example/faq",
                                                                             sync_interval_hours=0))
        session.commit()
        assert manual.next_sync_at is None  # manual syncs only
        assert websites.due_runs(session, utcnow()) == []  # not yet due
        later = next_at + timedelta(minutes=1)
        (run,) = websites.due_runs(session, later)
        assert (run.source_id, run.trigger, run.status) == (daily, "scheduled", "queued")
        assert websites.due_runs(session, later) == []  # claimed: another scheduler at the same time starts none
        assert websites.get_source(session, daily).next_sync_at == later + timedelta(hours=24)

        run.status, run.lease_until = "running", later  # its worker died
        session.commit()
        assert websites.due_runs(session, later + timedelta(seconds=1)) == []
        session.refresh(run)
        assert run.status == "failed" and run.error.startswith("interrupted")

        lost = websites.start_run(session, websites.get_source(session, daily))  # its job never reaches a worker
        session.commit()
        assert websites.due_runs(session, lost.created_at + timedelta(hours=1)) == []
        assert websites.active_run(session, websites.get_source(session, daily)) is not None
        websites.due_runs(session, lost.created_at + websites.QUEUED_FOR_AT_MOST + timedelta(seconds=1))
        session.refresh(lost)
        assert lost.status == "failed" and lost.error.startswith("never started")
        assert websites.active_run(session, websites.get_source(session, daily)) is None


def test_the_ingest_queue_schedules_and_runs_syncs(sqlite_services):
    services = sqlite_services
    services.queue = queue = HueyQueue.from_settings(services)
    source_id, _ = _source(services, 1)
    assert "website.schedule" in {task.name for task in queue.ingest_huey._registry.periodic_tasks}
    with services.session() as session:
        source = websites.get_source(session, source_id)
        source.next_sync_at = utcnow() - timedelta(seconds=1)
        session.commit()
    queue.website_schedule.call_local()
    with services.session() as session:
        (run,) = session.query(WebsiteSyncRun).all()
    assert [(t.name, t.args[0]) for t in queue.ingest_huey.pending()] == [("website.sync", run.id)]
