"""The dashboard in a real browser: Debian's Chromium driven by Playwright against a real uvicorn server
(real database, job queue, ingestion and embedding model; the chat model is scripted so the reply cites
source [1]). Every page is checked for JavaScript errors and photographed, full page, into
``tests/artifacts/screenshots/`` (``<name>-pt-BR.png`` in Portuguese).

The tests of this module and of the modules that import its ``site`` run twice: with a browser that asks for
English and with one that asks for Brazilian Portuguese (``Accept-Language``, Chromium's ``locale``); what they
read on the pages goes through the same catalogue (``site.t``). ``ATENDE_SCREENSHOTS=/some/dir`` also photographs
every page in Portuguese into that folder (``test_every_page_in_portuguese``).

Skipped (with the reason) only when Chromium or Playwright is missing and ``CI`` is not set.
"""
from __future__ import annotations

import csv
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from api import i18n
from core.db import utcnow
from kb import registry
from kb.models import WebsiteSource, WebsiteSyncRun
from runtime.llm import ScriptedChatModel
from runtime.models import Conversation, OutboundEvent
from runtime.types import ToolCall
from runtime.whatsapp.standin import GraphStandIn
from tests.conftest import ADMIN_TOKEN, REPO, make_services, requires_shared, shared_doc
from tests.factories import use_scripted_model
from tests.api.test_dashboard import XSS, add_conversation

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "tests" / "artifacts" / "screenshots"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking"]
SATURDAY = "Aos sábados abrimos das 9h às 13h; aos domingos a clínica fica fechada."
SHARED_FILE = "docx/eng_spa_mult.docx"


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"browser tests must run in CI: {reason}")
    pytest.skip(reason, allow_module_level=True)


if not CHROMIUM.exists():
    _unavailable(f"{CHROMIUM} not found (apt-get install chromium)")
try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError as exc:
    _unavailable(f"playwright is not installed: {exc}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Site:
    base: str
    model: ScriptedChatModel
    services: object
    assistant_id: str
    browser: object
    graph: GraphStandIn
    ids: dict = field(default_factory=dict)
    locale: str = "en"  # the dashboard's language the browser asks for

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def browser_locale(self) -> str:
        """What Chromium is told to ask for (its Accept-Language): ``en-US`` or ``pt-BR``."""
        return {"en": "en-US", "pt_BR": "pt-BR"}[self.locale]

    def t(self, message: str, **values) -> str:
        """``message`` as the page shows it in the site's language (the dashboard's own catalogue)."""
        with i18n.using(self.locale):
            return i18n.gettext(message, **values)

    def tn(self, singular: str, plural: str, n: int) -> str:
        """The form of a counted message for ``n`` the page shows, ``%(count)s`` filled."""
        return i18n.translations(self.locale).ngettext(singular, plural, n) % {"count": n}

    def new_context(self, **options):
        """A browser context asking for the site's language."""
        return self.browser.new_context(locale=self.browser_locale, **options)


@pytest.fixture(scope="module", params=i18n.LOCALES)
def site(request, tmp_path_factory, embedders):
    """uvicorn serving the real app on a free port, one assistant, conversations on other channels, Chromium; once
    for each language of the dashboard."""
    import uvicorn

    from atende.app import create_app

    graph = GraphStandIn()
    graph.start()
    services = make_services(tmp_path_factory.mktemp("dash") / "home", embedders, whatsapp_graph_url=graph.base_url)
    model = use_scripted_model(services)
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
    a = api.post("/api/assistants", json={"name": "clinica", "embedding_model": "all-minilm-l6-v2"}).json()
    api.patch(f"/api/assistants/{a['id']}", json={"config": {"retrieval": {"mode": "as_tool"}}}).raise_for_status()
    ids = {
        "whatsapp": add_conversation(services, a["id"], "whatsapp", "5511999990001", "Oi, vocês abrem sábado?",
                                     "Sim!", sender="phone-1"),
        "widget": add_conversation(services, a["id"], "widget", "visitor-1", XSS, "Olá!"),
        "api": add_conversation(services, a["id"], "api", "cliente-42", "Quanto custa?", "R$ 150."),
    }
    with services.session() as s:  # the customer wrote two days ago: the 24-hour window is closed
        s.get(Conversation, ids["whatsapp"]).last_inbound_at -= timedelta(days=2)
        s.commit()
    sender = api.post("/api/whatsapp/senders", json={"assistant_id": a["id"], "phone_number_id": "phone-1",
                                                     "access_token": "t", "app_secret": "s", "verify_token": "v"}).json()
    for name, status in (("retorno", "APPROVED"), ("promocao", "PENDING")):
        api.post("/api/whatsapp/templates", json={
            "sender_id": sender["id"], "name": name, "language": "pt_BR", "category": "UTILITY",
            "body": "Olá {{1}}, podemos continuar o seu atendimento?", "status": status}).raise_for_status()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield Site(base, model, services, a["id"], browser, graph, ids, locale=request.param)
        browser.close()
    api.close()
    server.should_exit = True
    thread.join(timeout=30)
    graph.stop()
    services.engine.dispose()


class Watch:
    """JavaScript errors and server errors seen by a page (failed loads the page expects are not errors)."""

    def __init__(self, page: Page):
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("console", lambda msg: msg.type == "error" and not msg.text.startswith("Failed to load resource")
                and self.errors.append(f"console: {msg.text}"))
        page.on("response", lambda r: r.status >= 500 and self.errors.append(f"{r.status} {r.url}"))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog) -> None:
        if dialog.type == "confirm":  # the delete buttons ask first
            dialog.accept()
        else:  # e.g. an alert() some customer text managed to run
            self.errors.append(f"dialog: {dialog.type} {dialog.message}")
            dialog.dismiss()


@pytest.fixture
def page(site):
    """A signed-in page; fails the test if it saw a JavaScript or server error."""
    context = site.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    watch = Watch(page)
    page.goto(site.url("/dashboard/login"))
    page.fill("input[name=password]", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/conversations")
    yield page
    context.close()
    assert watch.errors == []


def shot(page: Page, name: str) -> None:
    """A full-page photograph, named for the page's language too when it is not English."""
    lang = page.evaluate("document.documentElement.lang") or "en"
    page.screenshot(path=str(SCREENSHOTS / (f"{name}.png" if lang == "en" else f"{name}-{lang}.png")), full_page=True)


# --------------------------------------------------------------------------- tests


def test_login_refuses_a_wrong_token_then_signs_in(site):
    context = site.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    watch = Watch(page)
    page.goto(site.url("/dashboard/metrics?channel=test"))
    assert "/dashboard/login?next=" in page.url
    page.fill("input[name=password]", "not-the-token")
    with page.expect_response(lambda r: r.url.endswith("/dashboard/login") and r.request.method == "POST") as resp:
        page.click("button[type=submit]")
    assert resp.value.status == 401
    expect(page.locator("p.error")).to_have_text(site.t("Wrong e-mail or password."))
    assert context.cookies() == []
    shot(page, "01-login-wrong-token")
    page.fill("input[name=password]", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/metrics?channel=test")
    (cookie,) = context.cookies()
    assert cookie["name"] == "atende_session" and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["expires"] > time.time() + 3600
    page.click(f"text={site.t('Log out')}")
    page.wait_for_url("**/dashboard/login")
    assert context.cookies() == []
    context.close()
    assert watch.errors == []


@requires_shared
def test_review_flow_from_upload_to_export(site, page, tmp_path):
    """Upload -> ready -> search -> console chat -> the conversation in the list, filtered -> its detail ->
    CSV and JSONL export -> metrics -> improve."""
    # knowledge base: upload a markdown file, a real document and a file we refuse, through the page
    notes = tmp_path / "horarios.md"
    notes.write_text(f"# Horários\n\n## Sábado\n\n{SATURDAY}\n\n## Semana\n\nDe segunda a sexta, das 8h às 18h.\n")
    bad = tmp_path / "programa.exe"
    bad.write_bytes(b"MZ\x90\x00" + bytes(range(256)) * 4)
    page.goto(site.url(f"/dashboard/knowledge?assistant_id={site.assistant_id}"))
    page.set_input_files("#upload input[type=file]", [str(notes), str(shared_doc(SHARED_FILE)), str(bad)])
    page.click("#upload button[type=submit]")
    expect(page.locator("#upload-messages li")).to_have_count(3)
    expect(page.locator("#upload-messages li.error")).to_contain_text("programa.exe': unsupported file type")
    for name in ("horarios.md", Path(SHARED_FILE).name):
        page.wait_for_selector(f'#documents tr[data-filename="{name}"][data-status="ready"]', timeout=180_000)
    expect(page.locator("#documents tbody tr")).to_have_count(2)
    expect(page.locator('#documents tr[data-filename="horarios.md"] td').nth(3)).not_to_have_text("0")

    # search playground
    page.fill("#search input[name=query]", "A clínica abre no sábado?")
    page.click("#search button[type=submit]")
    first = page.locator("#search-results > li").first
    expect(first).to_contain_text("horarios.md")
    expect(first.locator(".passage")).to_contain_text("Aos sábados abrimos das 9h às 13h")
    shot(page, "02-knowledge-base-and-search")

    # re-index one document (a new version of the same file), delete another
    row = page.locator('#documents tr[data-filename="horarios.md"]')
    row.locator("button[data-action=reindex]").click()
    page.wait_for_selector('#documents tr[data-filename="horarios.md"][data-status="ready"] td:nth-child(5) >> text="2"',
                           timeout=120_000)
    page.locator(f'#documents tr[data-filename="{Path(SHARED_FILE).name}"] button[data-action=delete]').click()
    expect(page.locator("#documents tbody tr")).to_have_count(1)
    expect(page.locator("#documents tbody tr")).to_have_attribute("data-filename", "horarios.md")

    # test console: the scripted model searches, then answers citing [1]
    site.model.enqueue([ToolCall("call_0", "search_knowledge_base", {"query": "horário de sábado"})],
                       "Aos sábados abrimos das 9h às 13h [1].")
    page.goto(site.url(f"/dashboard/console?assistant_id={site.assistant_id}"))
    page.fill("#chat input[name=customer_id]", "console-e2e")
    page.fill("#chat textarea[name=variables]", "customer_name=Ana")
    page.fill("#chat input[name=message]", "Vocês abrem no sábado?")
    page.click("#chat button[type=submit]")
    reply = page.locator("#transcript .msg.outbound")
    expect(reply.locator(".text")).to_have_text("Aos sábados abrimos das 9h às 13h [1].")
    expect(reply.locator(".source .passage").first).to_contain_text("Aos sábados abrimos das 9h às 13h")
    expect(reply.locator(".source .src-meta").first).to_contain_text("horarios.md")
    reply.locator("details.call summary").click()
    expect(reply.locator("details.call")).to_contain_text("search_knowledge_base")
    expect(reply.locator("details.call pre").first).to_contain_text('"query": "horário de sábado"')
    shot(page, "03-test-console")

    # the list: every channel, then filtered by channel and customer through the form
    page.goto(site.url("/dashboard/conversations"))
    expect(page.locator("#conversations tbody tr")).to_have_count(4)
    shot(page, "04-conversations")
    page.select_option("form.filters select[name=channel]", "test")
    page.fill("form.filters input[name=customer]", "E2E")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r"channel=test.*customer=E2E"))
    rows = page.locator("#conversations tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".badge")).to_have_text(site.t("Test"))
    expect(rows.first).to_contain_text("console-e2e")
    shot(page, "05-conversations-filtered")

    # export what the filters select, as the browser downloads it
    exported = {}
    for fmt in ("csv", "jsonl"):
        with page.expect_download() as download:
            page.click(f"#export-{fmt}")
        assert download.value.suggested_filename.endswith(f".{fmt}")
        exported[fmt] = Path(download.value.path()).read_text(encoding="utf-8")
    csv_rows = list(csv.DictReader(exported["csv"].splitlines()))
    jsonl_rows = [json.loads(line) for line in exported["jsonl"].splitlines()]
    for table in (csv_rows, jsonl_rows):
        assert [r["direction"] for r in table] == ["inbound", "outbound"]
        assert {r["channel"] for r in table} == {"test"} and {r["customer_id"] for r in table} == {"console-e2e"}
    assert SATURDAY[:30] in json.loads(csv_rows[1]["sources"])[0]["text"]
    assert jsonl_rows[1]["function_calls"][0]["name"] == "search_knowledge_base"

    # the conversation's detail: the cited passage under the reply, the context passed in
    rows.first.locator("a").click()
    page.wait_for_url("**/dashboard/conversations/*")
    ai = page.locator(".msg.outbound").first
    expect(ai.locator(".text")).to_have_text("Aos sábados abrimos das 9h às 13h [1].")
    expect(ai.locator(".passage").first).to_contain_text("Aos sábados abrimos das 9h às 13h")
    expect(ai.locator(".src-meta").first).to_contain_text("Sábado")
    expect(page.locator("aside")).to_contain_text("customer_name")
    ai.locator("details.call summary").click()
    shot(page, "06-conversation-detail")
    page.click("#toggle-ai")
    expect(page.locator("#ai-state")).to_have_text(site.t("off (an operator has it)"))
    expect(page.locator("#handoff-log")).to_contain_text(
        site.t("%(from_state)s &rarr; %(to_state)s by %(actor)s", from_state="ai", to_state="with_human",
               actor=site.t("operator")).replace("&rarr;", "→"))
    page.click("#hand-back")
    expect(page.locator("#ai-state")).to_have_text(site.t("on"))

    # metrics and improve
    page.goto(site.url("/dashboard/metrics"))
    expect(page.locator("#metrics .metric").first).to_contain_text("4")
    expect(page.locator("#chart rect.bar-messages")).not_to_have_count(0)
    shot(page, "07-metrics")
    page.goto(site.url("/dashboard/improve"))
    expect(page.locator("#insights-state")).not_to_have_text(site.t("Loading…"))
    shot(page, "08-improve")


def test_customer_text_is_text_and_window_errors_are_shown(site, page):
    page.goto(site.url(f"/dashboard/conversations/{site.ids['widget']}"))
    expect(page.locator(".msg.inbound .text")).to_have_text(XSS)
    assert page.locator(".msg.inbound script").count() == 0
    expect(page.locator("#send-template")).to_have_count(0)  # templates are WhatsApp's only

    # WhatsApp, 2 days after the customer's last message: a free-form reply is refused, a template goes out
    page.goto(site.url(f"/dashboard/conversations/{site.ids['whatsapp']}"))
    expect(page.locator("aside")).to_contain_text(site.t("closed: only templates"))
    page.fill("#operator-reply textarea", "Olá, ainda precisa de ajuda?")
    page.click("#operator-reply button[type=submit]")
    expect(page.locator("#action-error")).to_have_text("the 24-hour window is closed: send an approved template instead")
    options = page.locator("#send-template select[name=template] option")
    expect(options).to_have_count(1)  # the pending template is not offered
    expect(options.first).to_have_text(f"retorno (pt_BR, {site.tn('%(count)s parameter', '%(count)s parameters', 1)})")
    page.click("#send-template button[type=submit]")  # no parameter: the API's message is shown
    expect(page.locator("#action-error")).to_have_text("the template needs 1 parameter(s); 0 given")
    shot(page, "09-whatsapp-window-closed")
    page.fill("#send-template textarea[name=parameters]", "Ana")
    page.click("#send-template button[type=submit]")
    template = page.locator(".msg.kind-template")
    expect(template.locator(".text")).to_have_text("Olá Ana, podemos continuar o seu atendimento?")
    expect(template.locator(".status")).to_have_text(site.t("sent"))
    sent = site.graph.sent[-1]["json"]
    assert sent["type"] == "template" and sent["to"] == "5511999990001" and sent["template"]["name"] == "retorno"
    shot(page, "10-whatsapp-template-sent")


def test_list_on_a_phone(site):
    context = site.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    watch = Watch(page)
    page.goto(site.url("/dashboard/login"))
    page.fill("input[name=password]", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/conversations")
    expect(page.locator("#conversations")).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways: {width}px"
    shot(page, "11-conversations-phone")
    context.close()
    assert watch.errors == []


def test_widget_on_a_shop_page(site, tmp_path, embedders):
    """The widget script embedded on another website: a message is accepted, its reply polled and shown, rated
    with a thumb and shown again after a reload; with every widget turn slot taken, the visitor is told to wait
    and keeps the text to send again. The widget speaks its visitor's language, not the dashboard's: it runs once."""
    if site.locale != i18n.DEFAULT_LOCALE:
        pytest.skip("the widget does not depend on the dashboard's language")
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.api.test_widget import add_assistant, new_token, poll, send
    from tests.api.test_widget_abuse import serve

    page_html: list[bytes] = []

    class ShopPage(BaseHTTPRequestHandler):  # another origin on loopback (Chromium blocks a public page's calls to it)
        def do_GET(self) -> None:  # noqa: N802 (stdlib name)
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(page_html[0])

        def log_message(self, *args) -> None:
            pass

    shop_server = ThreadingHTTPServer(("127.0.0.1", 0), ShopPage)
    threading.Thread(target=shop_server.serve_forever, daemon=True).start()
    shop = f"http://127.0.0.1:{shop_server.server_address[1]}"
    services = make_services(tmp_path / "home", embedders, widget_turn_workers=1, widget_max_turns=1)
    model, gate = use_scripted_model(services), threading.Event()
    add_assistant(services, "loja", widget={"allowed_origins": [shop], "title": "Loja Exemplo"})
    model.enqueue(lambda messages, tools: (time.sleep(1.5), "Abrimos às *8h*.")[1],  # the page polls meanwhile
                  lambda messages, tools: (gate.wait(60), "Outro visitante.")[1], "Aos sábados, das 9h às 13h.")
    # the module's browser: a second sync Playwright cannot start while the module's one runs
    with serve(services) as base, httpx.Client(base_url=base, trust_env=False) as api:
        context = site.browser.new_context(locale="pt-BR")
        page = context.new_page()
        watch = Watch(page)
        page_html.append(f'<!doctype html><html><body><h1>Loja</h1><script src="{base}/widget.js" '
                         'data-assistant="loja"></script></body></html>'.encode())
        page.goto(f"{shop}/")
        page.click(".bubble")
        expect(page.locator(".title")).to_have_text("Loja Exemplo")
        page.fill("textarea", "Que horas vocês abrem?")
        page.keyboard.press("Enter")
        reply = page.locator(".msg.bot").last
        expect(reply.locator("strong")).to_have_text("8h", timeout=20_000)
        reply.locator(".thumb[value=good]").click()
        expect(reply.locator(".rate")).to_contain_text("Obrigado!")
        page.reload()
        page.click(".bubble")
        expect(page.locator(".msg.me")).to_have_text(["Que horas vocês abrem?"])
        expect(page.locator(".msg.bot .thumb[value=good]")).to_have_attribute("aria-pressed", "true")

        other = new_token(api, "loja")  # another visitor's turn takes the only slot
        held = send(api, "loja", other, "Vocês atendem sábado?")
        assert held.status_code == 202
        page.fill("textarea", "E no sábado?")
        page.keyboard.press("Enter")
        expect(page.locator(".note").last).to_contain_text("O assistente está ocupado. Tente novamente em")
        expect(page.locator("textarea")).to_have_value("E no sábado?")  # not sent: kept to send again
        expect(page.locator(".msg.me")).to_have_text(["Que horas vocês abrem?"])
        gate.set()
        assert poll(api, "loja", other, held.json()["message_id"]).json()["reply"] == "Outro visitante."
        page.keyboard.press("Enter")
        expect(page.locator(".msg.bot").last).to_contain_text("Aos sábados, das 9h às 13h.", timeout=20_000)
        shot(page, "12-widget-on-a-shop-page")
        context.close()
    shop_server.shutdown()
    assert [e for e in watch.errors if not e.startswith("503 ")] == [], watch.errors  # the one 503 was expected
    assert len(watch.errors) == 1, watch.errors
    services.engine.dispose()


# --------------------------------------------------------------------------- every page in Portuguese

# (file name, path): every dashboard page, its data from this module's earlier tests
PAGES = [("conversations", "/dashboard/conversations"), ("conversation", "/dashboard/conversations/{whatsapp}"),
         ("conversation-widget", "/dashboard/conversations/{widget}"), ("queue", "/dashboard/queue"),
         ("followups", "/dashboard/followups?status=all"), ("events", "/dashboard/events?status=all"),
         ("knowledge", "/dashboard/knowledge"),
         ("console", "/dashboard/console"), ("metrics", "/dashboard/metrics"), ("improve", "/dashboard/improve"),
         ("approved", "/dashboard/approved"), ("regression", "/dashboard/regression"),
         ("account", "/dashboard/account"), ("accounts", "/dashboard/accounts"),
         ("not-found", "/dashboard/conversations/no-such-conversation")]
TEXTS = """() => {
  const out = [], walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walk.nextNode()) { const t = walk.currentNode.textContent.trim(); if (t) out.push(t); }
  for (const e of document.querySelectorAll("[title], [placeholder], [aria-label]"))
    for (const a of ["title", "placeholder", "aria-label"]) if (e.getAttribute(a)) out.push(e.getAttribute(a));
  return out;
}"""


def english_left(page: Page, locale: str) -> list[str]:
    """Texts of the page that are an English message of the catalogue with another translation (untranslated)."""
    catalog = i18n.translations(locale)
    english = {m for m in catalog._catalog if isinstance(m, str) and m and "%(" not in m and "<" not in m  # type: ignore[attr-defined]
               and catalog.gettext(m) != m}
    return sorted({text for text in page.evaluate(TEXTS) if text in english})


def add_events_and_a_website(site: Site) -> None:
    """Rows for the events page and the knowledge page's websites (a delivery waiting for its next attempt, one
    failed for good, a website whose last sync lost pages), written directly: the photographs need their words,
    not a receiver or a site."""
    with site.services.session() as s:
        s.add_all([OutboundEvent(kind="handoff.requested", url="https://crm.example/atende", payload={},
                                 status="pending", attempts=2, last_error="HTTP 503",
                                 next_attempt_at=utcnow() + timedelta(minutes=4), conversation_id=site.ids["whatsapp"]),
                   OutboundEvent(kind="reply.sent", url="https://crm.example/atende", payload={}, status="failed",
                                 attempts=8, last_error="HTTP 500", conversation_id=site.ids["whatsapp"])])
        source = WebsiteSource(knowledge_base_id=registry.get_assistant(s, site.assistant_id).knowledge_base.id,
                               url="https://clinica.example/sitemap.xml", kind="sitemap",
                               next_sync_at=utcnow() + timedelta(hours=20))
        s.add(source)
        s.flush()
        s.add(WebsiteSyncRun(source_id=source.id, status="partial", pages_planned=6, pages_seen=6, pages_added=4,
                             pages_unchanged=1, pages_failed=1, created_at=utcnow() - timedelta(hours=4),
                             failures=[{"url": "https://clinica.example/precos.html", "reason": "HTTP 404"}]))
        s.commit()


def test_every_page_in_portuguese(site, page):
    """Every page with a browser that asks for pt-BR: in Portuguese (``lang``, no English message of the catalogue
    left on it, JavaScript-drawn parts included), photographed into ``$ATENDE_SCREENSHOTS`` (default
    ``tests/artifacts/screenshots/pt-BR``); the header's switch turns a page to English and back, and the choice
    outlives the browser's wish."""
    if site.locale != "pt_BR":
        pytest.skip("the Portuguese tour runs with the pt-BR browser")
    folder = Path(os.environ.get("ATENDE_SCREENSHOTS") or SCREENSHOTS / "pt-BR")
    folder.mkdir(parents=True, exist_ok=True)
    taken = []

    def photograph(name: str) -> None:
        assert page.evaluate("document.documentElement.lang") == "pt-BR", name
        assert english_left(page, site.locale) == [], name
        page.screenshot(path=str(folder / f"{len(taken) + 1:02d}-{name}.png"), full_page=True)
        taken.append(name)

    add_events_and_a_website(site)
    site.model.enqueue("Abrimos aos sábados, das 9h às 13h.")
    for name, path in PAGES:
        page.goto(site.url(path.format(**site.ids)))
        if name == "improve":
            expect(page.locator("#insights-state")).not_to_have_text(site.t("Loading…"))
        if name == "console":
            page.fill("#chat input[name=message]", "Vocês abrem no sábado?")
            page.click("#chat button[type=submit]")
            expect(page.locator("#transcript .msg.outbound .text")).to_have_text("Abrimos aos sábados, das 9h às 13h.")
        photograph(name)

    # the switch: English for this browser from now on, then Portuguese again
    page.goto(site.url("/dashboard/metrics"))
    page.click("header form.language button[value=en]")
    page.wait_for_url("**/dashboard/metrics")
    expect(page.locator("h1")).to_have_text("Metrics")
    page.goto(site.url("/dashboard/queue"))
    expect(page.locator("h1")).to_have_text("Waiting for a human")
    page.click("header form.language button[value=pt_BR]")
    expect(page.locator("h1")).to_have_text("Aguardando atendente")

    context = site.new_context(viewport={"width": 1280, "height": 800})  # signed out: the login page
    page = context.new_page()
    page.goto(site.url("/dashboard/login"))
    photograph("login")
    context.close()
    assert len(taken) == len(PAGES) + 1
