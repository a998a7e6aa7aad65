"""The dashboard pages through TestClient: session-cookie login and logout, the cookie on the JSON API,
CSRF refusal, filters kept in the URL, pagination, escaping of customer text, every page for every
channel, the console's ``test`` conversations and re-indexing."""
from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from api.deps import SESSION_COOKIE
from api.sessions import AdminSession, open_session, session_is_open
from runtime.accounts.users import bootstrap_admin
from atende.app import create_app
from core.db import new_id, utcnow
from kb import registry
from kb.types import Source
from runtime import store
from runtime.models import CollectedData
from runtime.types import ToolCall, ToolResult, ToolRun, TurnResult, Usage
from tests.conftest import ADMIN_TOKEN, wait_for_document
from tests.factories import use_scripted_model

XSS = "<script>alert('x')</script>"


@pytest.fixture
def app_client(sqlite_services):
    """A TestClient without credentials: each test signs in (or not) itself."""
    with TestClient(create_app(services=sqlite_services)) as c:
        yield c


def login(client: TestClient) -> None:
    r = client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
    assert r.status_code == 303, r.text


@pytest.fixture
def dash(app_client):
    login(app_client)
    return app_client


def add_conversation(services, assistant_id: str, channel: str, customer: str, text: str, reply: str | None = None,
                     *, sender: str = "s", sources=(), calls=(), variables=None) -> str:
    """A conversation with one inbound message and, if ``reply``, an answered turn, through the real store."""
    with services.session() as s:
        conv = store.find_or_create_conversation(s, assistant_id=assistant_id, channel=channel, sender=sender,
                                                 customer_id=customer, variables=variables)
        s.commit()
        store.store_inbound(s, conv, text)
        if reply is not None:
            result = TurnResult(conv.id, reply, "answered", sources=[Source(**s) for s in sources], usage=Usage(120, 15), cost=0.00042,
                                timings={"total_ms": 850.0})
            tool_results = [ToolRun(1, ToolCall(f"call_{i}", name, args), ToolResult(f"call_{i}", name, out))
                            for i, (name, args, out) in enumerate(calls)]
            store.log_turn(s, conv, store.pending_inbound(s, conv.id), result, tool_results=tool_results,
                           retrieval_query=text, rounds=1, model="scripted", started_at=utcnow())
        return conv.id


@pytest.fixture
def seeded(sqlite_services, dash):
    """Two assistants and a conversation on each channel (the widget one from a hostile visitor)."""
    services = sqlite_services
    with services.session() as s:
        clinica = registry.create_assistant(s, name="clinica", embedding_model="all-minilm-l6-v2", chunk_size=256,
                                            chunk_overlap=32).id
        loja = registry.create_assistant(s, name="loja", embedding_model="all-minilm-l6-v2", chunk_size=256,
                                         chunk_overlap=32).id
        s.commit()
    source = {"rank": 1, "chunk_id": "c1", "document_id": "d1", "version": 1, "filename": "horarios.pdf", "page": 2,
              "section": "Sábado", "score": 0.8123, "text": "Aos sábados abrimos das 9h às 13h."}
    ids = {"clinica": clinica, "loja": loja}
    ids["whatsapp"] = add_conversation(services, clinica, "whatsapp", "5511999990001", "Abrem no sábado?",
                                       "Sim, das 9h às 13h [1].", sender="phone-1", sources=[source],
                                       calls=[("search_knowledge_base", {"query": "sábado"}, "[1] Aos sábados")])
    ids["widget"] = add_conversation(services, clinica, "widget", "visitor-<b>bold</b>", XSS, "Olá!")
    ids["test"] = add_conversation(services, loja, "test", "console", "teste", "ok")
    ids["api"] = add_conversation(services, loja, "api", "cliente-42", "Quero um orçamento", "Claro!",
                                  variables={"customer_name": "Ana"})
    with services.session() as s:
        s.add(CollectedData(id=new_id(), conversation_id=ids["api"], field="email", value="ana@example.com"))
        s.commit()
    sender = dash.post("/api/whatsapp/senders", json={
        "assistant_id": clinica, "phone_number_id": "phone-1", "access_token": "t", "app_secret": "a",
        "verify_token": "v"}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    for name, status in (("retorno", "APPROVED"), ("promo", "PENDING")):
        r = dash.post("/api/whatsapp/templates", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, json={
            "sender_id": sender["id"], "name": name, "language": "pt_BR", "category": "UTILITY",
            "body": "Olá {{1}}, podemos continuar?", "status": status})
        assert r.status_code == 201, r.text
    return ids


def rows(html: str) -> list[str]:
    """Conversation ids of the list's rows."""
    return re.findall(r'<tr data-id="([^"]+)"', html)


# --------------------------------------------------------------------------- auth


def test_pages_redirect_to_login_and_back(app_client):
    r = app_client.get("/dashboard/conversations?channel=test", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fconversations%3Fchannel%3Dtest"
    page = app_client.get(r.headers["location"])
    assert page.status_code == 200 and 'value="/dashboard/conversations?channel=test"' in page.text
    r = app_client.post("/dashboard/login", data={"token": ADMIN_TOKEN, "next": "/dashboard/conversations?channel=test"},
                        follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/conversations?channel=test"
    for path in ("/dashboard/metrics", "/dashboard/knowledge", "/dashboard/console", "/dashboard/improve",
                 "/dashboard/conversations/abc"):
        assert app_client.get(path).status_code in (200, 404)


def test_wrong_token_is_a_401_with_a_message_and_no_cookie(app_client):
    r = app_client.post("/dashboard/login", data={"token": "guess"}, follow_redirects=False)
    assert r.status_code == 401 and "Wrong e-mail or password" in r.text
    assert "set-cookie" not in r.headers and SESSION_COOKIE not in app_client.cookies
    assert app_client.post("/dashboard/login", data={}, follow_redirects=False).status_code == 401
    assert app_client.get("/dashboard/conversations", follow_redirects=False).status_code == 303


def test_session_cookie_is_random_httponly_strict_and_expires(app_client, sqlite_services):
    r = app_client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Max-Age=43200" in cookie and ADMIN_TOKEN not in cookie and "Secure" not in cookie  # plain HTTP here
    value = app_client.cookies[SESSION_COOKIE]
    settings = sqlite_services.settings
    with sqlite_services.session() as db:
        assert session_is_open(db, settings, value)
        assert not session_is_open(db, settings, value, now=utcnow() + timedelta(hours=13))  # expired
        assert [row.id for row in db.query(AdminSession)] != [value]  # only a keyed hash is stored
        assert not session_is_open(db, settings.model_copy(update={"admin_token": "rotated-admin-token"}), value)
        assert not session_is_open(db, settings.model_copy(update={"session_secret": "another-session-secret"}),
                                   value)
    app_client.cookies.clear()
    app_client.cookies.set(SESSION_COOKIE, value[:-1] + ("A" if value[-1] != "A" else "B"))  # tampered
    assert app_client.get("/dashboard/conversations", follow_redirects=False).status_code == 303
    assert app_client.get("/api/assistants").status_code == 401


def test_logout_forgets_the_session(dash):
    assert dash.get("/dashboard/conversations").status_code == 200
    r = dash.post("/dashboard/logout", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    assert SESSION_COOKIE not in dash.cookies
    assert dash.get("/dashboard/conversations", follow_redirects=False).status_code == 303


def test_login_never_redirects_off_site(app_client):
    for target in ("https://evil.example/", "//evil.example/x", "/dashboard//evil.example", "/api/assistants"):
        r = app_client.post("/dashboard/login", data={"token": ADMIN_TOKEN, "next": target}, follow_redirects=False)
        assert r.headers["location"] == "/dashboard/conversations", target


def test_json_api_takes_the_bearer_token_or_the_cookie(app_client):
    assert app_client.get("/api/assistants").status_code == 401
    assert app_client.get("/api/assistants", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
    login(app_client)
    assert app_client.get("/api/assistants").status_code == 200
    # a wrong bearer token is refused even with a valid cookie
    assert app_client.get("/api/assistants", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_cookie_requests_from_another_site_are_refused(dash):
    new = {"name": "a", "embedding_model": "all-minilm-l6-v2"}
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "http://testserver.evil.example"}):
        r = dash.post("/api/assistants", json=new, headers=headers)
        assert r.status_code == 403 and r.json()["detail"] == "cross-site request refused", headers
    assert dash.get("/api/assistants").json() == []  # nothing was created
    assert dash.get("/api/assistants", headers={"Origin": "https://evil.example"}).status_code == 200  # reads are safe
    assert dash.post("/api/assistants", json=new, headers={"Origin": "http://testserver"}).status_code == 201
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Origin": "https://evil.example"}  # not ambient: allowed
    assert dash.post("/api/assistants", json={**new, "name": "b"}, headers=bearer).status_code == 201
    assert dash.post("/dashboard/logout", headers={"Origin": "https://evil.example"}).status_code == 403
    assert dash.post("/dashboard/login", data={"token": ADMIN_TOKEN},
                     headers={"Origin": "https://evil.example"}).status_code == 403


# --------------------------------------------------------------------------- conversation list


def test_list_shows_every_channel_with_badges_costs_and_ai_state(dash, seeded):
    html = dash.get("/dashboard/conversations").text
    assert set(rows(html)) == {seeded[c] for c in ("whatsapp", "widget", "test", "api")}
    for label in ("WhatsApp", "Widget", "Test", "API"):
        assert f">{label}</span>" in html
    assert "5511999990001" in html and "cliente-42" in html and "clinica" in html and "loja" in html
    assert "$0.0004" in html and '<span class="pill on">on</span>' in html
    assert "4 conversations" in html


def test_filters_live_in_the_url_and_select_rows(dash, seeded):
    def ids(query: str) -> set[str]:
        r = dash.get(f"/dashboard/conversations?{query}")
        assert r.status_code == 200, r.text
        return set(rows(r.text))

    assert ids("channel=whatsapp") == {seeded["whatsapp"]}
    assert ids(f"assistant_id={seeded['loja']}") == {seeded["test"], seeded["api"]}
    assert ids("customer=CLIENTE") == {seeded["api"]}
    today = utcnow().date()
    assert len(ids(f"since={today}&until={today}")) == 4
    assert ids(f"until={today - timedelta(days=1)}") == set()
    assert ids(f"since={today + timedelta(days=1)}") == set()
    page = dash.get("/dashboard/conversations?channel=api&customer=42").text
    assert '<option value="api" selected>' in page and 'name="customer" value="42"' in page
    export = re.search(r'id="export-csv" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert parse_qs(urlsplit(export).query) == {"channel": ["api"], "customer": ["42"], "format": ["csv"]}


def test_waiting_for_a_human_view(dash, seeded):
    dash.post(f"/api/conversations/{seeded['widget']}/ai", json={"enabled": False})
    html = dash.get("/dashboard/conversations?waiting_for_human=true").text
    assert rows(html) == [seeded["widget"]] and "<h1>Waiting for a human</h1>" in html
    assert '<span class="pill off"' in html


def test_the_queue_lists_who_waits_apart_from_who_has_a_person_and_closes(dash, seeded):
    """A customer asking for a person waits; a conversation an operator paused is with a person; closing one takes
    it off the queue (logged, nothing sent); the metrics count both handoffs."""
    asked = dash.post("/api/chat", json={"assistant_id": seeded["loja"], "customer_id": "cliente-7",
                                         "message": "Quero falar com um atendente"}).json()
    assert asked["status"] == "handoff"
    dash.post(f"/api/conversations/{seeded['widget']}/ai", json={"enabled": False})
    html = dash.get("/dashboard/queue").text
    waiting, with_human = html.split('id="with-human"')
    assert rows(waiting) == [asked["conversation_id"]] and rows(with_human) == [seeded["widget"]]
    assert "the customer asked for a person" in waiting and "Quero falar com um atendente" in waiting
    assert "an operator paused the AI" in with_human and XSS not in html
    assert 'href="/dashboard/queue" class="active"' in html
    assert rows(dash.get(f"/dashboard/queue?assistant_id={seeded['clinica']}").text) == [seeded["widget"]]
    assert dash.get("/dashboard/queue?channel=fax").status_code == 400
    q = dash.get("/api/handoff-queue").json()
    assert [i["id"] for i in q["waiting"]] == [asked["conversation_id"]] and q["waiting"][0]["waiting_s"] >= 0
    assert [i["id"] for i in q["with_human"]] == [seeded["widget"]]

    closed = dash.post(f"/api/conversations/{seeded['widget']}/close")
    assert closed.status_code == 200 and closed.json()["handoff_state"] == "ai"
    assert rows(dash.get("/dashboard/queue").text) == [asked["conversation_id"]]
    detail = dash.get(f"/api/conversations/{seeded['widget']}").json()
    assert detail["handoff_changes"][-1]["reason"] == "an operator closed the conversation"
    assert [m["kind"] for m in detail["messages"]] == ["text", "text"]  # the customer was not messaged
    handoffs = dash.get("/api/metrics").json()["handoffs"]
    assert handoffs["by_reason"]["customer_request"] == 1 and handoffs["by_reason"]["operator_takeover"] == 1
    assert (handoffs["abandoned"], handoffs["still_waiting"]) == (0, 1)  # the paused one never waited
    metrics = dash.get("/dashboard/metrics").text
    assert re.search(r'<tr data-reason="customer_request"><td>customer request</td><td class="num">1</td>', metrics)
    assert "1 still waiting" in metrics


def test_bad_filters_are_a_400_with_the_reason(dash, seeded):
    for query, reason in (("since=yesterday", "since: &#39;yesterday&#39; is not an ISO date"),
                          ("channel=fax", "unknown channel"), ("waiting_for_human=maybe", "not true or false")):
        r = dash.get(f"/dashboard/conversations?{query}")
        assert r.status_code == 400 and reason in r.text, query
        r = dash.get(f"/dashboard/metrics?{query}")
        assert r.status_code == 400 and reason in r.text, query


def test_pagination_keeps_the_filters(dash, sqlite_services):
    with sqlite_services.session() as s:
        a = registry.create_assistant(s, name="bulk", embedding_model="all-minilm-l6-v2", chunk_size=256,
                                      chunk_overlap=32).id
        s.commit()
    for i in range(30):
        add_conversation(sqlite_services, a, "api", f"cust-{i:02d}", "oi")
    first = dash.get("/dashboard/conversations?channel=api").text
    assert len(rows(first)) == 25 and "page 1 of 2" in first and 'rel="prev"' not in first
    next_link = re.search(r'rel="next" href="\?([^"]+)"', first).group(1).replace("&amp;", "&")
    assert parse_qs(next_link) == {"channel": ["api"], "page": ["2"]}
    second = dash.get(f"/dashboard/conversations?{next_link}").text
    assert len(rows(second)) == 5 and not set(rows(first)) & set(rows(second)) and 'rel="prev"' in second


# --------------------------------------------------------------------------- detail


def test_customer_text_is_shown_as_text(dash, seeded):
    html = dash.get(f"/dashboard/conversations/{seeded['widget']}").text
    assert XSS not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html and "visitor-&lt;b&gt;bold&lt;/b&gt;" in html
    listing = dash.get("/dashboard/conversations").text
    assert "<b>bold</b>" not in listing and "visitor-&lt;b&gt;bold&lt;/b&gt;" in listing


def test_detail_shows_sources_calls_usage_and_whatsapp_actions(dash, seeded):
    html = dash.get(f"/dashboard/conversations/{seeded['whatsapp']}").text
    assert "Abrem no sábado?" in html and "Sim, das 9h às 13h [1]." in html
    assert "horarios.pdf" in html and "page 2" in html and "Sábado" in html and "score 0.812" in html
    assert "Aos sábados abrimos das 9h às 13h." in html
    assert "<code>search_knowledge_base</code>" in html and "&#34;query&#34;: &#34;sábado&#34;" in html
    assert "120 in / 15 out tokens" in html and "850 ms" in html
    assert 'class="status st-answered"' in html
    assert 'id="send-template"' in html and "retorno (pt_BR, 1 parameter)" in html and "promo" not in html
    assert "24-hour window" in html


def test_detail_shows_variables_and_collected_data_and_no_templates_off_whatsapp(dash, seeded):
    html = dash.get(f"/dashboard/conversations/{seeded['api']}").text
    assert "customer_name" in html and "Ana" in html and "ana@example.com" in html
    assert 'id="send-template"' not in html and 'id="operator-reply"' in html and 'id="toggle-ai"' in html
    assert "no change" in html and 'id="hand-back"' not in html


def test_detail_shows_the_handoff_log_and_hands_back(dash, seeded):
    cid = seeded["api"]
    assert dash.post(f"/api/conversations/{cid}/messages", json={"text": "Oi, sou a Maria."}).status_code == 201
    html = dash.get(f"/dashboard/conversations/{cid}").text
    assert "off (an operator has it)" in html and 'id="hand-back"' in html and 'id="toggle-ai"' not in html
    assert 'id="close-conversation"' in html
    assert "ai &rarr; with_human by operator (an operator replied)" in html
    assert dash.post(f"/api/conversations/{cid}/handback", json={}).json()["handoff_state"] == "ai"
    html = dash.get(f"/dashboard/conversations/{cid}").text
    assert 'id="toggle-ai"' in html and "with_human &rarr; ai by operator" in html
    assert "Notice" in html  # the customer was told the AI is back
    for channel in ("widget", "test"):
        r = dash.get(f"/dashboard/conversations/{seeded[channel]}")
        assert r.status_code == 200 and 'id="send-template"' not in r.text


def test_unknown_conversation_is_a_404_page(dash):
    r = dash.get("/dashboard/conversations/nope")
    assert r.status_code == 404 and "Conversation not found" in r.text


# --------------------------------------------------------------------------- other pages


def test_metrics_page_shows_figures_and_a_chart_under_filters(dash, seeded):
    html = dash.get("/dashboard/metrics").text
    assert re.search(r"<span>Conversations</span><b>4</b>", html)
    assert '<svg class="chart" id="chart"' in html and 'class="bar-messages"' in html
    assert re.search(r"<span>Response rate</span><b>100.0%</b>", html)
    html = dash.get(f"/dashboard/metrics?channel=whatsapp&assistant_id={seeded['clinica']}").text
    assert re.search(r"<span>Conversations</span><b>1</b>", html) and '<option value="whatsapp" selected>' in html
    empty = dash.get("/dashboard/metrics?customer=nobody").text
    assert "No messages in this selection." in empty


def test_improve_knowledge_console_pages_render(dash, seeded):
    improve = dash.get("/dashboard/improve?channel=widget")
    assert improve.status_code == 200 and 'data-query="channel=widget"' in improve.text
    kb = dash.get(f"/dashboard/knowledge?assistant_id={seeded['loja']}")
    assert kb.status_code == 200 and "No documents yet." in kb.text and 'data-assistant="' + seeded["loja"] in kb.text
    console = dash.get("/dashboard/console")
    assert console.status_code == 200 and 'id="chat"' in console.text
    assert dash.get("/dashboard/knowledge?assistant_id=nope").status_code == 404
    assert dash.get("/static/dashboard.css").status_code == 200 and dash.get("/static/dashboard.js").status_code == 200


def test_pages_without_assistants(dash):
    assert "No assistants yet" in dash.get("/dashboard/knowledge").text
    assert "No conversations match" in dash.get("/dashboard/conversations").text


# --------------------------------------------------------------------------- console and re-index


@pytest.fixture
def scripted_kb(dash):
    model = use_scripted_model(dash.app.state.services)
    a = dash.post("/api/assistants", json={"name": "loja", "embedding_model": "all-minilm-l6-v2"}).json()
    dash.patch(f"/api/assistants/{a['id']}", json={"config": {"retrieval": {"mode": "as_tool"}}})
    r = dash.post(f"/api/assistants/{a['id']}/documents",
                  files={"file": ("horarios.txt", b"Horario\n\nAbrimos de segunda a sexta, das 8h as 18h.")})
    assert wait_for_document(dash, r.json()["id"])["status"] == "ready"
    return dash, model, a, r.json()["id"]


def test_console_chat_is_a_test_conversation(scripted_kb):
    client, model, a, _ = scripted_kb
    model.enqueue([ToolCall("call_0", "search_knowledge_base", {"query": "horário"})], "Abrimos às 8h [1].")
    r = client.post("/api/console/chat", json={"assistant_id": a["id"], "customer_id": "console", "message": "Que horas?",
                                               "variables": {"loja": "Centro"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reply"] == "Abrimos às 8h [1]." and body["sources"][0]["filename"] == "horarios.txt"
    conv = client.get(f"/api/conversations/{body['conversation_id']}").json()
    assert conv["channel"] == "test" and conv["sender"] == "console" and conv["variables"] == {"loja": "Centro"}
    assert rows(client.get("/dashboard/conversations?channel=test").text) == [body["conversation_id"]]
    assert client.post("/api/console/chat", json={"assistant_id": "nope", "customer_id": "c",
                                                  "message": "oi"}).status_code == 404
    assert client.post("/api/console/chat", json={"assistant_id": a["id"], "customer_id": "c",
                                                  "message": ""}).status_code == 422


def test_reindex_makes_a_new_version_of_the_same_file(scripted_kb):
    client, _, a, doc_id = scripted_kb
    chunks = client.get(f"/api/documents/{doc_id}").json()["chunk_count"]
    r = client.post(f"/api/documents/{doc_id}/reindex")
    assert r.status_code == 202 and r.json()["status"] == "queued" and r.json()["latest_version"] == 2
    again = client.post(f"/api/documents/{doc_id}/reindex")
    assert again.status_code in (202, 409)  # 409 while the first one is still queued or processing
    if again.status_code == 409:
        assert "re-index it when that is done" in again.json()["detail"]
    doc = wait_for_document(client, doc_id)
    assert doc["status"] == "ready" and doc["current_version"] >= 2 and doc["chunk_count"] == chunks > 0
    hits = client.post(f"/api/assistants/{a['id']}/search", json={"query": "que horas abrem", "top_k": 3}).json()
    assert [h["version"] for h in hits["results"]] == [doc["current_version"]]
    assert client.post("/api/documents/nope/reindex").status_code == 404
    html = client.get(f"/dashboard/knowledge?assistant_id={a['id']}").text
    assert "horarios.txt" in html and "st-ready" in html


def test_session_opened_by_helper_is_accepted(app_client, sqlite_services):
    with sqlite_services.session() as db:
        app_client.cookies.set(SESSION_COOKIE, open_session(db, sqlite_services.settings, bootstrap_admin(db).id))
    assert app_client.get("/dashboard/metrics").status_code == 200


def test_the_new_json_routes_are_documented_and_the_pages_are_not(app_client):
    paths = app_client.get("/openapi.json").json()["paths"]
    assert "/api/console/chat" in paths and "/api/documents/{document_id}/reindex" in paths
    assert "/api/handoff-queue" in paths and "/api/conversations/{conversation_id}/close" in paths
    assert not [p for p in paths if p.startswith("/dashboard")]


def test_day_chart_scales_bars_to_the_busiest_day_and_thins_labels():
    from api.routes.dashboard import day_chart

    days = [{"day": f"2024-03-{d:02d}", "conversations": 1, "messages": d, "replies": d // 2, "cost": 0.0}
            for d in range(1, 31)]
    chart = day_chart(days, width=736, height=200)
    bars = chart["days"]
    assert chart["top"] == 30 and len(bars) == 30 and chart["label_every"] == 2
    busiest, first = bars[-1], bars[0]
    assert busiest["my"] == chart["top_y"] and busiest["my"] + busiest["mh"] == chart["base_y"]
    assert first["mh"] == pytest.approx(busiest["mh"] / 30, abs=0.1) and first["rh"] == 0
    assert all(a["x"] < b["x"] for a, b in zip(bars, bars[1:], strict=False)) and bars[-1]["x"] + bars[-1]["w"] <= 736
    assert day_chart([])["days"] == []


def test_the_root_url_leads_to_the_dashboard(app_client):
    r = app_client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    r = app_client.get("/", follow_redirects=True)  # signed out: the login page
    assert r.status_code == 200 and r.url.path == "/dashboard/login"
