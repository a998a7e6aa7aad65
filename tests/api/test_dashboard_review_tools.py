"""The dashboard's review tools through TestClient: the review actions under each AI reply of a conversation
(approve, edit and approve, rate, add to regression checks; ratings and approved-answer replies shown), the
approved answers page and the regression checks page. Login required, data rendered, customer text escaped.
The browser drives them in ``tests/system/test_dashboard_browser_review.py``."""
from __future__ import annotations

import html
import json
import re

import pytest
from sqlalchemy import select

from core.db import new_id, utcnow
from kb import registry
from runtime import approved, feedback, regression
from runtime.models import Message
from runtime.regression import Change, CaseResult, RegressionRun
from tests.api.test_dashboard import XSS, add_conversation, app_client, dash  # noqa: F401  (fixtures)

ESCAPED = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
SOURCE = {"rank": 1, "chunk_id": "c1", "document_id": "d1", "version": 1, "filename": "precos.pdf", "page": 1,
          "section": "Limpeza", "score": 0.71, "text": "A limpeza custa R$ 180."}


@pytest.fixture
def clinic(sqlite_services, dash):  # noqa: F811
    """An assistant with a conversation of two AI replies (the second cites a document twice) and a hostile one."""
    services = sqlite_services
    with services.session() as s:
        aid = registry.create_assistant(s, name="clinica", embedding_model="all-minilm-l6-v2", chunk_size=256,
                                        chunk_overlap=32).id
        s.commit()
    conv = add_conversation(services, aid, "widget", "visitor", "Quanto custa a limpeza?", "Custa R$ 180 [1].",
                            sources=[SOURCE, {**SOURCE, "rank": 2, "chunk_id": "c2"}])
    hostile = add_conversation(services, aid, "widget", "visitor-2", XSS, XSS)
    return services, aid, conv, hostile


def ai_reply_id(services, conversation_id: str) -> str:
    with services.session() as s:
        return s.scalar(select(Message.id).where(Message.conversation_id == conversation_id,
                                                 Message.direction == "outbound"))


# --------------------------------------------------------------------------- login


def test_new_pages_need_a_session_and_are_in_the_nav(app_client):  # noqa: F811
    for path in ("/dashboard/approved", "/dashboard/regression?run_id=x"):
        r = app_client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login?next=%2Fdashboard%2F")
    app_client.post("/dashboard/login", data={"token": "test-admin-token"})
    page = app_client.get("/dashboard/conversations").text
    assert 'href="/dashboard/approved"' in page and 'href="/dashboard/regression"' in page
    for path in ("/dashboard/approved", "/dashboard/regression"):
        assert "No assistants yet." in app_client.get(path).text


# --------------------------------------------------------------------------- conversation


def test_ai_replies_get_review_actions_with_question_answer_and_document_sources(dash, clinic):  # noqa: F811
    _, aid, conv, _ = clinic
    page = dash.get(f"/dashboard/conversations/{conv}").text
    assert page.count('class="review"') == 1  # the AI reply only, not the customer's message
    assert 'data-action="approve"' in page and 'value="Quanto custa a limpeza?"' in page
    assert '<textarea name="answer" rows="4" required maxlength="4096">Custa R$ 180 [1].</textarea>' in page
    sources = json.loads(html.unescape(re.search(r"data-sources='([^']*)'", page).group(1)))
    assert sources == [{"document_id": "d1", "chunk_id": "c1", "filename": "precos.pdf"}]  # one per document
    assert f'data-assistant="{aid}"' in page
    assert '<option value="incomplete"' in page and '<option value="should_handoff"' in page
    assert 'class="case-form"' in page and "in regression checks" not in page


def test_ratings_approval_and_regression_case_are_shown(dash, clinic):  # noqa: F811
    services, aid, conv, _ = clinic
    reply = ai_reply_id(services, conv)
    with services.session() as s:
        feedback.rate_reply(s, reply, source="reviewer", rating="bad", reason="incomplete", comment=XSS, author="Ana")
        feedback.rate_reply(s, reply, source="widget", rating="good")
        approved.create_answer(s, registry.get_assistant(s, aid), question="quanto custa a limpeza", answer="R$ 180.")
        regression.promote(s, reply)
        s.commit()
    page = dash.get(f"/dashboard/conversations/{conv}").text
    assert '<li class="fb fb-bad"' in page and "incomplete" in page and "reviewer Ana" in page
    assert ESCAPED in page and XSS not in page
    assert '<li class="fb fb-good"' in page and "customer (widget)" in page
    assert page.count('data-action="unrate"') == 1  # only a reviewer's own rating can be withdrawn
    # the same question, however written, is already approved; the reply is already a case
    assert 'data-action="approve"' not in page and 'class="approve-form"' not in page and ">approved</a>" in page
    assert "in regression checks" in page and 'class="case-form"' not in page


def test_a_reply_sent_from_an_approved_answer_says_so(dash, clinic):  # noqa: F811
    services, aid, _, _ = clinic
    with services.session() as s:
        a = approved.create_answer(s, registry.get_assistant(s, aid), question="Abrem sábado?", answer="Sim, 9h-13h.")
        s.commit()
        approved_id = a.id
    source = {**SOURCE, "chunk_id": f"approved:{approved_id}", "document_id": approved_id, "version": 0,
              "filename": "approved answer", "page": None, "section": "Abrem sábado?", "text": "Sim, 9h-13h."}
    conv = add_conversation(services, aid, "test", "console", "Vocês abrem no sábado?", "Sim, 9h-13h.", sources=[source])
    page = dash.get(f"/dashboard/conversations/{conv}").text
    assert "Sent as the" in page and f"/dashboard/approved?assistant_id={aid}#a-{approved_id}" in page
    assert "<b>approved answer</b>" in page  # the source, as logged
    assert 'data-action="approve"' not in page and 'class="rate-form"' in page


def test_customer_text_in_review_forms_is_escaped(dash, clinic):  # noqa: F811
    _, _, _, hostile = clinic
    page = dash.get(f"/dashboard/conversations/{hostile}").text
    assert XSS not in page
    assert f'value="{ESCAPED}"' in page and f'maxlength="4096">{ESCAPED}</textarea>' in page


# --------------------------------------------------------------------------- approved answers


def test_approved_page_lists_answers_escaped_with_flags_and_hits(dash, clinic):  # noqa: F811
    services, aid, _, _ = clinic
    with services.session() as s:
        assistant = registry.get_assistant(s, aid)
        ok = approved.create_answer(s, assistant, question=XSS, answer=f"answer {XSS}", variants=[f"variant {XSS}"],
                                    approved_by=XSS, sources=[{"document_id": "d1", "filename": "precos.pdf"}])
        flagged = approved.create_answer(s, assistant, question="Quanto custa?", answer="R$ 180.")
        approved.update_answer(s, flagged, {"needs_review": True, "review_reason": "precos.pdf changed"})
        approved.record_hit(s, ok.id)
        s.commit()
        ok_id, flagged_id = ok.id, flagged.id
    page = dash.get(f"/dashboard/approved?assistant_id={aid}").text
    assert XSS not in page and f'<b class="question">{ESCAPED}</b>' in page
    assert f"<li>variant {ESCAPED}</li>" in page and f"approved by {ESCAPED}" in page
    assert f'id="a-{ok_id}"' in page and "1 hit<" in page and "from precos.pdf" in page
    assert f'<article class="approved flagged" id="a-{flagged_id}"' in page and "precos.pdf changed" in page
    assert page.count('data-action="clear-flag"') == 1 and 'name="clear_flag" checked' in page
    assert "2 approved answers" in page and "1 flagged for review</a>" in page
    assert f'data-url="/api/assistants/{aid}/approved-answers"' in page and 'id="import"' in page
    only = dash.get(f"/dashboard/approved?assistant_id={aid}&needs_review=true").text
    assert f'id="a-{flagged_id}"' in only and f'id="a-{ok_id}"' not in only and "show all" in only
    assert dash.get("/dashboard/approved?assistant_id=nope").status_code == 404


# --------------------------------------------------------------------------- regression checks


def test_regression_page_shows_cases_and_the_latest_run_as_a_diff(dash, clinic):  # noqa: F811
    services, aid, _, _ = clinic
    with services.session() as s:
        assistant = registry.get_assistant(s, aid)
        case = regression.create_case(s, assistant, question=XSS, expected_status="answered",
                                      expected_facts=["R$ 180", "6 vezes"], expected_sources=["precos.pdf"],
                                      expected_reply="Custa R$ 180 em 6 vezes [1].")
        kept = regression.create_case(s, assistant, question="Abrem sábado?", expected_status="answered")
        failed = CaseResult(case.id, case.question, False,
                            [Change("status", "answered", "fallback"), Change("sources", "precos.pdf", []),
                             Change("facts", "R$ 180", None)],
                            "Não encontrei essa informação. Custa 6 vezes.", "fallback", [], 900,
                            case.expected_reply, None)
        passed = CaseResult(kept.id, kept.question, True, [], "Sim [1].", "answered",
                            [{"rank": 1, "filename": "horarios.md", "document_id": "d2", "chunk_id": "c", "score": 0.8}],
                            500, None, None)
        old = RegressionRun(id=new_id(), assistant_id=aid, status="passed", started_at=utcnow(), updated_at=utcnow(),
                            finished_at=utcnow(), summary={"total": 1, "done": 1, "passed": 1, "failed": 0}, results=[])
        s.add(old)
        s.flush()
        latest = RegressionRun(id=new_id(), assistant_id=aid, status="failed", finished_at=utcnow(),
                               summary={"total": 2, "done": 2, "passed": 1, "failed": 1,
                                        "changes": {"status": 1, "sources": 1, "facts": 1}},
                               results=[failed.to_dict(), passed.to_dict()])
        s.add(latest)
        s.commit()
        case_id, old_id, latest_id = case.id, old.id, latest.id
    page = dash.get(f"/dashboard/regression?assistant_id={aid}").text
    assert XSS not in page and ESCAPED in page
    assert f'<tr data-id="{case_id}">' in page and "<div>6 vezes</div>" in page  # the cases
    assert f'<div id="run" data-id="{latest_id}" data-status="failed">' in page  # the newest run by default
    assert "1 passed</b>" in page and "1 regressed</b>" in page and "changed: 1 status, 1 sources, 1 facts" in page
    row = re.search(rf'<tr class="changed" data-case="{case_id}">(.*?)</tr>', page, re.S).group(1)
    assert "<del>answered</del> <ins>fallback</ins>" in row
    assert '<del title="expected, not cited">precos.pdf</del>' in row
    assert '<del title="missing from the reply">✗ R$ 180</del>' in row and '<span class="ok">✓ 6 vezes</span>' in row
    assert ('<div class="diff"><ins>Não encontrei essa informação. </ins>Custa<del> R$ 180 em</del> 6 '
            '<del>vezes [1].</del><ins>vezes.</ins></div>') in row  # the word diff of the reply
    assert '<tr class="passed"' in page and "horarios.md" in page  # a passing case, its cited file
    assert page.count("run_id=") == 2 and f'<tr data-id="{latest_id}" class="current">' in page  # the history
    older = dash.get(f"/dashboard/regression?run_id={old_id}").text  # the assistant follows the run
    assert f'data-id="{old_id}" data-status="passed"' in older and "No case done yet." in older
    assert dash.get("/dashboard/regression?run_id=nope").status_code == 404


def test_regression_page_keeps_results_of_a_deleted_case(dash, clinic):  # noqa: F811
    services, aid, _, _ = clinic
    result = CaseResult("gone", "Abrem domingo?", False, [Change("facts", "fechado", None)], "Sim.", "answered", [], 10,
                        None, None)
    with services.session() as s:
        s.add(RegressionRun(id=new_id(), assistant_id=aid, status="failed", finished_at=utcnow(),
                            summary={"total": 1, "done": 1, "passed": 0, "failed": 1}, results=[result.to_dict()]))
        s.commit()
    page = dash.get(f"/dashboard/regression?assistant_id={aid}").text
    assert "No cases yet." in page and 'id="run-checks" disabled' in page
    assert '<del title="missing from the reply">✗ fechado</del>' in page and '<div class="text">Sim.</div>' in page
