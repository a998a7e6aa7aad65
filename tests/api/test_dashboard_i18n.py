"""The dashboard in English and Brazilian Portuguese (api/i18n.py): every visible string of the templates goes
through gettext, the pt_BR catalogue translates every message the code and templates use, the reader's language
comes from the switch's cookie or the browser's Accept-Language, and dates, numbers and money follow it."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from jinja2 import Environment

from api import i18n, labels
from core.db import utcnow
from kb import registry, websites
from kb.models import WebsiteSource, WebsiteSyncRun
from runtime import events, followups, handoff
from runtime.feedback import REASONS
from runtime.models import OutboundEvent
from tests.api.test_dashboard import app_client, dash, login, seeded  # noqa: F401 (fixtures)
from tests.conftest import REPO

TEMPLATES = REPO / "api" / "templates"
PO = REPO / "api" / "locale" / "pt_BR" / "LC_MESSAGES" / "messages.po"
PT = {"Accept-Language": "pt-BR,pt;q=0.9,en;q=0.8"}

# words a page may show untranslated: the brand, the language names, units, formats and protocol names
ALLOWED_WORDS = {"atende", "English", "Português", "CSV", "JSONL", "KB", "ms", "UTC", "WhatsApp", "API", "LLM"}
VISIBLE_ATTRIBUTES = {"title", "placeholder", "alt", "aria-label", "label"}
PLACEHOLDER = re.compile(r"\uE000(\d+)\uE001")  # a {{ expression }} of the template, by number


# --------------------------------------------------------------------------- every visible string wrapped


def _skeleton(source: str) -> tuple[str, list[list[tuple[str, str]]]]:
    """The template's HTML with each ``{{ }}`` replaced by a numbered placeholder, ``{% trans %}`` blocks
    (translated) and other tags left out; and the tokens of each expression."""
    tokens = [(kind, value) for _, kind, value in Environment(extensions=["jinja2.ext.i18n"]).lex(source)
              if kind != "whitespace"]
    out, expressions, current, in_trans, in_page_block = [], [], None, False, False
    for i, (kind, value) in enumerate(tokens):
        if kind == "variable_begin":
            current = []
        elif kind == "variable_end":
            if not in_trans and not in_page_block:
                out.append(f"\uE000{len(expressions)}\uE001")
            expressions.append(current)
            current = None
        elif current is not None:
            current.append((kind, value))
        elif kind == "name" and tokens[i - 1][0] == "block_begin":  # a tag's name
            if value in ("trans", "endtrans"):
                in_trans = value == "trans"
            elif value == "block" and tokens[i + 1][1] == "page":  # the body's data-page code, not text
                in_page_block = True
            elif value == "endblock":
                in_page_block = False
        elif kind == "data" and not in_trans and not in_page_block:
            out.append(value)
    return "".join(out), expressions


def _output_literals(expression: list[tuple[str, str]]) -> list[str]:
    """String literals an expression may print as they are: ``'a' if x else 'b'``, ``x or 'c'``, dict values
    (``{'k': 'v'}.get(...)``); a literal given to ``_()``, a filter or a comparison is not printed."""
    found = []
    for i, (kind, value) in enumerate(expression):
        before = expression[i - 1][1] if i else "{{"
        if kind == "string" and before in ("{{", "if", "else", "or", ":"):
            found.append(value[1:-1])
    return found


class _Visible(HTMLParser):
    """Text nodes (outside script, style and code) and visible attributes of an HTML skeleton."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "code"):
            self.hidden += 1
        self.texts += [value for name, value in attrs if name in VISIBLE_ATTRIBUTES and value]

    def handle_endtag(self, tag):
        if tag in ("script", "style", "code"):
            self.hidden -= 1

    def handle_data(self, data):
        if not self.hidden:
            self.texts.append(data)


def untranslated(source: str) -> list[str]:
    """The visible English of a template source that does not go through gettext."""
    skeleton, expressions = _skeleton(source)
    parser = _Visible()
    parser.feed(skeleton)
    found = []
    for text in parser.texts:
        pieces = [PLACEHOLDER.sub(" ", text)]
        pieces += [lit for n in PLACEHOLDER.findall(text) for lit in _output_literals(expressions[int(n)])]
        for piece in pieces:
            words = set(re.findall(r"[A-Za-zÀ-ÿ]{2,}", piece)) - ALLOWED_WORDS
            if words:
                found.append(piece.strip())
    return found


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES.glob("*.html")))
def test_every_visible_string_of_a_template_goes_through_gettext(template):
    assert untranslated((TEMPLATES / template).read_text(encoding="utf-8")) == []


def test_the_template_check_finds_english_left_out():
    """The check above can fail: text, a placeholder, a printed literal and a dict value left in English."""
    source = ('<p>{{ _("Fine") }} Left out</p><input placeholder="phone or id" title="{{ x }}">'
              "{{ 'yes' if a else _('no') }}{{ {'ai': 'on'}.get(s) }}<code>atende admin-token</code>"
              '<p class="{{ \'error\' if e }}">{% trans %}Inside trans{% endtrans %} atende</p>')
    assert untranslated(source) == ["Left out", "phone or id", "yes", "on"]


# --------------------------------------------------------------------------- the catalogue


def _extracted() -> set:
    with (REPO / "babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f)
    return {message for _, _, message, _, _ in extract_from_dir(
        str(REPO), method_map, options_map, keywords={"_": None, "N_": None, "gettext": None,
                                                     "ngettext": (1, 2)})}


def test_every_message_used_has_a_ptbr_translation():
    """Every msgid the code, templates and dashboard.js use is in the pt_BR catalogue, translated (every plural
    form), not fuzzy, with the same placeholders; nothing in the catalogue is left over from removed strings."""
    with PO.open("rb") as f:
        catalog = read_po(f, locale="pt_BR")
    used = _extracted()
    assert len(used) > 300
    in_catalog = {m.id for m in catalog if m.id}
    assert used - in_catalog == set(), "run make i18n-update and translate"
    assert in_catalog - used == set(), "strings no longer used: make i18n-update"
    for message in catalog:
        if not message.id:
            continue
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        assert all(s.strip() for s in strings) and len(strings) in (1, catalog.num_plurals), message.id
        assert not message.fuzzy, message.id
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        assert {p for s in strings for p in re.findall(r"%\(\w+\)s", s)} == set(re.findall(r"%\(\w+\)s", ids[-1])), \
            message.id
        assert [e for e in message.check(catalog)] == [], message.id


def test_every_stored_code_shown_has_a_label():
    assert {handoff.CUSTOMER_REQUEST, handoff.IMAGE_SENT, handoff.OPERATOR_REPLY, handoff.BUSINESS_APP_REPLY,
            handoff.CLOSED} <= set(labels.HANDOFF_REASONS)
    assert set(REASONS) == set(labels.FEEDBACK_REASONS)
    assert set(handoff.REASON_CATEGORIES) == set(labels.REASON_CATEGORIES)
    assert set(events.EVENT_TYPES) == set(labels.EVENT_KINDS)
    # website sync runs (kb.models.WebsiteSyncRun.status), website and follow-up kinds, outbound events' states
    assert {"queued", "running", "succeeded", "partial", "failed", *websites.KINDS, "callback", *followups.KINDS,
            "pending", "delivered", "handoff"} <= set(labels.LABELS)
    with i18n.using("pt_BR"):
        assert labels.label("with_human") == "com um atendente"
        assert labels.label(handoff.CUSTOMER_REQUEST) == "o cliente pediu um atendente"
        assert labels.label("a code nobody labelled") == "a code nobody labelled" and labels.label(None) == ""
    assert labels.label("not_sent") == "not sent"


# --------------------------------------------------------------------------- which language


@pytest.mark.parametrize("header, expected", [
    ("pt-BR,pt;q=0.9,en-US;q=0.8,en;q=0.7", "pt_BR"),
    ("en-US,en;q=0.9,pt;q=0.8", "en"),
    ("pt-PT", "pt_BR"),  # the only Portuguese we have
    ("fr-FR, en;q=0.5, pt;q=0.7", "pt_BR"),  # by weight, not by order
    ("de, fr", None),
    ("pt;q=0, en", "en"),  # q=0: not wanted
    ("*", None),
    ("", None),
    (";q=1,,pt-;q=abc, ,en;;", "en"),  # garbage around a usable tag
])
def test_accept_language_negotiation(header, expected):
    assert i18n.negotiate(i18n.parse_accept_language(header)) == expected


def test_pages_follow_the_browser_then_the_switch(app_client):  # noqa: F811
    # signed out: the login page already speaks the browser's language
    r = app_client.get("/dashboard/login", headers=PT)
    assert r.status_code == 200 and '<html lang="pt-BR">' in r.text and ">Entrar</button>" in r.text
    assert r.headers["content-language"] == "pt-BR" and "Accept-Language" in r.headers["vary"]
    assert '<html lang="en">' in app_client.get("/dashboard/login").text  # no header: English
    login(app_client)
    page = app_client.get("/dashboard/conversations", headers=PT).text
    assert "<h1>Conversas</h1>" in page and ">Aguardando atendente</a>" in page and ">Sair</button>" in page
    assert 'aria-current="true">Português</button>' in page

    # the switch: English remembered in a cookie, over the browser's Portuguese, back to the same page
    r = app_client.post("/dashboard/language", data={"lang": "en", "next": "/dashboard/metrics?channel=test"},
                        headers=PT, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/metrics?channel=test"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{i18n.LANG_COOKIE}=en;") and "Max-Age=31536000" in cookie and "SameSite=lax" in cookie
    page = app_client.get("/dashboard/metrics?channel=test", headers=PT).text
    assert "<h1>Metrics</h1>" in page and 'aria-current="true">English</button>' in page
    r = app_client.post("/dashboard/language", data={"lang": "pt_BR", "next": "/dashboard/queue"},
                        follow_redirects=False)
    assert "<h1>Aguardando atendente</h1>" in app_client.get(r.headers["location"]).text  # no header needed now

    # a cookie we do not speak is ignored
    app_client.cookies.delete(i18n.LANG_COOKIE)
    app_client.cookies.set(i18n.LANG_COOKIE, "xx")
    assert "<h1>Metrics</h1>" in app_client.get("/dashboard/metrics").text


@pytest.mark.parametrize("data, headers, status", [
    ({"lang": "fr", "next": "/dashboard/queue"}, {}, 400),
    ({"lang": "", "next": "/dashboard/queue"}, {}, 400),
    ({"lang": "x" * 5000}, {}, 422),
    ({"lang": "pt_BR"}, {"Origin": "https://evil.example"}, 403),
])
def test_the_switch_refuses_what_it_does_not_know(app_client, data, headers, status):  # noqa: F811
    r = app_client.post("/dashboard/language", data=data, headers=headers, follow_redirects=False)
    assert r.status_code == status and "set-cookie" not in r.headers


def test_the_switch_never_redirects_off_the_dashboard(app_client):  # noqa: F811
    for target in ("https://evil.example/", "//evil.example/", "/dashboard//evil.example", "/api/x", None):
        r = app_client.post("/dashboard/language", data={"lang": "pt_BR", "next": target} if target else
                            {"lang": "pt_BR"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/conversations"


def test_dates_money_and_messages_in_portuguese(dash, seeded):  # noqa: F811
    html = dash.get(f"/dashboard/conversations/{seeded['whatsapp']}", headers=PT).text
    assert "US$\xa00,0004" in html and "pontuação 0,812" in html and "página 2" in html
    assert re.search(r"<time>\d{1,2} de [a-zç]{3}\. de \d{4} \d{2}:\d{2}:\d{2}</time>", html), "a pt_BR date"
    assert "<h3>Fontes</h3>" in html and ">Pausar IA</button>" in html and "fechada: só modelos" not in html
    assert "retorno (pt_BR, 1 parâmetro)" in html
    english = dash.get(f"/dashboard/conversations/{seeded['whatsapp']}").text
    assert "$0.0004" in english and "score 0.812" in english
    assert re.search(r"<time>[A-Z][a-z]{2} \d{1,2}, \d{4}, \d{1,2}:\d{2}:\d{2}\s[AP]M</time>", english)

    listing = dash.get("/dashboard/conversations", headers=PT).text
    assert "4 conversas" in listing and "página 1 de 1" in listing and '<span class="badge ch-test">Teste</span>' in listing
    metrics = dash.get("/dashboard/metrics", headers=PT).text
    assert "Taxa de resposta" in metrics and re.search(r"<b>\d+,\d%</b>", metrics)
    bad = dash.get("/dashboard/conversations?since=yesterday", headers=PT)
    assert bad.status_code == 400 and "Estes filtros não podem ser aplicados: since:" in bad.text
    missing = dash.get("/dashboard/conversations/nope", headers=PT)
    assert missing.status_code == 404 and "Conversa não encontrada" in missing.text and "nope" in missing.text
    unknown = dash.get("/dashboard/knowledge?assistant_id=nobody", headers=PT)
    assert unknown.status_code == 404 and "Nenhum assistente tem o id ou nome nobody." in unknown.text


def test_events_and_websites_in_portuguese(dash, seeded, sqlite_services):  # noqa: F811
    """The events page and the knowledge page's websites: stored codes (event kinds and states, a sync's status, a
    source's kind) in words, the sync's counts and the next attempt in the reader's language."""
    with sqlite_services.session() as s:
        s.add_all([OutboundEvent(kind="handoff.requested", url="https://crm.example/in", payload={}, status="pending",
                                 attempts=2, next_attempt_at=utcnow(), conversation_id=seeded["whatsapp"]),
                   OutboundEvent(kind="reply.sent", url="https://crm.example/in", payload={}, status="failed")])
        kb_id = registry.get_assistant(s, seeded["clinica"]).knowledge_base.id
        source = WebsiteSource(knowledge_base_id=kb_id, url="https://clinica.example/", kind="crawl",
                               sync_interval_hours=0)
        s.add(source)
        s.flush()
        s.add(WebsiteSyncRun(source_id=source.id, status="partial", pages_seen=5, pages_added=3, pages_failed=2,
                             failures=[{"url": "https://clinica.example/x", "reason": "HTTP 404"}]))
        s.commit()
    page = dash.get("/dashboard/events?status=all", headers=PT).text
    assert "<h1>Entregas de eventos</h1>" in page and ">pendente (1)</a>" in page and ">Reenviar</button>" in page
    assert "transferência solicitada<div" in page and "<code>handoff.requested</code>" in page
    assert "próxima tentativa " in page and ">falhou</span>" in page and "resposta enviada<div" in page
    knowledge = dash.get(f"/dashboard/knowledge?assistant_id={seeded['clinica']}", headers=PT).text
    assert "<h2>Sites</h2>" in knowledge and "(página inicial)" in knowledge and ">parcial</span>" in knowledge
    assert "5 vistas · 3 novas · 0 alteradas · 0 sem mudança · 0 removidas · 2 com falha" in knowledge
    assert "só manual" in knowledge and "<summary>falhas</summary>" in knowledge
    english = dash.get(f"/dashboard/knowledge?assistant_id={seeded['clinica']}").text
    assert "(start page)" in english and "5 seen · 3 added · 0 changed" in english


def test_wrong_password_message_in_portuguese(app_client):  # noqa: F811
    r = app_client.post("/dashboard/login", data={"email": "ana@example.com", "password": "wrong"}, headers=PT)
    assert r.status_code == 401 and "E-mail ou senha incorretos." in r.text and ">Senha <input" in r.text


def test_dashboard_js_gets_its_strings_in_the_page(dash, seeded):  # noqa: F811
    def messages(headers):
        html = dash.get("/dashboard/improve", headers=headers).text
        found = re.search(r'<script id="i18n-messages" type="application/json">(.*?)</script>', html)
        return json.loads(found.group(1))
    pt = messages(PT)
    assert pt["Write the answer"] == "Escrever a resposta" and pt["No gaps found."] == "Nenhuma lacuna encontrada."
    marked = set(re.findall(r'\b_\("((?:[^"\\]|\\.)*)"', (REPO / "api/static/dashboard.js").read_text()))
    assert marked and marked <= set(pt), marked - set(pt)
    assert messages({}) == {}  # English: the strings as they are


def test_catalogue_compiles_in_memory():
    catalog = i18n.translations("pt_BR")
    assert catalog.gettext("Knowledge base") == "Base de conhecimento"
    assert catalog.ngettext("%(count)s conversation", "%(count)s conversations", 1) == "%(count)s conversa"
    assert catalog.ngettext("%(count)s conversation", "%(count)s conversations", 3) == "%(count)s conversas"
    assert i18n.translations("en").gettext("Knowledge base") == "Knowledge base"
    assert not list(Path(i18n.LOCALE_DIR).rglob("*.mo"))  # nothing compiled on disk


def test_the_switch_answers_hostile_bodies_with_a_4xx(app_client):  # noqa: F811
    for body, kind in (('{"lang": ["pt_BR"]}', "application/json"), ("lang=pt_BR&" * 20_000, "application/x-www-form-urlencoded"),
                       ("\x00\xff" * 100, "multipart/form-data; boundary=x")):
        r = app_client.post("/dashboard/language", content=body.encode("utf-8", "surrogateescape"),
                            headers={"Content-Type": kind}, follow_redirects=False)
        assert 400 <= r.status_code < 500, (kind, r.status_code)
