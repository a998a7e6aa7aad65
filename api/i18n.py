"""The dashboard's languages: the one home of Babel (gettext catalogues, locale negotiation, dates, numbers
and money in the reader's locale) and of Jinja2's i18n extension.

English is the source language (the msgids); ``api/locale/<locale>/LC_MESSAGES/messages.po`` holds each
translation as text, compiled in memory at start (no ``.mo`` file in git or on disk). A reader's locale is
the ``atende_lang`` cookie the header's switch sets, else the best match of the browser's ``Accept-Language``,
else English. Pages are rendered with :func:`using` around them; the templates' ``{% trans %}`` / ``_()`` and
the filters below read that locale. ``dashboard.js`` gets its own strings (``_("...")`` calls in it, extracted
at start) as a JSON catalogue in the page.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, date, datetime
from functools import cache
from io import BytesIO
from pathlib import Path

from babel.core import Locale
from babel.dates import format_date, format_datetime, format_skeleton
from babel.messages.extract import extract_from_file
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal, format_percent
from babel.support import NullTranslations, Translations
from fastapi import Request
from jinja2 import Environment

LOCALES = ("en", "pt_BR")  # English first: the source language and the fallback
DEFAULT_LOCALE = "en"
LANG_COOKIE = "atende_lang"
LANG_COOKIE_MAX_AGE_S = 365 * 24 * 3600
LANGUAGE_NAMES = {"en": "English", "pt_BR": "Português"}  # each in its own language, as a switch shows them
CURRENCY = "USD"  # costs are logged in USD (runtime.cost, the WhatsApp price table)
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DASHBOARD_JS = Path(__file__).resolve().parent / "static" / "dashboard.js"

_current: ContextVar[str] = ContextVar("atende_locale", default=DEFAULT_LOCALE)


@cache
def translations(locale: str) -> NullTranslations:
    """The gettext catalogue of ``locale``, compiled from its ``.po`` in memory (English: the msgids as they are).
    Fuzzy entries are left out, as ``msgfmt`` does."""
    po = LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po"
    if locale == DEFAULT_LOCALE or not po.exists():
        return NullTranslations()
    with po.open("rb") as f:
        catalog = read_po(f, locale=locale)
    mo = BytesIO()
    write_mo(mo, catalog, use_fuzzy=False)
    mo.seek(0)
    return Translations(mo, domain="messages")


# --------------------------------------------------------------------------- which locale


def parse_accept_language(header: str) -> list[str]:
    """The language tags of an ``Accept-Language`` header, most wanted first (``q=0`` left out)."""
    wanted = []
    for i, part in enumerate(header.split(",")[:20]):
        tag, *params = (p.strip() for p in part.split(";"))
        weights = [p[2:] for p in params if p.startswith("q=")]
        q = float(weights[0]) if weights and re.fullmatch(r"[01](\.\d{0,3})?", weights[0]) else 0.0 if weights else 1.0
        if tag and q > 0:
            wanted.append((-q, i, tag))
    return [tag for _, _, tag in sorted(wanted)]


def negotiate(tags: list[str]) -> str | None:
    """The first of ``tags`` we speak, by language: any Portuguese (pt, pt-BR, pt-PT) reads pt_BR, the only
    Portuguese here; any English reads en."""
    by_language = {locale.split("_")[0]: locale for locale in LOCALES}
    for tag in tags:
        found = by_language.get(tag.replace("_", "-").split("-")[0].lower())
        if found:
            return found
    return None


def request_locale(request: Request) -> str:
    """The reader's locale: the switch's cookie, else the browser's ``Accept-Language``, else English."""
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LOCALES:
        return chosen
    return negotiate(parse_accept_language(request.headers.get("accept-language", ""))) or DEFAULT_LOCALE


@contextmanager
def using(locale: str) -> Iterator[None]:
    """Translate and format in ``locale`` inside the block (a page's rendering)."""
    token = _current.set(locale)
    try:
        yield
    finally:
        _current.reset(token)


def current_locale() -> str:
    return _current.get()


# --------------------------------------------------------------------------- messages


def gettext(message: str, **variables) -> str:
    """``message`` in the current locale, ``%(name)s`` placeholders filled from ``variables`` (the gettext way,
    as in the templates and ``dashboard.js``)."""
    text = translations(current_locale()).gettext(message)
    return text % variables if variables else text


def translator(request: Request):
    """``gettext`` in ``request``'s locale, for messages a route writes into a page (call it ``_``)."""
    locale = request_locale(request)

    def _(message: str, **variables) -> str:
        with using(locale):
            return gettext(message, **variables)
    return _


@cache
def js_messages(locale: str) -> dict[str, str]:
    """The translations of the strings ``dashboard.js`` marks with ``_("...")``, for the page to hand it."""
    if locale == DEFAULT_LOCALE:
        return {}
    found = extract_from_file("javascript", str(DASHBOARD_JS), keywords={"_": None}, comment_tags=())
    catalog = translations(locale)
    return {msgid: catalog.gettext(msgid) for _, msgid, _, _ in found if isinstance(msgid, str)}


# --------------------------------------------------------------------------- dates, numbers and money


def datetime_text(value: datetime | None) -> str:
    """A moment in UTC (the pages say so), in the reader's way: ``Nov 29, 2026, 2:03:05 PM`` or
    ``29 de nov. de 2026 14:03:05``."""
    return format_datetime(value, "medium", tzinfo=UTC, locale=current_locale()) if value else ""


def date_text(value: date | str | None, form: str = "medium") -> str:
    """A day (``date`` or ISO text) in the reader's way: a standard length (``short``, ``medium``...) or a CLDR
    skeleton (``Md``: ``12/1`` or ``01/12``, the chart's ticks)."""
    if not value:
        return ""
    day = date.fromisoformat(value[:10]) if isinstance(value, str) else value
    if form in ("short", "medium", "long", "full"):
        return format_date(day, form, locale=current_locale())
    return format_skeleton(form, day, locale=current_locale())


def money(value: float | None) -> str:
    """A cost in USD: four decimals below one dollar (a turn costs fractions of a cent), cents above."""
    if value is None:
        return "–"
    rounded = round(value, 4) if value < 1 else round(value, 2)
    return format_currency(rounded, CURRENCY, locale=current_locale(), decimal_quantization=False)


def number(value: float | None, digits: int = 0) -> str:
    """A number with the reader's separators, ``digits`` decimals (``–`` for none)."""
    if value is None:
        return "–"
    return format_decimal(round(value, digits), format="#,##0." + "0" * digits if digits else "#,##0",
                          locale=current_locale())


def percent(value: float | None) -> str:
    """A share (0..1) as a percentage with one decimal (``–`` for none)."""
    return "–" if value is None else format_percent(value, format="#,##0.0%", locale=current_locale())


def html_lang() -> str:
    """The page's ``lang`` attribute: ``en`` or ``pt-BR``."""
    return str(Locale.parse(current_locale())).replace("_", "-")


def install(env: Environment) -> None:
    """Give ``env`` the i18n extension (``{% trans %}``, ``_()``), trimmed, reading the current locale, and the
    locale-aware filters and globals the templates use."""
    env.add_extension("jinja2.ext.i18n")
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_callables(  # type: ignore[attr-defined]  (added by the extension)
        lambda message: translations(current_locale()).gettext(message),
        lambda singular, plural, n: translations(current_locale()).ngettext(singular, plural, n),
        newstyle=True)
    env.filters.update(dt=datetime_text, day=date_text, money=money, number=number, pct=percent)
    env.globals.update(html_lang=html_lang, current_locale=current_locale, language_names=LANGUAGE_NAMES,
                       js_messages=lambda: js_messages(current_locale()))
    for locale in LOCALES:  # compiled now: a broken catalogue stops the start, not a page
        js_messages(locale)
