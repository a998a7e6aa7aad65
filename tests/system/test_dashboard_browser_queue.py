"""The waiting-for-a-human queue in a real browser (the uvicorn server, database and job queue of
``tests/system/test_dashboard_browser.py``; no model runs: requests for a person hand off before it): two customers
ask for a person, the business answers a third from its WhatsApp Business app (a signed echo webhook); the queue
shows who waits, longest first, apart from who has a person; hand-back, close and a reply act from the page.
Every page is checked for JavaScript errors and photographed into ``tests/artifacts/screenshots/``."""
from __future__ import annotations

import json
import re

import httpx

from runtime.handoff import BUSINESS_APP_REPLY, CLOSED, CUSTOMER_REQUEST
from runtime.whatsapp.standin import echo_body, sign
from tests.conftest import ADMIN_TOKEN
# page and site are fixtures; the import skips this module without Chromium or Playwright
from tests.system.test_dashboard_browser import Page, Site, expect, page, shot, site  # noqa: F401
from tests.factories import wait_until




def test_queue_hand_back_close_and_reply(site: Site, page: Page):  # noqa: F811
    api = httpx.Client(base_url=site.base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    calls = len(site.model.requests)
    first, second = (api.post("/api/chat", json={"assistant_id": site.assistant_id, "customer_id": customer,
                                                  "message": text}).json()
                     for customer, text in (("ana", "Quero falar com um atendente"), ("bob", "Can I talk to a human?")))
    assert first["status"] == second["status"] == "handoff" and len(site.model.requests) == calls
    raw = json.dumps(echo_body("phone-1", "+55 11 99999-0001", "wamid.app-1", "Oi! Aqui é a Maria, da loja.")).encode()
    r = api.post("/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": sign("s", raw),
                                                             "Content-Type": "application/json"})
    assert r.status_code == 200
    whatsapp = site.ids["whatsapp"]
    wait_until(lambda: api.get(f"/api/conversations/{whatsapp}").json()["handoff_state"] == "with_human")
    sent_before = len(site.graph.sent)

    page.click(f"nav >> text={site.t('Waiting for a human')}")
    page.wait_for_url("**/dashboard/queue")
    waiting, with_human = page.locator("#waiting tbody tr"), page.locator("#with-human tbody tr")
    expect(waiting).to_have_count(2)
    assert [waiting.nth(i).get_attribute("data-id") for i in range(2)] == [first["conversation_id"],
                                                                           second["conversation_id"]]
    expect(waiting.first.locator(".reason")).to_have_text(site.t(CUSTOMER_REQUEST))
    expect(waiting.first.locator(".last .text")).to_have_text("Quero falar com um atendente")
    expect(waiting.first.locator(".waited")).to_have_text(re.compile(r"^\d+ s$"))
    expect(with_human).to_have_count(1)
    expect(with_human.first).to_have_attribute("data-id", whatsapp)
    expect(with_human.first.locator(".reason")).to_have_text(site.t(BUSINESS_APP_REPLY))
    expect(page.locator("#waiting-count")).to_have_text("2")
    shot(page, "30-waiting-queue")

    # hand the longest-waiting back to the AI: off the queue, the customer told the AI is back
    waiting.first.locator("button[data-action=handback]").click()
    expect(waiting).to_have_count(1)
    expect(waiting.first).to_have_attribute("data-id", second["conversation_id"])
    handed = api.get(f"/api/conversations/{first['conversation_id']}").json()
    assert handed["handoff_state"] == "ai" and handed["messages"][-1]["kind"] == "notice"
    assert handed["handoff_changes"][-1]["actor"] == "operator"

    # close the business-app conversation: off the queue, nothing sent to the customer
    with_human.first.locator("button[data-action=close]").click()
    expect(page.locator("#with-human tbody")).to_contain_text(site.t("No conversation is with a person."))
    closed = api.get(f"/api/conversations/{whatsapp}").json()
    assert closed["handoff_state"] == "ai" and closed["handoff_changes"][-1]["reason"] == CLOSED
    assert len(site.graph.sent) == sent_before

    # the one still waiting: open it, reply as the operator; back on the queue it is with a person
    waiting.first.locator("a").click()
    page.wait_for_url(f"**/dashboard/conversations/{second['conversation_id']}")
    page.fill("#operator-reply textarea", "Hi Bob, Maria here.")
    page.click("#operator-reply button[type=submit]")
    expect(page.locator("#ai-state")).to_have_text(site.t("off (an operator has it)"))
    page.goto(site.url("/dashboard/queue"))
    expect(page.locator("#waiting tbody")).to_contain_text(site.t("Nobody is waiting."))
    expect(with_human).to_have_count(1)
    expect(with_human.first).to_have_attribute("data-id", second["conversation_id"])
    expect(with_human.first.locator(".waited")).to_have_text("–")  # the operator wrote last
    shot(page, "31-queue-after-actions")

    page.goto(site.url("/dashboard/metrics"))
    expect(page.locator('#handoff-reasons tr[data-reason="customer_request"] td.num')).to_have_text("2")
    expect(page.locator('#handoff-reasons tr[data-reason="business_app"] td.num')).to_have_text("1")
    answered = site.t("p50 · p95 %(p95)s · %(n)s answered", p95="", n=1).rsplit("· ", 1)[-1]
    expect(page.locator("#first-human-reply small")).to_contain_text(answered)
    expect(page.locator("#abandoned b")).to_have_text("1")  # Ana waited and went back to the AI unanswered
    shot(page, "32-metrics-handoffs")
    api.close()
