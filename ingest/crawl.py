"""Fetching a website politely: robots.txt, sitemaps, links, same-site redirects, a rate limit.

Every request goes through the address guard (``core.outbound.fetch``: public addresses only unless the
``website_allow_private`` setting says otherwise), names atende in its user agent, waits the source's interval (or
the robots.txt ``Crawl-delay`` for atende, when longer) since the previous request, and reads at most the page size
cap. Redirects are followed by hand, each hop checked: one that leaves the site fails the page.

A page's outcome is a ``Page`` (HTML to extract), or a ``PageGone`` (404/410: its document is removed) or
``PageFailed`` (anything else, with the reason recorded in the run). A failure of the site itself (unreachable,
robots.txt answering 5xx, a sitemap that is not XML) raises ``SiteError``: the run fails, nothing is removed.
"""
from __future__ import annotations

import contextlib
import fnmatch
import io
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote, urldefrag, urljoin, urlsplit, urlunsplit

import httpx
import lxml.etree
import lxml.html

from core.outbound import Fetched, OutboundRefused, fetch
from core.settings import Settings
from ingest.errors import IngestError
from kb.detect import decode_text

ROBOTS_TOKEN = "atende"  # the product token robots.txt rules name (RFC 9309)
MAX_REDIRECTS = 5
MAX_CRAWL_DELAY_S = 60.0  # a robots.txt Crawl-delay is honoured up to this
MAX_SITEMAPS = 50  # sitemap files read per run (an index and its children)
MAX_SITEMAP_URLS = 100_000  # page URLs kept from a run's sitemaps (past it the list is incomplete)
MAX_ROBOTS_BYTES = 512 * 1024  # of robots.txt parsed (RFC 9309: at least 500 KiB)
HTML_TYPES = ("text/html", "application/xhtml+xml")
# links to these are never pages (skipped without a request)
SKIPPED_EXTENSIONS = {
    ".pdf", ".jpg", ".jpeg", ".png", ".gif", ".webp", ".svg", ".ico", ".css", ".js", ".zip", ".gz", ".tar", ".mp3",
    ".mp4", ".avi", ".mov", ".webm", ".woff", ".woff2", ".ttf", ".xml", ".json", ".doc", ".docx", ".xls", ".xlsx",
    ".ppt", ".pptx", ".exe", ".dmg",
}
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
_XML_DECLARATION = re.compile(r"\A\s*<\?xml[^>]*\?>")
_URL_SAFE = "/?:@!$&'()*+,;=%[]~"  # reserved characters and '%': kept as they are when a path is compared


class SiteError(IngestError):
    """The site itself cannot be synced now (unreachable, robots.txt unreadable, the sitemap unusable)."""


@dataclass(frozen=True)
class Page:
    url: str  # after redirects
    html: str
    links: tuple[str, ...]  # same-site links, normalized, in order (none when the page says nofollow)
    noindex: bool  # <meta name="robots" content="noindex">
    canonical: str | None = None  # its <link rel="canonical">, normalized, when a variant of it (same path) on the site
    etag: str | None = None  # the response's validators, to send back next time (``Site.page``)
    last_modified: str | None = None  # only when strong: at least a minute before the response's Date


@dataclass(frozen=True)
class PageUnchanged:
    """The page answered 304 Not Modified to the validators it was asked with: not downloaded again."""

    url: str
    links: tuple[str, ...] = ()  # its links as last seen (the caller's: a 304 has no body)


@dataclass(frozen=True)
class PageGone:
    url: str
    status: int


@dataclass(frozen=True)
class PageFailed:
    url: str
    reason: str


Outcome = Page | PageUnchanged | PageGone | PageFailed


def normalize(url: str, base: str | None = None) -> str | None:
    """``url`` (relative to ``base``) absolute, without fragment, scheme and host lower-cased, default port dropped;
    None for a URL that is not http(s) or has no host."""
    try:
        parts = urlsplit(urldefrag(urljoin(base, url.strip()) if base else url.strip())[0])
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == {"http": 80, "https": 443}[scheme] else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def same_site(url: str, site: str) -> bool:
    """Whether ``url`` is on the host (and port) of ``site``; http and https count as one site."""
    return urlsplit(url).netloc == urlsplit(site).netloc


def wanted(url: str, include: list[str], exclude: list[str]) -> bool:
    """Whether the URL's path (with its query) matches an include pattern (any, when there are none) and no
    exclude pattern; patterns are globs (``/blog/*``, ``*.html``, ``*?page=*``)."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    if any(fnmatch.fnmatchcase(target, p) for p in exclude):
        return False
    return not include or any(fnmatch.fnmatchcase(target, p) for p in include)


def skipped_by_extension(url: str) -> bool:
    path = urlsplit(url).path.lower()
    return "." in path.rsplit("/", 1)[-1] and path[path.rfind("."):] in SKIPPED_EXTENSIONS


@dataclass
class Robots:
    """The robots.txt rules that apply to atende (RFC 9309): the groups naming its product token, else those of
    ``*``; a URL's path and query matched against every allow/disallow pattern (``*`` any characters, a final ``$``
    the end), the longest pattern winning and an allow winning a tie; ``/robots.txt`` itself always allowed."""

    rules: list[tuple[int, bool, re.Pattern[str]]] = field(default_factory=list)  # (length, allow, pattern)
    crawl_delay: float | None = None

    @classmethod
    def parse(cls, text: str, token: str = ROBOTS_TOKEN) -> Robots:
        groups: list[tuple[list[str], list[tuple[bool, str]], float | None]] = []
        agents: list[str] = []
        rules: list[tuple[bool, str]] = []
        delay: float | None = None
        in_rules = False
        for raw in text[:MAX_ROBOTS_BYTES].removeprefix("\ufeff").splitlines():  # a BOM would hide the first line
            key, _, value = raw.split("#", 1)[0].partition(":")
            key, value = key.strip().lower(), value.strip()
            if key == "user-agent":
                if in_rules:  # a user-agent line after rules starts the next group
                    groups.append((agents, rules, delay))
                    agents, rules, delay, in_rules = [], [], None, False
                agents.append(value.split("/", 1)[0].strip().lower())
            elif key in ("allow", "disallow") and agents:
                in_rules = True
                if value:  # an empty Disallow allows everything: no rule
                    rules.append((key == "allow", value))
            elif key == "crawl-delay" and agents:
                in_rules = True
                with contextlib.suppress(ValueError):
                    delay = float(value)
        if agents:
            groups.append((agents, rules, delay))
        chosen = [g for g in groups if token in g[0]] or [g for g in groups if "*" in g[0]]
        delays = [g[2] for g in chosen if g[2] is not None and g[2] >= 0]
        return cls([(len(_robots_quote(pattern)), allow, _robots_pattern(pattern))
                    for _, group_rules, _ in chosen for allow, pattern in group_rules],
                   delays[0] if delays else None)

    def allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        target = _robots_quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        if target == "/robots.txt":
            return True
        best: tuple[int, bool] = (-1, True)
        for length, allow, pattern in self.rules:
            if (length, allow) > best and pattern.match(target):
                best = (length, allow)
        return best[1]


def _robots_quote(path: str) -> str:
    """``path`` percent-encoded as RFC 9309 compares it: non-ASCII and unsafe characters encoded, escapes upper-cased."""
    return quote(unquote(path), safe=_URL_SAFE)


def _robots_pattern(pattern: str) -> re.Pattern[str]:
    quoted = _robots_quote(pattern)
    anchored = quoted.endswith("$")
    body = ".*".join(re.escape(part) for part in quoted.removesuffix("$").split("*"))
    return re.compile(body + (r"\Z" if anchored else ""))


class Site:
    """One website being synced: its robots.txt rules and the clock of its requests."""

    def __init__(self, root: str, settings: Settings, interval_s: float,
                 clock=time.monotonic, sleep=time.sleep, on_request: Callable[[], object] = lambda: None) -> None:
        self.root, self.settings = root, settings
        self.limit = int(settings.website_max_page_mb * 1024 * 1024)
        self.interval_s = interval_s
        self._clock, self._sleep, self._next_at = clock, sleep, 0.0
        self._on_request = on_request  # told before each request (a run renews its lease)
        self.robots = Robots()

    def read_robots(self) -> None:
        """Fetch and read /robots.txt: a 4xx (none) allows everything; a 5xx or no answer is a ``SiteError`` (RFC
        9309: the site is then taken as fully disallowed, so nothing is fetched and nothing removed)."""
        url = urljoin(self.root, "/robots.txt")
        try:
            response = self._get(url)
        except SiteError as exc:
            raise SiteError(f"the site is unreachable: {exc}") from None
        if 300 <= response.status < 400:  # followed once, on the same site
            target = normalize(response.headers.get("location", ""), url)
            response = self._get(target) if target and same_site(target, self.root) else response
        if response.status >= 500:
            raise SiteError(f"robots.txt answered HTTP {response.status}; the site is left alone until it answers")
        if response.status >= 400 or 300 <= response.status < 400:
            self.robots = Robots()
        else:
            self.robots = Robots.parse(response.text())
        delay = self.robots.crawl_delay
        if delay:
            self.interval_s = max(self.interval_s, min(float(delay), MAX_CRAWL_DELAY_S))
            self._next_at = self._clock() + self.interval_s  # the robots.txt request itself was the first

    def allowed(self, url: str) -> bool:
        """Whether robots.txt lets atende fetch ``url``."""
        return self.robots.allowed(url)

    def page(self, url: str, etag: str | None = None, last_modified: str | None = None) -> Outcome:
        """Fetch one page, following redirects within the site. With the validators of the response last taken
        from ``url`` (``Page.etag``, ``Page.last_modified``) the request is conditional: a 304 is ``PageUnchanged``."""
        current = url
        conditional = {k: v for k, v in (("If-None-Match", etag), ("If-Modified-Since", last_modified)) if v}
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = self._get(current, conditional if current == url else {})
            except SiteError as exc:
                return PageFailed(url, str(exc))
            if response.status == 304 and conditional and current == url:
                return PageUnchanged(url)
            if response.status in (301, 302, 303, 307, 308):
                target = normalize(response.headers.get("location", ""), current)
                if target is None:
                    return PageFailed(url, f"HTTP {response.status} redirect without a usable Location")
                if not same_site(target, self.root):
                    return PageFailed(url, f"redirected off-site to {target}")
                if not self.allowed(target):
                    return PageFailed(url, f"redirected to {target}, which robots.txt disallows")
                current = target
                continue
            return self._outcome(url, current, response)
        return PageFailed(url, f"more than {MAX_REDIRECTS} redirects")

    def sitemap_urls(self, url: str) -> tuple[list[str], bool]:
        """The page URLs a sitemap (or sitemap index, or .xml.gz) lists, in order, without repeats; and whether that
        is all of them (not when the index lists more than ``MAX_SITEMAPS`` files, or they list more than
        ``MAX_SITEMAP_URLS`` pages). Raises ``SiteError`` when a file cannot be read or is not a sitemap."""
        todo, queued, done, pages = [url], {url}, set[str](), dict[str, None]()
        while todo:
            if len(done) >= MAX_SITEMAPS or len(pages) >= MAX_SITEMAP_URLS:
                return list(pages)[:MAX_SITEMAP_URLS], False
            current = todo.pop(0)
            done.add(current)
            try:
                children, urls = self.sitemap_file(current)
            except SiteError as exc:
                if current == url:
                    raise
                # the list would be incomplete, and a page missing from it would be removed
                raise SiteError(f"sitemap {current}: {exc}") from None
            for child in (normalize(c, current) for c in children):
                if child and child not in queued:
                    queued.add(child)
                    todo.append(child)
            pages.update({u: None for u in (normalize(u, current) for u in urls) if u})
        if len(pages) > MAX_SITEMAP_URLS:
            return list(pages)[:MAX_SITEMAP_URLS], False
        return list(pages), True

    def sitemap_file(self, url: str) -> tuple[list[str], list[str]]:
        """(child sitemaps, page URLs) of the one sitemap file at ``url`` (``parse_sitemap``), fetched."""
        return parse_sitemap(self._sitemap_bytes(url))

    def _sitemap_bytes(self, url: str) -> bytes:
        response = self._get(url)
        if response.status >= 400:
            raise SiteError(f"the sitemap {url} answered HTTP {response.status}")
        if 300 <= response.status < 400:
            raise SiteError(f"the sitemap {url} redirects to {response.headers.get('location', '?')}; give its final URL")
        if response.truncated:
            raise SiteError(f"the sitemap {url} is over the size cap of {self.settings.website_max_page_mb:g} MB")
        data = response.body
        if data[:2] == b"\x1f\x8b":
            data = _gunzip(data, self.limit)
        return data

    def _outcome(self, url: str, final: str, response: Fetched) -> Outcome:
        if response.status in (404, 410):
            return PageGone(url, response.status)
        if response.status >= 400:
            return PageFailed(url, f"HTTP {response.status}")
        if not 200 <= response.status < 300:
            return PageFailed(url, f"unexpected HTTP {response.status}")
        kind = response.headers.get("content-type", "text/html").split(";")[0].strip().lower()
        if kind not in HTML_TYPES:
            return PageFailed(url, f"not an HTML page ({kind})")
        if response.truncated:
            return PageFailed(url, f"the page is over the size cap of {self.settings.website_max_page_mb:g} MB")
        html = decode_html(response.body, response.encoding)
        links, noindex, canonical = page_links(html, final, self.root)
        return Page(final, html, links, noindex, canonical, _header(response, "etag"), _strong_date(response))

    def _get(self, url: str, extra: dict[str, str] | None = None) -> Fetched:
        """One GET after the site's interval; errors of the request itself become a ``SiteError``."""
        wait = self._next_at - self._clock()
        if wait > 0:
            self._sleep(wait)
        self._on_request()
        headers = {"User-Agent": self.settings.website_user_agent, "Accept": "text/html,application/xhtml+xml,*/*;q=0.5",
                   **(extra or {})}
        timeout = self.settings.website_timeout_s
        try:
            return fetch("GET", url, headers, timeout, self.settings.website_allow_private, self.limit)
        except OutboundRefused as exc:
            raise SiteError(str(exc)) from None
        except (TimeoutError, httpx.TimeoutException):
            raise SiteError(f"no answer within {timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise SiteError(f"could not connect: {type(exc).__name__}: {exc}") from None
        finally:
            self._next_at = self._clock() + self.interval_s


def _header(response: Fetched, name: str, limit: int = 500) -> str | None:
    value = response.headers.get(name, "").strip()
    return value if value and len(value) <= limit and value.isascii() else None


def _strong_date(response: Fetched) -> str | None:
    """The response's Last-Modified, when it is a strong validator (RFC 9110 8.8.2.2: at least 60 s before its
    Date): a page changed within the second it was fetched would otherwise answer 304 to its old copy's date."""
    value = _header(response, "last-modified", 100)
    try:
        modified = parsedate_to_datetime(value) if value else None
        date_header = _header(response, "date", 100)
        date = parsedate_to_datetime(date_header) if date_header else datetime.now(UTC)
    except (TypeError, ValueError, IndexError):
        return None
    if modified is None or modified.tzinfo is None or date.tzinfo is None:
        return None
    return value if (date - modified).total_seconds() >= 60 else None


def parse_sitemap(data: bytes) -> tuple[list[str], list[str]]:
    """(child sitemaps, page URLs) of a sitemap or sitemap index (any namespace); raises ``SiteError`` for a file that
    is not XML or not a sitemap. Entities are not resolved and nothing is fetched by the parser."""
    parser = lxml.etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, recover=False)
    try:
        root = lxml.etree.parse(io.BytesIO(data), parser).getroot()
    except lxml.etree.XMLSyntaxError as exc:
        raise SiteError(f"the sitemap is not XML ({exc})") from None
    name = lxml.etree.QName(root).localname
    if name not in ("urlset", "sitemapindex"):
        raise SiteError(f"the XML is not a sitemap (its root is <{name}>, not <urlset> or <sitemapindex>)")
    # <loc> of each <url>/<sitemap> of the sitemap's namespace: not an extension's (<image:loc>, <video:loc>)
    ns = lxml.etree.QName(root).namespace
    entry, loc = ("sitemap" if name == "sitemapindex" else "url"), "loc"
    if ns:
        entry, loc = f"{{{ns}}}{entry}", f"{{{ns}}}{loc}"
    locs = [(el.findtext(loc) or "").strip() for el in root.iterchildren(entry)]
    locs = [loc for loc in locs if loc]
    return (locs, []) if name == "sitemapindex" else ([], locs)


_INDEX_FILE = re.compile(r"/(index|default)\.(html?|php|aspx?)$", re.IGNORECASE)


def _same_path(a: str, b: str) -> bool:
    """Whether two URLs name the same path (a trailing slash and an index file aside): a canonical link is taken only
    between such variants (a query, http/https), never to another page. Sites that wrongly point every page's
    canonical at the home page are common, and following them would keep one page of the whole site."""
    def path(url: str) -> str:
        return _INDEX_FILE.sub("/", urlsplit(url).path).rstrip("/") or "/"

    return path(a) == path(b)


def page_links(html: str, url: str, root: str) -> tuple[tuple[str, ...], bool, str | None]:
    """The page's same-site links (``<a href>``, resolved against ``<base>``, normalized, in order), none when its
    robots meta says nofollow; whether it says noindex; and its ``<link rel="canonical">`` when that is another
    URL of the site with the same path (``_same_path``)."""
    try:  # lxml refuses a str that declares its encoding (XHTML's <?xml ... encoding="utf-8"?>): it is decoded
        doc = lxml.html.fromstring(_XML_DECLARATION.sub("", html, count=1))
    except (lxml.etree.ParserError, ValueError):
        return (), False, None
    robots = " ".join(m.get("content", "") for m in doc.iter("meta") if (m.get("name") or "").lower() in
                      ("robots", ROBOTS_TOKEN)).lower()
    base = next((b.get("href") for b in doc.iter("base") if b.get("href")), None)
    base = normalize(base, url) if base else url
    href = next((link.get("href") for link in doc.iter("link") if link.get("href")
                 and "canonical" in (link.get("rel") or "").lower().split()), None)
    canonical = normalize(href, base) if href else None
    if canonical is not None and (canonical == url or not same_site(canonical, root) or not _same_path(canonical, url)):
        canonical = None
    if "nofollow" in robots or "none" in robots:
        return (), "noindex" in robots or "none" in robots, canonical
    links: dict[str, None] = {}
    for a in doc.iter("a"):
        href, rel = a.get("href"), (a.get("rel") or "").lower()
        target = normalize(href, base) if href and "nofollow" not in rel else None
        if target and same_site(target, root) and not skipped_by_extension(target):
            links[target] = None
    return tuple(links), "noindex" in robots, canonical


def decode_html(body: bytes, declared: str | None) -> str:
    """The page's text: the charset its Content-Type declares, else its ``<meta charset>``, else UTF-8 or
    cp1252 (``kb.detect.decode_text``)."""
    found = _CHARSET.search(body[:4096])
    for charset in (declared, found.group(1).decode("ascii") if found else None):
        if charset:
            try:
                return body.decode(charset, errors="replace")
            except LookupError:
                continue
    try:
        return decode_text(body)
    except UnicodeDecodeError:
        return body.decode("utf-8", errors="replace")


def _gunzip(data: bytes, limit: int) -> bytes:
    """A gzipped sitemap, inflated to at most ``limit`` bytes."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise SiteError(f"the sitemap is not valid gzip ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise SiteError(f"the sitemap inflates past the size cap of {limit / 2**20:g} MB")
    return out

