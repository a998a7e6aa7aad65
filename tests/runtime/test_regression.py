"""Regression checks on the real runtime (SQLite and PostgreSQL, the real embedding model, a scripted chat
model): promote a turn, replay it from the CLI and the API, report a knowledge-base change, a missing fact
and a status change; one run per assistant at a time; a run whose process died is given up."""
from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from atende import cli
from atende.app import create_app
from core.db import new_id, utcnow
from core.errors import Conflict, InvalidRequest, NotFound
from kb import registry
from runtime import regression
from runtime.models import Conversation, Message
from runtime.regression import STALE_MARGIN, Change, RegressionCase, RegressionRun, compare
from runtime.turn import handle_message
from runtime.types import TurnResult
from kb.types import Source
from tests.conftest import ADMIN_TOKEN
from tests.factories import add_assistant, chat, use_scripted_model

HOURS = ("Horário de funcionamento\n\nAtendemos de segunda a sexta, das 8h às 18h.\n\n"
         "Aos sábados abrimos das 9h às 13h. Aos domingos a clínica fica fechada.")
PRICES = ("Tabela de preços\n\nA limpeza dental custa R$ 180,00. O clareamento custa R$ 900,00 "
          "e pode ser pago em até 6 vezes.")


def make_shop(services):
    """An assistant with two small documents (hours, prices), answering with a scripted model."""
    model = use_scripted_model(services)
    aid = add_assistant(services, "clinica", config={"system_prompt": "Você atende a Clínica Sorriso.",
                                                     "retrieval": {"top_k": 1, "min_score": 0.1},
                                                     "grounded_fallback": False, "focused_answers": False},
                        documents=[("horarios.txt", HOURS), ("precos.txt", PRICES)])
    return services, model, aid


@pytest.fixture
def shop(services):
    return make_shop(services)


@pytest.fixture
def sqlite_shop(sqlite_services):
    return make_shop(sqlite_services)


def test_a_promoted_turn_passes_until_its_source_is_deleted_and_its_fact_is_gone(shop, monkeypatch, capsys):
    services, model, aid = shop
    monkeypatch.setattr(cli, "_services", lambda args: services)  # the real command, on the test's services
    assert cli.main(["eval", "regression", "nobody"]) == 2
    assert cli.main(["eval", "regression", "clinica"]) == 2  # no cases yet
    assert "has no regression cases" in capsys.readouterr().err

    model.enqueue("A limpeza custa R$ 180,00.")
    turn = chat(services, aid, "Quanto custa a limpeza?")
    assert turn.status == "answered" and turn.sources[0].filename == "precos.txt"
    with services.session() as session:
        case = regression.promote(session, turn.message_id, facts=["R$ 180", " "], note="preço da limpeza")
        session.commit()
    assert (case.question, case.expected_status, case.expected_sources, case.expected_facts) == \
        ("Quanto custa a limpeza?", "answered", ["precos.txt"], ["R$ 180"])
    assert (case.expected_reply, case.created_from_message_id, case.note) == \
        ("A limpeza custa R$ 180,00.", turn.message_id, "preço da limpeza")

    model.enqueue("O preço da limpeza é R$ 180.")  # worded differently, same fact and source
    assert cli.main(["eval", "regression", "clinica"]) == 0
    out = capsys.readouterr().out
    assert "PASS Quanto custa a limpeza?" in out and "1 passed, 0 failed of 1 cases" in out
    with services.session() as session:
        [run] = regression.list_runs(session, registry.get_assistant(session, aid))
        assert run.status == "passed" and run.finished_at and run.results[0]["sources"][0]["filename"] == "precos.txt"
        conv = session.scalars(select(Conversation).where(Conversation.sender == "regression")).one()
        assert (conv.channel, conv.customer_id) == ("test", f"{run.id}-{case.id}")  # a new conversation

    with services.session() as session:  # the knowledge base changes: the price list is deleted
        kb = registry.get_assistant(session, aid).knowledge_base
        doc = next(d for d in registry.list_documents(session, kb) if d.filename == "precos.txt")
        registry.delete_document(session, services.vectors, services.blobs, doc)
    model.enqueue("A limpeza tem um ótimo preço, fale com a recepção.")
    assert cli.main(["eval", "regression", aid, "--json"]) == 1
    printed = capsys.readouterr()
    assert 'FAIL Quanto custa a limpeza?: source precos.txt not cited; missing fact "R$ 180"' in printed.err
    report = json.loads(printed.out)
    assert report["status"] == "failed" and report["summary"] == {
        "total": 1, "done": 1, "passed": 0, "failed": 1, "changes": {"status": 0, "sources": 1, "facts": 1}}
    [result] = report["results"]
    assert [(c["what"], c["expected"]) for c in result["changes"]] == [("sources", "precos.txt"), ("facts", "R$ 180")]
    assert result["reply"] == "A limpeza tem um ótimo preço, fale com a recepção." and result["status"] == "answered"
    assert result["expected_reply"] == "A limpeza custa R$ 180,00." and result["latency_ms"] >= 0


def test_a_status_change_and_small_talk_instead_of_an_answer_are_reported(sqlite_shop):
    services, model, aid = sqlite_shop
    with services.session() as session:
        a = registry.get_assistant(session, aid)
        regression.create_case(session, a, question="Qual o horário de sábado?", expected_status="answered",
                               expected_facts=["9h às 13h"], expected_sources=["horarios.txt"])
        regression.create_case(session, a, question="Obrigado!", expected_status="answered")
        session.commit()
    model.enqueue("NO_ANSWER")  # the model no longer finds it; "Obrigado!" is small talk, without the model
    lines = []
    run = regression.run_cases(services, aid, log=lines.append)
    assert run.status == "failed" and run.summary["changes"] == {"status": 2, "sources": 1, "facts": 1}
    first, second = run.results
    assert first["status"] == "fallback" and first["sources"]  # shown to the model, cited by no answer
    assert first["changes"][0] == {"what": "status", "expected": "answered", "got": "fallback"}
    assert lines[0] == ('FAIL Qual o horário de sábado?: status answered -> fallback; source horarios.txt not cited; '
                        'missing fact "9h às 13h"')
    assert second["changes"] == [{"what": "status", "expected": "answered", "got": "smalltalk"}]
    assert model.remaining == 0


def test_compare_normalises_facts_and_compares_numbers_as_written():
    case = RegressionCase(question="Quanto custa?", expected_status="answered",
                          expected_facts=["R$ 180", "segunda a sexta"], expected_sources=["precos.txt"])
    cited = [Source(rank=i, chunk_id=f"c{i}", score=0.8, text="", document_id=f"d{i}", version=1, filename=f)
             for i, f in enumerate(["precos.txt", "horarios.txt"], 1)]
    assert compare(case, TurnResult("c", "Custa R$180,00 — de Segunda à Sexta!", "answered", sources=cited)) == []
    changed = compare(case, TurnResult("c", "Custa R$ 1.180,00 de segunda a sexta.", "answered", sources=cited[1:]))
    assert changed == [Change("sources", "precos.txt", ["horarios.txt"]), Change("facts", "R$ 180", None)]
    fallback = compare(case, TurnResult("c", "Não encontrei, R$ 180, segunda a sexta.", "fallback", sources=cited))
    assert fallback == [Change("status", "answered", "fallback"), Change("sources", "precos.txt", [])]
    assert [c.describe() for c in changed + fallback[:1]] == [
        "source precos.txt not cited", 'missing fact "R$ 180"', "status answered -> fallback"]


def test_cases_are_validated_and_only_ai_replies_are_promoted(sqlite_services):
    services = sqlite_services
    use_scripted_model(services)
    with services.session() as session:
        a = registry.create_assistant(session, name="a", embedding_model="all-minilm-l6-v2", chunk_size=128,
                                      chunk_overlap=16)
        with pytest.raises(InvalidRequest, match="expected_status"):
            regression.create_case(session, a, question="Oi", expected_status="paused")
        with pytest.raises(InvalidRequest, match="no words"):
            regression.create_case(session, a, question="Oi", expected_status="smalltalk", expected_facts=["?!"])
        with pytest.raises(InvalidRequest, match="missing question"):
            regression.create_case(session, a, question="  ", expected_status="smalltalk")
        case = regression.create_case(session, a, question=" Oi ", expected_status="smalltalk",
                                      expected_sources=["a.txt", "a.txt"])
        assert (case.question, case.expected_sources, case.expected_reply, case.note) == ("Oi", ["a.txt"], None, "")
        with pytest.raises(InvalidRequest):
            regression.update_case(session, case, {"expected_status": "answered", "question": ""})
        assert case.expected_status == "smalltalk"  # all or nothing
        session.commit()
    turn = handle_message(services, assistant_ref="a", channel="api", sender="api", customer_id="c", text="Oi!")
    with services.session() as session:
        inbound = session.scalar(select(Message.id).where(Message.direction == "inbound"))
        with pytest.raises(InvalidRequest, match="not an AI reply"):
            regression.promote(session, inbound)
        with pytest.raises(NotFound):
            regression.promote(session, "missing")
        promoted = regression.promote(session, turn.message_id)
        assert (promoted.expected_status, promoted.expected_sources, promoted.expected_facts) == ("smalltalk", [], [])


def test_one_run_at_a_time_and_a_run_whose_process_died_is_given_up(services):
    use_scripted_model(services)  # small talk only: no model call
    with services.session() as session:
        a = registry.create_assistant(session, name="a", embedding_model="all-minilm-l6-v2", chunk_size=128,
                                      chunk_overlap=16)
        regression.create_case(session, a, question="Oi!", expected_status="smalltalk")
        first = regression.start_run(session, a)
        session.commit()
        aid = a.id
    with services.session() as session, pytest.raises(Conflict, match="already running"):
        regression.start_run(session, registry.get_assistant(session, aid))
    with services.session() as session:  # the index holds when two processes pass the check at once
        session.add(RegressionRun(id=new_id(), assistant_id=aid, status="running", summary={}, results=[]))
        with pytest.raises(IntegrityError):
            session.flush()

    with services.session() as session:  # its process died: no progress for longer than the turn deadline
        assert regression.get_run(session, first.id).status == "running"
        session.get(RegressionRun, first.id).updated_at = utcnow() - timedelta(seconds=180) - STALE_MARGIN - timedelta(seconds=5)
        session.commit()
    with services.session() as session:
        given_up = regression.get_run(session, first.id)
        session.commit()
        assert given_up.status == "error" and given_up.error.startswith("interrupted") and given_up.finished_at
        second = regression.start_run(session, registry.get_assistant(session, aid))
        session.commit()
    done = regression.execute_run(services, second.id, log=lambda line: None)
    assert done.status == "passed" and done.summary["passed"] == 1
    with pytest.raises(Conflict, match="not running"):
        regression.execute_run(services, second.id)


def test_api_promotes_edits_and_runs_cases_in_the_background(sqlite_shop):
    services, model, aid = sqlite_shop
    model.enqueue("A limpeza custa R$ 180,00.")
    turn = chat(services, aid, "Quanto custa a limpeza?")
    with services.session() as session:
        inbound = session.scalar(select(Message.id).where(Message.direction == "inbound"))
    with TestClient(create_app(services=services)) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        assert client.post(f"/api/messages/{inbound}/regression-case", json={}).status_code == 422
        assert client.post("/api/messages/nope/regression-case", json={}).status_code == 404
        created = client.post(f"/api/messages/{turn.message_id}/regression-case", json={"facts": ["R$ 180"]})
        assert created.status_code == 201
        case = created.json()
        assert (case["expected_status"], case["expected_sources"], case["expected_facts"]) == \
            ("answered", ["precos.txt"], ["R$ 180"])

        cases = f"/api/assistants/{aid}/regression-cases"
        assert client.post(cases, json={"question": "Oi", "expected_status": "maybe"}).status_code == 422
        other = client.post(cases, json={"question": "Abrem no sábado?", "expected_status": "answered"}).json()
        patched = client.patch(f"/api/regression-cases/{other['id']}", json={"expected_facts": ["9h às 13h"]})
        assert patched.status_code == 200 and patched.json()["expected_facts"] == ["9h às 13h"]
        assert [c["id"] for c in client.get(cases).json()] == [case["id"], other["id"]]
        assert client.delete(f"/api/regression-cases/{other['id']}").status_code == 204
        assert client.get(f"/api/regression-cases/{other['id']}").status_code == 404

        release = threading.Event()

        def slow_reply(messages, tools):  # keeps the run running until the second start has been refused
            release.wait(60)
            return "A limpeza sai por R$ 200,00."

        model.enqueue(slow_reply)
        runs = f"/api/assistants/{aid}/regression-runs"
        started = client.post(runs)
        assert started.status_code == 202 and started.json()["status"] == "running"
        assert client.post(runs).status_code == 409
        release.set()
        run = wait_for_run(client, started.json()["id"])
        assert run["status"] == "failed" and run["finished_at"] and run["error"] is None
        [result] = run["results"]
        assert result["changes"] == [{"what": "facts", "expected": "R$ 180", "got": None,
                                      "description": 'missing fact "R$ 180"'}]
        diff = result["diff"]
        assert "".join(d["text"] for d in diff if d["op"] != "insert") == "A limpeza custa R$ 180,00."
        assert "".join(d["text"] for d in diff if d["op"] != "delete") == "A limpeza sai por R$ 200,00."
        assert {"op": "delete", "text": "180,00."} in diff and {"op": "insert", "text": "200,00."} in diff

        model.enqueue("A limpeza custa R$ 180,00.")
        again = wait_for_run(client, client.post(runs).json()["id"])
        assert again["status"] == "passed" and again["results"][0]["diff"] is None
        listed = client.get(runs).json()
        assert [r["id"] for r in listed] == [again["id"], run["id"]] and "results" not in listed[0]
        assert client.get("/api/regression-runs/nope").status_code == 404


def wait_for_run(client, run_id: str, timeout: float = 60.0) -> dict:
    """Poll a regression run until it is no longer running; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/api/regression-runs/{run_id}").json()
        if run["status"] != "running":
            return run
        time.sleep(0.05)
    raise AssertionError(f"regression run {run_id} still running after {timeout}s")
