"""Roles in a real browser (Debian's Chromium driven by Playwright, a real uvicorn server and database): a viewer,
an operator, a supervisor and an admin sign in with their e-mail and password and see the controls their role may
use and none of the others; what the page hides, the API refuses (403, asked from the same signed-in browser); a
user sees only the assistants they are given. The admin adds a user on the Accounts page, that user signs in with
the password shown once, makes a personal API token on "My account" and uses it; signing out a session there
ends it. Pages are photographed into ``tests/artifacts/screenshots/roles-*.png``."""
from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

from runtime.accounts import users
from tests.api.test_dashboard import add_conversation
from tests.conftest import ADMIN_TOKEN, make_services
from tests.factories import use_scripted_model
from tests.system.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, Watch, _free_port

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402  (skipped above when missing)

PASSWORD = "senha-bem-comprida"
ROLES = ("viewer", "operator", "supervisor", "admin")
# the controls each role has on the pages it shares with the others: (page, selector, least role)
CONTROLS = [
    ("knowledge", "#upload", "supervisor"),
    ("knowledge", "#documents button[data-action=delete]", "supervisor"),
    ("conversation", "#operator-reply", "operator"),
    ("conversation", "#toggle-ai", "operator"),
    ("conversation", ".review .rate-form", "supervisor"),
    ("conversations", "#export-csv", "supervisor"),
    ("approved", "#import", "supervisor"),
    ("regression", "#run-checks", "supervisor"),
    ("nav", "header a[href='/dashboard/console']", "supervisor"),
    ("nav", "header a[href='/dashboard/accounts']", "admin"),
]
# what each role tries from its browser beyond its rights: (method, path, body) -> 403
REFUSALS = {
    "viewer": ("POST", "/api/conversations/{conv}/messages", {"text": "oi"}),
    "operator": ("POST", "/api/assistants/{aid}/approved-answers", {"question": "q", "answer": "a"}),
    "supervisor": ("GET", "/api/users", None),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory, embedders):
    import uvicorn

    from atende.app import create_app

    services = make_services(tmp_path_factory.mktemp("roles") / "home", embedders)
    use_scripted_model(services)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(services=services), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    aid = api.post("/api/assistants", json={"name": "clinica"}).json()["id"]
    hidden = api.post("/api/assistants", json={"name": "financeiro"}).json()["id"]
    api.post(f"/api/assistants/{aid}/documents", files={"file": ("horarios.txt", b"Abrimos aos sabados.", "text/plain")})
    conv = add_conversation(services, aid, "api", "cliente-7", "Abrem sábado?", "Sim, das 9h às 13h.")
    add_conversation(services, hidden, "api", "cliente-secreto", "Qual o saldo?", "R$ 10.")
    with services.session() as db:
        for role in ROLES:
            users.create_user(db, email=f"{role}@clinica.example", role=role, password=PASSWORD, assistants=[aid])
        db.commit()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield {"base": base, "browser": browser, "aid": aid, "conv": conv, "services": services}
        browser.close()
    api.close()
    server.should_exit = True
    thread.join(timeout=30)
    services.engine.dispose()


def signed_in(site, email: str, password: str = PASSWORD) -> tuple[Page, Watch]:
    context = site["browser"].new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    watch = Watch(page)
    page.goto(site["base"] + "/dashboard/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/conversations")
    return page, watch


def _open(page: Page, site, where: str) -> None:
    path = {"knowledge": f"/dashboard/knowledge?assistant_id={site['aid']}", "conversation":
            f"/dashboard/conversations/{site['conv']}", "conversations": "/dashboard/conversations",
            "approved": f"/dashboard/approved?assistant_id={site['aid']}",
            "regression": f"/dashboard/regression?assistant_id={site['aid']}", "nav": "/dashboard/metrics"}[where]
    page.goto(site["base"] + path)


@pytest.mark.parametrize("role", ROLES)
def test_each_role_sees_its_controls_and_is_refused_the_rest(site, role):
    page, watch = signed_in(site, f"{role}@clinica.example")
    rank = ROLES.index(role)
    seen = {}
    for where, selector, least in CONTROLS:
        _open(page, site, where)
        expected = 1 if rank >= ROLES.index(least) else 0
        expect(page.locator(selector)).to_have_count(expected)
        seen[selector] = bool(expected)
    page.goto(site["base"] + "/dashboard/conversations")
    rows = page.locator("#conversations tbody tr")
    if role == "admin":  # every assistant
        expect(rows).to_have_count(2)
    else:  # the other assistant's customer is not listed
        expect(rows).to_have_count(1)
        expect(page.locator("#conversations")).not_to_contain_text("cliente-secreto")
    expect(page.locator("header a.account")).to_have_text(f"{role}@clinica.example")
    page.screenshot(path=str(SCREENSHOTS / f"roles-{role}-conversations.png"), full_page=True)
    _open(page, site, "conversation")
    page.screenshot(path=str(SCREENSHOTS / f"roles-{role}-conversation.png"), full_page=True)
    if role in REFUSALS:  # what the page hides, the API refuses, from this same signed-in browser
        method, path, body = REFUSALS[role]
        r = page.request.fetch(site["base"] + path.format(conv=site["conv"], aid=site["aid"]), method=method, data=body)
        assert r.status == 403, (role, path, r.status)
    console = page.goto(site["base"] + "/dashboard/console")
    assert console.status == (200 if rank >= ROLES.index("supervisor") else 403)
    if console.status == 403:
        expect(page.locator("h1")).to_have_text("Not allowed")
    accounts = page.goto(site["base"] + "/dashboard/accounts")
    assert accounts.status == (200 if role == "admin" else 403)
    print(f"\n{role}: controls shown {sum(seen.values())} of {len(seen)}")
    page.context.close()
    assert watch.errors == []


def test_an_operator_replies_and_a_viewer_cannot(site):
    page, watch = signed_in(site, "operator@clinica.example")
    _open(page, site, "conversation")
    page.fill("#operator-reply textarea[name=text]", "Olá, aqui é a operadora.")
    page.click("#operator-reply button[type=submit]")
    expect(page.locator(".msg.kind-operator .text")).to_have_text("Olá, aqui é a operadora.")
    expect(page.locator("#ai-state")).to_have_attribute("data-state", "with_human")
    page.screenshot(path=str(SCREENSHOTS / "roles-operator-replied.png"), full_page=True)
    page.context.close()
    assert watch.errors == []
    page, watch = signed_in(site, "viewer@clinica.example")
    _open(page, site, "conversation")
    expect(page.locator(".msg.kind-operator .text")).to_have_text("Olá, aqui é a operadora.")
    expect(page.locator("section.actions")).to_have_count(0)
    page.context.close()
    assert watch.errors == []


def test_the_admin_adds_a_user_who_signs_in_makes_a_token_and_ends_a_session(site):
    page, watch = signed_in(site, "", ADMIN_TOKEN)  # the bootstrap admin: no e-mail, the admin token
    page.goto(site["base"] + "/dashboard/accounts")
    form = page.locator("#add-user")
    form.locator("input[name=email]").fill("nova@clinica.example")
    form.locator("select[name=role]").select_option("operator")
    form.locator("input[name=assistants]").first.check()
    form.locator("button[type=submit]").click()
    password = page.locator("#new-password").inner_text()
    assert len(password) >= 20
    expect(page.locator('#users tr[data-email="nova@clinica.example"]')).to_have_attribute("data-role", "operator")
    page.screenshot(path=str(SCREENSHOTS / "roles-admin-accounts.png"), full_page=True)
    page.context.close()
    assert watch.errors == []

    other, _ = signed_in(site, "nova@clinica.example", password)  # a second session, to end from the first
    page, watch = signed_in(site, "nova@clinica.example", password)
    page.goto(site["base"] + "/dashboard/account")
    expect(page.locator("#my-role")).to_have_text("operator")
    page.fill("#token-form input[name=name]", "planilha")
    page.click("#token-form button[type=submit]")
    token = page.locator("#new-token").inner_text()
    assert token.startswith("atk_")
    page.screenshot(path=str(SCREENSHOTS / "roles-my-account.png"), full_page=True)
    me = httpx.get(site["base"] + "/api/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert (me["email"], me["role"], me["via"]) == ("nova@clinica.example", "operator", "token")
    page.goto(site["base"] + "/dashboard/account")
    expect(page.locator("#new-token")).to_have_count(0)  # shown once
    expect(page.locator("#sessions tbody tr")).to_have_count(2)
    page.locator("#sessions tbody tr:not(.current) button").click()
    expect(page.locator("#sessions tbody tr")).to_have_count(1)
    other.goto(site["base"] + "/dashboard/conversations")
    assert re.search(r"/dashboard/login", other.url)  # that session is over
    page.locator('#tokens tr[data-state="active"] button').click()
    expect(page.locator('#tokens tr[data-state="revoked"]')).to_have_count(1)
    assert httpx.get(site["base"] + "/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    other.context.close()
    page.context.close()
    assert watch.errors == []
