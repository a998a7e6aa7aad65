"""Website sources on the knowledge-base page, in a real browser (the uvicorn server, database, ingest queue and
embedding model of ``tests/system/test_dashboard_browser.py``) against a site served on loopback: add the site's
sitemap, watch its first sync finish with its counts, change a page, sync again from the page, delete the source.
Checked for JavaScript errors and photographed into ``tests/artifacts/screenshots/``."""
from __future__ import annotations

from benchmarks.website_sync import local_site, page_html
from tests.conftest import requires_shared
from tests.ingest.test_website_sync import HOURS, build_site
# page and site are fixtures; the import skips this module without Chromium or Playwright
from tests.system.test_dashboard_browser import Page, Site, expect, page, shot, site  # noqa: F401

pytestmark = requires_shared


def counts(site: Site, **pages: int) -> str:  # noqa: F811
    """A sync's page counts as the websites table shows them in the site's language."""
    return site.t("%(seen)s seen · %(added)s added · %(changed)s changed · %(unchanged)s unchanged · "
                  "%(removed)s removed · %(failed)s failed",
                  **{k: pages.get(k, 0) for k in ("seen", "added", "changed", "unchanged", "removed", "failed")})


def test_add_sync_and_delete_a_website(site: Site, page: Page, tmp_path):  # noqa: F811
    site.services.settings.website_allow_private = True  # the site below is on loopback
    with local_site(tmp_path / "shop") as shop:
        build_site(shop)
        page.goto(site.url(f"/dashboard/knowledge?assistant_id={site.assistant_id}"))
        form = page.locator("#add-website")
        form.locator("input[name=url]").fill(f"{shop.url}/sitemap.xml")
        form.locator("select[name=kind]").select_option("sitemap")
        form.locator("input[name=sync_interval_hours]").fill("0")
        form.locator("button").click()
        row = page.locator("#websites tbody tr", has_text=f"{shop.url}/sitemap.xml")
        expect(row.locator(".status")).to_have_text(site.t("succeeded"), timeout=120_000)
        expect(row).to_contain_text(counts(site, seen=4, added=4))
        expect(row).to_contain_text(site.t("manual only"))
        expect(page.locator("#documents")).to_contain_text(f"{shop.url}/horarios.html")
        shot(page, "20-knowledge-base-websites")

        shop.write("/horarios.html", page_html("Horários", HOURS.format(open="8h"), []))
        row.locator("button[data-action=sync]").click()
        expect(row).to_contain_text(counts(site, seen=4, changed=1, unchanged=3), timeout=120_000)
        expect(page.locator("#website-messages .error")).to_have_count(0)

        form = page.locator("#add-website")
        form.locator("input[name=url]").fill(f"{shop.url}/horarios.html")
        form.locator("select[name=kind]").select_option("sitemap")
        form.locator("button").click()
        expect(page.locator("#website-messages .error")).to_contain_text("the sitemap is not XML")

        page.locator("#websites tbody tr", has_text=f"{shop.url}/sitemap.xml").locator(
            "button[data-action=delete]").click()
        expect(page.locator("#websites")).to_contain_text(site.t("No websites yet."))
        expect(page.locator("#documents")).not_to_contain_text(f"{shop.url}/horarios.html")
