"""Website sync benchmark: a site of 200 pages built from the shared HTML documents, served on loopback, synced
into a knowledge base (fetch, extract, chunk, embed), then synced again unchanged (fetch and extract only: nothing
re-embedded), in one run.

Prints the crawl throughput (pages fetched and extracted per second, the site's interval set to 0), the first
sync's time and the unchanged re-sync's. The site (``LocalSite``) is what the tests serve too: pages wrapped in a
menu, a header and a footer (boilerplate extraction leaves out), a sitemap and a robots.txt.
Run: ``python -m benchmarks.website_sync [--pages 200] [--model all-minilm-l6-v2]``.
"""
from __future__ import annotations

import argparse
import hashlib
import html
import http.server
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lxml.html

SHARED_HTML = Path(__file__).resolve().parents[2] / "shared" / "data" / "docs" / "html"
BOILERPLATE_MENU = ["Início", "Produtos", "Preços", "Contato", "Trabalhe conosco"]


def page_html(title: str, body: str, links: list[str] = ()) -> str:
    """A page as a site serves it: ``body`` (HTML) in <main>, around it a menu of ``links``, a header and a
    footer, the same on every page."""
    menu = "".join(f'<li><a href="{html.escape(href)}">{html.escape(href.strip("/") or "Início")}</a></li>'
                   for href in links)
    boiler = " | ".join(BOILERPLATE_MENU)
    return (f"<!DOCTYPE html><html lang=pt><head><meta charset=utf-8><title>{html.escape(title)}</title></head><body>"
            f"<header><div class=logo>Loja Exemplo</div><nav class=menu><ul>{menu}</ul><p>{boiler}</p></nav></header>"
            f"<main><article>{body}</article></main>"
            "<footer><p>© 2026 Loja Exemplo Ltda. Todos os direitos reservados. Política de privacidade. "
            "Termos de uso. Siga-nos nas redes sociais.</p></footer></body></html>")


def shared_paragraphs() -> list[str]:
    """The paragraphs of the shared HTML documents (at least 80 characters each), in order."""
    found = []
    for path in sorted(SHARED_HTML.glob("*.html")):
        doc = lxml.html.fromstring(path.read_bytes())
        for el in doc.iter("p", "td", "font"):
            text = " ".join(el.text_content().split())
            if len(text) >= 80 and text not in found:
                found.append(text)
    return found


def generated_pages(count: int) -> dict[str, str]:
    """``count`` pages (path -> HTML), each a heading of its own and three paragraphs of the shared documents."""
    paragraphs = shared_paragraphs()
    pages = {}
    for i in range(count):
        body = f"<h1>Página {i}</h1>" + "".join(
            f"<p>{html.escape(paragraphs[(i * 3 + k) % len(paragraphs)])}</p>" for k in range(3))
        pages[f"/pages/p{i:03d}.html"] = page_html(f"Página {i}", body, ["/", "/pages/p000.html"])
    return pages


class _Handler(http.server.SimpleHTTPRequestHandler):
    site: LocalSite

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        hook = self.site.hooks.get(self.path)
        if hook is not None:
            hook()
        self._etag = None
        if self.site.etags and self.path not in self.site.overrides:
            file = Path(self.translate_path(self.path))
            if file.is_file():
                self._etag = f'"{hashlib.sha256(file.read_bytes()).hexdigest()[:16]}"'
                if self._etag in self.headers.get("If-None-Match", ""):
                    self.send_response(304)
                    self.end_headers()
                    return
        override = self.site.overrides.get(self.path)
        if override is None:
            super().do_GET()
            return
        status, headers, body = override
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def end_headers(self) -> None:
        if getattr(self, "_etag", None):
            self.send_header("ETag", self._etag)
        super().end_headers()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if isinstance(code, int):
            self.site.answers.append((self.path, int(code)))
        super().log_request(code, size)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        self.site.requests.append(self.path)


class LocalSite:
    """A website on loopback, served from a directory: ``write``/``remove`` pages, ``write_sitemap``,
    ``overrides`` to answer a path with (status, headers, body) instead, ``hooks`` to call something before a path
    is answered; ``requests`` lists the paths asked, ``answers`` (path, status) the answers; ``etags`` makes it
    send ETags and answer If-None-Match (http.server answers If-Modified-Since itself)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.overrides: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.hooks: dict[str, Callable[[], object]] = {}
        self.answers: list[tuple[str, int]] = []
        self.etags = False
        self.requests: list[str] = []
        handler = type("Handler", (_Handler,), {"site": self})
        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(self.root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> LocalSite:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def write(self, path: str, content: str | bytes) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)

    def remove(self, path: str) -> None:
        (self.root / path.lstrip("/")).unlink()

    def pages(self) -> list[str]:
        return sorted("/" + p.relative_to(self.root).as_posix() for p in self.root.rglob("*.html"))

    def write_sitemap(self, paths: list[str] | None = None) -> str:
        """A sitemap listing ``paths`` (default: every .html file); returns its URL."""
        entries = "".join(f"<url><loc>{self.url}{p}</loc></url>" for p in (paths if paths is not None else self.pages()))
        self.write("/sitemap.xml", '<?xml version="1.0" encoding="UTF-8"?>'
                   f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</urlset>')
        return f"{self.url}/sitemap.xml"


@contextmanager
def local_site(root: Path) -> Iterator[LocalSite]:
    site = LocalSite(root).start()
    try:
        yield site
    finally:
        site.stop()


def run_benchmark(pages: int = 200, model: str = "all-minilm-l6-v2") -> dict:
    """Build and serve the site, sync it twice into a fresh knowledge base; returns (and prints) the figures."""
    from atende.services import build_services
    from core.settings import Settings
    from ingest.crawl import Page, Site
    from ingest.website_sync import run_sync
    from kb import registry, websites

    with tempfile.TemporaryDirectory() as tmp, local_site(Path(tmp) / "site") as site:
        for path, content in generated_pages(pages).items():
            site.write(path, content)
        site.write("/robots.txt", "User-agent: *\nDisallow: /private/\n")
        sitemap = site.write_sitemap()
        settings = Settings(home=Path(tmp) / "home", embedding_model=model, website_allow_private=True)
        services = build_services(settings)
        crawl = Site(site.url, settings, interval_s=0.0)
        crawl.read_robots()
        t = time.perf_counter()
        fetched = sum(isinstance(crawl.page(f"{site.url}{p}"), Page) for p in site.pages())
        crawl_s = time.perf_counter() - t
        with services.session() as session:
            kb = registry.create_assistant(session, name="bench", embedding_model=model, chunk_size=256,
                                           chunk_overlap=32).knowledge_base
            source = websites.create_source(session, kb, websites.SourceSettings(
                url=sitemap, kind="sitemap", max_pages=pages, request_interval_s=0.0, sync_interval_hours=0))
            session.commit()
            source_id = source.id

        def sync() -> tuple[float, object]:
            with services.session() as session:
                run_id = websites.start_run(session, websites.get_source(session, source_id)).id
                session.commit()
            t = time.perf_counter()
            run = run_sync(services, run_id)
            return time.perf_counter() - t, run

        services.embedders.get(model).embed_query("warm up")  # the model's load is not the sync's
        first_s, first = sync()
        again_s, again = sync()
        services.engine.dispose()
    report = {
        "pages": pages, "model": model,
        "crawl_pages_per_s": round(fetched / crawl_s, 1),
        "first_sync_s": round(first_s, 2), "first_sync_pages_per_s": round(first.pages_seen / first_s, 1),
        "first_sync": _counts(first),
        "unchanged_resync_s": round(again_s, 2), "unchanged_resync_pages_per_s": round(again.pages_seen / again_s, 1),
        "unchanged_resync": _counts(again),
        "resync_vs_first": round(again_s / first_s, 3),
    }
    for key, value in report.items():
        print(f"{key:32} {value}")
    return report


def _counts(run) -> dict:
    return {k: getattr(run, f"pages_{k}") for k in ("seen", "added", "changed", "unchanged", "removed", "failed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--model", default="all-minilm-l6-v2", help="embedding model of the knowledge base")
    args = parser.parse_args()
    run_benchmark(args.pages, args.model)


if __name__ == "__main__":
    main()
