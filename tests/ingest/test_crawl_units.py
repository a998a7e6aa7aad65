"""The crawler's pieces on their own: URLs, patterns, sitemaps (plain, index, gzip, hostile), links, charsets, and
the pause between requests (robots.txt's Crawl-delay included) against a real server on loopback."""
from __future__ import annotations

import gzip

import pytest

from benchmarks.website_sync import local_site
from core.settings import Settings
from ingest.crawl import Site, SiteError, decode_html, normalize, page_links, parse_sitemap, wanted


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


def test_links_base_nofollow_and_noindex():
    html = ('<html><head><base href="/loja/"></head><body><a href="a.html">a</a> <a href="a.html#x">again</a>'
            '<a href="https://other.example/">off-site</a><a rel="nofollow" href="b.html">b</a>'
            '<a href="foto.JPG">img</a><a href="/c?p=1">c</a></body></html>')
    links, noindex = page_links(html, "https://l.example/x/y.html", "https://l.example/")
    assert links == ("https://l.example/loja/a.html", "https://l.example/c?p=1") and not noindex
    closed = '<meta name="robots" content="noindex, nofollow"><a href="/a">a</a>'
    assert page_links(closed, "https://l.example/", "https://l.example/") == ((), True)


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
        assert crawl.sitemap_urls(f"{site.url}/s.xml.gz") == ([f"{site.url}/a.html"], 1)
        assert slept == [3.0, 2.0]  # after robots.txt, then what was left of the 3 s
