"""The crawler's pieces on their own: URLs, patterns, sitemaps (plain, index, gzip, hostile), links, charsets, and
the pause between requests (robots.txt's Crawl-delay included) against a real server on loopback."""
from __future__ import annotations

import gzip

import pytest

from benchmarks.website_sync import local_site
from core.settings import Settings
from ingest import crawl as crawl_module
from ingest.crawl import Robots, Site, SiteError, decode_html, normalize, page_links, parse_sitemap, wanted


@pytest.mark.parametrize("url, base, expected", [
    ("HTTP://Loja.Example:80/a?x=1#top", None, "http://loja.example/a?x=1"),
    ("https://loja.example:443", None, "https://loja.example/"),
    ("http://loja.example:8080/x", None, "http://loja.example:8080/x"),
    ("precos.html#tabela", "https://loja.example/produtos/", "https://loja.example/produtos/precos.html"),
    ("//cdn.example/x", "https://loja.example/", "https://cdn.example/x"),
    ("mailto:contato@loja.example", "https://loja.example/", None),
    ("javascript:void(0)", "https://loja.example/", None),
    ("http://[::1", None, None),
    ("ftp://loja.example/", None, None),
])
def test_normalize(url, base, expected):
    assert normalize(url, base) == expected


def test_patterns_match_the_path_and_query():
    assert wanted("https://l.example/blog/post", [], [])
    assert wanted("https://l.example/blog/post", ["/blog/*"], [])
    assert not wanted("https://l.example/loja", ["/blog/*"], [])
    assert not wanted("https://l.example/blog/post?page=2", [], ["*?page=*"])
    assert not wanted("https://l.example/blog/rascunho", ["/blog/*"], ["/blog/rascunho"])


def test_sitemaps_plain_index_any_namespace_and_hostile():
    plain = (b'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
             b"<url><loc> https://l.example/a </loc></url><url><loc>https://l.example/b</loc></url></urlset>")
    assert parse_sitemap(plain) == ([], ["https://l.example/a", "https://l.example/b"])
    index = b"<sitemapindex><sitemap><loc>https://l.example/s1.xml</loc></sitemap></sitemapindex>"
    assert parse_sitemap(index) == (["https://l.example/s1.xml"], [])
    with pytest.raises(SiteError, match="not XML"):
        parse_sitemap(b"<html><body>Not found")
    with pytest.raises(SiteError, match=r"its root is <rss>"):
        parse_sitemap(b"<rss><channel/></rss>")
    external = (b'<?xml version="1.0"?><!DOCTYPE u [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                b"<urlset><url><loc>&x;</loc></url></urlset>")
    assert parse_sitemap(external) == ([], [])  # the entity is not resolved: nothing read from the disk
    laughs = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">' +
              b"".join(b'<!ENTITY %c "&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;">' % ((c,) + (c - 1,) * 10)
                       for c in range(ord("b"), ord("k"))) + b"]><urlset><url><loc>&j;</loc></url></urlset>")
    with pytest.raises(SiteError):
        parse_sitemap(laughs)  # a billion laughs: refused by the parser, not expanded
    images = (b'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
              b'xmlns:image="http://www.google.com/schemas/sitemap-image/1.1"><url><loc>https://l.example/a</loc>'
              b"<image:image><image:loc>https://l.example/a.jpg</image:loc></image:image></url></urlset>")
    assert parse_sitemap(images) == ([], ["https://l.example/a"])  # an image is not a page


def test_a_sitemap_index_past_the_file_cap_is_incomplete(tmp_path, monkeypatch):
    monkeypatch.setattr(crawl_module, "MAX_SITEMAPS", 3)
    with local_site(tmp_path / "site") as site:
        children = "".join(f"<sitemap><loc>/s{i}.xml</loc></sitemap>" for i in range(3))
        site.write("/index.xml", f"<sitemapindex>{children}</sitemapindex>")
        for i in range(3):
            site.write(f"/s{i}.xml", f"<urlset><url><loc>/p{i}.html</loc></url></urlset>")
        crawl = Site(site.url, Settings(home=tmp_path, website_allow_private=True), interval_s=0.0)
        urls, complete = crawl.sitemap_urls(f"{site.url}/index.xml")
        assert urls == [f"{site.url}/p0.html", f"{site.url}/p1.html"] and not complete  # /s2.xml never read
        assert crawl.sitemap_urls(f"{site.url}/s0.xml") == ([f"{site.url}/p0.html"], True)


def test_links_base_nofollow_and_noindex():
    html = ('<html><head><base href="/loja/"></head><body><a href="a.html">a</a> <a href="a.html#x">again</a>'
            '<a href="https://other.example/">off-site</a><a rel="nofollow" href="b.html">b</a>'
            '<a href="foto.JPG">img</a><a href="/c?p=1">c</a></body></html>')
    links, noindex, canonical = page_links(html, "https://l.example/x/y.html", "https://l.example/")
    assert links == ("https://l.example/loja/a.html", "https://l.example/c?p=1") and not noindex and canonical is None
    closed = '<meta name="robots" content="noindex, nofollow"><a href="/a">a</a>'
    assert page_links(closed, "https://l.example/", "https://l.example/") == ((), True, None)


def test_xhtml_with_an_xml_declaration_has_its_links_and_robots_meta():
    xhtml = ('<?xml version="1.0" encoding="UTF-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml"><head>'
             '<meta name="robots" content="noindex"/></head><body><a href="/b.html">b</a></body></html>')
    assert page_links(xhtml, "https://l.example/a.html", "https://l.example/") == (
        ("https://l.example/b.html",), True, None)


def test_canonical_link_on_the_site_only():
    def canonical(head: str, url: str = "https://l.example/p?utm_source=x") -> str | None:
        return page_links(f"<html><head>{head}</head><body><p>x</p></body></html>", url, "https://l.example/")[2]

    assert canonical('<link rel="canonical" href="/p#top">') == "https://l.example/p"
    assert canonical('<link rel="Canonical" href="https://l.example/p/">') == "https://l.example/p/"
    assert canonical('<link rel="canonical" href="/p/index.html">') == "https://l.example/p/index.html"
    # another page: not followed (a site pointing every page's canonical at its home page would collapse to one)
    assert canonical('<link rel="canonical" href="https://l.example/produtos/cafe">') is None
    assert canonical('<link rel="canonical" href="/">', url="https://l.example/loja/cafe.html") is None
    assert canonical('<link rel="canonical" href="https://other.example/p">') is None  # another site: ignored
    assert canonical('<link rel="canonical" href="/p">', url="https://l.example/p") is None  # itself
    assert canonical('<link rel="alternate" href="/en/p">') is None


def test_robots_longest_match_wildcards_and_groups():
    text = ("User-agent: *\nAllow: /\nDisallow: /private/\nDisallow: /*.pdf$\nDisallow: /*?sessionid=\n"
            "Allow: /private/public.html\n\nUser-agent: otherbot\nDisallow: /\n")
    robots = Robots.parse(text)
    allowed = {path: robots.allowed(f"https://l.example{path}") for path in (
        "/", "/a.html", "/private/x.html", "/private/public.html", "/doc.pdf", "/doc.pdf?x=1", "/a?sessionid=1",
        "/robots.txt")}
    assert allowed == {"/": True, "/a.html": True, "/private/x.html": False, "/private/public.html": True,
                       "/doc.pdf": False, "/doc.pdf?x=1": True, "/a?sessionid=1": False, "/robots.txt": True}
    # the group naming atende wins over *, case-insensitive, merged when given twice; a tie goes to allow
    mine = Robots.parse("User-agent: *\nDisallow: /\n\nUser-agent: Atende/1.0\nDisallow: /x\nCrawl-delay: 2\n"
                        "User-agent: atende\nDisallow: /y\nAllow: /y\n")
    assert [mine.allowed(f"https://l.example{p}") for p in ("/a", "/x/1", "/y")] == [True, False, True]
    assert mine.crawl_delay == 2.0
    # a token that merely contains a group's name is not that group (urllib.robotparser took "a" for atende)
    assert Robots.parse("User-agent: a\nDisallow: /\n").allowed("https://l.example/p")
    assert not Robots.parse("User-agent: *\nDisallow: /ação/\n").allowed("https://l.example/a%C3%A7%C3%A3o/x")
    assert Robots().allowed("https://l.example/anything")  # no robots.txt: everything
    assert not Robots.parse("\ufeffUser-agent: *\nDisallow: /\n").allowed("https://l.example/p")  # after a BOM


def test_charset_from_header_meta_or_guess():
    text = "Preço: 2,50 €"
    assert decode_html(text.encode("cp1252"), "windows-1252") == text
    assert decode_html(b'<meta charset="iso-8859-1">' + "ação".encode("latin-1"), None).endswith("ação")
    assert decode_html(text.encode("cp1252"), None) == text  # not UTF-8: cp1252
    assert decode_html(text.encode(), "no-such-charset") == text


def test_requests_wait_the_interval_and_robots_crawl_delay(tmp_path):
    with local_site(tmp_path / "site") as site:
        site.write("/robots.txt", "User-agent: atende\nCrawl-delay: 3\nDisallow: /x/\n")
        site.write("/a.html", "<p>a</p>")
        site.write("/s.xml.gz", gzip.compress(b"<urlset><url><loc>/a.html</loc></url></urlset>"))
        now, slept = [100.0], []

        def sleep(seconds: float) -> None:
            slept.append(round(seconds, 3))
            now[0] += seconds

        crawl = Site(site.url, Settings(home=tmp_path, website_allow_private=True), interval_s=1.0,
                     clock=lambda: now[0], sleep=sleep)
        crawl.read_robots()
        assert crawl.interval_s == 3.0 and not crawl.allowed(f"{site.url}/x/y") and crawl.allowed(f"{site.url}/a")
        crawl.page(f"{site.url}/a.html")
        now[0] += 1.0  # a second of other work since
        assert crawl.sitemap_urls(f"{site.url}/s.xml.gz") == ([f"{site.url}/a.html"], True)
        assert slept == [3.0, 2.0]  # after robots.txt, then what was left of the 3 s
