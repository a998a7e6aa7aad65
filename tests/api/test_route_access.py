"""Who may call what, route by route: a table gives every route of the app its least role and whether it is about
one assistant's data; the test walks the app's routes (a route missing from the table fails it), then calls each
one as a viewer, an operator, a supervisor and an admin (personal API tokens; dashboard pages with each one's
session cookie) and as a supervisor who sees only another assistant. Below the route's role, or outside its
assistant: 403. At or above it: the first such call does the real thing (2xx), later ones are never refused.
Real app, real SQLite, real uploads and turns (scripted model)."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from api.sessions import find_session
from atende.app import create_app
from benchmarks.website_sync import LocalSite
from runtime.accounts import tokens, users
from runtime.accounts.roles import ADMIN, OPERATOR, ROLES, SUPERVISOR, VIEWER
from tests.api.test_dashboard import add_conversation
from tests.conftest import ADMIN_TOKEN, make_services
from tests.factories import chat, use_scripted_model, wait_until

PUBLIC = "public"
SUNDAY = datetime(2026, 12, 6, 15, 0, tzinfo=UTC)  # outside business hours: a handoff leaves a follow-up
HOURS = {"timezone": "America/Sao_Paulo", "weekly": {d: [["09:00", "18:00"]] for d in range(5)}}
PASSWORD = "a-long-enough-password"
OUTSIDER = "outsider"  # a supervisor who sees only the other assistant


@dataclass(frozen=True)
class Rule:
    """``role``: the least role (or PUBLIC); ``scope``: "path" or "body" when the route is about one assistant's data
    (the outsider is refused); ``ok``: the statuses of the first allowed call."""

    role: str
    scope: str | None = None
    json: dict | None = None
    data: dict | None = None
    files: dict | None = None
    params: dict | None = None
    ok: tuple[int, ...] = (200, 201, 202, 204, 303)


SENDER = {"assistant_id": "{assistant_id}", "phone_number_id": "phone-new", "access_token": "t", "app_secret": "s", "verify_token": "v"}
SUBSCRIPTION = {"url": "https://receiver.invalid/events", "events": ["feedback.given"]}
TEMPLATE = {"name": "retorno", "language": "pt_BR", "category": "UTILITY", "body": "Olá {{1}}", "status": "APPROVED"}

RULES: dict[tuple[str, str], Rule] = {
    # assistants and knowledge
    ("POST", "/api/assistants"): Rule(SUPERVISOR, json={"name": "novo"}),
    ("GET", "/api/assistants"): Rule(VIEWER),
    ("GET", "/api/assistants/{assistant_id}"): Rule(VIEWER, "path"),
    ("PATCH", "/api/assistants/{assistant_id}"): Rule(SUPERVISOR, "path", json={"description": "changed"}),
    ("DELETE", "/api/assistants/{assistant_id}"): Rule(ADMIN, "path"),  # on the victim assistant
    ("POST", "/api/assistants/{assistant_id}/search"): Rule(VIEWER, "path", json={"query": "horário de sábado"}),
    ("POST", "/api/assistants/{assistant_id}/documents"): Rule(
        SUPERVISOR, "path", files={"file": ("novo.txt", b"Aos domingos fechamos.", "text/plain")}),
    ("GET", "/api/assistants/{assistant_id}/documents"): Rule(VIEWER, "path"),
    ("GET", "/api/documents/{document_id}"): Rule(VIEWER, "path"),
    ("DELETE", "/api/documents/{document_id}"): Rule(SUPERVISOR, "path"),  # the victim document
    ("POST", "/api/documents/{document_id}/reindex"): Rule(SUPERVISOR, "path"),
    ("GET", "/api/jobs/{job_id}"): Rule(VIEWER, "path"),
    ("POST", "/api/assistants/{assistant_id}/websites"): Rule(
        SUPERVISOR, "path", json={"url": "{new_site_page}", "max_depth": 0, "request_interval_s": 0}),
    ("GET", "/api/assistants/{assistant_id}/websites"): Rule(VIEWER, "path"),
    ("GET", "/api/websites/{source_id}"): Rule(VIEWER, "path"),
    ("PATCH", "/api/websites/{source_id}"): Rule(SUPERVISOR, "path", json={"sync_interval_hours": 0}),
    ("DELETE", "/api/websites/{source_id}"): Rule(SUPERVISOR, "path"),  # the victim source
    ("POST", "/api/websites/{source_id}/sync"): Rule(SUPERVISOR, "path", ok=(202,)),
    ("GET", "/api/websites/{source_id}/runs"): Rule(VIEWER, "path"),
    ("POST", "/api/console/chat"): Rule(SUPERVISOR, "body", json={"assistant_id": "{assistant_id}", "customer_id": "console",
                                                                  "message": "Abrem sábado?"}),
    # conversations and review
    ("GET", "/api/conversations"): Rule(VIEWER),
    ("GET", "/api/conversations/export"): Rule(SUPERVISOR),
    ("GET", "/api/handoff-queue"): Rule(VIEWER),
    ("GET", "/api/metrics"): Rule(VIEWER),
    ("GET", "/api/insights"): Rule(VIEWER),
    ("POST", "/api/chat"): Rule(OPERATOR, "body", json={"assistant_id": "{assistant_id}", "customer_id": "script",
                                                         "message": "Vocês abrem sábado?"}),
    ("GET", "/api/conversations/{conversation_id}"): Rule(VIEWER, "path"),
    ("POST", "/api/conversations/{conversation_id}/messages"): Rule(OPERATOR, "path", json={"text": "Olá, aqui é a Ana."}),
    ("POST", "/api/conversations/{conversation_id}/ai"): Rule(OPERATOR, "path", json={"enabled": False}),
    ("POST", "/api/conversations/{conversation_id}/handback"): Rule(OPERATOR, "path", json={"reason": "done"}),
    ("POST", "/api/conversations/{conversation_id}/close"): Rule(OPERATOR, "path"),
    ("GET", "/api/messages/{message_id}/media"): Rule(VIEWER, "path", ok=(404,)),  # no file: found only after the check
    ("GET", "/api/feedback/reasons"): Rule(VIEWER),
    ("POST", "/api/messages/{message_id}/feedback"): Rule(SUPERVISOR, "path", json={"rating": "good"}),
    ("GET", "/api/messages/{message_id}/feedback"): Rule(VIEWER, "path"),
    ("DELETE", "/api/feedback/{feedback_id}"): Rule(SUPERVISOR, "path"),
    ("GET", "/api/followups"): Rule(VIEWER),
    ("POST", "/api/followups/{followup_id}/done"): Rule(OPERATOR, "path", json={"by": "ana"}),
    # approved answers and regression checks
    ("GET", "/api/assistants/{assistant_id}/approved-answers"): Rule(VIEWER, "path"),
    ("POST", "/api/assistants/{assistant_id}/approved-answers"): Rule(
        SUPERVISOR, "path", json={"question": "Abrem domingo?", "answer": "Não."}),
    ("POST", "/api/assistants/{assistant_id}/approved-answers/import"): Rule(
        SUPERVISOR, "path", files={"file": ("a.csv", b"question,answer\nTem estacionamento?,Sim.\n", "text/csv")}),
    ("POST", "/api/assistants/{assistant_id}/approved-answers/match"): Rule(VIEWER, "path", json={"text": "abrem?"}),
    ("GET", "/api/approved-answers/{approved_id}"): Rule(VIEWER, "path"),
    ("PATCH", "/api/approved-answers/{approved_id}"): Rule(SUPERVISOR, "path", json={"answer": "Sim, das 9h às 13h."}),
    ("DELETE", "/api/approved-answers/{approved_id}"): Rule(SUPERVISOR, "path"),
    ("POST", "/api/messages/{message_id}/regression-case"): Rule(SUPERVISOR, "path", json={"facts": ["9h"]}),
    ("GET", "/api/assistants/{assistant_id}/regression-cases"): Rule(VIEWER, "path"),
    ("POST", "/api/assistants/{assistant_id}/regression-cases"): Rule(
        SUPERVISOR, "path", json={"question": "Abrem domingo?", "expected_status": "answered"}),
    ("GET", "/api/regression-cases/{case_id}"): Rule(VIEWER, "path"),
    ("PATCH", "/api/regression-cases/{case_id}"): Rule(SUPERVISOR, "path", json={"note": "checked"}),
    ("DELETE", "/api/regression-cases/{case_id}"): Rule(SUPERVISOR, "path"),
    ("POST", "/api/assistants/{assistant_id}/regression-runs"): Rule(SUPERVISOR, "path", ok=(202, 409)),
    ("GET", "/api/assistants/{assistant_id}/regression-runs"): Rule(VIEWER, "path"),
    ("GET", "/api/regression-runs/{run_id}"): Rule(VIEWER, "path"),
    # WhatsApp numbers and templates
    ("POST", "/api/whatsapp/senders"): Rule(ADMIN, json=SENDER),
    ("GET", "/api/whatsapp/senders"): Rule(VIEWER),
    ("PATCH", "/api/whatsapp/senders/{sender_id}"): Rule(ADMIN, "path", json={"mark_read": False}),
    ("DELETE", "/api/whatsapp/senders/{sender_id}"): Rule(ADMIN, "path"),
    ("POST", "/api/whatsapp/templates"): Rule(SUPERVISOR, "body", json={**TEMPLATE, "name": "novo_modelo",
                                                                        "sender_id": "{sender_id}"}),
    ("GET", "/api/whatsapp/templates"): Rule(VIEWER),
    ("POST", "/api/whatsapp/messages/template"): Rule(
        OPERATOR, "body", json={"sender_id": "{sender_id}", "customer_id": "5511999990001", "name": "retorno", "language": "pt_BR",
                                "parameters": ["Ana"]}, ok=(201, 502)),  # the Graph API is a closed port here
    # customers' data, the audit trail, accounts
    ("GET", "/api/customers/{customer_id}/export"): Rule(ADMIN),
    ("POST", "/api/customers/{customer_id}/erase"): Rule(ADMIN, json={"requested_by": "dpo"}),
    ("GET", "/api/customers/{customer_id}/erasures"): Rule(ADMIN),
    ("GET", "/api/retention/runs"): Rule(ADMIN),
    # automations and outbound events: admins (an automation's run is public, authed by the automation's own token)
    ("POST", "/api/automations"): Rule(ADMIN, json={"sender_id": "{sender_id}", "name": "nova", "message": "Oi"}),
    ("GET", "/api/automations"): Rule(ADMIN),
    ("GET", "/api/automations/{automation_id}"): Rule(ADMIN),
    ("PATCH", "/api/automations/{automation_id}"): Rule(ADMIN, json={"message": "Olá de novo"}),
    ("POST", "/api/automations/{automation_id}/token"): Rule(ADMIN),
    ("DELETE", "/api/automations/{automation_id}"): Rule(ADMIN),
    ("GET", "/api/automations/{automation_id}/runs"): Rule(ADMIN),
    ("POST", "/api/assistants/{assistant_id}/event-subscriptions"): Rule(ADMIN, "path", json=SUBSCRIPTION),
    ("GET", "/api/assistants/{assistant_id}/event-subscriptions"): Rule(ADMIN, "path"),
    ("PATCH", "/api/event-subscriptions/{subscription_id}"): Rule(ADMIN, json={"description": "CRM"}),
    ("DELETE", "/api/event-subscriptions/{subscription_id}"): Rule(ADMIN),
    ("GET", "/api/events"): Rule(ADMIN),
    ("GET", "/api/events/{event_id}"): Rule(ADMIN),
    ("POST", "/api/events/{event_id}/resend"): Rule(ADMIN),
    ("GET", "/dashboard/events"): Rule(ADMIN),
    ("POST", "/dashboard/events/{event_id}/resend"): Rule(ADMIN),
    # follow-ups scheduled by operators
    ("POST", "/api/conversations/{conversation_id}/followups"): Rule(
        OPERATOR, "path", json={"due_at": "2027-01-10T12:00:00+00:00", "kind": "call", "text": "ligar"}),
    ("POST", "/api/followups/{followup_id}/cancel"): Rule(OPERATOR, "path", json={"by": "ana"}),
    ("POST", "/dashboard/followups/{followup_id}/cancel"): Rule(OPERATOR, "path", data={"by": "ana"}),
    ("GET", "/api/audit"): Rule(ADMIN),
    ("GET", "/api/audit/export"): Rule(ADMIN),
    ("GET", "/api/users"): Rule(ADMIN),
    ("POST", "/api/users"): Rule(ADMIN, json={"email": "new@example.com", "role": "viewer"}),
    ("GET", "/api/users/{user_id}"): Rule(ADMIN),
    ("PATCH", "/api/users/{user_id}"): Rule(ADMIN, json={"name": "Victim"}),
    ("GET", "/api/me"): Rule(VIEWER),
    ("GET", "/api/me/sessions"): Rule(VIEWER),
    ("DELETE", "/api/me/sessions/{session_id}"): Rule(VIEWER),
    ("GET", "/api/me/tokens"): Rule(VIEWER),
    ("POST", "/api/me/tokens"): Rule(VIEWER, json={"name": "script"}),
    ("DELETE", "/api/me/tokens/{token_id}"): Rule(VIEWER),
    # dashboard pages and their forms
    ("GET", "/dashboard/conversations"): Rule(VIEWER),
    ("GET", "/dashboard/conversations/{conversation_id}"): Rule(VIEWER, "path"),
    ("GET", "/dashboard/queue"): Rule(VIEWER),
    ("GET", "/dashboard/metrics"): Rule(VIEWER),
    ("GET", "/dashboard/improve"): Rule(VIEWER),
    ("GET", "/dashboard/knowledge"): Rule(VIEWER, "path", params={"assistant_id": "{assistant_id}"}),
    ("GET", "/dashboard/console"): Rule(SUPERVISOR, "path", params={"assistant_id": "{assistant_id}"}),
    ("GET", "/dashboard/approved"): Rule(VIEWER, "path", params={"assistant_id": "{assistant_id}"}),
    ("GET", "/dashboard/regression"): Rule(VIEWER, "path", params={"assistant_id": "{assistant_id}"}),
    ("GET", "/dashboard/followups"): Rule(VIEWER),
    ("POST", "/dashboard/followups/{followup_id}/done"): Rule(OPERATOR, "path", data={"by": "ana"}),
    ("GET", "/dashboard/account"): Rule(VIEWER),
    ("POST", "/dashboard/account/sessions/{session_id}/end"): Rule(VIEWER),
    ("POST", "/dashboard/account/tokens"): Rule(VIEWER, data={"name": "from the page"}),
    ("POST", "/dashboard/account/tokens/{token_id}/revoke"): Rule(VIEWER),
    ("GET", "/dashboard/accounts"): Rule(ADMIN),
    ("POST", "/dashboard/accounts"): Rule(ADMIN, data={"email": "page@example.com", "role": "operator"}),
    ("POST", "/dashboard/accounts/{user_id}"): Rule(ADMIN, data={"role": "viewer", "active": "true"}),
    # last: a password change signs the user out of their other sessions (through a token: of all)
    ("POST", "/dashboard/account/password"): Rule(VIEWER, data={"current_password": PASSWORD,
                                                               "new_password": PASSWORD + "!"}),
    ("POST", "/api/me/password"): Rule(VIEWER, json={"current_password": PASSWORD + "!", "new_password": PASSWORD}),
    # public: the customer's channels, Meta's webhook, signing in, the language switch, the API's own documents
    **{route: Rule(PUBLIC) for route in [
        ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"),
        ("GET", "/widget.js"), ("OPTIONS", "/api/widget/{assistant}/{endpoint:path}"),
        ("GET", "/api/widget/{assistant}/config"), ("POST", "/api/widget/{assistant}/session"),
        ("POST", "/api/widget/{assistant}/messages"), ("POST", "/api/widget/{assistant}/messages/{message_id}/reply"),
        ("POST", "/api/widget/{assistant}/messages/{message_id}/feedback"), ("POST", "/api/widget/{assistant}/history"),
        ("GET", "/webhooks/whatsapp"), ("POST", "/webhooks/whatsapp"), ("GET", "/dashboard/login"),
        ("POST", "/dashboard/login"), ("POST", "/dashboard/logout"), ("GET", "/dashboard/"), ("GET", "/dashboard"),
        ("POST", "/dashboard/language"),  # the language switch: signed out too, on the login page
        ("GET", "/"), ("GET", "/healthz"), ("MOUNT", "/static"), ("POST", "/api/automations/{automation_id}/runs")]},
}
# routes whose path ids name a resource made to be deleted (or changed) by this walk
VICTIMS = {
    ("DELETE", "/api/assistants/{assistant_id}"): {"assistant_id": "victim_assistant"},
    ("DELETE", "/api/documents/{document_id}"): {"document_id": "victim_document"},
    ("DELETE", "/api/websites/{source_id}"): {"source_id": "victim_source"},
    ("DELETE", "/api/approved-answers/{approved_id}"): {"approved_id": "victim_approved"},
    ("DELETE", "/api/regression-cases/{case_id}"): {"case_id": "victim_case"},
    ("DELETE", "/api/whatsapp/senders/{sender_id}"): {"sender_id": "victim_sender"},
    ("GET", "/api/users/{user_id}"): {"user_id": "victim_user"},
    ("PATCH", "/api/users/{user_id}"): {"user_id": "victim_user"},
    ("POST", "/dashboard/accounts/{user_id}"): {"user_id": "victim_user"},
    ("POST", "/dashboard/account/sessions/{session_id}/end"): {"session_id": "page_session_id"},
    ("POST", "/dashboard/followups/{followup_id}/done"): {"followup_id": "page_followup"},
    ("DELETE", "/api/automations/{automation_id}"): {"automation_id": "victim_automation"},
    ("DELETE", "/api/event-subscriptions/{subscription_id}"): {"subscription_id": "victim_subscription"},
    ("POST", "/api/followups/{followup_id}/cancel"): {"followup_id": "cancel_followup"},
    ("POST", "/dashboard/followups/{followup_id}/cancel"): {"followup_id": "page_cancel_followup"},
}


def app_routes(app) -> set[tuple[str, str]]:
    """Every (method, path) the app serves, its included routers walked (HEAD left out: GET's twin)."""
    found: set[tuple[str, str]] = set()

    def walk(routes) -> None:
        for route in routes:
            if hasattr(route, "effective_candidates"):  # an included router
                walk(route.effective_candidates())
                continue
            original = getattr(route, "original_route", route)
            methods = getattr(original, "methods", None) or {"MOUNT"}
            found.update((m, route.path) for m in methods - {"HEAD"})

    walk(app.routes)
    return found


@dataclass
class World:
    client: TestClient
    ids: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)  # role -> personal API token
    cookies: dict[str, str] = field(default_factory=dict)  # role -> dashboard session cookie
    own: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> its own token_id / session_id to end


def _login(client: TestClient, email: str) -> str:
    r = client.post("/dashboard/login", data={"email": email, "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 303, r.text
    value = r.cookies["atende_session"]
    client.cookies.clear()
    return value


@pytest.fixture(scope="module")
def world(tmp_path_factory, embedders):
    services = make_services(tmp_path_factory.mktemp("access") / "home", embedders)
    model = use_scripted_model(services)
    model.enqueue(*["Aos sábados abrimos das 9h às 13h."] * 200)
    services.clock = lambda: SUNDAY
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with TestClient(create_app(services=services)) as client:
        def make(method: str, url: str, **kw) -> dict:
            r = client.request(method, url, headers=admin, **kw)
            assert r.status_code < 300, (url, r.status_code, r.text)
            return r.json() if r.content else {}

        a = make("POST", "/api/assistants", json={"name": "loja"})["id"]
        other = make("POST", "/api/assistants", json={"name": "outra"})["id"]
        victim = make("POST", "/api/assistants", json={"name": "vitima"})["id"]
        make("PATCH", f"/api/assistants/{a}", json={"config": {"handoff": {"business_hours": HOURS}}})
        doc = make("POST", f"/api/assistants/{a}/documents",
                   files={"file": ("horarios.txt", b"Aos sabados abrimos das 9h as 13h.", "text/plain")})
        victim_doc = make("POST", f"/api/assistants/{a}/documents", files={"file": ("apagar.txt", b"Apagar.", "text/plain")})
        for d in (doc, victim_doc):  # ingested before the walk re-indexes one
            wait_until(lambda d=d: make("GET", f"/api/documents/{d['id']}")["status"] == "ready", what="ingestion")
        site = LocalSite(tmp_path_factory.mktemp("site")).start()  # a website on loopback, let through for the walk
        services.settings.website_allow_private = True
        for page in ("horarios", "entrega", "nova"):
            site.write(f"/{page}.html", f"<h1>{page}</h1><p>Página {page} da loja, aberta aos sábados.</p>")
        sources = [make("POST", f"/api/assistants/{a}/websites", json={
            "url": f"{site.url}/{page}.html", "max_depth": 0, "request_interval_s": 0})["id"] for page in ("horarios", "entrega")]
        for source in sources:  # their first syncs done: the victim can be deleted, the other synced again
            wait_until(lambda source=source: make("GET", f"/api/websites/{source}")["last_run"]["status"] == "succeeded",
                       what="website sync")
        conv = add_conversation(services, a, "api", "cliente-42", "Vocês abrem sábado?", "Sim, das 9h às 13h.")
        detail = make("GET", f"/api/conversations/{conv}")
        reply = next(m["id"] for m in detail["messages"] if m["direction"] == "outbound")
        for customer in ("c-1", "c-2"):  # on a Sunday a handoff leaves a follow-up
            chat(services, a, "Quero falar com um atendente", customer=customer)
            chat(services, a, "Ana", customer=customer)
        followups = [f["id"] for f in make("GET", "/api/followups")]
        answers = [make("POST", f"/api/assistants/{a}/approved-answers", json={"question": q, "answer": "Sim."})["id"]
                   for q in ("Abrem sábado?", "Aceitam cartão?")]
        cases = [make("POST", f"/api/assistants/{a}/regression-cases",
                      json={"question": q, "expected_status": "answered"})["id"] for q in ("Abrem?", "Fecham?")]
        run = make("POST", f"/api/assistants/{a}/regression-runs")["id"]
        subscriptions = [make("POST", f"/api/assistants/{a}/event-subscriptions", json=SUBSCRIPTION)["id"]
                         for _ in range(2)]
        feedback = make("POST", f"/api/messages/{reply}/feedback", json={"rating": "bad", "reason": "wrong"})["id"]
        senders = [make("POST", "/api/whatsapp/senders", json={**SENDER, "assistant_id": a, "phone_number_id": p})["id"]
                   for p in ("phone-1", "phone-2")]
        make("POST", "/api/whatsapp/templates", json={**TEMPLATE, "sender_id": senders[0]})
        automations = [make("POST", "/api/automations", json={
            "sender_id": senders[0], "name": name, "template_name": TEMPLATE["name"],
            "template_language": TEMPLATE["language"], "message": "Olá {{nome}}"})["id"] for name in ("crm", "apagar")]
        event = make("GET", "/api/events", params={"assistant_id": a})[0]["id"]  # the feedback's
        scheduled = [make("POST", f"/api/conversations/{conv}/followups", json={
            "due_at": "2027-01-10T12:00:00+00:00", "kind": "message", "text": "Oi"})["id"] for _ in range(2)]
        with services.session() as db:
            grants = [a, victim]
            people = {role: users.create_user(db, email=f"{role}@example.com", role=role, password=PASSWORD,
                                              assistants=grants) for role in ROLES}
            people[OUTSIDER] = users.create_user(db, email="outsider@example.com", role=SUPERVISOR, password=PASSWORD,
                                                 assistants=[other])
            victim_user = users.create_user(db, email="victim@example.com", role=VIEWER, password=PASSWORD)
            db.commit()
            w = World(client, ids={
                "assistant_id": a, "victim_assistant": victim, "document_id": doc["id"], "victim_document": victim_doc["id"],
                "job_id": doc["job"]["id"], "conversation_id": conv, "message_id": reply, "feedback_id": feedback,
                "followup_id": followups[0], "page_followup": followups[1], "approved_id": answers[0],
                "victim_approved": answers[1], "case_id": cases[0], "victim_case": cases[1], "run_id": run,
                "sender_id": senders[0], "victim_sender": senders[1], "automation_id": automations[0],
                "victim_automation": automations[1], "subscription_id": subscriptions[0],
                "victim_subscription": subscriptions[1], "event_id": event, "cancel_followup": scheduled[0],
                "page_cancel_followup": scheduled[1],
                "source_id": sources[0], "victim_source": sources[1], "new_site_page": f"{site.url}/nova.html",
                "customer_id": "5511000000000", "user_id": victim_user.id, "victim_user": victim_user.id})
            for role, user in people.items():
                w.tokens[role] = tokens.issue_token(db, user, "walk")[1]
                w.own[role] = {"token_id": tokens.issue_token(db, user, "to revoke")[0].id}
        for role, user in people.items():
            w.cookies[role] = _login(client, user.email)
            for name in ("session_id", "page_session_id"):  # sessions to end
                spare = _login(client, user.email)
                with services.session() as db:
                    w.own[role][name] = find_session(db, services.settings, spare).ref
        yield w
    site.stop()
    services.engine.dispose()


def _request(w: World, method: str, path: str, rule: Rule, who: str):
    names = {**w.ids, **w.own[who]}
    names.update({k: names[v] for k, v in VICTIMS.get((method, path), {}).items()})
    url = path.format(**names)

    def fill(value):  # "{assistant_id}" and the like: the world's id
        return names[value[1:-1]] if isinstance(value, str) and re.fullmatch(r"\{\w+\}", value) else value

    json = {k: fill(v) for k, v in rule.json.items()} if rule.json is not None else None
    params = {k: fill(v) for k, v in (rule.params or {}).items()}
    if path.startswith("/dashboard"):
        headers = {"Cookie": f"atende_session={w.cookies[who]}"}
    else:
        headers = {"Authorization": f"Bearer {w.tokens[who]}"}
    files = {k: (n, io.BytesIO(b), t) for k, (n, b, t) in rule.files.items()} if rule.files else None
    return w.client.request(method, url, headers=headers, json=json, data=rule.data, files=files, params=params,
                            follow_redirects=False)


def _expected_refusal(rule: Rule, who: str) -> bool:
    if who == OUTSIDER:
        return rule.scope is not None or not ROLES.index(SUPERVISOR) >= ROLES.index(rule.role)
    return ROLES.index(who) < ROLES.index(rule.role)


def test_every_route_of_the_app_has_a_rule(world):
    served = app_routes(world.client.app)
    assert served - set(RULES) == set(), "routes without a rule: add them to RULES"
    assert set(RULES) - served == set(), "rules of routes that no longer exist"


def test_each_role_gets_403_below_its_rights_and_outside_its_assistants(world):
    table: list[tuple[str, str, dict[str, int]]] = []
    for (method, path), rule in RULES.items():
        if rule.role == PUBLIC:
            continue
        statuses: dict[str, int] = {}
        first_allowed = True
        for who in (OUTSIDER, *ROLES):
            r = _request(world, method, path, rule, who)
            statuses[who] = r.status_code
            where = f"{method} {path} as {who}: {r.status_code} {r.text[:300]}"
            if _expected_refusal(rule, who):
                assert r.status_code == 403, where
            else:
                assert r.status_code not in (401, 403) and r.status_code < 500, where
                if first_allowed:
                    assert r.status_code in rule.ok, where
                first_allowed = False
        table.append((method, path, statuses))
    refused = {who: sum(s[who] == 403 for _, _, s in table) for who in (OUTSIDER, *ROLES)}
    print(f"\n{len(table)} routes walked as 5 users; 403s: {refused}")
    assert refused[ADMIN] == 0 and refused[VIEWER] > refused[OPERATOR] > refused[SUPERVISOR] > 0
