"""The review backend: conversation list, metrics and export, over a fixture of conversations written
with the real store on SQLite and PostgreSQL.

The fixture (all times UTC, March 2024; response time = reply - first covered inbound message):

    C1 whatsapp clinica 5511999990001  03-01  in 10:00:00 -> answered 10:00:02 (2 s, $0.002, 2 sources,
       1 call, delivered, channel $0.01); in 10:05:00 -> answered 10:05:01 (1 s, $0.001, failed);
       reaction 10:06:00 (logged)                                   5 messages, last 03-01 10:06:00
    C2 widget clinica visitor-ABC    03-02  in 09:00:00 -> handoff 09:00:03 (3 s, $0.003, 1 call);
       in 09:10:00 -> paused; operator 09:20:00                    4 messages, last 03-02 09:20:00
    C3 api loja cliente-42           03-02  in 15:00:00 -> fallback 15:00:04 (4 s, $0.004);
       in 15:01:00 -> answered 15:01:05 (5 s, $0.005, 1 source)   4 messages, last 03-02 15:01:05
    C4 whatsapp loja 5521988880004   03-03  in 08:00:00 + in 08:00:10 -> one turn, answered 08:00:12
       (12 s, $0.006, send unknown); in 08:30:00 -> error          4 messages, last 03-03 08:30:00
    C5 test clinica console          03-03  in 20:00:00, no turn yet                 1 message
"""
from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from atende.app import create_app
from core.db import new_id
from core.errors import InvalidRequest
from kb import registry
from kb.types import Source
from runtime import store
from runtime.models import Conversation, Message
from runtime.review.conversations import collected_data
from runtime.review.export import EXPORT_COLUMNS, export_conversations
from runtime.review.filters import ConversationFilters
from runtime.review.metrics import percentile
from runtime.types import ToolCall, ToolResult, ToolRun, TurnResult, Usage
from tests.conftest import ADMIN_TOKEN


def at(day: int, h: int, m: int, s: int = 0) -> datetime:
    return datetime(2024, 3, day, h, m, s, tzinfo=UTC)


class Clock:
    now: datetime | None = None

    def __call__(self) -> datetime:
        return self.now


def source(rank, filename, page, section, score, text):
    return Source(rank=rank, chunk_id=f"chunk-{filename}-{rank}", document_id="doc-" + filename, version=1,
                  filename=filename, page=page, section=section, score=score, text=text)


class Log:
    """Writes a conversation through runtime.store, at the times given."""

    def __init__(self, services, clock: Clock, assistant_id: str, channel: str, customer: str, first: datetime):
        self.services, self.clock, self.session = services, clock, services.session()
        self.conv = store.find_or_create_conversation(self.session, assistant_id=assistant_id, channel=channel,
                                                      sender="review-test", customer_id=customer)
        self.conv.created_at = first
        self.session.commit()

    def inbound(self, text: str, when: datetime) -> None:
        self.clock.now = when
        store.store_inbound(self.session, self.conv, text)

    def turn(self, status: str, when: datetime, reply: str | None = None, cost: float = 0.0, sources=(), calls=(),
             error: str | None = None) -> Message | None:
        self.clock.now = when
        pending = store.pending_inbound(self.session, self.conv.id)
        result = TurnResult(self.conv.id, reply, status, sources=list(sources), usage=Usage(300, 20) if reply else Usage(),
                            cost=cost, timings={"total_ms": 900.0} if reply else {})
        tool_results = [ToolRun(1, ToolCall(f"call_{i}", name, args), ToolResult(f"call_{i}", name, res, error=err))
                        for i, (name, args, res, err) in enumerate(calls)]
        store.log_turn(self.session, self.conv, pending, result, tool_results=tool_results, retrieval_query=None,
                       rounds=1, model="gpt-test", started_at=when, error=error)
        return self.session.get(Message, result.message_id) if result.message_id else None

    def message(self, direction: str, text: str, when: datetime, status: str, kind: str) -> None:
        self.session.add(Message(id=new_id(), conversation_id=self.conv.id, direction=direction, text=text,
                                 status=status, kind=kind, created_at=when))
        self.session.commit()

    def close(self) -> str:
        self.session.close()
        return self.conv.id


@pytest.fixture
def fixture_log(services, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(store, "utcnow", clock)
    with services.session() as s:
        clinica = registry.create_assistant(s, name="clinica", embedding_model="all-minilm-l6-v2", chunk_size=256,
                                            chunk_overlap=32).id
        loja = registry.create_assistant(s, name="loja", embedding_model="all-minilm-l6-v2", chunk_size=256,
                                         chunk_overlap=32).id
        s.commit()
    ids = {"clinica": clinica, "loja": loja}

    c1 = Log(services, clock, clinica, "whatsapp", "5511999990001", at(1, 10, 0))
    c1.inbound("Oi, qual o horário?", at(1, 10, 0))
    r = c1.turn("answered", at(1, 10, 0, 2), "Abrimos às 8h, de segunda a sexta.", 0.002,
                sources=[source(1, "horarios.pdf", 1, "Horário", 0.91, "Abrimos de segunda a sexta, das 8h às 18h."),
                         source(2, "precos.csv", None, "", 0.52, "Limpeza: R$ 150")],
                calls=[("search_knowledge_base", {"query": "horário"}, "[1] Abrimos às 8h", None)])
    r.status, r.channel_cost = "delivered", 0.01
    c1.conv.cost += 0.01
    c1.inbound("e no sábado?", at(1, 10, 5))
    r = c1.turn("answered", at(1, 10, 5, 1), "Aos sábados, das 9h às 13h.", 0.001)
    r.status, r.error_code, r.error_title = "failed", 131026, "Message undeliverable"
    c1.session.commit()
    c1.message("inbound", "👍", at(1, 10, 6), "logged", "reaction")
    ids["c1"] = c1.close()

    c2 = Log(services, clock, clinica, "widget", "visitor-ABC", at(2, 9, 0))
    c2.inbound("Quero falar com uma pessoa", at(2, 9, 0))
    c2.turn("handoff", at(2, 9, 0, 3), "Vou transferir você para a equipe.", 0.003,
            calls=[("transfer_to_human", {"reason": "pediu humano"}, "transferido", None),
                   ("book_appointment", {"when": "ontem"}, "data inválida", "invalid date")])
    c2.conv.handoff_state, c2.conv.handoff = "waiting_for_human", {"reason": "pediu humano", "at": at(2, 9, 0, 3).isoformat()}
    c2.session.commit()
    c2.inbound("alô?", at(2, 9, 10))
    c2.turn("paused", at(2, 9, 10))
    c2.message("outbound", "Olá, sou a Maria.", at(2, 9, 20), "answered", "operator")
    ids["c2"] = c2.close()

    c3 = Log(services, clock, loja, "api", "cliente-42", at(2, 15, 0))
    c3.inbound("=HYPERLINK(\"x\") vocês vendem drones?", at(2, 15, 0))
    c3.turn("fallback", at(2, 15, 0, 4), 'Não sei responder, "infelizmente".\nPosso ajudar, em outra coisa?', 0.004)
    c3.inbound("ok", at(2, 15, 1))
    c3.turn("answered", at(2, 15, 1, 5), "Combinado!", 0.005,
            sources=[source(1, "faq.md", None, "Geral", 0.7, "Perguntas frequentes")])
    ids["c3"] = c3.close()

    c4 = Log(services, clock, loja, "whatsapp", "5521988880004", at(3, 8, 0))
    c4.inbound("Bom dia", at(3, 8, 0))
    c4.inbound("Tem horário amanhã?", at(3, 8, 0, 10))
    r = c4.turn("answered", at(3, 8, 0, 12), "Temos às 10h.", 0.006)
    r.status = "unknown"
    c4.session.commit()
    c4.inbound("??", at(3, 8, 30))
    c4.turn("error", at(3, 8, 30), error="RuntimeError: model down")
    ids["c4"] = c4.close()

    c5 = Log(services, clock, clinica, "test", "console", at(3, 20, 0))
    c5.inbound("teste", at(3, 20, 0))
    ids["c5"] = c5.close()
    return ids


def review_app(services):
    """The real app (its review routes stand in front of ``/api/conversations/{conversation_id}``)."""
    return create_app(services=services)


@pytest.fixture
def api(services, fixture_log):
    c = TestClient(review_app(services))
    c.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    return c, fixture_log


def listed(client, **params) -> list[str]:
    r = client.get("/api/conversations", params=params)
    assert r.status_code == 200, r.text
    return [item["id"] for item in r.json()["items"]]


# --------------------------------------------------------------------------- list


def test_list_orders_by_last_activity_and_paginates(api):
    client, ids = api
    body = client.get("/api/conversations").json()
    assert body["total"] == 5 and body["limit"] == 50 and body["offset"] == 0
    assert [i["id"] for i in body["items"]] == [ids["c5"], ids["c4"], ids["c3"], ids["c2"], ids["c1"]]
    page = client.get("/api/conversations", params={"limit": 2, "offset": 2}).json()
    assert page["total"] == 5 and [i["id"] for i in page["items"]] == [ids["c3"], ids["c2"]]
    assert client.get("/api/conversations", params={"limit": 2, "offset": 10}).json()["items"] == []

    by_id = {i["id"]: i for i in body["items"]}
    c1, c2, c3 = by_id[ids["c1"]], by_id[ids["c2"]], by_id[ids["c3"]]
    assert (c1["channel"], c1["customer_id"], c1["assistant_id"], c1["assistant_name"]) == \
        ("whatsapp", "5511999990001", ids["clinica"], "clinica")
    assert c1["message_count"] == 5 and c1["last_activity"].startswith("2024-03-01T10:06:00")
    assert c1["llm_cost"] == pytest.approx(0.003) and c1["channel_cost"] == pytest.approx(0.01)
    assert c1["cost"] == pytest.approx(0.013) and c1["ai_enabled"] is True and c1["handoff_reason"] is None
    assert c2["message_count"] == 4 and c2["ai_enabled"] is False and c2["handoff_reason"] == "pediu humano"
    assert c2["cost"] == pytest.approx(0.003) and c2["last_activity"].startswith("2024-03-02T09:20:00")
    assert c3["assistant_name"] == "loja" and c3["cost"] == pytest.approx(0.009)
    assert by_id[ids["c5"]]["message_count"] == 1 and by_id[ids["c5"]]["cost"] == 0


def test_list_filters(api):
    client, ids = api
    c1, c2, c3, c4, c5 = (ids[k] for k in ("c1", "c2", "c3", "c4", "c5"))
    assert listed(client, channel="whatsapp") == [c4, c1]
    assert listed(client, channel="api") == [c3]
    assert listed(client, assistant_id=ids["loja"]) == [c4, c3]
    assert listed(client, since="2024-03-02") == [c5, c4, c3, c2]
    assert listed(client, until="2024-03-02") == [c3, c2, c1]
    assert listed(client, since="2024-03-02", until="2024-03-02") == [c3, c2]
    assert listed(client, until="2024-03-02T09:20:00Z") == [c2, c1]  # a datetime bound includes itself
    assert listed(client, until="2024-03-02T09:19:59.999999+00:00") == [c1]
    assert listed(client, since="2024-03-02T12:01:05-03:00") == [c5, c4, c3]  # = 15:01:05 UTC
    assert listed(client, since="2024-03-02T15:01:05.000001") == [c5, c4]  # no offset: UTC
    assert listed(client, customer="abc") == [c2]
    assert listed(client, customer="55") == [c4, c1]
    assert listed(client, customer="%") == [] and listed(client, customer="_") == []
    assert listed(client, waiting_for_human="true") == [c2]
    assert listed(client, waiting_for_human="false") == [c5, c4, c3, c1]
    assert listed(client, channel="whatsapp", assistant_id=ids["clinica"], since="2024-03-01") == [c1]
    body = client.get("/api/conversations", params={"channel": "whatsapp", "limit": 1}).json()
    assert body["total"] == 2 and [i["id"] for i in body["items"]] == [c4]


def test_bad_parameters_are_422_and_no_token_is_401(api):
    client, _ = api
    for path in ("/api/conversations", "/api/conversations/export", "/api/metrics"):
        assert client.get(path, params={"since": "yesterday"}).status_code == 422, path
        assert client.get(path, params={"until": "2024-13-01"}).status_code == 422, path
        assert client.get(path, params={"channel": "sms"}).status_code == 422, path
        assert client.get(path, params={"waiting_for_human": "maybe"}).status_code == 422, path
        assert client.get(path, headers={"Authorization": ""}).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    assert client.get("/api/conversations/export", params={"format": "xml"}).status_code == 422
    assert client.get("/api/conversations", params={"limit": 501}).status_code == 422
    assert client.get("/api/conversations", params={"limit": 0}).status_code == 422
    assert client.get("/api/conversations", params={"offset": -1}).status_code == 422


# --------------------------------------------------------------------------- metrics


def test_metrics_match_the_fixture(api):
    client, _ = api
    m = client.get("/api/metrics").json()
    assert (m["conversations"], m["messages"], m["inbound_messages"], m["outbound_messages"]) == (5, 18, 11, 7)
    assert m["messages_per_conversation"] == pytest.approx(18 / 5)
    # turn-worthy: every inbound but the reaction (10); answered: C1 2, C2 1, C3 2, C4 2, C5 0
    assert (m["turn_worthy_inbound"], m["answered_inbound"]) == (10, 7)
    assert m["response_rate"] == pytest.approx(0.7)
    # waits 1, 2, 3, 4, 5, 12 s: mean 4.5 s; p50 halfway 3-4 s; p95 at rank 4.75 -> 5 + 0.75 * 7 s
    assert m["response_time"] == {"count": 6, "avg_ms": pytest.approx(4500), "p50_ms": pytest.approx(3500),
                                  "p95_ms": pytest.approx(10250)}
    assert m["cost"] == {"llm": pytest.approx(0.021), "channel": pytest.approx(0.01), "total": pytest.approx(0.031),
                         "per_conversation": pytest.approx(0.0062)}
    assert (m["delivery_failures"], m["unknown_sends"], m["not_sent"]) == (1, 1, 0)
    assert m["turns"] == {"answered": 4, "fallback": 1, "handoff": 1, "paused": 1, "error": 1}
    assert m["handoff_conversations"] == 1 and m["handoff_rate"] == pytest.approx(1 / 5)
    assert m["fallback_rate"] == pytest.approx(1 / 6)
    assert m["per_day"] == [
        {"day": "2024-03-01", "conversations": 1, "messages": 5, "replies": 2, "cost": pytest.approx(0.013)},
        {"day": "2024-03-02", "conversations": 2, "messages": 8, "replies": 3, "cost": pytest.approx(0.012)},
        {"day": "2024-03-03", "conversations": 2, "messages": 5, "replies": 1, "cost": pytest.approx(0.006)},
    ]


def test_metrics_follow_the_filters(api):
    client, ids = api
    m = client.get("/api/metrics", params={"channel": "whatsapp"}).json()  # C1 and C4
    assert (m["conversations"], m["messages"], m["turn_worthy_inbound"], m["answered_inbound"]) == (2, 9, 5, 4)
    assert m["response_rate"] == pytest.approx(0.8)
    # waits 1, 2, 12 s: p95 at rank 1.9 -> 2 + 0.9 * 10 s
    assert m["response_time"] == {"count": 3, "avg_ms": pytest.approx(5000), "p50_ms": pytest.approx(2000),
                                  "p95_ms": pytest.approx(11000)}
    assert m["cost"]["total"] == pytest.approx(0.019) and m["cost"]["per_conversation"] == pytest.approx(0.0095)
    assert (m["delivery_failures"], m["unknown_sends"]) == (1, 1)
    assert m["turns"] == {"answered": 3, "error": 1} and m["handoff_rate"] == 0 and m["fallback_rate"] == 0
    assert [d["day"] for d in m["per_day"]] == ["2024-03-01", "2024-03-03"]

    m = client.get("/api/metrics", params={"waiting_for_human": "true"}).json()  # C2
    assert (m["conversations"], m["messages"], m["response_rate"], m["handoff_rate"]) == (1, 4, 0.5, 1.0)
    assert m["turns"] == {"handoff": 1, "paused": 1}

    empty = client.get("/api/metrics", params={"customer": "nobody"}).json()
    assert empty["conversations"] == 0 and empty["messages"] == 0 and empty["per_day"] == []
    assert empty["response_rate"] is None and empty["handoff_rate"] is None and empty["fallback_rate"] is None
    assert empty["response_time"] == {"count": 0, "avg_ms": None, "p50_ms": None, "p95_ms": None}
    assert empty["cost"] == {"llm": 0, "channel": 0, "total": 0, "per_conversation": None}


def test_percentile_interpolates_between_ranks():
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20], 95) == pytest.approx(19.5)


# --------------------------------------------------------------------------- export


def test_export_jsonl_has_every_message_with_sources_and_calls(api):
    client, ids = api
    r = client.get("/api/conversations/export", params={"format": "jsonl"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert r.headers["content-disposition"].startswith("attachment;") and ".jsonl" in r.headers["content-disposition"]
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert len(rows) == 18
    by_conv = {}
    for row in rows:
        by_conv.setdefault(row["conversation_id"], []).append(row)
    assert {k: len(v) for k, v in by_conv.items()} == {ids["c1"]: 5, ids["c2"]: 4, ids["c3"]: 4, ids["c4"]: 4, ids["c5"]: 1}
    for conv_rows in by_conv.values():  # each conversation's messages together, in order
        assert [x["created_at"] for x in conv_rows] == sorted(x["created_at"] for x in conv_rows)

    c1 = by_conv[ids["c1"]]
    assert [x["direction"] for x in c1] == ["inbound", "outbound", "inbound", "outbound", "inbound"]
    first, second = c1[1], c1[3]
    assert first["text"] == "Abrimos às 8h, de segunda a sexta." and first["status"] == "delivered"
    assert (first["tokens_in"], first["tokens_out"], first["latency_ms"]) == (300, 20, 900)
    assert first["cost"] == pytest.approx(0.002) and first["channel_cost"] == pytest.approx(0.01)
    assert first["created_at"].startswith("2024-03-01T10:00:02") and first["model"] == "gpt-test"
    # personal data is masked by default: the WhatsApp number but its last four digits; ?unmasked=true, in clear
    assert (first["channel"], first["assistant_name"], first["customer_id"]) == ("whatsapp", "clinica", "*********0001")
    clear = [json.loads(x) for x in client.get("/api/conversations/export", params={"format": "jsonl",
                                                                                     "unmasked": "true"}).text.splitlines()]
    assert {x["customer_id"] for x in clear if x["conversation_id"] == ids["c1"]} == {"5511999990001"}
    assert [(s["filename"], s["page"], s["section"], s["score"]) for s in first["sources"]] == \
        [("horarios.pdf", 1, "Horário", pytest.approx(0.91)), ("precos.csv", None, "", pytest.approx(0.52))]
    assert first["sources"][0]["text"] == "Abrimos de segunda a sexta, das 8h às 18h."
    assert first["function_calls"] == [{"name": "search_knowledge_base", "arguments": {"query": "horário"},
                                        "result": "[1] Abrimos às 8h", "error": None, "round": 1, "duration_ms": 0}]
    assert second["status"] == "failed" and second["error_code"] == 131026 and second["sources"] == []
    assert c1[0]["sources"] == [] and c1[0]["function_calls"] == [] and c1[4]["kind"] == "reaction"

    handoff = by_conv[ids["c2"]][1]
    assert handoff["handoff_reason"] == "pediu humano" and handoff["ai_enabled"] is False
    assert [(c["name"], c["result"], c["error"]) for c in handoff["function_calls"]] == \
        [("transfer_to_human", "transferido", None), ("book_appointment", None, "invalid date")]
    assert by_conv[ids["c2"]][3]["kind"] == "operator" and by_conv[ids["c2"]][3]["turn_id"] is None


def test_export_csv_parses_back(api):
    client, ids = api
    r = client.get("/api/conversations/export", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert ".csv" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text, newline="")))
    assert len(rows) == 18 and tuple(rows[0]) == EXPORT_COLUMNS
    c3 = [x for x in rows if x["conversation_id"] == ids["c3"]]
    assert c3[0]["text"] == "'=HYPERLINK(\"x\") vocês vendem drones?"  # not a formula in a spreadsheet
    assert c3[1]["text"] == 'Não sei responder, "infelizmente".\nPosso ajudar, em outra coisa?'
    assert json.loads(c3[1]["sources"]) == [] and json.loads(c3[3]["sources"])[0]["filename"] == "faq.md"
    assert c3[0]["ai_enabled"] == "true" and c3[0]["latency_ms"] == "" and float(c3[1]["cost"]) == pytest.approx(0.004)
    reply = next(x for x in rows if x["text"] == "Abrimos às 8h, de segunda a sexta.")
    assert [s["filename"] for s in json.loads(reply["sources"])] == ["horarios.pdf", "precos.csv"]
    assert json.loads(reply["function_calls"])[0]["arguments"] == {"query": "horário"}


def test_export_applies_the_filters(api):
    client, ids = api
    jsonl = client.get("/api/conversations/export", params={"format": "jsonl", "channel": "api"}).text
    assert {json.loads(x)["conversation_id"] for x in jsonl.splitlines()} == {ids["c3"]} and len(jsonl.splitlines()) == 4
    rows = list(csv.DictReader(io.StringIO(client.get(
        "/api/conversations/export", params={"waiting_for_human": "true", "until": "2024-03-02"}).text, newline="")))
    assert [x["conversation_id"] for x in rows] == [ids["c2"]] * 4
    nothing = client.get("/api/conversations/export", params={"customer": "nobody"})
    assert nothing.status_code == 200 and nothing.text.strip() == ",".join(EXPORT_COLUMNS)
    assert client.get("/api/conversations/export", params={"format": "jsonl", "customer": "nobody"}).text == ""


def test_export_pages_by_keyset_without_losing_rows(services, fixture_log):
    """Small pages (conversations split by keyset, or packed several to a page): the same rows as one page."""
    whole = io.StringIO()
    assert export_conversations(services, whole, "jsonl", ConversationFilters()) == 18
    for size in (1, 2, 3, 5, 9):
        paged = io.StringIO()
        assert export_conversations(services, paged, "jsonl", ConversationFilters(), page_size=size) == 18
        assert paged.getvalue() == whole.getvalue(), size
    out = io.StringIO()
    filters = ConversationFilters.parse(channel="whatsapp", since="2024-03-03")
    assert export_conversations(services, out, "csv", filters, page_size=3) == 4
    assert len(list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))) == 4
    with pytest.raises(InvalidRequest):
        export_conversations(services, io.StringIO(), "xlsx", filters)


def test_export_of_the_assembled_app_is_not_taken_for_a_conversation_id(sqlite_services):
    """Whichever way the app is wired, /api/conversations/export is the export, not conversation "export"."""
    client = TestClient(review_app(sqlite_services))
    client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    r = client.get("/api/conversations/export?format=jsonl")
    assert r.status_code == 200 and r.text == ""
    with sqlite_services.session() as s:
        assert s.query(Conversation).count() == 0


def test_collected_data_of_one_conversation_by_field(services, fixture_log):
    from runtime.models import CollectedData

    with services.session() as s:
        s.add_all([CollectedData(id=new_id(), conversation_id=fixture_log["c3"], field=f, value=v, source=src)
                   for f, v, src in (("name", "Ana", "ai"), ("email", "ana@example.com", "operator"))])
        s.commit()
        assert [(d["field"], d["value"], d["source"]) for d in collected_data(s, fixture_log["c3"])] == \
            [("email", "ana@example.com", "operator"), ("name", "Ana", "ai")]
        assert collected_data(s, fixture_log["c1"]) == []
