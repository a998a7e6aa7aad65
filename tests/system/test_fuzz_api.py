"""Schemathesis over every operation of the app's OpenAPI schema, in-process (ASGI), with the admin token:
no answer may be a 5xx, and every answer with a documented status must match its documented schema.

The app runs on a real SQLite data directory seeded through the API itself: an assistant with a one-document
knowledge base and an open widget, a WhatsApp sender (its Graph API a local stand-in), a template, an API and a
WhatsApp conversation, a rating, an approved answer, a regression case and run, an automation, an event
subscription and one of its events, a follow-up. Most generated ids, names and
tokens are swapped for these real ones, so requests get past the 404 to the code behind it; DELETE operations get
a throw-away set (and a throw-away assistant), so the rest still finds its objects. The chat model is a scripted
one, so routes that call the model answer at once.

Bounded for CI: a few examples per operation and phase (``MAX_EXAMPLES``), no deadline, derandomized (the same
cases on every run). The last test checks the run reached every operation; ``pytest -s`` prints its figures.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import response_schema_conformance

from atende.app import create_app
from atende.services import build_services
from core.settings import Settings
from runtime.whatsapp.standin import GraphStandIn, sign
from tests.conftest import ADMIN_TOKEN, TEST_SECRETS, make_services, wait_for_document
from tests.factories import use_scripted_model

# examples per operation and phase: CI's budget; ATENDE_FUZZ_EXAMPLES=100 for a deeper run by hand
MAX_EXAMPLES = int(os.environ.get("ATENDE_FUZZ_EXAMPLES", "8"))
# how often a generated id is replaced by a seeded one: the rest still probes unknown and malformed ids
REAL_ID_PROBABILITY = 0.6
APP_SECRET = "fuzz-app-secret"
HOURS = "Horário de atendimento\n\nAbrimos de segunda a sexta, das 8h às 18h, e aos sábados das 9h às 13h."

# operation -> statuses answered, filled by the fuzz test and read by the report after it
FUZZ_STATS: dict[str, Counter] = defaultdict(Counter)


def _check(r, status: int | tuple[int, ...] = 200) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r.json() if r.content else {}


def _seed(client: TestClient, name: str, phone_number_id: str) -> dict[str, list]:
    """One assistant and an object of every kind the API reaches by id; returns the ids by parameter name."""
    a = _check(client.post("/api/assistants", json={"name": name}), 201)
    _check(client.patch(f"/api/assistants/{a['id']}", json={"config": {
        "widget": {"allowed_origins": ["*"], "rate_limit_per_minute": 600, "ip_messages_per_minute": 10_000,
                   "ip_sessions_per_hour": 10_000}}}))
    doc = _check(client.post(f"/api/assistants/{a['id']}/documents",
                             files={"file": ("horarios.txt", HOURS.encode())}), 202)
    wait_for_document(client, doc["id"])
    chat = _check(client.post("/api/chat", json={"assistant_id": a["id"], "customer_id": f"{name}-c1",
                                                "message": "Que horas vocês abrem?"}))
    conv = _check(client.get(f"/api/conversations/{chat['conversation_id']}"))
    inbound, reply = conv["messages"][0]["id"], conv["messages"][-1]["id"]
    rating = _check(client.post(f"/api/messages/{reply}/feedback", json={"rating": "good"}), 201)
    approved = _check(client.post(f"/api/assistants/{a['id']}/approved-answers", json={
        "question": "Que horas abrem?", "answer": "Das 8h às 18h."}), 201)
    case = _check(client.post(f"/api/messages/{reply}/regression-case", json={"facts": ["8h"]}), 201)
    run = _check(client.post(f"/api/assistants/{a['id']}/regression-runs"), 202)
    sender = _check(client.post("/api/whatsapp/senders", json={
        "assistant_id": a["id"], "phone_number_id": phone_number_id, "access_token": "token", "waba_id": "waba-1",
        "app_secret": APP_SECRET, "verify_token": f"verify-{name}"}), 201)
    template = _check(client.post("/api/whatsapp/templates", json={
        "sender_id": sender["id"], "name": "pedido_enviado", "language": "pt_BR", "category": "UTILITY",
        "body": "Seu pedido foi enviado.", "status": "APPROVED"}), 201)
    whatsapp_conv = _whatsapp_conversation(client, phone_number_id, f"5511{len(name):09d}")
    token = _check(client.post(f"/api/widget/{a['id']}/session"))["token"]
    widget_message = _check(client.post(f"/api/widget/{a['id']}/messages",
                                        json={"token": token, "message": "Vocês abrem sábado?"}), 202)["message_id"]
    widget_reply = _widget_reply(client, a["id"], widget_message, token)
    automation = _check(client.post("/api/automations", json={
        "sender_id": sender["id"], "name": f"{name}-automation", "template_name": template["name"],
        "template_language": template["language"], "message": "Olá {{nome}}"}), 201)
    subscription = _check(client.post(f"/api/assistants/{a['id']}/event-subscriptions", json={
        "url": "https://receiver.invalid/events", "events": ["feedback.given"]}), 201)
    _check(client.post(f"/api/messages/{reply}/feedback", json={"rating": "good"}), 201)  # an event for it
    event = _check(client.get("/api/events", params={"assistant_id": a["id"]}))[0]
    followup = _check(client.post(f"/api/conversations/{chat['conversation_id']}/followups", json={
        "due_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(), "kind": "call", "text": "ligar"}), 201)
    return {
        "assistant_id": [a["id"], name], "assistant": [name, a["id"]], "document_id": [doc["id"]],
        "job_id": [doc["job"]["id"]], "conversation_id": [chat["conversation_id"], whatsapp_conv],
        "message_id": [reply, inbound, widget_message, widget_reply], "feedback_id": [rating["id"]], "approved_id": [approved["id"]],
        "case_id": [case["id"]], "run_id": [run["id"]], "sender_id": [sender["id"]], "token": [token],
        "name": [template["name"]], "language": [template["language"]], "automation_id": [automation["id"]],
        "subscription_id": [subscription["id"]], "event_id": [event["id"]], "followup_id": [followup["id"]],
    }


def _widget_reply(client: TestClient, assistant_id: str, message_id: str, token: str) -> str:
    """The id of the AI reply to a widget message, once the turn (in the background) has answered."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reply = _check(client.post(f"/api/widget/{assistant_id}/messages/{message_id}/reply", json={"token": token}))
        if reply["message_id"]:
            return reply["message_id"]
        time.sleep(0.1)
    raise AssertionError(f"widget message {message_id} got no reply")


def _whatsapp_conversation(client: TestClient, phone_number_id: str, customer: str) -> str:
    """A customer's message through the signed webhook: a WhatsApp conversation with an open 24-hour window."""
    value = {"messaging_product": "whatsapp", "metadata": {"phone_number_id": phone_number_id},
             "contacts": [{"profile": {"name": "Ana"}, "wa_id": customer}],
             "messages": [{"from": customer, "id": f"wamid.{customer}", "type": "text",
                           "timestamp": str(int(time.time())), "text": {"body": "Oi"}}]}
    raw = json.dumps({"object": "whatsapp_business_account",
                      "entry": [{"id": "waba-1", "changes": [{"field": "messages", "value": value}]}]}).encode()
    _check(client.post("/webhooks/whatsapp", content=raw, headers={
        "X-Hub-Signature-256": sign(APP_SECRET, raw), "Content-Type": "application/json"}))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the post is processed in the background
        page = _check(client.get("/api/conversations", params={"channel": "whatsapp", "customer": customer}))
        if page["items"]:
            return page["items"][0]["id"]
        time.sleep(0.1)
    raise AssertionError(f"the webhook post of {customer} was not processed")


def _website_source(services, assistant_id: str) -> str:
    from kb import registry, websites

    with services.session() as session:
        kb = registry.get_assistant(session, assistant_id).knowledge_base
        source = websites.create_source(session, kb, websites.SourceSettings(url="https://loja.example/",
                                                                             sync_interval_hours=0))
        session.commit()
        return source.id


def _use_seeded_ids(case, ids: dict[str, list], rng: random.Random) -> None:
    """Swap most generated ids, names and tokens of ``case`` (path, query, body) for seeded ones."""
    for container in (case.path_parameters, case.query, case.body):
        if not isinstance(container, dict):
            continue
        for name, values in ids.items():
            if name in container and rng.random() < REAL_ID_PROBABILITY:
                container[name] = rng.choice(values)


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, embedders):
    """The real app and two seeded sets of ids; its lifespan (job consumer, widget pool) is started by
    schemathesis at the first request and stopped at teardown."""
    with GraphStandIn() as graph:
        services = make_services(tmp_path_factory.mktemp("fuzz") / "home", embedders, whatsapp_graph_url=graph.base_url)
        # every model call gets a reply at once; more than the run can ask for
        use_scripted_model(services).enqueue(*["Abrimos das 8h às 18h."] * 5000)
        app = create_app(services=services)
        with TestClient(app) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            ids = {"kept": _seed(client, "loja", "100000001"), "doomed": _seed(client, "descarte", "100000002")}
            for seeded in ids.values():  # a website source each (created directly: the API would ask the site)
                seeded["source_id"] = [_website_source(services, seeded["assistant_id"][0])]
            # deleting "descarte" itself would take its objects along before their own DELETE comes
            ids["doomed"]["assistant_id"] = [_seed(client, "vazia", "100000003")["assistant_id"][0]]
        yield app, ids
        shutdown_lifespans()
        services.engine.dispose()


def _openapi_document() -> dict:
    """The app's OpenAPI document (needed at collection). Building an app takes a data directory: a throw-away
    one, never read, does."""
    with tempfile.TemporaryDirectory() as home:
        services = build_services(Settings(home=Path(home), **TEST_SECRETS), run_migrations=False)
        try:
            return create_app(services=services).openapi()
        finally:
            services.engine.dispose()


schema = schemathesis.openapi.from_dict(_openapi_document(), config=schemathesis.Config.from_dict({
    "base-url": "http://testserver",
    # a bound on "never hangs" with room for a busy CI machine (building an approved-answer index takes seconds)
    "request-timeout": 60,
    "headers": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
    "phases": {"stateful": {"enabled": False}},
}))


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck), print_blob=True)
def test_every_operation_answers_without_5xx_and_as_documented(case, fuzz_app):
    app, ids = fuzz_app
    # chosen from the case itself, so the run stays reproducible; DELETE gets the throw-away set
    rng = random.Random(repr((case.method, case.path, case.path_parameters, case.query, case.body)))
    _use_seeded_ids(case, ids["doomed" if case.method == "DELETE" else "kept"], rng)
    response = case.call_and_validate(app=app, checks=[not_a_server_error, response_schema_conformance])
    FUZZ_STATS[case.operation.label][response.status_code] += 1


def test_the_fuzz_run_reached_every_operation():
    """Every operation of the schema was called, and the seeded ids took most of them past the 404 (a 2xx).
    Prints the run's figures (``pytest -s``)."""
    if not FUZZ_STATS:
        pytest.skip("runs after test_every_operation_answers_without_5xx_and_as_documented")
    operations = [op.label for op in (r.ok() for r in schema.get_all_operations())]
    statuses = sum(FUZZ_STATS.values(), Counter())
    print(f"\nschemathesis: {len(operations)} operations, {statuses.total()} requests, statuses {sorted(statuses.items())}")
    for label in operations:
        print(f"  {FUZZ_STATS[label].total():4d} {label}  {sorted(FUZZ_STATS[label].items())}")
    assert all(FUZZ_STATS[label] for label in operations)
    succeeded = [label for label in operations if any(200 <= status < 300 for status in FUZZ_STATS[label])]
    assert len(succeeded) >= 0.8 * len(operations), sorted(set(operations) - set(succeeded))
