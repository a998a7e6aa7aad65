"""The routes of issue 16 on the real app (TestClient, its embedded queue consumers running, SQLite): the automation
trigger with its own token, the admin API of automations, event subscriptions, deliveries and follow-ups, and the
dashboard's deliveries page; each refuses missing auth, hostile JSON, huge bodies and repeats with a clear 4xx."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from atende.app import create_app
from runtime.whatsapp.graph import GraphClient
from runtime.whatsapp.standin import GraphStandIn
from tests.api.test_dashboard import login
from tests.conftest import ADMIN_TOKEN
from tests.event_receiver import EventReceiver
from tests.factories import wait_until
from tests.system.stack import free_port

CUSTOMER = "5511987654321"


@pytest.fixture
def api(sqlite_services):
    """``(client, graph, receiver, ids)``: an assistant with a WhatsApp number, an approved template, an event
    subscription to ``receiver`` and an automation, made through the admin API."""
    services = sqlite_services
    services.settings.http_tools_allow_private = True
    with GraphStandIn() as graph:
        services.settings.whatsapp_graph_url = graph.base_url
        services.whatsapp_graph = GraphClient(graph.base_url, timeout_s=2, attempts=1)
        receiver = EventReceiver(free_port()).start()
        with TestClient(create_app(services=services)) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            aid = client.post("/api/assistants", json={"name": "loja", "embedding_model": "all-minilm-l6-v2"}).json()["id"]
            sender = client.post("/api/whatsapp/senders", json={
                "assistant_id": aid, "phone_number_id": "1065001", "access_token": "t", "app_secret": "app-secret-x",
                "verify_token": "v"}).json()
            client.post("/api/whatsapp/templates", json={"sender_id": sender["id"], "name": "hello", "language": "en",
                                                         "category": "UTILITY", "body": "Hi {{1}}", "status": "APPROVED"})
            r = client.post(f"/api/assistants/{aid}/event-subscriptions", json={"url": receiver.url, "events": ["*"]})
            assert r.status_code == 201, r.text
            receiver.secret = r.json()["secret"]
            r = client.post("/api/automations", json={"sender_id": sender["id"], "name": "welcome", "template_name": "hello",
                                                      "template_language": "en", "template_parameters": ["{{name}}"]})
            assert r.status_code == 201, r.text
            yield client, graph, receiver, {"assistant": aid, "sender": sender["id"], "subscription": r.json(),
                                            "automation": r.json()}
        receiver.stop()


def _run(client: TestClient, automation: dict, token: str | None, **body):
    headers = {"Authorization": f"Bearer {token}"} if token else {"Authorization": ""}
    return client.post(automation["trigger_url"], json=body, headers=headers)


def test_the_trigger_takes_its_own_token_runs_once_per_key_and_refuses_bad_input(api):
    client, graph, receiver, ids = api
    automation, token = ids["automation"], ids["automation"]["token"]
    body = {"to": CUSTOMER, "variables": {"name": "Ana"}, "idempotency_key": "crm-1"}
    assert _run(client, automation, None, **body).status_code == 401
    assert _run(client, automation, ADMIN_TOKEN, **body).status_code == 401  # the admin token is not its token
    other = client.post("/api/automations/nope/runs", json=body, headers={"Authorization": f"Bearer {token}"})
    assert other.status_code == 401  # an unknown id says no more than a wrong token
    first = _run(client, automation, token, **body)
    assert first.status_code == 201 and first.json()["status"] == "sent", first.text
    again = _run(client, automation, token, **body)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert len([r for r in graph.sent if (r["json"] or {}).get("to") == CUSTOMER]) == 1
    header_key = client.post(automation["trigger_url"], json={k: v for k, v in body.items() if k != "idempotency_key"},
                             headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "crm-1"})
    assert header_key.status_code == 200 and header_key.json()["id"] == first.json()["id"]
    for bad, status, says in [
        ({"to": CUSTOMER, "variables": {"name": {"deep": [1]}}, "idempotency_key": "k2"}, 422, "variables"),
        ({"to": CUSTOMER, "variables": {}, "idempotency_key": "k3"}, 422, "needs the variable(s) name"),
        ({"to": "+1 555", "variables": {"name": "A"}, "idempotency_key": "k4"}, 422, "unknown number format"),
        ({"to": CUSTOMER, "variables": {"name": "A"}}, 422, "idempotency_key"),
        ({"to": CUSTOMER, "variables": {"name": "A"}, "idempotency_key": "k5", "extra": 1}, 422, "extra"),
    ]:
        r = _run(client, automation, token, **bad)
        assert r.status_code == status and says in r.text, (bad, r.text)
    hostile = client.post(automation["trigger_url"], content=b'{"to": [' * 5000,
                          headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert hostile.status_code in (400, 422)  # refused by the JSON guard, whichever says it first
    huge = client.post(automation["trigger_url"], content=b'{"to": "' + b"9" * 3_000_000 + b'"}',
                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert huge.status_code == 413
    runs = client.get(f"/api/automations/{automation['id']}/runs").json()
    assert [r["idempotency_key"] for r in runs] == ["crm-1"]


def test_the_admin_routes_need_the_admin_token(api):
    client, graph, receiver, ids = api
    automation = ids["automation"]
    for method, path in [("get", "/api/automations"), ("post", "/api/automations"),
                         ("patch", f"/api/automations/{automation['id']}"),
                         ("delete", f"/api/automations/{automation['id']}"),
                         ("get", f"/api/automations/{automation['id']}/runs"),
                         ("post", f"/api/automations/{automation['id']}/token"),
                         ("get", f"/api/assistants/{ids['assistant']}/event-subscriptions"),
                         ("get", "/api/events"), ("post", "/api/events/x/resend"),
                         ("post", "/api/conversations/x/followups"), ("post", "/api/followups/x/cancel")]:
        r = getattr(client, method)(path, headers={"Authorization": ""},
                                    **({"json": {}} if method in ("post", "patch") else {}))
        assert r.status_code == 401, (method, path, r.status_code)


def test_automations_are_managed_and_their_token_rotates(api):
    client, graph, receiver, ids = api
    automation = ids["automation"]
    listed = client.get("/api/automations", params={"assistant_id": ids["assistant"]}).json()
    assert [a["id"] for a in listed] == [automation["id"]] and "token" not in listed[0]
    r = client.patch(f"/api/automations/{automation['id']}", json={"inside_window": "message"})
    assert r.status_code == 422 and "needs the message" in r.text
    r = client.patch(f"/api/automations/{automation['id']}", json={"message": "Hi {{name}}", "inside_window": "message"})
    assert r.status_code == 200 and r.json()["inside_window"] == "message"
    rotated = client.post(f"/api/automations/{automation['id']}/token").json()["token"]
    body = {"to": CUSTOMER, "variables": {"name": "Ana"}, "idempotency_key": "after-rotation"}
    assert _run(client, automation, automation["token"], **body).status_code == 401
    assert _run(client, automation, rotated, **body).status_code == 201
    assert client.delete(f"/api/automations/{automation['id']}").status_code == 204
    assert client.get(f"/api/automations/{automation['id']}").status_code == 404
    assert _run(client, automation, rotated, **body).status_code == 401


def test_subscriptions_deliveries_and_the_dashboard_page(api):
    client, graph, receiver, ids = api
    automation = ids["automation"]
    subs = client.get(f"/api/assistants/{ids['assistant']}/event-subscriptions").json()
    assert len(subs) == 1 and subs[0]["secret"] is None  # shown once, when created
    assert client.post(f"/api/assistants/{ids['assistant']}/event-subscriptions",
                       json={"url": "file:///etc/passwd", "events": ["*"]}).status_code == 422
    assert client.post(f"/api/assistants/{ids['assistant']}/event-subscriptions",
                       json={"url": receiver.url, "events": ["nothing.happened"]}).status_code == 422
    run = _run(client, automation, automation["token"], to=CUSTOMER, variables={"name": "Ana"},
               idempotency_key="k").json()
    wait_until(lambda: receiver.events(run["conversation_id"], "automation.run_finished"), 20, "the run's event")
    made = client.get("/api/events", params={"conversation_id": run["conversation_id"]}).json()
    assert {e["kind"] for e in made} == {"conversation.started", "reply.sent", "automation.run_finished"}
    detail = client.get(f"/api/events/{made[0]['id']}").json()
    assert detail["status"] == "delivered" and [a["status_code"] for a in detail["attempt_log"]] == [204]
    assert client.get("/api/events/nope").status_code == 404
    assert client.post(f"/api/events/{made[0]['id']}/resend").json()["status"] in ("pending", "delivered")
    wait_until(lambda: receiver.repeats, 20, "the re-sent event")
    assert receiver.repeats == [made[0]["id"]] and receiver.rejected == []

    client.headers.pop("Authorization")
    login(client)
    page = client.get("/dashboard/events")
    assert page.status_code == 200 and made[0]["id"] in page.text and "Re-send" in page.text
    r = client.post(f"/dashboard/events/{made[1]['id']}/resend", data={"back": "all"}, follow_redirects=False,
                    headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    r = client.post(f"/dashboard/events/{made[1]['id']}/resend", data={"back": "all"}, follow_redirects=False)
    assert r.status_code == 303
    wait_until(lambda: len(receiver.repeats) == 2, 20, "the page's re-send")

    rotated = client.patch(f"/api/event-subscriptions/{subs[0]['id']}", json={"rotate_secret": True}).json()
    assert rotated["secret"] and rotated["secret"] != receiver.secret
    assert client.delete(f"/api/event-subscriptions/{subs[0]['id']}").status_code == 204
    assert client.get(f"/api/assistants/{ids['assistant']}/event-subscriptions").json() == []


def test_followups_are_scheduled_listed_and_cancelled_through_the_api_and_the_conversation_page(api):
    client, graph, receiver, ids = api
    automation = ids["automation"]
    run = _run(client, automation, automation["token"], to=CUSTOMER, variables={"name": "Ana"},
               idempotency_key="k").json()
    cid = run["conversation_id"]
    due = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    r = client.post(f"/api/conversations/{cid}/followups", json={"due_at": due, "kind": "call", "text": "ask about "
                                                                  "the refund", "by": "maria"})
    assert r.status_code == 201 and (r.json()["kind"], r.json()["status"]) == ("call", "open"), r.text
    followup = r.json()
    for bad in [{"due_at": "2020-01-01T00:00:00+00:00", "text": "x"}, {"due_at": "2030-01-01T00:00:00", "text": "x"},
                {"due_at": due, "text": ""}, {"due_at": due, "text": "x", "kind": "visit"}, {"due_at": [1]}]:
        assert client.post(f"/api/conversations/{cid}/followups", json=bad).status_code == 422, bad
    assert client.post("/api/conversations/nope/followups", json={"due_at": due, "text": "x"}).status_code == 404
    assert [f["id"] for f in client.get("/api/followups", params={"conversation_id": cid}).json()] == [followup["id"]]
    login(client)
    page = client.get(f"/dashboard/conversations/{cid}")
    assert 'id="conversation-followups"' in page.text and "ask about the refund" in page.text
    assert client.post(f"/api/followups/{followup['id']}/cancel", json={"by": "maria"}).json()["status"] == "cancelled"
    r = client.post(f"/api/followups/{followup['id']}/cancel")
    assert r.status_code == 409 and "is cancelled, not open" in r.text
    assert client.post("/api/followups/nope/cancel").status_code == 404
