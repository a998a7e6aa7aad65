"""Syncing a website source into its knowledge base: fetch, extract, and ingest each page like an upload.

A run (``run_sync``) reads robots.txt, then walks the site -- the sitemap's URLs, or links breadth-first from the
start page within the depth cap -- up to the page cap, pages filtered by the source's include/exclude patterns,
robots.txt and the site's host. Each page's main content (``ingest.webpage``) is registered as a version of the
document named by its URL (``kb.registry.register_page``): content unchanged after extraction is no new version
and re-embeds nothing; a new or changed page is ingested at once by the ordinary job (``ingest.pipeline.run_job``:
parse, chunk, embed, then swapped in atomically). A page is asked for with the validators (ETag, Last-Modified) of
the response its ready document was made from: a 304 is unchanged without a download (a crawl follows the links it
had). A page whose ``<link rel="canonical">`` names a variant of it (the same path with another query, or http
for https) is taken as that URL (stored once); a canonical naming another page is ignored. A page answering
404/410, or now asking not to be indexed, is removed from search. Pages of the source the run did not see are
removed at the end, but only when the run saw the whole site (no site error, the page cap not reached): a run
that fails part-way has swapped in what it finished and removed nothing else.

The run row is the record (``kb.models.WebsiteSyncRun``): counts updated page by page (progress), failures with
their reasons, the final status: ``succeeded``, ``partial`` (some pages failed) or ``failed`` (the site itself).
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import exists, select, update
from sqlalchemy.orm import aliased
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError
from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from core.errors import DomainError, InvalidRequest
from core.settings import Settings
from ingest.crawl import (
    Outcome,
    Page,
    PageFailed,
    PageGone,
    PageUnchanged,
    Site,
    SiteError,
    normalize,
    same_site,
    wanted,
)
from ingest.errors import IngestError
from ingest.pipeline import IngestServices, run_job
from ingest.webpage import extract_page
from kb import websites
from kb.models import Document, KnowledgeBase, WebsitePage, WebsiteSource, WebsiteSyncRun
from kb.registry import register_page

log = logging.getLogger(__name__)
MAX_FAILURES_KEPT = 200  # failures listed in a run (all are counted)
LEASE_S = 600.0  # a running run's lease, renewed at each page: past it the scheduler takes the run as dead


def check_source(settings: Settings, url: str, kind: str) -> None:
    """Refuse a source that cannot work, before it is stored (``InvalidRequest``, a 422): the site unreachable,
    robots.txt forbidding the URL, the start page failing, a redirect off-site, a sitemap that is not XML."""
    start = normalize(url)
    if start is None:
        raise InvalidRequest("url must be an http:// or https:// address with a host")
    site = Site(start, settings, interval_s=0.0)
    try:
        site.read_robots()
        if not site.allowed(start):
            raise InvalidRequest(f"robots.txt of {start} forbids atende to fetch it")
        if kind == "sitemap":  # its first file only: an index's children are the run's (a request is no crawl)
            children, urls = site.sitemap_file(start)
            if not urls and not children:
                raise InvalidRequest(f"the sitemap {start} lists no pages")
            return
        outcome = site.page(start)
    except SiteError as exc:
        raise InvalidRequest(f"{start}: {exc}") from None
    if isinstance(outcome, PageGone):
        raise InvalidRequest(f"{start} answered HTTP {outcome.status}")
    if isinstance(outcome, PageFailed):
        raise InvalidRequest(f"{start}: {outcome.reason}")


class _Recorder:
    """Keeps the run's counts and failures, committed page by page (the dashboard's progress)."""

    def __init__(self, session: Session, run: WebsiteSyncRun) -> None:
        self.session, self.run = session, run
        self.failures: list[dict[str, str]] = []

    def count(self, what: str, url: str | None = None, reason: str | None = None) -> None:
        setattr(self.run, f"pages_{what}", getattr(self.run, f"pages_{what}") + 1)
        if reason is not None and url is not None:
            self.failures.append({"url": url, "reason": reason})
            self.run.failures = self.failures[:MAX_FAILURES_KEPT]
        self.run.lease_until = utcnow() + timedelta(seconds=LEASE_S)
        self.session.commit()

    def renew(self) -> None:
        """Renew the run's lease (before each request: robots.txt's Crawl-delay and many sitemap files can keep a run
        from its first page for longer than the lease)."""
        self.run.lease_until = utcnow() + timedelta(seconds=LEASE_S)
        self.session.commit()


def run_sync(services: IngestServices, run_id: str) -> WebsiteSyncRun | None:
    """Run one queued sync run to its end; never raises for the site's or a page's failure (the run records it).
    Returns the run (None if it no longer exists)."""
    with services.session() as session:
        run = session.get(WebsiteSyncRun, run_id)
        if run is None or run.status != "queued":
            return run
        # the source's row locked (PostgreSQL) so that of two runs of one source claimed at once, one runs: two
        # requests can each queue one (``kb.websites.start_run`` checks, then inserts)
        if session.scalar(select(WebsiteSource.id).where(WebsiteSource.id == run.source_id).with_for_update()) is None:
            session.commit()
            return run
        other = aliased(WebsiteSyncRun)
        claimed = session.execute(
            update(WebsiteSyncRun).where(
                WebsiteSyncRun.id == run_id, WebsiteSyncRun.status == "queued",
                ~exists().where(other.source_id == WebsiteSyncRun.source_id, other.status == "running"))
            .values(status="running", started_at=utcnow(), lease_until=utcnow() + timedelta(seconds=LEASE_S))
        ).rowcount
        if not claimed:  # another run of the source is running: this one is not needed
            session.execute(update(WebsiteSyncRun).where(WebsiteSyncRun.id == run_id, WebsiteSyncRun.status == "queued")
                            .values(status="failed", finished_at=utcnow(),
                                    error="not started: another sync of this website was running"))
        session.commit()
        session.refresh(run)
        if not claimed:
            return run
        source = session.get_one(WebsiteSource, run.source_id)
        recorder = _Recorder(session, run)
        try:
            complete, seen = _walk(services, session, source, recorder)
            if complete:
                for page in websites.pages_of(session, source):
                    if page.url not in seen and websites.remove_page(session, services.vectors, services.blobs, page,
                                                                     services.document_changed):
                        recorder.count("removed")
            run.status = "partial" if run.pages_failed else "succeeded"
        except SiteError as exc:
            run.status, run.error = "failed", str(exc)
        except Exception as exc:  # a bug of ours, or the database/vector store gone: the run ends, failed
            session.rollback()
            if session.scalar(select(WebsiteSyncRun.id).where(WebsiteSyncRun.id == run_id)) is None:
                # the source (or its knowledge base) was deleted mid-sync, its runs with it
                log.info("website sync run %s ended: its source was deleted", run_id)
                return None
            log.exception("website sync run %s failed", run_id)
            run.status, run.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        run.finished_at, run.lease_until = utcnow(), None
        try:
            session.commit()
            session.refresh(run)
        except (StaleDataError, ObjectDeletedError):  # the source was deleted as the run ended
            session.rollback()
            return None
        session.expunge(run)
        return run


def _walk(services: IngestServices, session: Session, source: WebsiteSource, recorder: _Recorder
          ) -> tuple[bool, set[str]]:
    """Fetch and take every page of the run; returns (whether the whole site was seen, the URLs seen). A run that
    reached the page cap, or got no page at all (robots.txt now forbidding everything, every page failing), did not
    see the whole site: nothing is removed for being absent."""
    start = normalize(source.url)
    if start is None:
        raise SiteError(f"the source's URL {source.url!r} is not a usable http(s) address")
    site = Site(start, services.settings, source.request_interval_s, on_request=recorder.renew)
    site.read_robots()
    kb = session.get_one(KnowledgeBase, source.knowledge_base_id)
    walk = _Walk(site, source, start, recorder)
    fetched = False
    for outcome in walk.sitemap() if source.kind == "sitemap" else walk.crawl():
        fetched = fetched or isinstance(outcome, Page | PageUnchanged)
        _take(services, session, kb, source, outcome, recorder)
    return fetched and not walk.capped, walk.seen


class _Walk:
    """The pages of one run, fetched one at a time as they are taken, at most ``max_pages`` of them (``capped``
    when more were left)."""

    def __init__(self, site: Site, source: WebsiteSource, start: str, recorder: _Recorder) -> None:
        self.site, self.source, self.start, self.recorder = site, source, start, recorder
        self.seen: set[str] = set()
        self.capped = False

    def _full(self) -> bool:
        return len(self.seen) >= self.source.max_pages

    def _plan(self, planned: int) -> None:
        self.recorder.run.pages_planned = min(planned, self.source.max_pages)
        self.recorder.session.commit()

    def _fetch(self, url: str) -> Outcome | None:
        """The page at ``url``, or None when it is one already taken (two URLs redirecting to one page, or naming
        one canonical URL). A page whose ``<link rel="canonical">`` names a variant of it on the site (that robots.txt and
        the patterns let in) is taken as that URL: the same content under two URLs is stored once."""
        if not self.site.allowed(url):
            outcome: Outcome = PageFailed(url, "robots.txt disallows it")
        else:
            known = self._known(url)
            outcome = self.site.page(url, known.etag, known.last_modified) if known else self.site.page(url)
            if isinstance(outcome, PageUnchanged) and known:
                outcome = replace(outcome, links=tuple(known.links or ()))
        if (isinstance(outcome, Page) and outcome.canonical and not outcome.noindex
                and self.site.allowed(outcome.canonical)
                and wanted(outcome.canonical, self.source.include, self.source.exclude)):
            # (not a noindex variant: it would remove the canonical page); the validators are the other URL's
            outcome = replace(outcome, url=outcome.canonical, etag=None, last_modified=None)
        if outcome.url in self.seen:
            return None
        self.seen.add(outcome.url)
        return outcome

    def _known(self, url: str) -> WebsitePage | None:
        """The page taken from ``url`` before with validators, when its document is ready (a request conditional
        on a copy that never became searchable would keep it so)."""
        return self.recorder.session.scalar(
            select(WebsitePage).join(Document, Document.id == WebsitePage.document_id).where(
                WebsitePage.source_id == self.source.id, WebsitePage.url == url, Document.status == "ready",
                (WebsitePage.etag.is_not(None)) | (WebsitePage.last_modified.is_not(None))))

    def sitemap(self) -> Iterator[Outcome]:
        urls, complete = self.site.sitemap_urls(self.start)
        self.capped = not complete  # a page missing from a list cut short is not removed
        todo = [u for u in urls if same_site(u, self.start) and wanted(u, self.source.include, self.source.exclude)]
        self._plan(len(todo))
        for url in todo:
            if self._full():
                self.capped = True
                return
            outcome = self._fetch(url)
            if outcome is not None:
                yield outcome

    def crawl(self) -> Iterator[Outcome]:
        """Breadth first from the start page (always fetched and followed; taken if the patterns want it), links
        followed ``max_depth`` deep; a page the patterns exclude is neither fetched nor followed."""
        queue, planned = deque([(self.start, 0)]), {self.start}
        while queue:
            if self._full():
                self.capped = True
                return
            url, depth = queue.popleft()
            outcome = self._fetch(url)
            if outcome is None:
                continue
            if isinstance(outcome, Page | PageUnchanged) and depth < self.source.max_depth:
                for link in outcome.links:
                    # a link robots.txt disallows is left without a word (a listed page is recorded)
                    if link in planned or not wanted(link, self.source.include, self.source.exclude):
                        continue
                    if len(planned) > self.source.max_pages:  # no more than the cap is ever fetched: an endless
                        self.capped = True  # site's links are not kept (nor is the site complete)
                        break
                    if self.site.allowed(link):
                        planned.add(link)
                        queue.append((link, depth + 1))
            self._plan(len(planned))
            if url != self.start or wanted(url, self.source.include, self.source.exclude):
                yield outcome
            else:
                self.seen.discard(outcome.url)  # fetched for its links only


def _take(services: IngestServices, session: Session, kb: KnowledgeBase, source: WebsiteSource, outcome: Outcome,
          recorder: _Recorder) -> None:
    """One page's outcome: ingested (added, changed or unchanged), removed (404/410) or failed, and counted."""
    recorder.count("seen")
    page = session.scalar(select(WebsitePage).where(WebsitePage.source_id == source.id,
                                                    WebsitePage.url == outcome.url))
    if isinstance(outcome, PageGone):
        if page is not None and websites.remove_page(session, services.vectors, services.blobs, page,
                                                     services.document_changed):
            recorder.count("removed")
        return
    if isinstance(outcome, PageFailed):
        recorder.count("failed", outcome.url, outcome.reason)
        return
    if isinstance(outcome, PageUnchanged):  # 304 to the validators of its ready document
        if page is not None:
            page.last_seen_at = utcnow()
        recorder.count("unchanged")
        return
    if outcome.noindex:  # no longer searchable if it was
        if page is not None and websites.remove_page(session, services.vectors, services.blobs, page,
                                                     services.document_changed):
            recorder.count("removed")
        recorder.count("failed", outcome.url, "the page asks not to be indexed (robots meta noindex)")
        return
    try:
        markdown = extract_page(outcome.html, outcome.url).markdown.encode("utf-8")
        upload = register_page(session, services.blobs, kb, outcome.url, markdown)
    except (IngestError, DomainError) as exc:
        session.rollback()
        recorder.count("failed", outcome.url, str(exc))
        return
    existed = upload.document.current_version is not None
    if page is None:
        page = WebsitePage(id=new_id(), source_id=source.id, url=outcome.url)
        session.add(page)
    page.document_id, page.last_seen_at = upload.document.id, utcnow()
    session.commit()
    if upload.job is None:
        _validators(page, outcome)
        recorder.count("unchanged")
        return
    job = run_job(services, upload.job.id)
    if job.status != "ready":  # the validators stay those of the version still current
        recorder.count("failed", outcome.url, job.error or job.status)
        return
    _validators(page, outcome)
    recorder.count("changed" if existed else "added")


def _validators(page: WebsitePage, outcome: Page) -> None:
    """The response the page's current document was made from: its validators and links (committed by the count)."""
    page.etag, page.last_modified, page.links = outcome.etag, outcome.last_modified, list(outcome.links)

