"""Website sources end to end: a site built from ../shared/data/docs/html, served on loopback (let through the address
guard by the explicit ``website_allow_private`` setting), synced into a real knowledge base (real trafilatura,
unstructured, llama-index, MiniLM, chromadb, SQLite and PostgreSQL), changed, and synced again."""
from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update

from benchmarks.website_sync import LocalSite, local_site, page_html
from core.errors import InvalidRequest
from ingest.website_sync import check_source, run_sync
from kb import registry, search, websites
from kb.models import Document, DocumentVersion, KnowledgeBase, WebsiteSyncRun
from tests.conftest import requires_shared, shared_doc

pytestmark = requires_shared

HOURS = ("<h1>Horários de funcionamento</h1><p>A loja abre de segunda a sexta das {open} às 18h, e aos sábados "
         "das {open} às 13h. Aos domingos e feriados a loja fica fechada.</p><h2>Atendimento telefônico</h2>"
         "<p>O telefone de atendimento funciona no mesmo horário da loja, pelo número (11) 4002-8922.</p>")
DELIVERY = ("<h1>Entrega</h1><p>Entregamos em toda a cidade em até dois dias úteis. A entrega é gratuita para "
            "compras acima de 150 reais; abaixo disso a taxa de entrega é de 12 reais.</p>")
COUNTS = ("seen", "added", "changed", "unchanged", "removed", "failed")


def counts(run: WebsiteSyncRun) -> dict[str, int]:
    return {k: getattr(run, f"pages_{k}") for k in COUNTS}


def build_site(site: LocalSite) -> None:
    """Four pages: the shop's hours (in a menu, header and footer), and the three shared HTML documents as they
    are; a robots.txt that keeps atende out of /private/; and a sitemap of the four."""
    links = ["/index.html", "/horarios.html", "/ideias.html", "/relatorio.html", "/cp1252.html", "/private/segredo.html"]
    site.write("/index.html", page_html("Loja Exemplo", "<h1>Loja Exemplo</h1><p>Bem-vindo à nossa loja.</p>", links))
    site.write("/horarios.html", page_html("Horários", HOURS.format(open="9h"), links))
    site.write("/ideias.html", shared_doc("html/ideas-page.html").read_bytes())
    site.write("/relatorio.html", shared_doc("html/example-10k-1p.html").read_bytes())
    site.write("/cp1252.html", shared_doc("html/fake-html-cp1252.html").read_bytes())
    site.write("/private/segredo.html", page_html("Segredo", "<p>O código do cofre é 1234.</p>", links))
    site.write("/robots.txt", "User-agent: *\nDisallow: /private/\n")
    site.write_sitemap(["/horarios.html", "/ideias.html", "/relatorio.html", "/cp1252.html"])


def new_source(services, kind: str = "sitemap", path: str = "/sitemap.xml", site: LocalSite | None = None,
               **overrides):
    with services.session() as session:
        kb = registry.create_assistant(session, name=f"loja-{uuid.uuid4().hex[:8]}", embedding_model="all-minilm-l6-v2",
                                       chunk_size=128, chunk_overlap=16).knowledge_base
        settings = websites.SourceSettings(url=f"{site.url}{path}", kind=kind, request_interval_s=0.0,
                                           **overrides)
        source = websites.create_source(session, kb, settings)
        session.commit()
        return kb.id, source.id


def sync(services, source_id: str) -> WebsiteSyncRun:
    with services.session() as session:
        run = websites.start_run(session, websites.get_source(session, source_id))
        session.commit()
        run_id = run.id
    return run_sync(services, run_id)


def find(services, kb_id: str, query: str, top_k: int = 5):
    from kb.models import KnowledgeBase

    with services.session() as session:
        return search.search(services, session, session.get(KnowledgeBase, kb_id), query, top_k)


@pytest.fixture
def site(tmp_path):
    with local_site(tmp_path / "site") as s:
        build_site(s)
        yield s


def test_sync_then_edit_add_remove_resync(services, site):
    services.settings.website_allow_private = True
    kb_id, source_id = new_source(services, site=site)

    first = sync(services, source_id)
    assert first.status == "succeeded", first.error
    assert counts(first) == {"seen": 4, "added": 4, "changed": 0, "unchanged": 0, "removed": 0, "failed": 0}
    assert first.pages_planned == 4 and first.failures == []
    hours_url, report_url = f"{site.url}/horarios.html", f"{site.url}/relatorio.html"
    before = find(services, kb_id, "A que horas a loja abre no sábado?")
    assert before[0].filename == hours_url and "das 9h às 13h" in before[0].text
    assert before[0].section.startswith("Horários de funcionamento")
    galaxy = find(services, kb_id, "Galaxy Gaming Nevada Las Vegas Cameron Street")
    assert galaxy[0].filename == report_url
    with services.session() as session:  # the menu, the header and the footer were left out
        texts = [c.text for c in services.vectors.chunks(
            f"kb_{kb_id}", [v.key for v in session.scalars(select(DocumentVersion))])[0]]
    assert texts and not any("Todos os direitos reservados" in t or "Trabalhe conosco" in t for t in texts)
    assert any("O João comprou um café por 2,50 €" in t for t in texts)  # cp1252 decoded
    print(f"\nfirst sync: {counts(first)}; 'A que horas a loja abre no sábado?' -> {before[0].filename} "
          f"[{before[0].section}] {before[0].text[:90]!r}")

    site.write("/horarios.html", page_html("Horários", HOURS.format(open="8h"), []))  # the edit
    site.write("/entrega.html", page_html("Entrega", DELIVERY, []))  # the page added
    site.remove("/relatorio.html")  # ... and the page removed, gone from the sitemap too
    site.write_sitemap(["/horarios.html", "/ideias.html", "/cp1252.html", "/entrega.html"])
    second = sync(services, source_id)
    assert second.status == "succeeded", second.error
    assert counts(second) == {"seen": 4, "added": 1, "changed": 1, "unchanged": 2, "removed": 1, "failed": 0}

    after = find(services, kb_id, "A que horas a loja abre no sábado?")
    assert after[0].filename == hours_url and "das 8h às 13h" in after[0].text
    assert not any("9h" in s.text for s in after)
    gone = find(services, kb_id, "Galaxy Gaming Nevada Las Vegas Cameron Street", top_k=20)
    assert all(s.filename != report_url and "Galaxy Gaming" not in s.text for s in gone)
    delivery = find(services, kb_id, "Quanto custa a entrega?")
    assert delivery[0].filename == f"{site.url}/entrega.html" and "12 reais" in delivery[0].text
    with services.session() as session:
        docs = {d.filename: d for d in session.scalars(select(Document))}
        assert report_url not in docs
        assert docs[hours_url].current_version == 2  # a new version swapped in
        assert docs[f"{site.url}/ideias.html"].current_version == 1  # unchanged: no new version, nothing re-embedded
    print(f"second sync: {counts(second)}; after: {after[0].filename} {after[0].text[:90]!r}; "
          f"'Galaxy Gaming' now finds {sorted({s.filename for s in gone})}")


def test_crawl_follows_links_within_depth_and_honours_robots_and_patterns(sqlite_services, site):
    services = sqlite_services
    services.settings.website_allow_private = True
    kb_id, source_id = new_source(services, kind="crawl", path="/index.html", site=site, exclude=["/cp1252*"])
    run = sync(services, source_id)
    assert run.status == "succeeded", (run.error, run.failures)
    with services.session() as session:
        names = sorted(d.filename.removeprefix(site.url) for d in session.scalars(select(Document)))
    # the start page is taken too; /private/ is never asked for (robots.txt), /cp1252* excluded by the pattern
    assert names == ["/horarios.html", "/ideias.html", "/index.html", "/relatorio.html"]
    assert not any(p.startswith(("/private", "/cp1252")) for p in site.requests)
    assert counts(run) == {"seen": 4, "added": 4, "changed": 0, "unchanged": 0, "removed": 0, "failed": 0}

    shallow_kb, shallow = new_source(services, kind="crawl", path="/index.html", site=site, max_depth=0)
    assert counts(sync(services, shallow))["added"] == 1  # depth 0: the start page alone
    capped_kb, capped = new_source(services, kind="crawl", path="/index.html", site=site, max_pages=2)
    assert counts(sync(services, capped))["seen"] == 2


def test_a_run_that_fails_part_way_leaves_what_was_current(sqlite_services, site):
    services = sqlite_services
    services.settings.website_allow_private = True
    kb_id, source_id = new_source(services, site=site)
    assert sync(services, source_id).status == "succeeded"

    site.write("/horarios.html", page_html("Horários", HOURS.format(open="8h"), []))
    site.overrides["/ideias.html"] = (500, {"Content-Type": "text/html"}, b"<h1>Internal error</h1>")
    site.overrides["/cp1252.html"] = (302, {"Location": "https://elsewhere.example/cp1252.html"}, b"")
    site.overrides["/relatorio.html"] = (200, {"Content-Type": "text/html"}, b"<p>" + b"x" * 2_000_000 + b"</p>")
    services.settings.website_max_page_mb = 1.0
    run = sync(services, source_id)
    assert run.status == "partial"
    assert counts(run) == {"seen": 4, "added": 0, "changed": 1, "unchanged": 0, "removed": 0, "failed": 3}
    reasons = {f["url"].removeprefix(site.url): f["reason"] for f in run.failures}
    assert reasons == {"/ideias.html": "HTTP 500",
                       "/cp1252.html": "redirected off-site to https://elsewhere.example/cp1252.html",
                       "/relatorio.html": "the page is over the size cap of 1 MB"}
    # the failed pages keep their current version, searchable
    assert find(services, kb_id, "Galaxy Gaming Nevada Las Vegas")[0].filename == f"{site.url}/relatorio.html"
    assert "8h" in find(services, kb_id, "A que horas a loja abre no sábado?")[0].text

    site.overrides["/sitemap.xml"] = (200, {"Content-Type": "text/html"}, b"<html><body>Not found</body>")
    broken = sync(services, source_id)  # the site itself fails: nothing removed
    assert broken.status == "failed" and broken.error.startswith("the sitemap is not XML")
    assert broken.pages_seen == 0
    assert find(services, kb_id, "Galaxy Gaming Nevada Las Vegas")[0].filename == f"{site.url}/relatorio.html"


def test_gone_pages_are_removed_and_robots_forbidding_everything_removes_nothing(sqlite_services, site):
    services = sqlite_services
    services.settings.website_allow_private = True
    kb_id, source_id = new_source(services, site=site)
    assert sync(services, source_id).pages_added == 4
    site.remove("/ideias.html")  # still in the sitemap, but 404
    run = sync(services, source_id)
    assert counts(run) == {"seen": 4, "added": 0, "changed": 0, "unchanged": 3, "removed": 1, "failed": 0}

    site.write("/robots.txt", "User-agent: atende\nDisallow: /\n")
    forbidden = sync(services, source_id)
    assert forbidden.status == "partial" and forbidden.pages_failed == 4 and forbidden.pages_removed == 0
    assert {f["reason"] for f in forbidden.failures} == {"robots.txt disallows it"}
    with services.session() as session:
        assert len(list(session.scalars(select(Document)))) == 3  # still searchable


def test_sources_are_checked_before_they_are_stored(sqlite_services, site, tmp_path):
    settings = sqlite_services.settings
    with pytest.raises(InvalidRequest, match=r"refused: 127.0.0.1 is a loopback address"):
        check_source(settings, f"{site.url}/", "crawl")  # the address guard, without the explicit setting
    settings.website_allow_private = True
    check_source(settings, f"{site.url}/", "crawl")
    check_source(settings, f"{site.url}/sitemap.xml", "sitemap")
    with pytest.raises(InvalidRequest, match="the sitemap is not XML"):
        check_source(settings, f"{site.url}/horarios.html", "sitemap")
    with pytest.raises(InvalidRequest, match="answered HTTP 404"):
        check_source(settings, f"{site.url}/missing.html", "crawl")
    with pytest.raises(InvalidRequest, match="robots.txt of .* forbids atende"):
        check_source(settings, f"{site.url}/private/segredo.html", "crawl")
    site.overrides["/away.html"] = (301, {"Location": "https://elsewhere.example/"}, b"")
    with pytest.raises(InvalidRequest, match="redirected off-site to https://elsewhere.example/"):
        check_source(settings, f"{site.url}/away.html", "crawl")
    # an index is checked by its own file: its children are the run's to read (an API request is no crawl)
    site.write("/index.xml", "<sitemapindex>" + "".join(
        f"<sitemap><loc>/s{i}.xml</loc></sitemap>" for i in range(3)) + "</sitemapindex>")
    site.requests.clear()
    check_source(settings, f"{site.url}/index.xml", "sitemap")
    assert site.requests == ["/robots.txt", "/index.xml"]
    site.write("/empty.xml", "<urlset></urlset>")
    with pytest.raises(InvalidRequest, match="lists no pages"):
        check_source(settings, f"{site.url}/empty.xml", "sitemap")
    with local_site(tmp_path / "closed") as closed:
        url = closed.url
    with pytest.raises(InvalidRequest, match="the site is unreachable: could not connect"):
        check_source(settings, f"{url}/", "crawl")


def test_a_page_turned_noindex_is_removed_from_search(sqlite_services, site):
    services = sqlite_services
    services.settings.website_allow_private = True
    kb_id, source_id = new_source(services, site=site)
    assert sync(services, source_id).pages_added == 4
    hours_url = f"{site.url}/horarios.html"
    site.write("/horarios.html", page_html("Horários", HOURS.format(open="9h"), []).replace(
        "<head>", '<head><meta name="robots" content="noindex">'))
    run = sync(services, source_id)
    assert counts(run) == {"seen": 4, "added": 0, "changed": 0, "unchanged": 3, "removed": 1, "failed": 1}
    assert all(s.filename != hours_url for s in find(services, kb_id, "A que horas a loja abre no sábado?", 20))
    with services.session() as session:
        assert hours_url not in {d.filename for d in session.scalars(select(Document))}


def test_a_page_naming_another_canonical_url_is_stored_once(sqlite_services, site):
    services = sqlite_services
    services.settings.website_allow_private = True
    canonical = '<head><link rel="canonical" href="/horarios.html">'
    site.write("/horarios.html", page_html("Horários", HOURS.format(open="9h"), []).replace("<head>", canonical))
    # the variant first: its content is taken under the canonical URL, and the canonical page is then a repeat
    site.write_sitemap(["/print.html", "/horarios.html?ref=menu", "/horarios.html", "/ideias.html"])
    # a variant that asks not to be indexed is left alone, and does not take its canonical page out of search
    site.write("/print.html", page_html("Horários", HOURS.format(open="9h"), []).replace(
        "<head>", '<head><meta name="robots" content="noindex"><link rel="canonical" href="/horarios.html">'))
    kb_id, source_id = new_source(services, site=site)
    run = sync(services, source_id)
    assert run.status == "partial" and [f["url"] for f in run.failures] == [f"{site.url}/print.html"]
    assert counts(run) == {"seen": 3, "added": 2, "changed": 0, "unchanged": 0, "removed": 0, "failed": 1}
    with services.session() as session:
        names = sorted(d.filename.removeprefix(site.url) for d in session.scalars(select(Document)))
        pages = sorted(p.url.removeprefix(site.url) for p in websites.pages_of(
            session, websites.get_source(session, source_id)))
    assert names == pages == ["/horarios.html", "/ideias.html"]


def test_a_second_run_of_a_source_does_not_start_while_one_runs(sqlite_services, site):
    services = sqlite_services
    services.settings.website_allow_private = True
    kb_id, source_id = new_source(services, site=site)
    with services.session() as session:  # two runs queued at once (two requests each checked, then inserted)
        first = WebsiteSyncRun(id=uuid.uuid4().hex, source_id=source_id, failures=[])
        second = WebsiteSyncRun(id=uuid.uuid4().hex, source_id=source_id, failures=[])
        session.add_all([first, second])
        session.commit()
        first.status = "running"  # a worker has the first
        session.commit()
        second_id = second.id
    run = run_sync(services, second_id)
    assert run.status == "failed" and run.error == "not started: another sync of this website was running"
    assert site.requests == []


def test_the_lease_is_renewed_before_each_request(sqlite_services, site):
    services = sqlite_services
    services.settings.website_allow_private = True
    kb_id, source_id = new_source(services, site=site)
    past = datetime(2000, 1, 1, tzinfo=UTC)
    leases = []

    def expire() -> None:  # as if robots.txt had taken longer than the lease
        with services.session() as session:
            session.execute(update(WebsiteSyncRun).values(lease_until=past))
            session.commit()

    def look() -> None:
        with services.session() as session:
            leases.append(session.scalar(select(WebsiteSyncRun.lease_until)))

    site.hooks["/robots.txt"], site.hooks["/sitemap.xml"] = expire, look
    assert sync(services, source_id).status == "succeeded"
    assert len(leases) == 1 and leases[0] > datetime.now(UTC)  # renewed before the sitemap was asked for


def test_the_assistant_deleted_mid_sync_ends_the_run_quietly(sqlite_services, site):
    services = sqlite_services
    services.settings.website_allow_private = True
    kb_id, source_id = new_source(services, site=site)

    def delete() -> None:
        with services.session() as session:
            kb = session.get(KnowledgeBase, kb_id)
            registry.delete_assistant(session, services.vectors, services.blobs, kb.assistant)

    site.hooks["/ideias.html"] = delete
    assert sync(services, source_id) is None  # the run went with its source: nothing raised
    with services.session() as session:
        assert session.scalar(select(WebsiteSyncRun.id)) is None
        assert session.get(KnowledgeBase, kb_id) is None


def test_unchanged_pages_answer_304_to_their_validators_and_are_not_downloaded(sqlite_services, site):
    services = sqlite_services
    services.settings.website_allow_private = True
    hour_ago = time.time() - 3600
    for path in site.pages():  # Last-Modified an hour before the Date: a strong validator
        os.utime(site.root / path.lstrip("/"), (hour_ago, hour_ago))
    pages = ["/horarios.html", "/ideias.html", "/relatorio.html", "/cp1252.html"]
    kb_id, source_id = new_source(services, site=site)
    assert counts(sync(services, source_id))["added"] == 4
    site.answers.clear()
    again = sync(services, source_id)
    assert counts(again) == {"seen": 4, "added": 0, "changed": 0, "unchanged": 4, "removed": 0, "failed": 0}
    assert sorted(p for p, status in site.answers if status == 304) == sorted(pages)  # none downloaded

    site.write("/horarios.html", page_html("Horários", HOURS.format(open="8h"), []))  # modified now
    site.answers.clear()
    edited = sync(services, source_id)
    assert counts(edited) == {"seen": 4, "added": 0, "changed": 1, "unchanged": 3, "removed": 0, "failed": 0}
    assert ("/horarios.html", 200) in site.answers
    assert "8h" in find(services, kb_id, "A que horas a loja abre no sábado?")[0].text
    # modified within the minute before the Date: a weak Last-Modified, not sent back (the page is asked in full)
    site.answers.clear()
    assert counts(sync(services, source_id))["unchanged"] == 4
    assert ("/horarios.html", 200) in site.answers


def test_a_crawl_follows_the_links_of_a_page_that_answered_304(sqlite_services, site):
    services = sqlite_services
    services.settings.website_allow_private = True
    site.etags = True
    kb_id, source_id = new_source(services, kind="crawl", path="/index.html", site=site, exclude=["/cp1252*"])
    first = sync(services, source_id)
    assert counts(first)["added"] == 4
    site.answers.clear()
    again = sync(services, source_id)  # the start page answers 304: its links are those it had
    assert again.status == "succeeded", again.failures
    assert counts(again) == {"seen": 4, "added": 0, "changed": 0, "unchanged": 4, "removed": 0, "failed": 0}
    assert {status for path, status in site.answers if path.endswith(".html")} == {304}
    with services.session() as session:
        assert len(list(session.scalars(select(Document)))) == 4  # nothing removed for want of links
