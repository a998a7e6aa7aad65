"""The review tools in a real browser (the server, database, ingestion and embedding model of
``tests/system/test_dashboard_browser.py``; the chat model is scripted to answer from the sources it is shown):
approve a reply, see a paraphrase answered from it without the model, rate a reply, import approved
answers from a spreadsheet, promote a turn to a regression case, run the checks, change the knowledge base
and see the diff, clear the review flag the change raised, write the answer to a knowledge gap. Every page
is checked for JavaScript errors and photographed into ``tests/artifacts/screenshots/``."""
from __future__ import annotations

import re

import httpx

from runtime.prompt import NO_ANSWER
from tests.conftest import ADMIN_TOKEN, wait_for_document
# page and site are fixtures; the import skips this module without Chromium or Playwright
from tests.system.test_dashboard_browser import Page, Site, expect, page, shot, site  # noqa: F401

SATURDAY_Q, CLEANING_Q = "Are you open on Saturdays?", "How much does a dental cleaning cost?"
PARAPHRASE = "Are you open Saturdays?"  # MiniLM: 0.98 to SATURDAY_Q (calibrated threshold 0.67)
GAP_Q = "Do you offer braces for kids?"
APPROVED_TEXT = "On Saturdays we open from 9am to 1pm; on Sundays we are closed."


def clinic_md(cleaning_price: str) -> bytes:
    return (f"# Opening hours\n\nOn Saturdays we open from 9am to 1pm. On Sundays the clinic is closed.\n\n"
            f"# Prices\n\nA dental cleaning costs {cleaning_price}. Whitening costs $300.\n").encode()


def from_sources(messages: list[dict], tools) -> str:
    """The scripted model: the sentence of the sources it was shown about what the customer asked, citing [1]."""
    sources, _, question = messages[-1]["content"].rpartition("Customer message:")
    topic = "cleaning costs" if "cost" in question else "Saturdays we open" if "Saturday" in question else None
    found = re.search(rf"[^.\n]*{topic}[^.\n]*\.", sources) if topic else None
    return f"{found.group(0).strip()[:-1]} [1]." if found else NO_ANSWER


def upload(api: httpx.Client, assistant_id: str, price: str) -> dict:
    r = api.post(f"/api/assistants/{assistant_id}/documents", files={"file": ("clinic.md", clinic_md(price))})
    assert r.status_code in (201, 202), r.text
    doc = wait_for_document(api, r.json()["id"])
    assert doc["status"] == "ready", doc
    return doc


def run_checks(page: Page) -> None:  # noqa: F811 (an argument, not the fixture)
    """Click "Run checks" and wait for the page to show the new run's results (it reloads with its run_id)."""
    before = page.url
    page.click("#run-checks")
    page.wait_for_url(lambda url: "run_id=" in url and url != before, timeout=90_000)


def test_approve_rate_import_and_regression_checks(site: Site, page: Page, tmp_path):  # noqa: F811
    aid = site.assistant_id
    api = httpx.Client(base_url=site.base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    api.patch(f"/api/assistants/{aid}", json={"config": {"retrieval": {"mode": "every_turn"}}}).raise_for_status()
    upload(api, aid, "$80")
    # a customer asks two questions; the scripted model answers both from the knowledge base
    site.model.enqueue(from_sources, from_sources)
    for question in (SATURDAY_Q, CLEANING_Q):
        r = api.post("/api/chat", json={"assistant_id": aid, "customer_id": "customer-7", "message": question})
        assert r.status_code == 200 and r.json()["status"] == "answered", r.text
    conversation = r.json()["conversation_id"]
    assert r.json()["reply"] == "A dental cleaning costs $80 [1]."

    # (a) approve the Saturday reply from the conversation page
    page.goto(site.url(f"/dashboard/conversations/{conversation}"))
    saturday = page.locator(".msg.outbound").filter(has=page.locator(".text", has_text="On Saturdays we open"))
    cleaning = page.locator(".msg.outbound").filter(has=page.locator(".text", has_text="dental cleaning costs"))
    saturday.locator("button[data-action=approve]").click()
    expect(saturday.locator(".review-bar")).to_contain_text(site.t("approved"))
    expect(saturday.locator("button[data-action=approve]")).to_have_count(0)
    (answer,) = api.get(f"/api/assistants/{aid}/approved-answers").json()
    assert answer["question"] == SATURDAY_Q and answer["answer"] == "On Saturdays we open from 9am to 1pm [1]."
    assert [s["filename"] for s in answer["sources"]] == ["clinic.md"]

    # (c) rate the other reply bad, with a reason, and see the rating under it
    cleaning.locator("summary", has_text=site.t("Rate")).click()
    cleaning.locator(".rate-form select[name=reason]").select_option("incomplete")
    cleaning.locator(".rate-form input[name=comment]").fill("Should mention whitening too")
    cleaning.locator(".rate-form input[name=author]").fill("Rita")
    cleaning.locator(".rate-form button[value=bad]").click()
    rating = cleaning.locator("li.fb-bad")
    expect(rating).to_contain_text(site.t("incomplete"))
    expect(rating).to_contain_text("Rita")
    expect(rating).to_contain_text("Should mention whitening too")

    # (e, first half) make a regression case of it, with the fact its reply must keep
    cleaning.locator("summary", has_text=site.t("Add to regression checks")).click()
    cleaning.locator(".case-form textarea[name=facts]").fill("$80")
    cleaning.locator(".case-form button[type=submit]").click()
    expect(cleaning.locator(".review-bar")).to_contain_text(site.t("in regression checks"))
    shot(page, "20-review-conversation")

    # the approved answers page: edit the approved text (no citation marker) and add a phrasing
    page.goto(site.url(f"/dashboard/approved?assistant_id={aid}"))
    item = page.locator(f"#a-{answer['id']}")
    item.locator("summary", has_text=site.t("Edit")).click()
    item.locator("textarea[name=answer]").fill(APPROVED_TEXT)
    item.locator("textarea[name=variants]").fill("Do you open on Saturday?")
    item.locator("input[name=approved_by]").fill("Rita")
    item.locator("button[type=submit]").click()
    expect(item.locator(".answer")).to_have_text(APPROVED_TEXT)
    expect(item.locator(".variants")).to_have_text("Do you open on Saturday?")
    expect(item.locator(".meta")).to_contain_text(site.t("approved by %(by)s", by="Rita"))

    # (b) the test console: a paraphrase gets the approved text, with no model call
    match = api.post(f"/api/assistants/{aid}/approved-answers/match", json={"text": PARAPHRASE}).json()
    assert match["match"] is not None, match  # the calibrated rule accepts this paraphrase
    calls = len(site.model.requests)
    page.goto(site.url(f"/dashboard/console?assistant_id={aid}"))
    page.fill("#chat input[name=message]", PARAPHRASE)
    page.click("#chat button[type=submit]")
    reply = page.locator("#transcript .msg.outbound")
    expect(reply.locator(".text")).to_have_text(APPROVED_TEXT)
    expect(reply.locator(".source .src-meta")).to_contain_text("approved answer")
    assert len(site.model.requests) == calls
    shot(page, "21-console-approved-answer")
    page.click("#console-link a")
    page.wait_for_url("**/dashboard/conversations/*")
    sent_from = site.t('Sent as the <a href="%(href)s">approved answer</a>, without the model.', href="")
    expect(page.locator(".sent-from")).to_have_text(re.sub(r"<[^>]+>", "", sent_from))

    # (d) import a spreadsheet of questions and answers, one row without an answer
    sheet = tmp_path / "faq.csv"
    sheet.write_text("question,answer,variants\n"
                     'Do you accept credit cards?,"Yes, all major cards.",Can I pay by card?\n'
                     'Where is the clinic?,"Rua Augusta 100, São Paulo.",Where are you located?|What is your address?\n'
                     "Is there parking nearby?,,\n", encoding="utf-8")
    page.goto(site.url(f"/dashboard/approved?assistant_id={aid}"))
    expect(page.locator(f"#a-{answer['id']} .hits")).to_have_text(site.tn("%(count)s hit", "%(count)s hits", 1))
    page.set_input_files("#import input[type=file]", str(sheet))
    page.click("#import button[type=submit]")
    expect(page.locator("#import-report")).to_contain_text("faq.csv: " + site.t(
        "%(imported)s imported, %(updated)s updated, %(errors)s row with errors", imported=2, updated=0, errors=1))
    expect(page.locator("#import-errors li")).to_have_text([site.t("row %(row)s: %(error)s", row=4,
                                                                   error="missing answer")])  # the API's words
    expect(page.locator("#approved-list article.approved")).to_have_count(3)
    expect(page.locator("#approved-list")).to_contain_text("Rua Augusta 100, São Paulo.")
    expect(page.locator("#approved-list")).to_contain_text("What is your address?")
    shot(page, "22-approved-answers-import")

    # (e) run the checks: all pass; change the document; run again: the changed fact is shown
    page.goto(site.url(f"/dashboard/regression?assistant_id={aid}"))
    expect(page.locator("#cases tbody tr")).to_have_count(1)
    expect(page.locator("#cases tbody tr")).to_contain_text(CLEANING_Q)
    expect(page.locator("#cases tbody tr")).to_contain_text("clinic.md")
    site.model.enqueue(from_sources)
    run_checks(page)
    expect(page.locator("#run")).to_have_attribute("data-status", "passed")
    expect(page.locator("#run .counts")).to_contain_text(f"{site.t('%(n)s passed', n=1)} · {site.t('%(n)s regressed', n=0)}")
    expect(page.locator("#results tr.passed")).to_contain_text("✓ $80")
    doc = upload(api, aid, "$95")
    assert doc["current_version"] == 2
    site.model.enqueue(from_sources)
    run_checks(page)
    expect(page.locator("#run")).to_have_attribute("data-status", "failed")
    expect(page.locator("#run .counts")).to_contain_text(f"{site.t('%(n)s passed', n=0)} · {site.t('%(n)s regressed', n=1)}")
    changed = page.locator("#results tr.changed")
    expect(changed).to_have_count(1)
    expect(changed.locator("td").nth(3).locator("del")).to_have_text("✗ $80")
    expect(changed.locator(".diff del")).to_have_text("$80")
    expect(changed.locator(".diff ins")).to_have_text("$95")
    expect(changed.locator("td").nth(1)).to_have_text(site.t("answered"))  # status and source unchanged
    expect(changed.locator("td").nth(2).locator(".ok")).to_have_text("clinic.md")
    expect(page.locator("#runs tbody tr")).to_have_count(2)
    shot(page, "23-regression-diff")
    page.locator("#runs tbody tr").nth(1).locator("a").click()  # the history: the first run's results again
    expect(page.locator("#run")).to_have_attribute("data-status", "passed")

    # the new version flagged the approved answer made from the document: review it, clear the flag
    page.goto(site.url(f"/dashboard/approved?assistant_id={aid}"))
    flagged = page.locator(f"#a-{answer['id']}")
    expect(flagged).to_have_class(re.compile("flagged"))
    expect(flagged.locator(".review-reason")).to_contain_text("clinic.md")
    shot(page, "24-approved-answer-flagged")
    flagged.locator("button[data-action=clear-flag]").click()
    expect(page.locator(f"#a-{answer['id']}")).not_to_have_class(re.compile("flagged"))
    assert api.get(f"/api/approved-answers/{answer['id']}").json()["needs_review"] is False

    # a question the knowledge base cannot answer becomes a gap on the Improve page: write its answer there
    site.model.enqueue(from_sources)
    r = api.post("/api/chat", json={"assistant_id": aid, "customer_id": "customer-8", "message": GAP_Q})
    assert r.json()["status"] == "fallback", r.text
    page.goto(site.url(f"/dashboard/improve?assistant_id={aid}"))
    gap = page.locator("#gaps tr.gap", has_text=GAP_Q)
    gap.locator("button.write").click()
    form = page.locator("#gaps .write-answer form")
    expect(form.locator("input[name=question]")).to_have_value(GAP_Q)
    form.locator("textarea[name=answer]").fill("Yes: our orthodontist treats children from 7 years old.")
    form.locator("button[type=submit]").click()
    expect(page.locator("#gaps .write-answer", has_text=site.t("Saved as an approved answer."))).to_have_count(1)
    expect(gap.locator("button.write")).to_be_hidden()
    shot(page, "25-improve-write-answer")
    questions = [a["question"] for a in api.get(f"/api/assistants/{aid}/approved-answers").json()]
    assert GAP_Q in questions and len(questions) == 4
    api.close()
